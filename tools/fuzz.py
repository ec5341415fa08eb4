#!/usr/bin/env python
"""Fuzz every on-device (JAX) implementation against its Python reference (issue #12).

    python tools/fuzz.py [--targets interpreter,json_scorer,trace_scorer,countdown|all]
                         [--cases N] [--seed S] [--batch B] [--out FILE.json]
    python tools/fuzz.py --targets T --seed S --replay BATCH:INDEX [--batch B]

Targets (device side vs reference side):

* ``interpreter``: ``verifier.execute_batch(codes, inputs, capacity=4096)`` vs
  ``program.run_code`` plus the interpreter's documented capacity rule (every value put on the
  stack — x when read, a literal, a str parameter, an intermediate, the result — must fit: else
  the case must come back ``None``, flagged, never a silently wrong string) and its documented
  rejections (a character outside the device domain: ``ValueError``; a rotation outside int32:
  ``ProgramError``). Programs: ``generator.generate`` in paper and clean modes, stages 1 and 2,
  levels 1-8 (their stage-2 or stage-1 code text), and adversarial random programs over all 25
  functions, the builtins, concatenation and literals (extreme parameters, binary-heavy trees).
  Inputs: the generator's own, empty, long (around every capacity rung and beyond 4096),
  non-letters, whitespace, controls, quotes, in-domain Unicode (symbols, astral characters, lone
  surrogates) and, rarely, out-of-domain characters.
* ``json_scorer``: ``verifier.score_batch(responses, refs, overlong)`` vs ``scoring.score``:
  valid / invalid JSON, nesting up to and past the depth limit, escapes, ``\\u`` escapes,
  surrogate pairs and lone surrogates, Python literals, fences (closed, unclosed, several),
  ``\\boxed{`` and the other fallbacks, integers around the 4300-digit limit, invalid UTF-8 bytes,
  the overlong flag, refs with quotes, backslashes, controls and non-ASCII.
* ``trace_scorer``: ``verifier.score_batch(..., fmt='trace')`` vs ``scoring.score_trace``.
* ``countdown``: the jitted ``countdown.verifier.score`` (reasoning-gym shaping, so invalid,
  wrong and correct differ) vs ``countdown.scoring.score_answer`` on reasoning-gym problems and
  random ones, with random and mutated expressions, malformed answers and tags, division by
  zero, wrong / repeated / foreign numbers, caps, Unicode look-alikes and invalid UTF-8.

**Reproducibility.** Case ``i`` of batch ``b`` is drawn from its own
``random.Random(f'compfn-fuzz:{target}:{seed}:{b}:{i}')``, so ``(target, seed, b, i)`` names it
whatever ``--cases`` is. A mismatch prints one line with the reproduce command;
``--replay b:i`` re-runs that case alone and inside its batch (regenerated; pass the same
``--batch`` if it was not the default) and prints it in full. Exit status 1 on any mismatch.

**Fixed shapes.** Each target runs fixed-size batches (``--batch``, default per target) and pads
every device call, so the jitted functions compile once per shape: the scorers use per-target
*lanes* of fixed (rows, response bytes, ref bytes) — a short lane for most cases, longer ones for
the few long responses (a long row costs many short ones) — and the interpreter pads each batch
to ``--batch`` programs and adds an anchor program that pins the static program sizes
(``execute_batch``'s capacity ladder picks its rung batch sizes from the batch: with full batches
these are its maxima, one shape per rung). The device call of a batch runs in a worker thread
while the main thread computes the references. ``--compile-cache`` (on by default) keeps the
compiled shapes on disk, so a rerun or a ``--replay`` loads them instead of compiling again.
A reference or device call that raises gives the outcome ``['exception', message]``.

Output (``--out``): per target the cases run, mismatches (with replay commands), seconds, cases/s,
the steady-state rate (batches after the first, which compiles), the projected time for 10^6
cases, the outcome histogram (that the corpus is not vacuous), machine and JAX version.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import pathlib
import platform
import random
import string
import sys
import time
from fractions import Fraction
from typing import Any, NamedTuple, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TARGET_NAMES = ('interpreter', 'json_scorer', 'trace_scorer', 'countdown')
MAX_PRINTED = 1000  # mismatch lines printed per target (all are counted and saved)
SHOW_CHARS = 400  # characters of each input field on a mismatch line


# ==================================================================================================
# Shared helpers
# ==================================================================================================


def case_rng(target: str, seed: int, batch: int, index: int) -> random.Random:
  """The generator of one case: depends on (target, seed, batch, index) only."""
  return random.Random(f'compfn-fuzz:{target}:{seed}:{batch}:{index}')


def _short(value: Any, limit: int = SHOW_CHARS) -> str:
  text = repr(value)
  return text if len(text) <= limit else f'{text[:limit]}...<{len(text)} chars>'


def _utf8_len(resp) -> int:
  return len(resp) if isinstance(resp, (bytes, bytearray)) else len(resp.encode('utf-8'))


def _as_text(resp) -> str:
  return resp.decode('utf-8', errors='replace') if isinstance(resp, (bytes, bytearray)) else resp


def _inject_invalid_utf8(rng: random.Random, text: str) -> bytes:
  """``text`` as UTF-8 with 1-3 ill-formed sequences inserted (never inside a valid character)."""
  b = text.encode('utf-8')
  for _ in range(rng.randint(1, 3)):
    where = rng.random()
    if where < 0.3:
      i = len(b)  # the end: drop-the-last-character rules
    elif where < 0.55 and b'"' in b:
      i = rng.choice([k for k in range(len(b)) if b[k : k + 1] == b'"']) + 1  # inside a string
    else:
      i = rng.randrange(len(b) + 1)
      while i < len(b) and 0x80 <= b[i] <= 0xBF:
        i += 1
    b = b[:i] + rng.choice(INVALID_UTF8) + b[i:]
  return b


INVALID_UTF8 = [
    b'\x80',
    b'\xbf',
    b'\xc0',
    b'\xc1\xbf',
    b'\xc3',
    b'\xe2\x80',
    b'\xe0\x80',
    b'\xed\xa0\x80',
    b'\xed\xb0\x80',
    b'\xf0\x9f\x98',
    b'\xf4\x90\x80\x80',
    b'\xf5',
    b'\xff',
    b'\xfe',
    b'\xf0\x9f',
    b'\xe2',
    b'\xef\xbf\xbd',
    b'\xc3\x28',
    b'\xf8\x88\x80\x80\x80',
]
UNICODE_WS = [
    '\u3000',
    '\u2003',
    '\u2000',
    '\u200a',
    '\x85',
    '\xa0',
    '\x1c',
    '\x1d',
    '\x1e',
    '\x1f',
    '\u2028',
    '\u2029',
    '\u202f',
    '\u205f',
    '\u1680',
    '\x0b',
    '\x0c',
    ' ',
    '\t',
    '\r',
    '\n',
    '\u200b',
    '\ufeff',
]


class Lane(NamedTuple):
  """One fixed device shape: responses of at most ``width`` bytes (refs of at most ``ref_width``
  bytes), ``rows`` rows per call (a power of two)."""

  width: int
  rows: int
  ref_width: int = 0


def _split_lanes(sizes: Sequence[tuple[int, int]], lanes: Sequence[Lane]) -> list[list[int]]:
  """Case indices per lane: the first lane that fits (response bytes, ref bytes)."""
  out: list[list[int]] = [[] for _ in lanes]
  for i, (n, r) in enumerate(sizes):
    for k, lane in enumerate(lanes):
      if n <= lane.width and r <= lane.ref_width:
        out[k].append(i)
        break
    else:
      raise ValueError(
          f'case {i} ({n} response bytes, {r} ref bytes) fits no lane: the case '
          f'generator must stay within the last lane'
      )
  return out


# ==================================================================================================
# Targets
# ==================================================================================================


class Target:
  """A device implementation and its reference.

  Subclasses define ``case(rng)`` (one random case), ``reference(case)`` and
  ``device(cases, size)`` (outcomes, JSON-able and comparable with ==), ``show(case)`` (the input
  fields) and ``category(outcome)`` (histogram key). ``batch`` is the default batch size."""

  name = ''
  batch = 512

  def case(self, rng: random.Random):
    raise NotImplementedError

  def reference(self, case):
    raise NotImplementedError

  def device(self, cases: list, size: int) -> list:
    """Device outcomes of ``cases`` (at most ``size``, the run's batch size)."""
    raise NotImplementedError

  def show(self, case) -> dict:
    raise NotImplementedError

  def category(self, outcome) -> str:
    return str(outcome)


# --------------------------------------------------------------------------------------------------
# interpreter
# --------------------------------------------------------------------------------------------------

_LOWER = string.ascii_lowercase
_DOMAIN_SYMBOLS = '«»€→…─│¡¿§©°±×÷•™✓😀𝄞'  # non-ASCII, inside the device domain
_LONE_SURROGATES = '\ud83d\udc00\udfff\ud800'
_OUT_OF_DOMAIN = 'éßİΣσ²①ⓐⅰ\xa0\x85\u2028中ǅÀ١'
_CONTROLS = '\x00\x01\x07\x7f\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f'
_INPUT_MIX = (
    string.ascii_letters
    + string.digits
    + string.punctuation
    + '     '
    + _CONTROLS
    + _DOMAIN_SYMBOLS
    + _LONE_SURROGATES
)
_VOWELISH = 'aeiouAEIOUaeiouxyzXY1 '
# literal characters: printable in the task syntax (no quote, backslash or line break) and
# parseable by Python's tokenizer
_LITERAL_CHARS = (
    string.ascii_letters + string.digits + ' -_|.,;:!?#$%&*+=<>@^~`()[]{}"\t' + '«»€→…§×😀'
)
_LONG_LENGTHS = (
    60,
    63,
    64,
    65,
    70,
    250,
    255,
    256,
    257,
    1000,
    1023,
    1024,
    1025,
    2048,
    4000,
    4095,
    4096,
    4097,
    4200,
    5000,
)


def in_device_domain(ch: str) -> bool:
  """The interpreter's documented character domain (compfn.tasks.strings.interpreter)."""
  if ord(ch) < 128 or ch in '«»':
    return True
  return (
      ch.lower() == ch == ch.upper() and not ch.isalpha() and not ch.isdigit() and not ch.isspace()
  )


class _Overflow(Exception):
  pass


class Interpreter(Target):
  """``execute_batch`` vs ``run_code`` with the capacity rule and the documented rejections."""

  name = 'interpreter'
  batch = 2048
  capacity = 4096
  # while_rotate / loop_concat with a count above this are evaluated by their closed form in the
  # reference (the reference functions loop count times)
  _LOOP_LIMIT = 20_000
  #: the anchor program has this many literals and at least this many instructions (so
  #: execute_batch's literal table is >= 32 and its instruction array >= 128 wide)
  ANCHOR_LITERALS = 17
  ANCHOR_INSTRUCTIONS = 65

  def __init__(self):
    from compfn.tasks.strings import functions as functions_lib
    from compfn.tasks.strings import generator as generator_lib
    from compfn.tasks.strings import interpreter as interpreter_lib
    from compfn.tasks.strings import program as program_lib
    from compfn.tasks.strings import prompts
    from compfn.tasks.strings import verifier

    self.functions_lib, self.generator_lib = functions_lib, generator_lib
    self.interpreter_lib, self.program_lib = interpreter_lib, program_lib
    self.prompts, self.verifier = prompts, verifier
    self.noparam = [n for n, s in functions_lib.FUNCTIONS.items() if s.kind == 'noparam']
    self.param = [n for n, s in functions_lib.FUNCTIONS.items() if s.kind == 'param']
    self.binary = [n for n, s in functions_lib.FUNCTIONS.items() if s.kind == 'binary']
    self.anchor = self._anchor_code()

  # ---- cases ------------------------------------------------------------------------------------
  def _literal(self, rng, lo=0, hi=6) -> str:
    return ''.join(
        rng.choice(_LITERAL_CHARS) if rng.random() < 0.4 else rng.choice(_LOWER)
        for _ in range(rng.randint(lo, hi))
    )

  def _int_param(self, rng, name):
    r = rng.random()
    if name in ('repeat_str', 'loop_concat'):
      if r < 0.85:
        return rng.randint(-2, 5)
      return rng.choice([16, 100, 1000, 4096, 4097, 10**6, 2**31 - 1, 10**12])
    if name == 'rotate_str':
      if r < 0.7:
        return rng.randint(-8, 16)
      return rng.choice([-1000, 997, 4095, 4096, 10**9, -(2**31), 2**31 - 1])
    if name == 'while_rotate':
      if r < 0.8:
        return rng.randint(-3, 12)
      return rng.choice([-(10**12), 63, 64, 257, 1001, 4097, 10**9, 2**31 - 1])
    if name == 'shift_chars':
      if r < 0.8:
        return rng.randint(-30, 30)
      return rng.choice([52, -52, 10**12 + 3, -(10**15) - 1, 2**40])
    if r < 0.8:  # backchain_add_digit / _palindrome
      return rng.randint(-2, 4)
    return rng.choice([10**9, -(10**9), 2**63])

  def _random_program(self, rng, depth, p_bin):
    program_lib, functions_lib = self.program_lib, self.functions_lib
    if depth == 0 or rng.random() < 0.08:
      return program_lib.Var() if rng.random() < 0.6 else program_lib.Lit(self._literal(rng))
    r = rng.random()
    sub = lambda: self._random_program(rng, depth - 1, p_bin)  # noqa: E731
    if r < p_bin / 2:
      return program_lib.Concat(sub(), sub())
    if r < p_bin:
      return program_lib.Call(rng.choice(self.binary), (sub(), sub()))
    if r < p_bin + 0.08:
      return program_lib.Builtin(rng.choice(list(functions_lib.BUILTINS)), sub())
    if r < p_bin + 0.08 + (0.92 - p_bin) * 0.55:
      return program_lib.Call(rng.choice(self.noparam), (sub(),))
    name = rng.choice(self.param)
    if functions_lib.FUNCTIONS[name].param == 'str':
      return program_lib.Call(name, (sub(),), self._literal(rng, 0, 4))
    return program_lib.Call(name, (sub(),), self._int_param(rng, name))

  def _input(self, rng) -> str:
    r = rng.random()
    if r < 0.06:
      return ''
    if r < 0.10:
      return rng.choice(['a', 'Z', '7', ' ', '\t', '«', '😀', '\x00', "'", '"', '\\', 'aa', 'ab'])
    if r < 0.34:
      return ''.join(rng.choices(_LOWER, k=rng.randint(3, 10)))
    if r < 0.56:
      return ''.join(rng.choices(_INPUT_MIX, k=rng.randint(1, 24)))
    if r < 0.64:
      return ''.join(rng.choices(_VOWELISH, k=rng.randint(1, 16)))
    if r < 0.71:  # words and whitespace runs
      words = [
          ''.join(rng.choices(_LOWER + 'AB1«', k=rng.randint(1, 5)))
          for _ in range(rng.randint(1, 5))
      ]
      seps = [
          ''.join(rng.choices(' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f', k=rng.randint(1, 3)))
          for _ in range(len(words) + 1)
      ]
      out = ''.join(s + w for s, w in zip(seps, words))
      return out + seps[-1] if rng.random() < 0.5 else out
    if r < 0.77:  # runs and palindromes
      s = ''.join(c * rng.randint(1, 4) for c in rng.choices('aabB1 «', k=rng.randint(1, 6)))
      return s + s[::-1] if rng.random() < 0.5 else s
    if r < 0.93:  # long: around every capacity rung
      n = rng.choice(_LONG_LENGTHS) + rng.randint(-2, 2)
      unit = ''.join(rng.choices(_INPUT_MIX if rng.random() < 0.5 else _LOWER, k=rng.randint(1, 9)))
      return (unit * (n // len(unit) + 1))[: max(n, 0)]
    if r < 0.97:
      return ''.join(rng.choices(_DOMAIN_SYMBOLS + _LONE_SURROGATES + 'ab', k=rng.randint(1, 8)))
    s = ''.join(rng.choices(_LOWER, k=rng.randint(0, 8)))  # outside the domain: rejected
    i = rng.randint(0, len(s))
    return s[:i] + rng.choice(_OUT_OF_DOMAIN) + s[i:]

  def case(self, rng):
    program_lib, generator_lib = self.program_lib, self.generator_lib
    r = rng.random()
    if r < 0.4:  # the generator's own problems
      mode = 'paper' if rng.random() < 0.6 else 'clean'
      stage, split = rng.choice([(1, 'train'), (2, 'train'), (2, 'test')])
      if mode == 'clean' and split == 'test' and rng.random() < 0.7:
        split = 'train'  # clean test is 10x slower to draw
      level = rng.randint(1, 8)
      p = generator_lib.generate(
          stage, split, level, level, 1, seed=rng.randrange(2**31), mode=mode
      )[0]
      code = p.code
      if stage == 1 and rng.random() < 0.3:
        code = self.prompts.stage1_code(p.program)  # definitions, then main_solution
      x = p.input if rng.random() < 0.5 else self._input(rng)
      return self._finish(code, x, f'{mode}:s{stage}:{split}:L{level}')
    p_bin = rng.choice([0.1, 0.2, 0.2, 0.35, 0.5])
    depth = rng.randint(0, 5 if p_bin >= 0.35 else 8)
    node = self._random_program(rng, depth, p_bin)
    source = f'random:d{depth}:b{p_bin}'
    k = rng.random()
    if k < 0.01:  # a literal outside the domain
      node = program_lib.Concat(node, program_lib.Lit('q' + rng.choice(_OUT_OF_DOMAIN)))
      source += ':bad_literal'
    elif k < 0.02:  # a rotation that does not fit int32
      fn, v = rng.choice(
          [
              ('rotate_str', 2**31),
              ('rotate_str', -(2**31) - 1),
              ('while_rotate', 2**31),
              ('rotate_str', 10**12),
          ]
      )
      node = program_lib.Call(fn, (node,), v)
      source += ':int32'
    code = program_lib.to_code(node)
    if rng.random() < 0.1:
      code = program_lib.to_text(node)  # a bare expression is accepted too
    return self._finish(code, self._input(rng), source)

  def _finish(self, code: str, x: str, source: str) -> dict:
    # The code is parsed here, on the main thread, before the device call starts: CPython 3.11's
    # ast.parse is not safe in two threads at once ("AST constructor recursion depth mismatch"),
    # and execute_batch parses in the device thread while the references are computed.
    return dict(code=code, input=x, source=source, node=self.program_lib.parse_code(code))

  def _anchor_code(self) -> str:
    """A padding program that pins execute_batch's static sizes (instructions, stack, literals)
    at or above what almost every batch needs, so batches share compilations."""
    program_lib = self.program_lib

    node = program_lib.Call(
        'loop_filter_nonalpha', (program_lib.Lit('00'),)
    )  # every value is '': cheap
    for k in range(1, self.ANCHOR_LITERALS):  # a left comb: stack depth 2
      node = program_lib.Call(
          'interlace_str',
          (node, program_lib.Call('loop_filter_nonalpha', (program_lib.Lit(f'{k:02d}'),))),
      )
    while len(self.interpreter_lib.compile_program(node).instrs) < self.ANCHOR_INSTRUCTIONS:
      node = program_lib.Call('verify_even_length', (node,))
    return program_lib.to_code(node)

  # ---- reference --------------------------------------------------------------------------------
  def _rejection(self, node, x: str) -> Optional[str]:
    """The exception class execute_batch must raise for this case (None: it must run)."""
    program_lib = self.program_lib
    found = []

    def walk(n):
      if isinstance(n, program_lib.Lit):
        if not all(map(in_device_domain, n.value)):
          found.append('ValueError')
      elif isinstance(n, program_lib.Concat):
        walk(n.left)
        walk(n.right)
      elif isinstance(n, program_lib.Builtin):
        walk(n.sub)
      elif isinstance(n, program_lib.Call):
        for a in n.args:
          walk(a)
        if isinstance(n.param, str) and not all(map(in_device_domain, n.param)):
          found.append('ValueError')
        if n.fn == 'rotate_str' and not -(2**31) <= n.param <= 2**31 - 1:
          found.append('ProgramError')
        if n.fn == 'while_rotate' and n.param > 2**31 - 1:
          found.append('ProgramError')

    walk(node)
    if found:
      return found[0]
    if not all(map(in_device_domain, x)):
      return 'ValueError'
    return None

  def _capped(self, node, x: str) -> tuple[Optional[str], bool]:
    """program.run's evaluation with the capacity rule: (value, or None if some value on the
    stack exceeds the capacity; whether plain run_code is cheap enough to call)."""
    program_lib, functions_lib, cap = self.program_lib, self.functions_lib, self.capacity
    cheap = [True]

    def chk(s):
      if len(s) > cap:
        raise _Overflow
      return s

    def ev(n):
      if isinstance(n, program_lib.Var):
        return chk(x)
      if isinstance(n, program_lib.Lit):
        return chk(n.value)
      if isinstance(n, program_lib.Concat):
        return chk(ev(n.left) + ev(n.right))
      if isinstance(n, program_lib.Builtin):
        return chk(functions_lib.BUILTINS[n.op](ev(n.sub)))
      args = [ev(a) for a in n.args]
      if isinstance(n.param, str):
        chk(n.param)
      if n.fn in ('repeat_str', 'loop_concat'):
        count = max(n.param, 0)
        if len(args[0]) * count > cap:
          raise _Overflow  # without building a huge string
        if count > self._LOOP_LIMIT:  # then args[0] == ''
          cheap[0] = False
          return ''
      if n.fn == 'while_rotate' and n.param > self._LOOP_LIMIT and args[0]:
        cheap[0] = False
        return chk(functions_lib.rotate_str(args[0], n.param))  # its closed form (documented twin)
      if n.param is not None:
        args.append(n.param)
      return chk(functions_lib.FUNCTIONS[n.fn].fn(*args))

    try:
      return ev(node), cheap[0]
    except _Overflow:
      return None, cheap[0]

  def reference(self, case):
    node = case['node']  # P.parse_code(case['code'])
    error = self._rejection(node, case['input'])
    if error is not None:
      return ['error', error]
    value, cheap = self._capped(node, case['input'])
    if value is None:
      return ['overflow']
    if cheap:  # = P.run_code(code, x), parsed earlier
      value = self.program_lib.run(node, case['input'])
    return ['ok', value]

  # ---- device -----------------------------------------------------------------------------------
  def device(self, cases, size):
    interpreter_lib = self.interpreter_lib
    out: list = [None] * len(cases)
    run = []
    for i, c in enumerate(cases):
      try:  # execute_batch's own host-side checks
        interpreter_lib.compile_program(c['node'])  # (parsed on the main thread)
        interpreter_lib.check_domain(c['input'], 'input')
        run.append(i)
      except ValueError:  # ProgramError is a ValueError too
        try:
          got = self.verifier.execute_batch([c['code']], [c['input']], capacity=self.capacity)
          out[i] = ['overflow'] if got[0] is None else ['ok', got[0]]
        except ValueError as e:
          out[i] = ['error', type(e).__name__]
    pad = max(size - len(run) - 1, 0)  # a fixed batch: stable shapes
    codes = [cases[i]['code'] for i in run] + [self.anchor] + ['x'] * pad
    inputs = [cases[i]['input'] for i in run] + [''] + [''] * pad
    got = self.verifier.execute_batch(codes, inputs, capacity=self.capacity)
    for j, i in enumerate(run):
      out[i] = ['overflow'] if got[j] is None else ['ok', got[j]]
    return out

  def show(self, case):
    return {'code': case['code'], 'input': case['input'], 'source': case['source']}

  def category(self, outcome):
    return outcome[0] if outcome[0] != 'error' else f'error:{outcome[1]}'


# --------------------------------------------------------------------------------------------------
# json_scorer
# --------------------------------------------------------------------------------------------------

_REF_CHARS = string.ascii_lowercase * 3 + string.ascii_uppercase + string.digits + '«»-_|'
_REF_EXTRA = '"\\/{}()[]:,\'é😀\t\n\r\x00\x01\x1f\x7f中 ;=`\u2028\x85'
_PROSE = [
    'Let me think.',
    'The function reverses x.',
    'So the result is',
    'Therefore:',
    'We get «ab».',
    'Step 1: func_3(x)',
    '$x^2$',
    'f(x) = (x + 1)',
    'True or False? None.',
    'output',
    '"output"',
    'json',
    'Answer:',
]
_TRICKY_PROSE = [
    'set {a, b}',
    'use \\{ and \\}',
    'a } stray',
    'a { stray',
    '\\left( x \\right)',
    '"quoted {text}"',
    'backslash \\\\ pair',
    '```python\nprint(1)\n```',
    '```',
    '\\boxed{x}',
    '{"output": 1}',
    '\\boxed\\{',
    '```json',
    '{}',
    '(True)',
]
_MUTATIONS = list('{}[]()":,\\ \t\r\n`\'') + [
    '\\{',
    '\\}',
    '```',
    '```json',
    '\\boxed{',
    'True',
    'None',
    'False',
    '\\left',
    '\\right',
    '\\\\',
    '\u3000',
    '\x85',
    '«',
    '»',
    'é',
    '😀',
    '\x00',
    '-',
    '.',
    'e',
    '0',
    'u',
    '\\u',
    '\\ud83d',
    '"output"',
    'null',
    'NaN',
]


class JsonScorer(Target):
  """``verifier.score_batch`` (fmt='json') vs ``scoring.score``."""

  name = 'json_scorer'
  batch = 2048
  fmt = 'json'
  lanes = (
      Lane(width=256, rows=512, ref_width=64),
      Lane(width=2048, rows=128, ref_width=512),
      Lane(width=8192, rows=64, ref_width=512),
  )

  def __init__(self):
    from compfn.tasks.strings import scoring
    from compfn.tasks.strings import verifier

    self.scoring, self.verifier = scoring, verifier

  # ---- cases ------------------------------------------------------------------------------------
  def _ref(self, rng, p: Optional[float] = None) -> str:
    k = rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20])
    if rng.random() < 0.02:
      k = rng.randint(30, 120)  # long refs (the long lane)
    p = rng.choice([0.0, 0.05, 0.15, 0.4]) if p is None else p
    return ''.join(
        rng.choice(_REF_EXTRA) if rng.random() < p else rng.choice(_REF_CHARS) for _ in range(k)
    )

  def _json_str(self, rng, s: str) -> str:
    """A JSON (or almost-JSON) string literal for s."""
    mode = rng.randrange(6)
    if mode == 0:
      return json.dumps(s)
    if mode == 1:
      return json.dumps(s, ensure_ascii=False)
    if mode == 2 and rng.random() < 0.3:
      return "'" + s + "'"  # Python quoting: not JSON
    out = []
    for ch in s:
      cp = ord(ch)
      r = rng.random()
      if ch in '"\\':
        out.append('\\' + ch if r < 0.8 else '\\u%04x' % cp)
      elif cp < 0x20:
        out.append(json.dumps(ch)[1:-1] if r < 0.8 else '\\u%04X' % cp)
      elif r < 0.3:
        if cp >= 0x10000:
          v = cp - 0x10000
          hi, lo = 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)
          out.append(rng.choice(['\\u%04x\\u%04X', '\\u%04X\\u%04x', '\\u%04x\\u%04x']) % (hi, lo))
        else:
          out.append(rng.choice(['\\u%04x', '\\u%04X']) % cp)
      elif ch == '/' and r < 0.6:
        out.append('\\/')
      else:
        out.append(ch)
    body = ''.join(out)
    if mode >= 4 and rng.random() < 0.15:  # a bad escape, a surrogate, a control
      i = rng.randrange(len(body) + 1)
      body = (
          body[:i]
          + rng.choice(
              [
                  '\\x41',
                  '\\u12',
                  '\\uZZZZ',
                  '\\ud83d',
                  '\\ude00',
                  '\\udbff',
                  '\\ud83d\\ud83d\\ude00',
                  '\\ud800\\u0041',
                  '\\ud83d\\n',
                  '\t',
                  '\r',
                  '\x01',
                  '\x1f',
                  '\\',
                  '\\a',
                  '\\U0001F600',
                  '\\u0000',
                  '\\u00e9',
                  '\\uDFFF\\uD800',
              ]
          )
          + body[i:]
      )
    return '"' + body + '"'

  def _sep(self, rng) -> str:
    if rng.random() < 0.01:  # not JSON whitespace
      return rng.choice(['\x0b', '\xa0', '\x0c', '\u3000'])
    return rng.choice(['', ' ', ' ', '\n', '\t', '\r\n', '  ', ' \n ', '\r'])

  def _scalar(self, rng, ref) -> str:
    r = rng.random()
    if r < 0.94:
      return rng.choice(
          [
              '1',
              '-0.5e-3',
              '123',
              '0',
              '-0',
              '1E+9',
              '2e-5',
              'null',
              'true',
              'false',
              'NaN',
              'Infinity',
              '-Infinity',
              '[]',
              '{}',
              '"x"',
              '[1, 2]',
              json.dumps([ref]),
              '{"v": %s}' % json.dumps(ref),
              '{"output": %s}' % json.dumps(ref),
              '[[], [{}]]',
              '""',
          ]
      )
    if r < 0.997:  # not JSON, or braces inside strings
      return rng.choice(
          [
              'True',
              'False',
              'None',
              '1.',
              '01',
              '-',
              "'abc'",
              '(1, 2)',
              '[1, (2)]',
              '"a}b"',
              '"{"',
              '"}{"',
              '"\\{"',
              'nul',
              'Nan',
              '-Infinit',
              '-NaN',
              '.5',
              '+1',
              '1e',
              '[1,]',
              'tru',
              '1.5.2',
              '0x10',
              '--1',
              '1e+',
              'infinity',
              '{"a" 1}',
              '[,]',
          ]
      )
    return rng.choice(
        [
            '7' * 4300,
            '-' + '7' * 4300,
            '7' * 4301,
            '-' + '7' * 4301,
            '7' * 4301 + '.5',
            '7' * 4301 + 'e3',
            '7' * 4301 + '.',
            '0' + '7' * 4300,
        ]
    )

  def _value(self, rng, ref) -> str:
    r = rng.random()
    if r < 0.55:
      return self._json_str(rng, ref)
    if r < 0.7:
      wrong = ref + rng.choice(['x', ' ', '!', '\\']) if rng.random() < 0.5 else ref[::-1] + 'q'
      return self._json_str(rng, wrong)
    if r < 0.78:
      return '(' + self._json_str(rng, ref) + ')'
    return self._scalar(rng, ref)

  def _key(self, rng) -> str:
    return rng.choice(
        ['"output"'] * 100
        + [
            '"outp\\u0075t"',
            '"\\u006Futput"',
            '"Output"',
            '"output "',
            "'output'",
            'output',
            '"out\\nput"',
            '"\\u006f\\u0075\\u0074\\u0070\\u0075\\u0074"',
            '"outputs"',
            '"outpu"',
            '"output\\u0000"',
            '""',
        ]
    )

  def _object(self, rng, ref, depth=0) -> str:
    members = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
      k = json.dumps(rng.choice(['a', 'note', 'x', 'result', 'output', 'é', '']))
      if depth < 3 and rng.random() < 0.2:
        v = self._object(rng, ref, depth + 1)
      else:
        v = (
            self._scalar(rng, ref)
            if rng.random() < 0.6
            else self._json_str(rng, self._ref(rng, 0.03))
        )
      members.append(k + self._sep(rng) + ':' + self._sep(rng) + v)
    if rng.random() < 0.93:
      members.insert(
          rng.randrange(len(members) + 1),
          self._key(rng) + self._sep(rng) + ':' + self._sep(rng) + self._value(rng, ref),
      )
      if rng.random() < 0.12:  # duplicate "output": the last one wins
        members.insert(
            rng.randrange(len(members) + 1), '"output":' + self._sep(rng) + self._value(rng, ref)
        )
    if rng.random() < 0.05:
      opener = rng.choice(['[', '{"a":'])
      nest = rng.choice([10, 100, 254, 255, 256, 257, 400])
      inner = rng.choice(['', '1', '{}', '"s"'])
      closer = ']' if opener == '[' else '}'
      members.append('"deep": ' + opener * nest + (inner if opener == '[' else '1') + closer * nest)
    body = (',' + self._sep(rng)).join(members)
    if rng.random() < 0.04:
      body += ','
    return '{' + self._sep(rng) + body + self._sep(rng) + '}'

  def _prose(self, rng, k=None) -> str:
    k = rng.randrange(0, 4) if k is None else k
    return ' '.join(rng.choice(_TRICKY_PROSE if rng.random() < 0.15 else _PROSE) for _ in range(k))

  def _boxify(self, rng, obj) -> str:
    body = obj.replace('{', '\\{').replace('}', '\\}') if rng.random() < 0.8 else obj
    if rng.random() < 0.3:
      body = '\\left' + body + '\\right'
    if rng.random() < 0.2:
      body = body.replace('\\', '\\\\')
    if rng.random() < 0.1:
      body = body.replace('\\left', '\\le\\leftft')
    return (
        rng.choice(['\\boxed{', '\\boxed{', '\\boxed\\{', '$\\boxed{'])
        + body
        + rng.choice(['}', '}', '\\}', '', '}$', '} }'])
    )

  def _mutate(self, rng, s: str) -> str:
    for _ in range(rng.randrange(1, 4)):
      i = rng.randrange(len(s) + 1)
      op = rng.random()
      if op < 0.4:
        s = s[:i] + rng.choice(_MUTATIONS) + s[i:]
      elif op < 0.7:
        s = s[:i] + s[i + 1 :]
      else:
        s = s[:i] + rng.choice(_MUTATIONS) + s[i + 1 :]
    return s

  def _response(self, rng, ref) -> str:
    obj = self._object(rng, ref)
    # the long kinds (9-11) are rare: a case over 2048 bytes costs ~10x a short one on device
    kind = rng.choices(range(13), weights=[14, 14, 8, 10, 10, 7, 6, 8, 5, 2, 3, 2, 4])[0]
    ws = lambda: ''.join(rng.choice(UNICODE_WS) for _ in range(rng.randrange(3)))  # noqa: E731
    if kind == 0:
      return self._prose(rng) + rng.choice([' ', '', '\n']) + obj + ' ' + self._prose(rng)
    if kind == 1:
      return (
          self._prose(rng)
          + '\n```json'
          + ws()
          + obj
          + ws()
          + '```'
          + rng.choice(['', '\n', '```'])
          + self._prose(rng)
      )
    if kind == 2:  # unclosed fence: the last character
      return (
          self._prose(rng)
          + '```json\n'
          + obj
          + rng.choice(['', '\n', ' ', 'é', '😀', '}', 'x', '  ', '\u3000', '\ufffd', '`', '``'])
      )
    if kind == 3:  # several objects / fences
      parts = [self._object(rng, ref) for _ in range(rng.randrange(2, 4))]
      fenced = [('```json\n' + p + '\n```' if rng.random() < 0.3 else p) for p in parts]
      return (' ' + self._prose(rng, 1) + ' ').join(fenced)
    if kind == 4:
      return self._prose(rng) + ' ' + self._boxify(rng, obj) + rng.choice(['', '$', '.', ' }'])
    if kind == 5:  # a fence that fails, then a boxed answer
      return (
          '```json\n'
          + rng.choice(['null', '{}', '[1, x]', "{'output': 1}", obj, 'false', '[]', '"s"'])
          + '\n```\n'
          + self._boxify(rng, obj)
      )
    if kind == 6:
      return obj.replace('{', '\\{').replace('}', '\\}')
    if kind == 7:  # parentheses and Python literals
      return (
          self._prose(rng)
          + obj.replace('[', '(').replace(']', ')')
          + rng.choice([' (done)', '', ' {x}', ' True'])
      )
    if kind == 8:
      return rng.choice(
          [
              '',
              ' ',
              '```json',
              '```json\n',
              '{}',
              '{',
              '}',
              '\\boxed{',
              'null',
              '```json null ```',
              '```json\n\u3000\n```',
              '{"output"}',
              '\\boxed{}',
              '```json\n```',
              '{"output": "',
              '\\boxed{\\{\\}}',
              '{{}}',
              '}{',
          ]
      )
    if kind == 9:  # long prose
      words = rng.randrange(40, 120) if rng.random() < 0.85 else rng.randrange(120, 400)
      return ' '.join(rng.choice(_PROSE) for _ in range(words)) + obj
    if kind == 10:  # deep nesting, an error before it or not
      opener = rng.choice(['[', '[', '{"k":'])
      nest = rng.choice([50, 254, 255, 256, 257, 300, 600] * 3 + [1500, 3000] * (opener == '['))
      pre = rng.choice(['', '-', '1 ', 'x', '"', '{"a": '])
      closer = ']' if opener == '[' else '}'
      return (
          '```json\n['
          + pre
          + opener * nest
          + closer * rng.choice([0, nest])
          + ']\n```'
          + rng.choice(['', self._boxify(rng, obj)])
      )
    if kind == 11:  # big integers in the different passes
      big = '7' * rng.choice([4299, 4300, 4300, 4301, 4301, 4302])
      sign = rng.choice(['', '-'])
      return rng.choice(
          [
              '```json\n[%s%s, x]\n```',
              '```json\n[True, %s%s]\n```',
              '```json\n[x, %s%s]\n```',
              '{"output": %s%s}',
              '```json\n%s%s',
              '{"output": "abc", "n": %s%s}',
              '\\boxed{\\{"n": %s%s\\}}',
              '{"n": %s%s.5, "output": 1}',
          ]
      ) % (sign, big) + rng.choice(['', self._boxify(rng, obj)])
    return obj  # the bare object

  def case(self, rng):
    while True:  # deterministic: redraw until it fits
      c = self._draw(rng)
      if (
          _utf8_len(c['response']) <= self.lanes[-1].width
          and len(c['ref'].encode('utf-8')) <= self.lanes[-1].ref_width
      ):
        return c

  def _draw(self, rng):
    ref = self._ref(rng)
    resp = self._response(rng, ref)
    if rng.random() < 0.2:
      resp = self._mutate(rng, resp)
    if rng.random() < 0.04:
      ref = rng.choice(['', '"', '\\', '\\\\', '"output"', '{}', 'True', 'null', ref])
    if rng.random() < 0.18:
      resp = _inject_invalid_utf8(rng, resp)
    return dict(response=resp, ref=ref, overlong=rng.random() < 0.03)

  # ---- reference / device -----------------------------------------------------------------------
  def reference(self, case):
    return list(
        self.scoring.score(_as_text(case['response']), case['ref'], overlong=case['overlong'])
    )

  def device(self, cases, size):
    sizes = [(_utf8_len(c['response']), len(c['ref'].encode('utf-8'))) for c in cases]
    out: list = [None] * len(cases)
    for lane, idx in zip(self.lanes, _split_lanes(sizes, self.lanes)):
      per_call = lane.rows - 1  # one row pins the ref width
      for lo in range(0, len(idx), per_call):
        chunk = idx[lo : lo + per_call]
        pad = lane.rows - len(chunk)
        resps = [cases[i]['response'] for i in chunk] + [''] * pad
        refs = [cases[i]['ref'] for i in chunk] + ['r' * lane.ref_width] * pad
        over = [cases[i]['overlong'] for i in chunk] + [False] * pad
        s, a = self.verifier.score_batch(
            resps, refs, overlong=over, fmt=self.fmt, min_bucket=lane.width
        )
        for j, i in enumerate(chunk):
          out[i] = [int(s[j]), int(a[j])]
    return out

  def show(self, case):
    return {'response': case['response'], 'ref': case['ref'], 'overlong': case['overlong']}


# --------------------------------------------------------------------------------------------------
# trace_scorer
# --------------------------------------------------------------------------------------------------

_TRACE_ALPHA = string.ascii_lowercase + '«»'
_TRACE_EXTRA = '-_|;=é😀 \t\n\'",()\\\u3000'


class TraceScorer(JsonScorer):
  """``verifier.score_batch(fmt='trace')`` vs ``scoring.score_trace``."""

  name = 'trace_scorer'
  batch = 1024
  fmt = 'trace'
  lanes = (Lane(width=256, rows=512, ref_width=64), Lane(width=4096, rows=32, ref_width=512))

  def _value_text(self, rng) -> str:
    k = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 10, 16])
    if rng.random() < 0.02:
      k = rng.randint(40, 120)
    p = rng.choice([0.0, 0.0, 0.05, 0.2])
    return ''.join(
        rng.choice(_TRACE_EXTRA) if rng.random() < p else rng.choice(_TRACE_ALPHA) for _ in range(k)
    )

  def _draw(self, rng):
    n_vals = rng.randint(1, 6) if rng.random() < 0.97 else rng.randint(20, 60)
    vals = [self._value_text(rng) for _ in range(n_vals)]
    steps = ''.join(
        ";func_%d('%s')=%s" % (rng.randrange(25), vals[i], vals[i + 1])
        for i in range(len(vals) - 1)
    )
    resp = rng.choice(['', '', '', 'func_3(x)=', 'Let me trace.\n']) + steps + ';' + vals[-1]
    ref = vals[-1]
    k = rng.random()
    if k < 0.12:
      resp = resp[: rng.randrange(len(resp) + 1)]  # truncated
    elif k < 0.2:
      resp = resp.replace(';', '')  # no ';'
    elif k < 0.27:
      resp = resp.replace('=', '', 1)  # a '=' missing
    elif k < 0.37:
      ref = ref + rng.choice(_TRACE_ALPHA + _TRACE_EXTRA)  # wrong by one character
    elif k < 0.42:
      ref = ref[:-1]
    elif k < 0.47:
      resp = ';' * rng.randrange(0, 4)
    elif k < 0.52:
      resp = resp + ';' * rng.randrange(1, 3)
    elif k < 0.57:
      resp = resp + rng.choice([' ', '\n', '\r\n', '.', '\u3000', '\x00'])  # trailing junk
    elif k < 0.6:
      resp = resp + ';' + ref  # the answer twice
    if rng.random() < 0.08:
      ref = rng.choice(['', ';', 'a;b', '=', ' ', '«»', ref, ref.upper()])
    if rng.random() < 0.1:
      resp = _inject_invalid_utf8(rng, resp)
    return dict(response=resp, ref=ref, overlong=rng.random() < 0.03)

  def reference(self, case):
    return list(
        self.scoring.score_trace(_as_text(case['response']), case['ref'], overlong=case['overlong'])
    )


# --------------------------------------------------------------------------------------------------
# countdown
# --------------------------------------------------------------------------------------------------

_CD_GARBAGE = [
    'x',
    '=',
    '.',
    '^',
    '**',
    '×',
    '÷',
    '−',
    '٣',
    '１',
    '\u00a0',
    '\u3000',
    'é',
    '\x00',
    '\x7f',
    ',',
    '[',
    ']',
    '{',
    '}',
    '<',
    '>',
    '</answer>',
    '<answer>',
    'answer',
    '\\',
    '"',
    "'",
    '\ufffd',
    '😀',
    'e',
    'E',
    'j',
    '%',
    '!',
    '//',
    '\t',
    '\n',
    '\r',
    '\x0b',
    '\x0c',
    ' ',
    '\x1c',
    '\x85',
    '⁄',
    '∗',
    '＋',
]
_CD_WS = ['', '', '', ' ', ' ', '  ', '\t', '\n', '\r\n', '\x0b', '\x0c']


class Countdown(Target):
  """The jitted ``countdown.verifier.score`` vs ``countdown.scoring.score_answer``."""

  name = 'countdown'
  batch = 1024
  reward = 'reasoning_gym'
  lanes = (Lane(width=256, rows=512), Lane(width=2048, rows=32))

  def __init__(self):
    import jax
    from compfn.tasks.countdown import generator
    from compfn.tasks.countdown import scoring as scoring_lib
    from compfn.tasks.countdown import verifier as countdown_verifier
    from compfn.tasks.response_bytes import encode_responses

    (
        self.countdown_generator,
        self.countdown_scoring,
        self.countdown_verifier,
        self.encode_responses,
    ) = (generator, scoring_lib, countdown_verifier, encode_responses)
    self.fn = jax.jit(functools.partial(countdown_verifier.score, reward=self.reward))

  def _expr(self, rng, nums) -> tuple[str, Optional[Fraction]]:
    """A random well-formed expression using each of nums once: (text, exact value or None)."""
    if len(nums) == 1:
      text, val = str(nums[0]), Fraction(nums[0])
    else:
      k = rng.randint(1, len(nums) - 1)
      lt, lv = self._expr(rng, nums[:k])
      rt, rv = self._expr(rng, nums[k:])
      op = rng.choice('+-*/')
      if lv is None or rv is None or (op == '/' and rv == 0):
        val = None
      else:
        val = lv + rv if op == '+' else lv - rv if op == '-' else lv * rv if op == '*' else lv / rv
      if rng.random() < 0.75:
        lt, rt = f'({lt})', f'({rt})'
      text = lt + rng.choice(_CD_WS) + op + rng.choice(_CD_WS) + rt
    r = rng.random()
    if r < 0.08:
      text, val = '-' + rng.choice(_CD_WS) + '(' + text + ')', None if val is None else -val
    elif r < 0.1:
      text = '+(' + text + ')'
    elif r < 0.13:
      text = '((' + text + '))'
    return text, val

  def _mutate(self, rng, text, nums) -> str:
    kind = rng.randrange(16)
    chars = list(text)
    if kind == 0 and chars:
      del chars[rng.randrange(len(chars))]
    elif kind == 1:
      chars.insert(rng.randint(0, len(chars)), rng.choice(_CD_GARBAGE))
    elif kind == 2:
      chars.insert(rng.randint(0, len(chars)), rng.choice('+-*/()(('))
    elif kind == 3:  # a number not given, or too long
      return text.replace(
          str(rng.choice(nums)),
          str(rng.choice([0, 1, 7, 100, 101, 9999, 10000, 123456, 99999999999])),
          1,
      )
    elif kind == 4:  # a repeated number
      return f'{text} + {rng.choice(nums)}'
    elif kind == 5:
      return text[: rng.randint(0, len(text))]  # truncated
    elif kind == 6:  # division by zero
      a = rng.choice(nums)
      return rng.choice(
          [
              f'{text} / ({a} - {a})',
              f'({text}) * 0 / 0',
              f'{text} / 0',
              f'0 / ({a} - {a}) + {text}',
              f'{text} * (1 / 0)',
          ]
      )
    elif kind == 7:  # leading zero
      return text.replace(str(rng.choice(nums)), '0' + str(rng.choice(nums)), 1)
    elif kind == 8:  # deep nesting (cap 16)
      d = rng.randint(10, 20)
      return '(' * d + text + ')' * d
    elif kind == 9:  # many unary signs
      return rng.choice(['-', '+', '- ', '+-']) * rng.randint(1, 40) + text
    elif kind == 10:  # long sums: token / operand caps
      return ' + '.join([text] + [str(rng.randint(0, 99)) for _ in range(rng.randint(1, 40))])
    elif kind == 11:  # power, implicit multiplication
      return rng.choice(
          [
              text + '**2',
              '2(' + text + ')',
              text + '(1)',
              '(' + text + ')(2)',
              text + '()',
              '()' + text,
          ]
      )
    elif kind == 12:
      return text + ' = ' + str(rng.randint(1, 999))
    elif kind == 13:  # exact rationals: near misses
      return f'{text} + 1/(9999*9999)' if rng.random() < 0.5 else f'({text}) * 9999 / 9999'
    elif kind == 14:
      return text.replace(' ', rng.choice(['\u00a0', '\u3000', '  ', '\t']))
    else:
      chars.insert(rng.randint(0, len(chars)), rng.choice(')('))
    return ''.join(chars)

  def case(self, rng):
    r = rng.random()
    expression = None
    if r < 0.3:  # reasoning-gym's own problems
      n = rng.randint(2, 6)
      p = self.countdown_generator.make_problem(
          rng.randrange(10**6), rng.randrange(10**6), self.countdown_generator.CountdownConfig(n, n)
      )
      nums, target, expression = list(p.numbers), p.target, p.expression
    else:
      nums = [
          rng.randint(0 if rng.random() < 0.05 else 1, rng.choice([10, 100, 100, 1000, 9999]))
          for _ in range(rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8]))
      ]
      target = None
    order = nums[:]
    rng.shuffle(order)
    text, val = self._expr(rng, order)
    if expression is not None and rng.random() < 0.5:
      text, val = expression, Fraction(target)
    if target is None:
      if val is not None and val.denominator == 1 and abs(val) <= 9999 and rng.random() < 0.8:
        target = int(val)
      else:
        target = rng.randint(-50, 999) if rng.random() < 0.9 else rng.choice([9999, -9999, 0])
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
      text = self._mutate(rng, text, nums)
    body = f'<answer>{rng.choice(_CD_WS)}{text}{rng.choice(_CD_WS)}</answer>'
    w = rng.randrange(22)
    if w == 0:
      resp = text
    elif w == 1:
      resp = f'<answer>{text}'
    elif w == 2:
      resp = f'<answer> 1 + 2 </answer> then {body}'
    elif w == 3:
      resp = f'{body} and later <answer> oops'
    elif w == 4:
      resp = f'{body}</answer></answer>'
    elif w == 5:
      resp = f'<answer><answer>{text}</answer>'
    elif w == 6:
      resp = rng.choice(
          [
              '<answer></answer>',
              '<answer>  \n </answer>',
              '',
              '<answer>',
              '</answer>',
              '</answer><answer>',
          ]
      )
    elif w == 7:
      resp = f'<think>{rng.choice(_CD_GARBAGE) * 3}</think>\n{body}'
    elif w == 8:
      resp = rng.choice(
          [
              f'<ANSWER>{text}</ANSWER>',
              f'< answer>{text}</answer>',
              f'<answer>{text}</ answer>',
              f'<answer >{text}</answer>',
          ]
      )
    elif w == 9:
      junk = ''.join(
          rng.choice(_CD_GARBAGE + list('0123456789+-*/() ')) for _ in range(rng.randint(0, 30))
      )
      resp = f'<answer>{junk}</answer>' if rng.random() < 0.7 else junk
    elif w == 10:  # long reasoning (the long lane)
      think = ' '.join(
          rng.choice(
              [
                  'Let me try',
                  str(rng.choice(nums)),
                  '+',
                  '*',
                  'no.',
                  '(',
                  ')',
                  '<answer>',
                  '=',
                  'hmm',
              ]
          )
          for _ in range(rng.randint(40, 250))
      )
      resp = f'<think>{think}</think>\n{body}'
    else:
      resp = f'Let me think. {body}'
    if rng.random() < 0.05:  # raw bytes, possibly invalid UTF-8
      b = bytearray(resp.encode('utf-8'))
      for _ in range(rng.randint(1, 3)):
        b.insert(
            rng.randint(0, len(b)),
            rng.choice([0xFF, 0xC3, 0xE2, 0x80, 0xF0, 0xED, 0xA0, 0x0B, 0xC2]),
        )
      resp = bytes(b)
    return dict(response=resp, numbers=nums, target=target, overlong=rng.random() < 0.02)

  def reference(self, case):
    v = self.countdown_scoring.score_answer(
        _as_text(case['response']),
        case['numbers'],
        case['target'],
        overlong=case['overlong'],
        reward=self.reward,
    )
    return [round(float(v.score), 6), int(v.acc)]

  def device(self, cases, size):
    countdown_verifier = self.countdown_verifier
    enc, over = self.encode_responses(
        [c['response'] for c in cases], [c['overlong'] for c in cases]
    )
    nums, lens, tgts = countdown_verifier.encode_problems(
        [c['numbers'] for c in cases], [c['target'] for c in cases]
    )
    out: list = [None] * len(cases)
    lanes = _split_lanes([(len(b), 0) for b in enc], self.lanes)
    for lane, idx in zip(self.lanes, lanes):
      for lo in range(0, len(idx), lane.rows):
        chunk = idx[lo : lo + lane.rows]
        resp = np.zeros((lane.rows, lane.width), np.int32)
        rl = np.zeros(lane.rows, np.int32)
        ol = np.zeros(lane.rows, bool)
        bn = np.zeros((lane.rows, nums.shape[1]), np.int32)
        bl = np.ones(lane.rows, np.int32)
        bt = np.zeros(lane.rows, np.int32)
        for j, i in enumerate(chunk):
          resp[j, : len(enc[i])] = np.frombuffer(enc[i], np.uint8)
          rl[j], ol[j] = len(enc[i]), bool(over[i])
        bn[: len(chunk)], bl[: len(chunk)], bt[: len(chunk)] = nums[chunk], lens[chunk], tgts[chunk]
        s, a = self.fn(resp, rl, bn, bl, bt, ol)
        s, a = np.asarray(s), np.asarray(a)
        for j, i in enumerate(chunk):
          out[i] = [round(float(s[j]), 6), int(a[j])]
    return out

  def show(self, case):
    return {
        'response': case['response'],
        'numbers': case['numbers'],
        'target': case['target'],
        'overlong': case['overlong'],
    }

  def category(self, outcome):
    return {1.0: 'correct', 0.05: 'wrong', 0.01: 'invalid'}.get(outcome[0], str(outcome))


TARGETS = {
    'interpreter': Interpreter,
    'json_scorer': JsonScorer,
    'trace_scorer': TraceScorer,
    'countdown': Countdown,
}
_INSTANCES: dict[str, Target] = {}


def get_target(name: str) -> Target:
  if name not in _INSTANCES:
    _INSTANCES[name] = TARGETS[name]()
  return _INSTANCES[name]


# ==================================================================================================
# Running
# ==================================================================================================


def machine_info() -> dict:
  import jax

  return {
      'processor': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'backend': jax.default_backend(),
  }


DEFAULT_CACHE = os.environ.get(
    'COMPFN_XLA_CACHE', str(pathlib.Path.home() / '.cache' / 'compfn' / 'xla')
)


def enable_compile_cache(path: str) -> None:
  """Turn on JAX's persistent compilation cache (before the first compilation)."""
  import jax

  pathlib.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def replay_command(
    target: str, seed: int, batch: int, index: int, batch_size: int, default_batch: int
) -> str:
  cmd = f'python tools/fuzz.py --targets {target} --seed {seed} --replay {batch}:{index}'
  if batch_size != default_batch:
    cmd += f' --batch {batch_size}'
  return cmd


def make_batch(target: Target, seed: int, b: int, size: int) -> list:
  return [target.case(case_rng(target.name, seed, b, i)) for i in range(size)]


def _exception(e: BaseException) -> list:
  return ['exception', f'{type(e).__name__}: {e}']


def _guarded(fn, *args):
  try:
    return fn(*args)
  except Exception as e:  # noqa: BLE001
    return _exception(e)


def _jsonable(x):
  if isinstance(x, (bytes, bytearray)):
    return repr(bytes(x))
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x


def fuzz_target(
    name: str,
    cases: int,
    seed: int,
    batch: Optional[int] = None,
    progress: bool = True,
    printer=print,
) -> dict:
  """Run one target on ``cases`` cases; returns its result record (see the module docstring)."""
  from tqdm.auto import tqdm

  target = get_target(name)
  size = batch or target.batch
  n_batches = math.ceil(cases / size)
  mismatches = []
  hist: dict[str, int] = {}
  times = []
  gen_s = ref_s = dev_s = 0.0
  start = time.perf_counter()
  bar = tqdm(total=cases, desc=name, unit='case', disable=not progress, file=sys.stderr)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    for b in range(n_batches):
      t0 = time.perf_counter()
      k = min(size, cases - b * size)
      batch_cases = make_batch(target, seed, b, k)
      t1 = time.perf_counter()

      def run_device(items=batch_cases):
        t = time.perf_counter()
        return target.device(items, size), time.perf_counter() - t

      future = pool.submit(run_device)
      want = [_guarded(target.reference, c) for c in batch_cases]
      t2 = time.perf_counter()
      try:
        got, dt = future.result()
      except Exception as e:  # noqa: BLE001  (reported per case, with the replay commands)
        got, dt = [_exception(e)] * k, time.perf_counter() - t2
      gen_s, ref_s, dev_s = gen_s + t1 - t0, ref_s + t2 - t1, dev_s + dt
      for i, (w, g) in enumerate(zip(want, got)):
        cat = 'exception' if w[0] == 'exception' else target.category(w)
        hist[cat] = hist.get(cat, 0) + 1
        if w != g:
          cmd = replay_command(name, seed, b, i, size, target.batch)
          rec = {
              'batch': b,
              'index': i,
              'replay': cmd,
              'input': _jsonable(target.show(batch_cases[i])),
              'device': _jsonable(g),
              'reference': _jsonable(w),
          }
          mismatches.append(rec)
          if len(mismatches) <= MAX_PRINTED:
            shown = ' '.join(f'{k}={_short(v)}' for k, v in target.show(batch_cases[i]).items())
            printer(
                f'MISMATCH {name} {b}:{i} | {cmd} | {shown} | device={_short(g)} '
                f'reference={_short(w)}'
            )
      times.append(time.perf_counter() - t0)
      bar.update(k)
      bar.set_postfix(mismatches=len(mismatches))
  bar.close()
  if len(mismatches) > MAX_PRINTED:
    printer(f'... {len(mismatches) - MAX_PRINTED} more {name} mismatches (all in --out)')
  seconds = time.perf_counter() - start
  steady_cases = cases - min(size, cases)
  steady_s = sum(times[1:])
  steady = steady_cases / steady_s if steady_cases and steady_s > 0 else None
  first = times[0] if times else 0.0
  projected = first + (1e6 - min(size, cases)) / steady if steady else None
  info = machine_info()
  return {
      'target': name,
      'cases': cases,
      'seed': seed,
      'batch': size,
      'batches': n_batches,
      'mismatches': len(mismatches),
      'seconds': round(seconds, 3),
      'cases_per_s': round(cases / seconds, 1) if seconds > 0 else None,
      'first_batch_seconds': round(first, 3),
      'steady_cases_per_s': round(steady, 1) if steady else None,
      'projected_seconds_1e6': round(projected, 1) if projected else None,
      'generate_seconds': round(gen_s, 3),
      'reference_seconds': round(ref_s, 3),
      'device_seconds': round(dev_s, 3),
      'outcomes': dict(sorted(hist.items())),
      'machine': {'processor': info['processor'], 'cpu_count': info['cpu_count']},
      'jax': info['jax'],
      'mismatch_cases': mismatches,
  }


def replay(
    name: str, seed: int, b: int, i: int, batch: Optional[int] = None, printer=print
) -> bool:
  """Re-run case (b, i) alone and inside its regenerated batch; print it in full. Returns
  whether the device agreed with the reference both times."""
  target = get_target(name)
  size = batch or target.batch
  if not 0 <= i < size:
    raise ValueError(f'index {i} is outside a batch of {size} cases')
  case = target.case(case_rng(name, seed, b, i))
  want = _guarded(target.reference, case)
  alone = _guarded(lambda: target.device([case], size)[0])
  batch_cases = make_batch(target, seed, b, size)
  in_batch = _guarded(lambda: target.device(batch_cases, size)[i])
  printer(f'target: {name}  seed: {seed}  case: {b}:{i}  (batch size {size})')
  for k, v in target.show(case).items():
    printer(f'input {k}: {v!r}')
  printer(f'reference: {want!r}')
  printer(f'device (alone): {alone!r}')
  printer(f'device (in its batch): {in_batch!r}')
  ok = alone == want and in_batch == want
  printer('agree' if ok else 'MISMATCH')
  return ok


def parse_targets(text: str) -> list[str]:
  if text == 'all':
    return list(TARGET_NAMES)
  names = [t.strip() for t in text.split(',') if t.strip()]
  unknown = [t for t in names if t not in TARGETS]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
        f'unknown targets {unknown}; choose from ' f'{",".join(TARGET_NAMES)} or all'
    )
  return names


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
      '--targets',
      type=parse_targets,
      default=list(TARGET_NAMES),
      help='comma-separated targets, or all (default)',
  )
  parser.add_argument('--cases', type=int, default=20_000, help='cases per target')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--batch',
      type=int,
      default=None,
      help='cases per batch (default: per target: '
      + ', '.join(f'{n} {c.batch}' for n, c in TARGETS.items())
      + ')',
  )
  parser.add_argument('--out', type=pathlib.Path, default=None, help='write the JSON report')
  parser.add_argument(
      '--replay',
      default=None,
      metavar='BATCH:INDEX',
      help='re-run one case of the (single) target and print it in full',
  )
  parser.add_argument(
      '--compile-cache',
      default=DEFAULT_CACHE,
      metavar='DIR',
      help="JAX's persistent compilation cache (default $COMPFN_XLA_CACHE or "
      "~/.cache/compfn/xla; 'none' turns it off): a rerun or a --replay loads "
      'the compiled shapes instead of compiling them again',
  )
  parser.add_argument('--no-progress', action='store_true', help='no tqdm bars')
  args = parser.parse_args(argv)
  if args.batch is not None and args.batch < 1:
    parser.error('--batch must be >= 1')
  if args.cases < 1:
    parser.error('--cases must be >= 1')

  if args.replay is not None:
    if len(args.targets) != 1:
      parser.error('--replay needs exactly one target')
    try:
      b, i = (int(v) for v in args.replay.split(':'))
    except ValueError:
      parser.error(f'--replay expects BATCH:INDEX, got {args.replay!r}')
    size = args.batch or TARGETS[args.targets[0]].batch
    if b < 0 or not 0 <= i < size:
      parser.error(
          f'--replay {args.replay}: the index must be in 0..{size - 1} (batch size '
          f'{size}) and the batch >= 0'
      )
  if args.compile_cache and args.compile_cache != 'none':
    enable_compile_cache(args.compile_cache)
  if args.replay is not None:
    return 0 if replay(args.targets[0], args.seed, b, i, args.batch) else 1

  results = {}
  for name in args.targets:
    r = fuzz_target(name, args.cases, args.seed, args.batch, progress=not args.no_progress)
    results[name] = r
    proj, steady = r['projected_seconds_1e6'], r['steady_cases_per_s']
    print(
        f'{name}: {r["cases"]} cases, {r["mismatches"]} mismatches, {r["seconds"]:.1f} s '
        f'({r["cases_per_s"]} cases/s overall, '
        + (
            'one batch: no steady-state rate)'
            if steady is None
            else f'{steady} cases/s after the first batch; 10^6 cases ~ {proj / 60:.1f} min)'
        ),
        flush=True,
    )
  total = sum(r['mismatches'] for r in results.values())
  report = {
      'tool': 'tools/fuzz.py',
      'argv': list(sys.argv[1:] if argv is None else argv),
      'seed': args.seed,
      'mismatches': total,
      'machine': machine_info(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'targets': results,
  }
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + '\n')  # ASCII: lone surrogates
  return 1 if total else 0


if __name__ == '__main__':
  sys.exit(main())
