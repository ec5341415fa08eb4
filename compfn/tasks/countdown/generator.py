"""Countdown problems, bit-identical to reasoning-gym's ``countdown`` dataset (no sympy needed).

The paper (§4.3, PAPER §2.4) made its Countdown sets with ``reasoning_gym.create_dataset(
'countdown', min_numbers=ℓ, max_numbers=ℓ, min_value=1, max_value=100, min_target=1,
max_target=999, operators=('+', '-', '*', '/'), shuffle=True, seed=42, size=...)``: 50,000
problems with 2 numbers (Stage-1 atomic data) and 512 each with 3, 4 and 5 numbers (evaluation).
This module reproduces that generator (reasoning-gym 0.1.25, ``reasoning_gym/games/countdown.py``)
call for call on CPython's ``random.Random``, so it needs neither reasoning-gym (a 345 MB install
with sympy) nor sympy. Equality is proven by ``tests/test_countdown.py`` against digests of
reasoning-gym's own output (``tests/fixtures/countdown_reference.json``).

**The generating process** (problem ``idx`` of a set with seed ``s`` uses ``Random(s + idx)``):

1. ``n = randint(min_numbers, max_numbers)`` (drawn even when the two are equal).
2. Up to 100 attempts: draw ``n`` values ``randint(min_value, max_value)``; build the left-to-right
   chain ``((v0 op1 v1) op2 v2) ...`` with ``op_i = choice(operators)``. A ``/`` divides only
   exactly: the remaining values ``v_i..v_{n-1}`` are shuffled (one ``shuffle`` call) and the
   first one dividing the current value replaces ``v_i``; if none divides, ``/`` becomes ``-``.
   Every intermediate value is therefore an integer. The attempt is kept if the chain's value
   lies in ``[min_target, max_target]``; after 100 failed attempts ``ValueError`` is raised.
3. If ``shuffle``, the numbers are shuffled (the expression keeps the pre-shuffle order).

The ``expression`` is reasoning-gym's answer string: sympy's ``str()`` of the chain built from
symbols ``x_0 .. x_{n-1}``, with the numbers substituted for the symbols. sympy reorders terms and
factors (``(x_0 + x_1)*x_2`` prints as ``x_2*(x_0 + x_1)``, ``x_0/x_1/x_2`` as
``x_0/(x_1*x_2)``); :func:`chain_template` reproduces that canonical form and printer for every
chain (a flattened ``Add`` of signed terms ordered by sympy's lex monomial order; a flattened
``Mul`` with symbols before the one possible ``Add`` factor, negative powers printed as a
denominator). The test checks it against sympy's output for all 1,364 operator sequences of 2..6
operands.

Example (the paper's own)::

    >>> p = generate(level=3, num=1)[0]
    >>> p.numbers, p.target, p.expression
    ((95, 14, 18), 99, '18 + 95 - 14')
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Iterator, Sequence

from compfn.tasks.countdown.prompts import prompt as _prompt

__all__ = [
    'CountdownConfig',
    'Problem',
    'generate',
    'iter_generate',
    'make_problem',
    'chain_template',
    'PAPER_SETS',
    'DEFAULT_SEED',
    'MAX_ATTEMPTS',
]

#: The paper's sets: number of operands -> size (seed 42).
PAPER_SETS = {2: 50_000, 3: 512, 4: 512, 5: 512}
DEFAULT_SEED = 42
#: reasoning-gym's attempt budget per problem.
MAX_ATTEMPTS = 100
_OPERATORS = ('+', '-', '*', '/')


@dataclasses.dataclass(frozen=True)
class CountdownConfig:
  """reasoning-gym's ``CountdownConfig`` fields, with the paper's values as defaults (note:
  reasoning-gym's own defaults are 4–6 numbers and targets 100–999)."""

  min_numbers: int = 3
  max_numbers: int = 3
  min_value: int = 1
  max_value: int = 100
  min_target: int = 1
  max_target: int = 999
  operators: tuple[str, ...] = _OPERATORS
  shuffle: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'operators', tuple(self.operators))
    self.validate()

  def validate(self) -> None:
    """reasoning-gym's checks (as ``ValueError`` instead of ``assert``)."""
    for k in ('min_numbers', 'max_numbers', 'min_value', 'max_value', 'min_target', 'max_target'):
      v = getattr(self, k)
      if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f'{k} must be an integer, got {v!r}')
    if self.min_numbers <= 1:
      raise ValueError('min_numbers must be greater than 1')
    if self.max_numbers < self.min_numbers:
      raise ValueError('max_numbers must be >= min_numbers')
    if self.min_value <= 0:
      raise ValueError('min_value must be positive')
    if self.max_value < self.min_value:
      raise ValueError('max_value must be >= min_value')
    if self.min_target <= 0:
      raise ValueError('min_target must be positive')
    if self.max_target < self.min_target:
      raise ValueError('max_target must be >= min_target')
    if not self.operators:
      raise ValueError('must specify at least one operator')
    if not all(op in _OPERATORS for op in self.operators):
      raise ValueError(f'invalid operator in {self.operators!r}; allowed: + - * /')


@dataclasses.dataclass(frozen=True)
class Problem:
  """One Countdown problem. ``numbers`` are in the order shown to the model (after the
  shuffle); ``expression`` is reasoning-gym's reference solution; ``level`` = number count."""

  numbers: tuple[int, ...]
  target: int
  expression: str
  index: int
  seed: int

  @property
  def level(self) -> int:
    return len(self.numbers)

  @property
  def prompt(self) -> str:
    """The paper's prompt (:func:`compfn.tasks.countdown.prompts.prompt`)."""
    return _prompt(self.numbers, self.target)

  @property
  def reference(self) -> str:
    """The paper's ground truth: ``json.dumps({"answer": target, "numbers": [...]})``, what
    :func:`compfn.tasks.countdown.scoring.score` takes as ``ref``."""
    return json.dumps({'answer': self.target, 'numbers': list(self.numbers)})


# ------------------------------------------------------------------------------------------------
# sympy's canonical form and str() of a chain x_0 op x_1 op ... (only what such chains need)
# ------------------------------------------------------------------------------------------------


class _Sym:
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name


class _Add:
  """A flattened sum: terms are (sign, _Sym | _Mul); never contains an _Add term."""

  __slots__ = ('terms',)

  def __init__(self, terms):
    self.terms = terms


class _Mul:
  """A flattened product: numerator factors (_Sym or _Add) over denominator _Syms."""

  __slots__ = ('num', 'den')

  def __init__(self, num, den):
    self.num, self.den = num, den


def _add(e, s: _Sym, sign: int):
  return _Add((e.terms if isinstance(e, _Add) else [(1, e)]) + [(sign, s)])


def _mul(e, s: _Sym, divide: bool):
  num, den = (e.num, e.den) if isinstance(e, _Mul) else ([e], [])
  return _Mul(num, den + [s]) if divide else _Mul(num + [s], den)


def _factor_key(f):
  # sympy's sort_key: Symbols (class key 2, then name) before an Add (class key 3).
  if isinstance(f, _Sym):
    return (0, f.name)
  return (1, '')


def _monomial(term) -> dict:
  """Base -> exponent of a term (sympy's ``as_terms`` cpart)."""
  if isinstance(term, _Sym):
    return {('s', term.name): 1}
  mono = {}
  for f in term.num:
    mono[('s', f.name) if isinstance(f, _Sym) else ('a', id(f))] = 1
  for f in term.den:
    mono[('s', f.name)] = -1
  return mono


def _gen_key(g):
  return (0, g[1]) if g[0] == 's' else (1, '')


def _str(e) -> str:
  if isinstance(e, _Sym):
    return e.name
  if isinstance(e, _Mul):
    num = sorted(e.num, key=_factor_key)
    a = '*'.join(f.name if isinstance(f, _Sym) else f'({_str(f)})' for f in num)
    den = sorted(e.den, key=_factor_key)
    if not den:
      return a
    if len(den) == 1:
      return f'{a}/{den[0].name}'
    return a + '/(' + '*'.join(f.name for f in den) + ')'
  # Add: terms in decreasing lex order of their exponent vectors over the sorted generators.
  monos = [_monomial(t) for _, t in e.terms]
  gens = sorted({g for m in monos for g in m}, key=_gen_key)
  if sum(g[0] == 'a' for g in gens) > 1:  # never happens for chains; sympy would compare Adds
    raise NotImplementedError('two Add generators')
  keyed = sorted(
      zip([tuple(m.get(g, 0) for g in gens) for m in monos], range(len(monos))),
      key=lambda x: tuple(-v for v in x[0]),
  )
  out = []
  for k, (_, i) in enumerate(keyed):
    sign, term = e.terms[i]
    text = _str(term)
    if k == 0:
      out.append(text if sign > 0 else '-' + text)
    else:
      out.append((' + ' if sign > 0 else ' - ') + text)
  return ''.join(out)


def chain_template(ops: str | Sequence[str]) -> str:
  """sympy's ``str()`` of ``x_0 ops[0] x_1 ops[1] ...`` (evaluated, i.e. canonicalised),
  e.g. ``chain_template('+*') == 'x_2*(x_0 + x_1)'``."""
  syms = [_Sym(f'x_{i}') for i in range(len(ops) + 1)]
  e = syms[0]
  for op, s in zip(ops, syms[1:]):
    if op in '+-':
      e = _add(e, s, 1 if op == '+' else -1)
    elif op in '*/':
      e = _mul(e, s, op == '/')
    else:
      raise ValueError(f'invalid operator {op!r}')
  return _str(e)


def _substitute(template: str, numbers: Sequence[int]) -> str:
  # reasoning-gym: replace symbol names by numbers, longest names first (stable sort).
  repl = sorted(
      ((f'x_{i}', str(v)) for i, v in enumerate(numbers)), key=lambda r: len(r[0]), reverse=True
  )
  for name, text in repl:
    template = template.replace(name, text)
  return template


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------


def _candidate(rng: random.Random, cfg: CountdownConfig, n: int):
  numbers = [rng.randint(cfg.min_value, cfg.max_value) for _ in range(n)]
  ops = []
  value = numbers[0]  # the chain's exact (always integer) value so far
  for i in range(1, n):
    op = rng.choice(cfg.operators)
    if op == '/':
      remaining = [v for v in numbers[i:] if v != 0]  # values are >= 1: all of them
      rng.shuffle(remaining)
      for div in remaining:
        if value % div == 0:
          numbers[i] = div
          break
      else:
        op = '-'
    ops.append(op)
    v = numbers[i]
    if op == '+':
      value += v
    elif op == '-':
      value -= v
    elif op == '*':
      value *= v
    else:
      value //= v  # exact by construction
  return numbers, ''.join(ops), value


def make_problem(
    index: int, seed: int = DEFAULT_SEED, config: CountdownConfig | None = None
) -> Problem:
  """Problem ``index`` of the set with ``seed`` (reasoning-gym's ``dataset[index]``)."""
  cfg = config or CountdownConfig()
  rng = random.Random(seed + index)
  n = rng.randint(cfg.min_numbers, cfg.max_numbers)
  for _ in range(MAX_ATTEMPTS):
    numbers, ops, target = _candidate(rng, cfg, n)
    if cfg.min_target <= target <= cfg.max_target:
      break
  else:
    raise ValueError(
        f'Failed to generate valid expression after {MAX_ATTEMPTS} attempts '
        f'(index {index}, seed {seed})'
    )
  expression = _substitute(chain_template(ops), numbers)
  if cfg.shuffle:
    rng.shuffle(numbers)
  return Problem(tuple(numbers), target, expression, index, seed)


def _config(level, min_numbers, max_numbers, **kw) -> CountdownConfig:
  if level is not None:
    if min_numbers is not None or max_numbers is not None:
      raise ValueError('give either level or min_numbers/max_numbers, not both')
    min_numbers = max_numbers = level
  if min_numbers is None or max_numbers is None:
    raise ValueError('give level (or both min_numbers and max_numbers)')
  return CountdownConfig(min_numbers=min_numbers, max_numbers=max_numbers, **kw)


def iter_generate(
    level: int | None = 3,
    num: int = 512,
    seed: int = DEFAULT_SEED,
    *,
    min_numbers: int | None = None,
    max_numbers: int | None = None,
    min_value: int = 1,
    max_value: int = 100,
    min_target: int = 1,
    max_target: int = 999,
    operators: Sequence[str] = _OPERATORS,
    shuffle: bool = True,
    start: int = 0,
) -> Iterator[Problem]:
  """Lazily yield problems ``start .. num-1`` (see :func:`generate`)."""
  if not isinstance(num, int) or num < 0:
    raise ValueError(f'num must be a non-negative integer, got {num!r}')
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise ValueError(f'seed must be an integer, got {seed!r}')
  cfg = _config(
      level,
      min_numbers,
      max_numbers,
      min_value=min_value,
      max_value=max_value,
      min_target=min_target,
      max_target=max_target,
      operators=tuple(operators),
      shuffle=shuffle,
  )
  for i in range(start, num):
    yield make_problem(i, seed, cfg)


def generate(
    level: int | None = 3,
    num: int = 512,
    seed: int = DEFAULT_SEED,
    *,
    min_numbers: int | None = None,
    max_numbers: int | None = None,
    min_value: int = 1,
    max_value: int = 100,
    min_target: int = 1,
    max_target: int = 999,
    operators: Sequence[str] = _OPERATORS,
    shuffle: bool = True,
) -> list[Problem]:
  """``num`` problems with ``level`` numbers each (or a count drawn from
  ``[min_numbers, max_numbers]``; pass ``level=None`` with those), as
  ``reasoning_gym.create_dataset('countdown', ..., seed=seed, size=num)`` makes them. The
  defaults are the paper's settings; the paper's sets are ``generate(ℓ, PAPER_SETS[ℓ])``."""
  return list(
      iter_generate(
          level,
          num,
          seed,
          min_numbers=min_numbers,
          max_numbers=max_numbers,
          min_value=min_value,
          max_value=max_value,
          min_target=min_target,
          max_target=max_target,
          operators=operators,
          shuffle=shuffle,
      )
  )
