"""Problem generators: the paper's datasets exactly (``mode='paper'``), cleaner ones
(``mode='clean'``), and trace-format chains for small from-scratch models.

Paper mode follows spec/EXACT.md §1 call for call on CPython's Mersenne Twister, so
``generate(1, 'train', 1, 1, 50_000)`` is the paper's stage-1 problem set and
``generate(2, 'test', 1, 8, 2048)`` its level 1–8 evaluation set, record for record
(tests/test_generator.py checks digests of all five reference sets).

Clean mode fixes the weaknesses of PAPER.md §4.7, each one a field of :class:`CleanOptions`.

Level = the depth argument of the recursive expression generator (the paper's definition in
code): level 1 is ``f(x)``, ``f('abc')``, ``(x + 'abc')`` or ``(x).upper()``; deeper levels nest.
"""

from __future__ import annotations

import dataclasses
import random
import string
import zlib
from typing import Iterable, Sequence

from compfn.tasks.strings import functions as functions_lib
from compfn.tasks.strings import program as program_lib
from compfn.tasks.strings import prompts

L = string.ascii_lowercase
MAX_LEVEL = 64
INPUT_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem. ``code`` is the program as the stage-2 prompt prints it; ``prompt`` is the
  stage's prompt (stage 1: definitions visible). ``expr`` is the expression with internal names
  (the paper's dedup key)."""

  level: int
  code: str
  input: str
  output: str
  prompt: str
  expr: str
  functions: tuple[str, ...]  # func_k ids used, in id order
  stage: int
  split: str
  depends_on_input: bool

  @property
  def program(self) -> program_lib.Node:
    return program_lib.parse_code(self.code)

  @property
  def prompt_hidden(self) -> str:
    """The prompt with definitions removed (what stage-1 SFT trains on, per the paper)."""
    return prompts.forward_prompt(self.code, self.input)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['functions'] = list(self.functions)
    return d


@dataclasses.dataclass(frozen=True)
class CleanOptions:
  """Clean-mode fixes (PAPER.md §4.7). Every field can be switched off.

  drop_twins: stage-2 *train* excludes the train functions behaviourally identical to a
      held-out one (repeat_str≡loop_concat, while_rotate≡rotate_str,
      recursive_interlace≡interlace_str), so held-out skills are really held out.
  holdout_mod: problems are split by a hash of (program, input) — or of the program alone when
      it ignores x — into test-side (hash % holdout_mod == 0) and train-side; stage 1 and stage-2
      train only take train-side problems and the test split only test-side ones, so no
      (program, input) pair of the test set can occur in stage-1 or stage-2 training data.
      0 disables.
  min_input_dependent: minimum share of problems whose output depends on x (the paper has 23%
      at level 1); input-independent programs are rejected when they would push the share lower.
  max_output_len: reject problems whose output is longer (None: no cap).
  dedup: 'program_input' (dedup on the printed program and input) or 'expr' (the paper's).
  require_function: reject programs that call no custom function (``(x + 'abc')``).
  """

  drop_twins: bool = True
  holdout_mod: int = 10
  min_input_dependent: float = 0.5
  max_output_len: int | None = 256
  dedup: str = 'program_input'
  require_function: bool = True


def check_args(stage, split, min_level, max_level, num, mode):
  """Raises ValueError unless ``generate``'s arguments are valid (without generating)."""
  if stage not in (1, 2):
    raise ValueError(f'stage must be 1 or 2, got {stage!r}')
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  for name, v in (('min_level', min_level), ('max_level', max_level)):
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_LEVEL:
      raise ValueError(f'unsupported {name} {v!r}: levels are integers 1..{MAX_LEVEL}')
  if min_level > max_level:
    raise ValueError(f'min_level {min_level} > max_level {max_level}')
  levels = max_level - min_level + 1
  if not isinstance(num, int) or num < 1 or num % levels:
    raise ValueError(
        f'num={num!r} must be a positive multiple of the number of levels ' f'({levels})'
    )
  if mode not in ('paper', 'clean'):
    raise ValueError(f"mode must be 'paper' or 'clean', got {mode!r}")


class _ExprSampler:
  """The paper's ``random_expr`` (EXACT.md §1) over an active function set, building an AST.

  The order of random calls is the specification; do not reorder anything here."""

  def __init__(self, rng: random.Random, active: Sequence[str]):
    self.rng = rng
    self.no_param = [n for n in functions_lib.NO_PARAM if n in active]
    self.param = [n for n in functions_lib.PARAM if n in active]
    self.binary = (
        'interlace_str'
        if 'interlace_str' in active
        else 'recursive_interlace'
        if 'recursive_interlace' in active
        else None
    )

  def literal(self, lo, hi) -> str:
    rng = self.rng
    return ''.join(rng.choices(L, k=rng.randint(lo, hi)))

  def param_value(self, name: str):
    rng = self.rng
    if name in ('repeat_str', 'loop_concat'):
      return rng.randint(2, 4)
    if name in ('add_prefix', 'add_suffix'):
      return self.literal(2, 4)
    if name in ('rotate_str', 'while_rotate'):
      return rng.randint(1, 3)
    if name == 'shift_chars':
      return rng.randint(1, 5)
    if name == 'insert_separator':
      return rng.choice(['-', '_', '|'])
    if name in ('backchain_add_digit', 'backchain_palindrome'):
      return rng.randint(1, 3)
    raise KeyError(name)

  def expr(self, depth: int) -> program_lib.Node:
    rng = self.rng
    if depth == 0:
      if rng.random() < 0.5:
        return program_lib.Var()
      return program_lib.Lit(self.literal(3, 6))
    if rng.random() < 0.2:
      left = self.expr(depth - 1)
      right = self.expr(depth - 1)
      if rng.random() < 0.5 or self.binary is None:
        return program_lib.Concat(left, right)
      return program_lib.Call(self.binary, (left, right))
    if rng.random() < 0.02:
      op = rng.choice(list(functions_lib.BUILTINS))
      return program_lib.Builtin(op, self.expr(depth - 1))
    if rng.random() < 0.5:
      name = rng.choice(self.no_param)
      return program_lib.Call(name, (self.expr(depth - 1),))
    name = rng.choice(self.param)
    sub = self.expr(depth - 1)  # the parameter is drawn after the sub-tree
    return program_lib.Call(name, (sub,), self.param_value(name))

  def feasible_input(self, node: program_lib.Node, paper_limits: bool) -> str | None:
    rng = self.rng
    for _ in range(INPUT_ATTEMPTS):
      x = ''.join(rng.choices(L, k=rng.randint(3, 10)))
      try:
        program_lib.run(node, x, paper_recursion_limit=paper_limits)
        return x
      except program_lib.PaperRecursionError:
        continue
    return None


def _holdout_side(expr_ids: str, x: str, dep: bool, mod: int) -> bool:
  key = expr_ids + '\x00' + (x if dep else '')
  return zlib.crc32(key.encode()) % mod == 0


def iter_generate(
    stage: int,
    split: str,
    min_level: int,
    max_level: int,
    num: int,
    seed: int = 42,
    mode: str = 'paper',
    clean: CleanOptions | None = None,
):
  """Yield problems one by one (same contract as :func:`generate`)."""
  check_args(stage, split, min_level, max_level, num, mode)
  active = list(functions_lib.function_set(stage, split))
  opts = clean or CleanOptions()
  if mode == 'paper':
    rng = random.Random(seed)
  else:
    # Independent streams per (stage, split): clean sets never share the paper's early stream.
    rng = random.Random(f'compfn-clean:{seed}:{stage}:{split}')
    if opts.drop_twins and stage == 2 and split == 'train':
      active = [n for n in active if n not in functions_lib.IDENTICAL_ACROSS_SPLIT.values()]
    if opts.dedup not in ('expr', 'program_input'):
      raise ValueError(
          f"CleanOptions.dedup must be 'expr' or 'program_input', " f'got {opts.dedup!r}'
      )
  sampler = _ExprSampler(rng, active)
  per_level = num // (max_level - min_level + 1)
  seen: set = set()
  for level in range(min_level, max_level + 1):
    count = independent = 0
    while count < per_level:
      node = sampler.expr(level)
      x = sampler.feasible_input(node, paper_limits=(mode == 'paper'))
      if x is None:
        continue
      output = program_lib.run(node, x)
      expr = program_lib.to_text(node, names='internal')
      dep = program_lib.depends_on_input(node)
      if mode == 'paper':
        key = expr
      else:
        code_ids = program_lib.to_text(node)
        if opts.require_function and not program_lib.used_functions(node):
          continue
        if opts.max_output_len is not None and len(output) > opts.max_output_len:
          continue
        if opts.holdout_mod:
          test_side = _holdout_side(code_ids, x, dep, opts.holdout_mod)
          if test_side != (split == 'test'):
            continue
        if not dep and independent + 1 > (1 - opts.min_input_dependent) * per_level:
          continue
        key = expr if opts.dedup == 'expr' else (code_ids, x if dep else None)
      if key in seen:
        continue
      seen.add(key)
      independent += not dep
      count += 1
      code = program_lib.to_code(node)
      prompt_code = prompts.stage1_code(node) if stage == 1 else code
      yield Problem(
          level=level,
          code=code,
          input=x,
          output=output,
          prompt=prompts.forward_prompt(prompt_code, x),
          expr=expr,
          functions=tuple(functions_lib.FUNCTIONS[n].fid for n in program_lib.used_functions(node)),
          stage=stage,
          split=split,
          depends_on_input=dep,
      )


def generate(
    stage: int,
    split: str,
    min_level: int,
    max_level: int,
    num: int,
    seed: int = 42,
    mode: str = 'paper',
    clean: CleanOptions | None = None,
    progress: bool = False,
) -> list[Problem]:
  """Generate ``num`` problems, ``num // #levels`` per level, in level order.

  stage: 1 (all 25 functions, prompts show definitions) or 2 (hidden definitions; split 'train'
      uses the 13 train functions, 'test' the 12 held-out ones).
  mode: 'paper' reproduces the paper's generator exactly for the same arguments and seed;
      'clean' applies :class:`CleanOptions`.

  Example: ``generate(2, 'test', 1, 8, 2048)`` is the paper's held-out evaluation set.
  """
  it = iter_generate(stage, split, min_level, max_level, num, seed, mode, clean)
  if progress:
    from tqdm.auto import tqdm

    it = tqdm(it, total=num, desc=f'stage {stage} {split} L{min_level}-{max_level}', unit='problem')
  return list(it)


# ------------------------------------------------------------------------------------------------
# Trace format (small from-scratch models; spec/MINIATURE.md)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TraceProblem:
  """A chain ``f_n(...f_1(x)...)`` in the trace format: ``prompt`` ends with ``=``, ``target``
  is ``;step=value;...;answer`` (EOS appended by the tokenizer layer)."""

  level: int
  prompt: str
  target: str
  answer: str
  input: str
  functions: tuple[str, ...]
  family: str

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['functions'] = list(self.functions)
    return d


def heldout_input(x: str, mod: int = 10) -> bool:
  """Inputs with crc32(x) % mod == 0 are held out from training (MINIATURE.md)."""
  return zlib.crc32(x.encode()) % mod == 0


def _paper_param(rng: random.Random, name: str):
  return _ExprSampler(rng, ()).param_value(name)


SHORTCUTS = ('identity', 'single_call', 'identity_step')


def shortcut(
    steps: Sequence[tuple[str, str]], x: str, answer: str, single_calls: Sequence[str]
) -> str | None:
  """Why a chain can be answered without composing, or None.

  'identity': the answer is the input; 'single_call': (level >= 2) the answer equals one of
  the chain's calls applied to ``x`` alone (``single_calls[i] = f_i(x)``), so "ignoring the
  composition" scores; 'identity_step': (level >= 2) some step returns its own input, so a
  trace that skips it still scores. Example: ``func_4(func_17('ab'))`` (reverse_words of a
  one-word string is the identity) -> 'identity_step'.
  """
  if answer == x:
    return 'identity'
  if len(steps) < 2:
    return None
  if answer in single_calls:
    return 'single_call'
  prev = x
  for _, value in steps:
    if value == prev:
      return 'identity_step'
    prev = value
  return None


def _alone(call: program_lib.Call) -> program_lib.Call:
  """The call with its chain argument (the one that is not a literal) replaced by ``x``."""
  return dataclasses.replace(
      call,
      args=tuple(a if isinstance(a, program_lib.Lit) else program_lib.Var() for a in call.args),
  )


def _registry(family: str):
  from compfn.tasks.strings import generic

  if family == 'paper':
    return functions_lib.FUNCTIONS
  if family == 'generic':
    return generic.GENERIC_FUNCTIONS
  if family == 'generic_func':
    return generic.GENERIC_FUNC_ALIASES
  if family == 'generic_func_wide':
    return generic.GENERIC_FUNC_ALIASES_WIDE
  raise ValueError(
      "family must be 'paper', 'generic', 'generic_func' or 'generic_func_wide', " f'got {family!r}'
  )


def generate_trace(
    functions: Iterable[str],
    min_level: int,
    max_level: int,
    num: int,
    seed: int = 0,
    family: str = 'paper',
    input_len: tuple[int, int] = (3, 6),
    inputs: str = 'train',
    max_chars: int | None = None,
    max_attempts_factor: int = 50,
    input_mix: float = 0.0,
    input_mix_max_len: int = 16,
    drop_shortcuts: bool = False,
    stats: dict | None = None,
    input_depths: Sequence[float] | None = None,
) -> list[TraceProblem]:
  """Pure chains of ``level`` unary calls over ``functions`` in the trace format.

  family: 'paper' (functions are internal names of the 25; params from the paper's ranges;
      interlace functions take a random 3–6-letter literal as the other argument, placed first
      or second at random), 'generic' (:mod:`compfn.tasks.strings.generic`, ids ``gen_k``) or
      'generic_func' (the same behaviours under aliases ``func_25 .. func_99``).
  inputs: 'train' (crc32(x) % 10 != 0), 'heldout' (== 0) or 'any'.
  max_chars: drop problems whose prompt + target is longer (the filter rate is the caller's to
      report: the returned list is shorter only if attempts run out).
  input_mix: the probability that an input is not random letters but the output of one random
      call of ``functions`` on random letters (at most ``input_mix_max_len`` characters): the
      strings a composition hands to its outer call (upper case, digits, separators, longer
      strings), so an atomic skill is learnt on them too. Level-1 problems stay atomic.
  drop_shortcuts: skip chains a non-composing answer solves (:func:`shortcut`); the counts
      per reason go to ``stats['shortcuts']`` (``stats['made']``, ``stats['attempts']`` too).
  input_depths: instead of ``input_mix``, weights ``(w_0, w_1, ...)``: the input is random
      letters passed through ``d`` random calls of ``functions`` with probability ``w_d``, each
      intermediate at most ``input_mix_max_len`` characters — the strings the second, third,
      ... call of a chain sees. E.g. ``(0.5, 0.35, 0.15)``: half the inputs are plain letters.
  Deduplicated on the prompt. num // #levels per level.
  """
  from compfn.tasks.strings import generic

  functions = list(functions)
  registry = _registry(family)
  unknown = [f for f in functions if f not in registry]
  if unknown or not functions:
    raise ValueError(f'unknown {family} functions: {unknown or "(none given)"}')
  if inputs not in ('train', 'heldout', 'any'):
    raise ValueError(f"inputs must be 'train', 'heldout' or 'any', got {inputs!r}")
  if not 1 <= min_level <= max_level:
    raise ValueError(f'bad level range {min_level}..{max_level}')
  if not 0.0 <= input_mix <= 1.0:
    raise ValueError(f'input_mix must be in [0, 1], got {input_mix}')
  if input_depths is not None:
    input_depths = [float(w) for w in input_depths]
    if input_mix or not input_depths or min(input_depths) < 0 or sum(input_depths) <= 0:
      raise ValueError(
          f'input_depths must be non-negative weights with a positive sum, and input_mix 0; got '
          f'input_depths={input_depths}, input_mix={input_mix}'
      )
  rng = random.Random(f'compfn-trace:{seed}:{family}')
  names = lambda fn: registry[fn].fid  # noqa: E731
  run = lambda n, x: program_lib.run(n, x, registry=registry)  # noqa: E731
  stats = stats if stats is not None else {}
  stats.setdefault('shortcuts', {k: 0 for k in SHORTCUTS})
  stats.setdefault('attempts', 0)
  stats.setdefault('made', 0)

  def call(fn: str, sub: program_lib.Node) -> program_lib.Node:
    spec = registry[fn]
    if spec.kind == 'binary':
      lit = program_lib.Lit(''.join(rng.choices(L, k=rng.randint(3, 6))))
      return program_lib.Call(fn, (sub, lit) if rng.random() < 0.5 else (lit, sub))
    if spec.kind == 'param':
      if family == 'paper':
        p = _paper_param(rng, fn)
      else:
        kind, lo, hi = generic.GENERIC_PARAMS[generic.base_name(fn)]
        p = rng.randint(lo, hi) if kind == 'int' else ''.join(rng.choices(L, k=rng.randint(lo, hi)))
      return program_lib.Call(fn, (sub,), p)
    return program_lib.Call(fn, (sub,))

  def handed_over(x: str) -> str | None:
    """x through one random call, or None if the result cannot be a chain's input."""
    x = run(call(rng.choice(functions), program_lib.Var()), x)
    if not x or len(x) > input_mix_max_len or any(c in x for c in ("'", prompts.TRACE_SEP, '=')):
      return None
    return x

  def draw_input() -> str:
    while True:
      x = ''.join(rng.choices(L, k=rng.randint(*input_len)))
      if input_depths is not None:
        depth = rng.choices(range(len(input_depths)), weights=input_depths)[0]
        for _ in range(depth):
          x = handed_over(x)
          if x is None:
            break
        if x is None:
          continue
      elif input_mix and rng.random() < input_mix:
        x = run(call(rng.choice(functions), program_lib.Var()), x)
        if (
            not x
            or len(x) > input_mix_max_len
            or any(c in x for c in ("'", prompts.TRACE_SEP, '='))
        ):
          continue
      if inputs == 'any' or heldout_input(x) == (inputs == 'heldout'):
        return x

  levels = range(min_level, max_level + 1)
  per_level = num // len(levels)
  out, seen = [], set()
  for level in levels:
    made = attempts = 0
    while made < per_level and attempts < per_level * max_attempts_factor:
      attempts += 1
      stats['attempts'] += 1
      x = draw_input()
      node: program_lib.Node = program_lib.Var()
      calls = []
      for _ in range(level):
        node = call(rng.choice(functions), node)
        calls.append(node)
      prompt = prompts.trace_prompt(node, x, names)
      if prompt in seen:
        continue
      answer = run(node, x)
      steps = prompts.trace_steps(node, x, run, names)
      target = prompts.trace_target(steps, answer)
      if max_chars is not None and len(prompt) + len(target) > max_chars:
        continue
      if drop_shortcuts:
        singles = [run(_alone(c), x) for c in calls] if level >= 2 else []
        why = shortcut(steps, x, answer, singles)
        if why is not None:
          stats['shortcuts'][why] += 1
          continue
      seen.add(prompt)
      made += 1
      stats['made'] += 1
      out.append(
          TraceProblem(
              level,
              prompt,
              target,
              answer,
              x,
              tuple(registry[n].fid for n in program_lib.used_functions(node, registry)),
              family,
          )
      )
  return out
