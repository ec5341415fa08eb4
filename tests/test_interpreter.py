"""The JAX string interpreter against the Python reference (program.run).

Compilation budget (2 CPU cores): the per-function cases run in one execute_batch call; the fuzz
test uses fixed shapes (I = 256 instructions, 64 literals of <= 8 code points, stack 8, batch
4,096) at two capacities (64 and 16), i.e. two compilations for 116k programs.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn.tasks.strings import functions
from compfn.tasks.strings import interpreter
from compfn.tasks.strings import program
from compfn.tasks.strings.program import Builtin, Call, Concat, Lit, ProgramError, Var


class _Overflow(Exception):
  pass


def reference(node, x, capacity):
  """program.run semantics plus the interpreter's capacity rule: None when any value put on
  the stack (x when read, a literal, a str parameter, an intermediate, the result) exceeds
  capacity."""

  def chk(s):
    if len(s) > capacity:
      raise _Overflow
    return s

  def ev(n):
    if isinstance(n, Var):
      return chk(x)
    if isinstance(n, Lit):
      return chk(n.value)
    if isinstance(n, Concat):
      return chk(ev(n.left) + ev(n.right))
    if isinstance(n, Builtin):
      return chk(functions.BUILTINS[n.op](ev(n.sub)))
    args = [ev(a) for a in n.args]
    if n.fn in ('repeat_str', 'loop_concat') and len(args[0]) * max(n.param, 0) > capacity:
      raise _Overflow  # without building a huge string
    if isinstance(n.param, str):
      chk(n.param)
    if n.param is not None:
      args.append(n.param)
    return chk(functions.FUNCTIONS[n.fn].fn(*args))

  try:
    ev(node)
  except _Overflow:
    return None
  return program.run(node, x)


# ------------------------------------------------------------------------------------------------
# Per-function cases (one execute_batch call for all of them)
# ------------------------------------------------------------------------------------------------

INPUTS = [
    '',
    'a',
    'Z',
    '7',
    '«',
    '«»',
    'ab',
    'aab',
    'abc',
    'abcba',
    'hello',
    'Hello World',
    'aEiOu',
    'AEIOUxyz',
    'a1b2c3',
    '--__||',
    'x-y_z|w',
    'abcdefghi',
    'abcdefghijklmno',
    'Mississippi',
    'zzZZaa',
    '€→…',
    'a\x00b',
    'q«r»s',
    'UPPER lower 123',
]
WHITESPACE = [
    '  a  b  ',
    '\tone\ntwo\x0bthree\x0cfour\rfive\x1csix\x1dseven\x1eeight\x1fnine',
    ' ',
    '\x1c\x1d',
    'single',
    'a b',
    '  lead',
    'trail  ',
    'a\x00b c€d',
]
INT_PARAMS = {
    'repeat_str': [-2, 0, 1, 2, 3, 4, 7],
    'loop_concat': [-1, 0, 1, 2, 4],
    'rotate_str': [-7, -1, 0, 1, 2, 3, 5, 14, 100, -(2**31), 2**31 - 1],
    'while_rotate': [-3, 0, 1, 2, 3, 9, 1001],  # the reference loops n times: keep n small
    'shift_chars': [-27, -1, 0, 1, 3, 5, 25, 26, 10**12 + 3],
    'backchain_add_digit': [-2, -1, 0, 1, 2, 3],
    'backchain_palindrome': [-1, 0, 1, 2, 3],
}
STR_PARAMS = ['', '-', '_', '|', 'ab', '«»', 'XYZ']


def _cases():
  cases = []
  for name, spec in functions.FUNCTIONS.items():
    if spec.kind == 'noparam':
      for s in INPUTS + (WHITESPACE if name == 'reverse_words' else []):
        cases.append((Call(name, (Var(),)), s))
    elif spec.kind == 'binary':
      for a in ('', 'a', 'abc', 'XY«»'):
        for b in ('', 'b', 'xyzw', '12'):
          cases.append((Call(name, (Var(), Lit(b))), a))
          cases.append((Call(name, (Lit(a), Var())), b))
      cases.append((Call(name, (Var(), Var())), 'abc'))
    elif spec.param == 'str':
      for p in STR_PARAMS:
        for s in ('', 'a', 'abc', 'Hello'):
          cases.append((Call(name, (Var(),), p), s))
    else:
      for p in INT_PARAMS[name]:
        for s in ('', 'a', 'ab', 'abc', 'a1c', 'abcba', 'Hello-World', 'xyzXYZ'):
          cases.append((Call(name, (Var(),), p), s))
  for op in functions.BUILTINS:
    for s in INPUTS:
      cases.append((Builtin(op, Var()), s))
  for a, b in (('', ''), ('a', ''), ('', 'b'), ('ab', 'cd')):
    cases.append((Concat(Var(), Lit(b)), a))
    cases.append((Concat(Lit(a), Var()), b))
  # Concat of two computed values, literals only, nesting both ways.
  cases += [
      (Concat(Call('mirror_str', (Var(),)), Call('sort_chars', (Var(),))), 'cab'),
      (Lit('const'), 'ignored'),
      (Lit(''), 'x'),
      (Call('interlace_str', (Call('fancy_brackets', (Var(),)), Lit('0123456789'))), 'ab'),
      (Call('insert_separator', (Call('reverse_words', (Var(),)),), '|'), 'ab cd'),
      (Builtin('capitalize', Call('alternate_case', (Var(),))), 'hello WORLD'),
      (Call('backchain_palindrome', (Call('vowel_to_number', (Var(),)),), 2), 'aei'),
  ]
  return cases


CASES = _cases()
CASE_CAPACITY = 256


def _printable(node):
  """Whether printed code parses back (program.parse_code has no negative int literals)."""
  try:
    return program.parse_code(program.to_code(node)) == node
  except ProgramError:
    return False


@pytest.fixture(scope='module')
def case_results():
  """{case index: (direct execute result, execute_batch result or 'n/a')}."""
  direct = _run([node for node, _ in CASES], [x for _, x in CASES], CASE_CAPACITY)
  printable = [k for k, (node, _) in enumerate(CASES) if _printable(node)]
  batch = interpreter.execute_batch(
      [program.to_code(CASES[k][0]) for k in printable],
      [CASES[k][1] for k in printable],
      capacity=CASE_CAPACITY,
  )
  by_k = dict(zip(printable, batch))
  return {k: (direct[k], by_k.get(k, 'n/a')) for k in range(len(CASES))}


def _case_id(case):
  node, x = case
  return f'{program.to_text(node, names="internal")}|{x!r}'[:80]


@pytest.mark.parametrize('k', range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_function_case(case_results, k):
  node, x = CASES[k]
  want = reference(node, x, CASE_CAPACITY)
  direct, batch = case_results[k]
  assert direct == want
  assert batch in (want, 'n/a')


def test_cases_cover_every_function_and_builtin():
  used = {n.fn for n, _ in CASES if isinstance(n, Call)}
  used |= {n.op for n, _ in CASES if isinstance(n, Builtin)}
  assert used == set(functions.FUNCTIONS) | set(functions.BUILTINS)


@pytest.mark.parametrize('depth', range(-1, 4))
def test_backchain_semantics_match_reference(depth):
  for s in ('', 'a', 'ab', 'a1', 'xyz', 'aba', '9'):
    want = s if (depth == 0 or any(c.isdigit() for c in s)) else s + '1'
    assert functions.backchain_add_digit(s, depth) == want
    want = s if (s == s[::-1] or depth <= 0) else s + s[::-1]
    assert functions.backchain_palindrome(s, depth) == want


# ------------------------------------------------------------------------------------------------
# Capacity, stack, big parameters, nesting
# ------------------------------------------------------------------------------------------------


def _run(nodes, xs, capacity, stack_depth=8):
  enc = interpreter.encode(nodes)
  x, x_len = interpreter.encode_strings(xs, capacity)
  out, out_len, ovf = jax.jit(interpreter.execute, static_argnames=('capacity', 'stack_depth'))(
      enc, x, x_len, capacity=capacity, stack_depth=stack_depth
  )
  got = interpreter.decode(out, out_len)
  return [None if o else g for g, o in zip(got, np.asarray(ovf))]


def test_capacity_boundaries():
  C = 16
  x = Var()
  cases = [
      (x, 'a' * 16),
      (x, 'a' * 17),  # input itself
      (Call('mirror_str', (x,)), 'abcdefgh'),
      (Call('mirror_str', (x,)), 'abcdefghi'),
      (Call('duplicate_every_char', (x,)), 'a' * 8),
      (Call('duplicate_every_char', (x,)), 'a' * 9),
      (Call('fancy_brackets', (x,)), 'abcde'),
      (Call('fancy_brackets', (x,)), 'abcdef'),
      (Call('repeat_str', (x,), 4), 'abcd'),
      (Call('repeat_str', (x,), 4), 'abcde'),
      (Call('repeat_str', (x,), 10**12), ''),
      (Call('repeat_str', (x,), 10**12), 'a'),
      (Call('loop_concat', (x,), 2**31 - 1), 'ab'),
      (Call('add_suffix', (x,), 'xy'), 'a' * 14),
      (Call('add_suffix', (x,), 'xy'), 'a' * 15),
      (Call('insert_separator', (x,), '--'), 'abcdef'),  # 6 + 10 = 16
      (Call('insert_separator', (x,), '--'), 'abcdefg'),  # 19
      (Call('insert_separator', (x,), '-' * 16), 'a'),  # param 16: fits
      (Call('insert_separator', (x,), '-' * 17), 'a'),  # param 17: a value
      (Call('interlace_str', (x, Lit('12345678'))), 'abcdefgh'),
      (Call('interlace_str', (x, Lit('12345678'))), 'abcdefghi'),
      (Call('backchain_add_digit', (x,), 1), 'a' * 15),
      (Call('backchain_add_digit', (x,), 1), 'a' * 16),
      (Call('backchain_palindrome', (x,), 1), 'a' * 16),  # palindrome: no growth
      (Call('backchain_palindrome', (x,), 1), 'ab' * 4),
      (Call('backchain_palindrome', (x,), 1), 'abc' * 3),
      # an intermediate overflows although the result is short
      (Call('remove_vowels', (Call('repeat_str', (x,), 3),)), 'aaaaaa'),
      (Call('verify_even_length', (Call('mirror_str', (x,)),)), 'a' * 9),
      (Lit('b' * 17), ''),
      (Concat(Lit('b' * 8), Lit('c' * 8)), ''),
      (Concat(x, Lit('c' * 9)), 'a' * 8),
      (Call('reverse_words', (x,)), ' ab ' * 4),
      (Call('sort_chars', (x,)), 'zyxwvutsrqponmlk'),
      (Lit('short'), 'x' * 40),  # x never read
  ]
  got = _run([n for n, _ in cases], [s for _, s in cases], C)
  want = [reference(n, s, C) for n, s in cases]
  assert got == want
  assert got[0] == 'a' * 16 and got[1] is None and got[-1] == 'short'
  # the host wrapper agrees, including when its capacity ladder is skipped
  codes = [program.to_code(n) for n, _ in cases]
  assert interpreter.execute_batch(codes, [s for _, s in cases], capacity=C) == want


def test_execute_batch_escalates_capacity():
  codes = [
      'def main_solution(x):\n    return func_1(func_9(func_9(func_9(x))), 4)',
      'def main_solution(x):\n    return func_2(func_1(x, 4))',
      'def main_solution(x):\n    return x',
  ]
  xs = ['abcdefghijklmnopqrstu', 'hello' * 60, 'y' * 5000]
  want = [program.run_code(c, x) for c, x in zip(codes, xs)]
  assert [len(w) for w in want] == [672, 720, 5000]
  assert interpreter.execute_batch(codes, xs, capacity=4096) == want[:2] + [None]
  assert interpreter.execute_batch(codes, xs, capacity=5000) == want
  assert interpreter.execute_batch(codes, xs, capacity=700) == [want[0], None, None]


def test_rotation_parameters_out_of_int32_raise():
  with pytest.raises(ProgramError, match='int32'):
    interpreter.encode([Call('rotate_str', (Var(),), 2**31)])
  with pytest.raises(ProgramError, match='int32'):
    interpreter.execute_batch(['func_19(x, 99999999999)'], ['abc'])
  # while_rotate with a huge negative count is a no-op, so it encodes fine
  assert _run([Call('while_rotate', (Var(),), -(10**12))], ['abc'], 16) == ['abc']
  # a huge count: the reference would loop 2**31 times; it is rotate by n % len
  n = 2**31 - 1
  xs = ['', 'a', 'abcd', 'abcdefg']
  got = _run([Call('while_rotate', (Var(),), n)] * 4, xs, 16)
  assert got == [s[n % len(s) :] + s[: n % len(s)] if s else s for s in xs]
  assert got == [functions.rotate_str(s, n) for s in xs]


def test_deep_nesting_and_stack_depth():
  chain = Var()
  names = [
      n
      for n, s in functions.FUNCTIONS.items()
      if s.kind == 'noparam' and n not in ('mirror_str', 'duplicate_every_char', 'fancy_brackets')
  ]
  for k in range(120):
    chain = Call(names[k % len(names)], (chain,))

  def full(h):
    if h == 0:
      return Var()
    return Call('interlace_str', (full(h - 1), Call('compress_repeats', (full(h - 1),))))

  def left_comb(h):  # (((x + 'a') + 'b') ...): stack depth 2 whatever h is
    node = Var()
    for k in range(h):
      node = Concat(node, Lit(chr(97 + k)))
    return node

  def right_comb(h):  # x + (x + (x + ...)): the swap bit keeps it at depth 2 too
    node = Var()
    for _ in range(h):
      node = Concat(Var(), Call('shift_chars', (node,), 1))
    return node

  nodes = [chain, full(6), left_comb(20), right_comb(20)]
  xs = ['Hello, World! 123 aaa', 'ab', 'q', 'z']
  enc = interpreter.encode(nodes)
  assert enc.stack_need.tolist() == [1, 7, 2, 2]
  assert interpreter.required_stack_depth(enc) == 7
  want = [reference(n, s, 256) for n, s in zip(nodes, xs)]
  assert all(w is not None for w in want)
  assert _run(nodes, xs, 256, stack_depth=7) == want
  # one slot short: only the program that needs 7 overflows
  assert _run(nodes, xs, 256, stack_depth=6) == [want[0], None, want[2], want[3]]


# ------------------------------------------------------------------------------------------------
# Encoding format and static sizes
# ------------------------------------------------------------------------------------------------


def test_encoding_worked_example():
  enc = interpreter.encode(
      [
          program.parse_expr("func_8((x + 'ab'), 2)"),
          program.parse_expr("func_5(x, 'pre')"),
          program.parse_expr("func_7('ab', func_13(x, 'ab'))"),
      ]
  )
  names = [[interpreter.OP_NAMES[o] for o in row[:k]] for row, k in zip(enc.ops, enc.n_instr)]
  assert names[0] == ['PUSH_X', 'PUSH_LIT', 'CONCAT', 'ROTATE']
  assert enc.args[0, :4].tolist() == [0, 0, 0, 2]
  assert names[1] == ['PUSH_X', 'PUSH_LIT', 'CONCAT'] and enc.args[1, 2] == 1  # pre + x
  # deeper right child first; 'ab' stored once and used twice
  assert names[2] == ['PUSH_X', 'PUSH_LIT', 'JOIN', 'PUSH_LIT', 'INTERLACE']
  assert enc.args[2, 4] == 1 and enc.lits[2, :4].tolist() == [0, 0, 0, 0]
  assert enc.lit_lens[2].tolist()[:1] == [2] and enc.lit_chars[2, 0, :2].tolist() == [97, 98]
  assert enc.ops.shape == (3, 8) and enc.lit_chars.shape == (3, 2, 8)
  assert enc.stack_need.tolist() == [2, 2, 2]
  assert np.all(enc.ops[:, 5:] == interpreter.OP_HALT)


def test_encode_static_sizes():
  node = program.parse_expr("func_6(func_5(x, 'abcdefghij'), 'k')")
  enc = interpreter.encode([node], max_instructions=5, max_literals=2, literal_capacity=10)
  assert enc.ops.shape == (1, 5) and enc.lit_chars.shape == (1, 2, 10)
  with pytest.raises(ProgramError, match='program 1 needs max_instructions >= 5'):
    interpreter.encode([Var(), node], max_instructions=4)
  with pytest.raises(ProgramError, match='max_literals >= 2'):
    interpreter.encode([node], max_literals=1)
  with pytest.raises(ProgramError, match='literal_capacity >= 10'):
    interpreter.encode([node], literal_capacity=9)


# ------------------------------------------------------------------------------------------------
# Errors and the character domain
# ------------------------------------------------------------------------------------------------


def test_execute_batch_errors():
  with pytest.raises(TypeError, match=r'inputs\[1\] must be a str, got int'):
    interpreter.execute_batch(['x', 'x'], ['a', 3])
  with pytest.raises(TypeError, match=r'codes\[0\] must be a str, got NoneType'):
    interpreter.execute_batch([None], ['a'])
  with pytest.raises(ProgramError, match=r'codes\[1\]: unparsable'):
    interpreter.execute_batch(['x', 'def main_solution(x):\n    return func_3(x'], ['a', 'b'])
  with pytest.raises(ProgramError, match=r"codes\[0\]: unknown function 'func_99'"):
    interpreter.execute_batch(['func_99(x)'], ['a'])
  with pytest.raises(ProgramError, match=r'codes\[0\]: func_7 takes 2 arguments, got 1'):
    interpreter.execute_batch(['func_7(x)'], ['a'])
  with pytest.raises(ValueError, match='2 codes but 1 inputs'):
    interpreter.execute_batch(['x', 'x'], ['a'])
  with pytest.raises(ValueError, match=r"inputs\[0\] contains 'é' \(U\+00E9\) at position 1"):
    interpreter.execute_batch(['x'], ['cé'])
  with pytest.raises(ValueError, match=r"codes\[0\]: literal .* contains 'ß'"):
    interpreter.execute_batch(["func_5(x, 'ß')"], ['a'])
  with pytest.raises(ValueError, match='capacity'):
    interpreter.execute_batch(['x'], ['a'], capacity=0)
  with pytest.raises(ProgramError, match='only the 25 string functions'):
    interpreter.encode([Call('not_a_function', (Var(),))])


def test_character_domain():
  for ch in 'aZ09 \t\x00\x7f«»€→…─¡¿§':
    assert interpreter.in_domain(ch), ch
  for ch in 'éßİΣ²①ⓐⅰ\xa0\x85\u2028中':
    assert not interpreter.in_domain(ch), ch
  # on the domain the device's ASCII-only rules are Python's rules
  assert interpreter.execute_batch(
      ['(x).upper()', 'func_21(x)', 'func_4(x)', 'func_3(x)'],
      ['a€b→c', '€a→1', '€ →', '→€a«'],
      capacity=16,
  ) == ['A€B→C', 'a', '→ €', 'a«€→']


def test_strings_round_trip():
  xs = ['', 'abc', '«»€\x00', 'a' * 20]
  codes, lens = interpreter.encode_strings(xs, 8)
  assert codes.shape == (4, 8) and lens.tolist() == [0, 3, 4, 20]
  assert interpreter.decode(codes, np.minimum(lens, 8)) == ['', 'abc', '«»€\x00', 'a' * 8]


# ------------------------------------------------------------------------------------------------
# Composability: inside a larger jit, under vmap
# ------------------------------------------------------------------------------------------------


def test_inside_jit_and_vmap():
  nodes = [
      program.parse_expr(c)
      for c in ('func_3(x)', 'func_2(func_4(x))', 'func_24(x, 1)', 'func_16(func_0(x))')
  ] * 4
  xs = ['hello world', 'aab', 'abc', 'zzyzz'] * 4
  want = [program.run(n, s) for n, s in zip(nodes, xs)]
  enc = interpreter.encode(nodes)
  x, x_len = interpreter.encode_strings(xs, 32)

  @jax.jit
  def fused(enc, x, x_len):  # e.g. a reward: exact match against a target
    out, out_len, ovf = interpreter.execute(enc, x, x_len, capacity=32, stack_depth=4, sub_batch=4)
    return out, out_len, jnp.sum(out_len * ~ovf)

  out, out_len, total = fused(enc, x, x_len)
  assert interpreter.decode(out, out_len) == want and int(total) == sum(map(len, want))

  halves = jax.tree.map(lambda a: np.stack([a[:8], a[8:]]), (enc, x, x_len))
  out, out_len, _ = jax.jit(
      jax.vmap(
          lambda e, a, b: interpreter.execute(e, a, b, capacity=32, stack_depth=4, sub_batch=2)
      )
  )(*halves)
  assert (
      interpreter.decode(np.asarray(out).reshape(16, 32), np.asarray(out_len).reshape(16)) == want
  )


# ------------------------------------------------------------------------------------------------
# Fuzz: >= 100,000 random programs and inputs against program.run
# ------------------------------------------------------------------------------------------------

ALPHABET = 'abcdefghijklmnopqrstuvwxyz' 'AEIOUXYZ' '0123456789' '-_|' '«»' '  \t\n\x1c\x1f\x00' '€→'
_NOPARAM = [n for n, s in functions.FUNCTIONS.items() if s.kind == 'noparam']
_PARAM = [n for n, s in functions.FUNCTIONS.items() if s.kind == 'param']
_BINARY = [n for n, s in functions.FUNCTIONS.items() if s.kind == 'binary']


def _rstr(rng, hi):
  return ''.join(rng.choice(ALPHABET) for _ in range(rng.randint(0, hi)))


def random_program(rng, depth, p_binary):
  """A random AST of height <= depth over all 25 functions, builtins, concat and literals."""
  if depth == 0:
    return Var() if rng.random() < 0.5 else Lit(_rstr(rng, 6))
  r = rng.random()
  if r < p_binary / 2:
    return Concat(
        random_program(rng, depth - 1, p_binary), random_program(rng, depth - 1, p_binary)
    )
  if r < p_binary:
    return Call(
        rng.choice(_BINARY),
        (random_program(rng, depth - 1, p_binary), random_program(rng, depth - 1, p_binary)),
    )
  if r < p_binary + 0.1:
    return Builtin(rng.choice(list(functions.BUILTINS)), random_program(rng, depth - 1, p_binary))
  sub = (random_program(rng, depth - 1, p_binary),)
  if r < p_binary + 0.1 + (0.9 - p_binary) / 2:
    return Call(rng.choice(_NOPARAM), sub)
  name = rng.choice(_PARAM)
  if functions.FUNCTIONS[name].param == 'str':
    param = _rstr(rng, 3)
  elif name in ('repeat_str', 'loop_concat'):
    param = rng.randint(-1, 4)
  else:
    param = rng.choice([rng.randint(-4, 8), rng.randint(-100, 100)])
  return Call(name, sub, param)


FUZZ_BATCH = 4096


def _fuzz(n, capacity, p_binary, seed):
  rng = random.Random(seed)
  nodes = [random_program(rng, rng.randint(0, 6), p_binary) for _ in range(n)]
  xs = [_rstr(rng, 12) for _ in range(n)]
  compiled = [interpreter.compile_program(node) for node in nodes]
  order = sorted(range(n), key=lambda i: len(compiled[i].instrs))  # bucket by length
  pad = interpreter._Compiled((), (), 1, False)
  run = jax.jit(interpreter.execute, static_argnames=('capacity', 'stack_depth'))
  got = [None] * n
  for start in range(0, n, FUZZ_BATCH):
    chunk = order[start : start + FUZZ_BATCH]
    progs = [compiled[i] for i in chunk] + [pad] * (FUZZ_BATCH - len(chunk))
    enc = interpreter.pack_programs(
        progs, max_instructions=256, max_literals=64, literal_capacity=8
    )
    x, x_len = interpreter.encode_strings(
        [xs[i] for i in chunk] + [''] * (FUZZ_BATCH - len(chunk)), capacity
    )
    out, out_len, ovf = jax.device_get(run(enc, x, x_len, capacity=capacity, stack_depth=8))
    for j, (s, o) in enumerate(
        zip(interpreter.decode(out[: len(chunk)], out_len[: len(chunk)]), ovf)
    ):
      got[chunk[j]] = None if o else s
  bad = [
      (program.to_text(nodes[i]), xs[i], got[i], reference(nodes[i], xs[i], capacity))
      for i in range(n)
      if got[i] != reference(nodes[i], xs[i], capacity)
  ]
  assert not bad, f'{len(bad)} mismatches, e.g. {bad[:5]}'
  return sum(g is None for g in got)


def test_fuzz_100k_random_programs():
  overflowed = _fuzz(100_000, capacity=64, p_binary=0.2, seed=0)
  assert 1_000 < overflowed < 20_000  # both outcomes well exercised


def test_fuzz_binary_heavy_small_capacity():
  overflowed = _fuzz(16_384, capacity=16, p_binary=0.5, seed=1)
  assert 3_000 < overflowed < 13_000


# ------------------------------------------------------------------------------------------------
# The paper's test set (2,048 problems, levels 1-8)
# ------------------------------------------------------------------------------------------------


def test_paper_test_set_at_capacity_4096():
  from compfn.tasks.strings import generator

  problems = generator.generate(stage=2, split='test', min_level=1, max_level=8, num=2048)
  assert len(problems) == 2048
  got = interpreter.execute_batch(
      [p.code for p in problems], [p.input for p in problems], capacity=4096
  )
  bad = [(p.code, p.input) for p, g in zip(problems, got) if g != p.output]
  assert not bad, f'{len(bad)} mismatches, e.g. {bad[:3]}'


def test_step_kernels_one_by_one():
  """The interpreter's step, kernel by kernel (compfn.tasks.strings.interpreter: _fetch,
  _index_map, _char_map, _push, _write) on hand-made rows."""
  import jax.numpy as jnp
  from compfn.tasks.strings import interpreter

  C, S = 8, 3
  pos = jnp.arange(C, dtype=jnp.int32)[None, :]
  # _fetch: a plain CONCAT reads left = second, right = top; the swapped one the other way.
  ops = jnp.array([[interpreter.OP_CONCAT], [interpreter.OP_CONCAT]], jnp.int32)
  args = jnp.array([[0], [1]], jnp.int32)
  ins = interpreter._fetch(ops, args, jnp.zeros_like(ops), 0, jnp.array([2, 2], jnp.int32), S)
  assert ins.iu.tolist() == [0, 1] and ins.iv.tolist() == [1, 0] and ins.is_bin.all()
  # _index_map: reverse 'abc' -> idx 2,1,0; concat 'ab' + 'xyz': the tail comes from v.
  u = jnp.array([[97, 98, 99, 0, 0, 0, 0, 0], [97, 98, 0, 0, 0, 0, 0, 0]], jnp.int32)
  n, m = jnp.array([3, 2], jnp.int32), jnp.array([0, 3], jnp.int32)
  op = jnp.array([interpreter.OP_REVERSE, interpreter.OP_CONCAT], jnp.int32)
  z = jnp.zeros((2, C), jnp.int32)
  heavy = interpreter._Heavy(z, n, z, n, jnp.zeros(2, bool), z)
  idx, src, const, new_len = interpreter._index_map(
      op, jnp.zeros(2, jnp.int32), u, n, m, pos, C, heavy
  )
  assert idx[0, :3].tolist() == [2, 1, 0] and new_len.tolist() == [3, 5]
  assert src[1, :5].tolist() == [0, 0, 1, 1, 1] and idx[1, :5].tolist() == [0, 1, 0, 1, 2]
  # _char_map: upper-case a row, leave a non-letter alone.
  val = jnp.array([[97, 49, 122, 0, 0, 0, 0, 0]], jnp.int32)
  got = interpreter._char_map(
      jnp.array([interpreter.OP_UPPER]), jnp.zeros(1, jnp.int32), val, pos, val
  )
  assert got[0, :3].tolist() == [65, 49, 90]
  # _push: PUSH_X takes the input and its length.
  v, ln = interpreter._push(
      jnp.array([interpreter.OP_PUSH_X]),
      val,
      jnp.array([0]),
      val + 1,
      jnp.array([3]),
      val,
      jnp.array([0]),
  )
  assert v[0, 0] == 98 and ln.tolist() == [3]
  # _write: a value longer than C sets overflow; a push onto a full stack too.
  ins = interpreter._Instruction(
      *(jnp.array([x]) for x in (interpreter.OP_DUPLICATE, 0, 0, False, False, False, 0, 0))
  )
  stack, lens = jnp.zeros((1, S, C), jnp.int32), jnp.zeros((1, S), jnp.int32)
  _, _, sp, ovf = interpreter._write(
      ins,
      stack,
      lens,
      jnp.array([1]),
      jnp.array([False]),
      jnp.arange(1),
      val,
      jnp.array([C + 1]),
      pos,
      S,
      C,
  )
  assert sp.tolist() == [1] and ovf.tolist() == [True]
  push = ins._replace(op=jnp.array([interpreter.OP_PUSH_X]), is_push=jnp.array([True]))
  _, _, sp, ovf = interpreter._write(
      push,
      stack,
      lens,
      jnp.array([S]),
      jnp.array([False]),
      jnp.arange(1),
      val,
      jnp.array([2]),
      pos,
      S,
      C,
  )
  assert ovf.tolist() == [True]
