"""The Countdown verifier on device (JAX), on UTF-8 bytes; same rule as the Python reference.

:mod:`compfn.tasks.countdown.scoring` states the rule. This is pure ``jax.numpy``/``lax`` code
with static shapes: jittable, ``vmap``-able, free of host callbacks, usable inside a larger jitted
function, and correct with ``jax_enable_x64`` off (int32 only).

Inputs (B = batch, T = padded response bytes, M = padded number slots)::

    resp        int32[B, T]  response as UTF-8 bytes 0..255 (anything past resp_len is ignored)
    resp_len    int32[B]     number of valid bytes (clipped to T)
    numbers     int32[B, M]  the given numbers (slots >= numbers_len are ignored)
    numbers_len int32[B]
    target      int32[B]
    overlong    bool[B]      the response hit the length limit without EOS -> invalid
    -> score int32[B] (reward='binary': 1/0) or float32[B] (reward='reasoning_gym':
       1.0/0.05/0.01), acc int32[B] in {0, 1}

:func:`verify` returns the outcome code instead (0 invalid, 1 wrong, 2 correct).

**The reference as bytes** (the task registry's device scorer): :func:`score_refs` takes
``(resp, resp_len, ref int32[B, R], ref_len int32[B], overlong)`` -- the signature of the string
tasks' scorers -- where ``ref`` is the reference's JSON text as UTF-8 bytes,
``{"numbers": [95, 14, 18], "target": 99}`` (:func:`compfn.tasks.countdown.scoring.
reference_json`, the records' form) or the paper's ``{"answer": 99, "numbers": [95, 14, 18]}``;
:func:`parse_references` reads numbers and target out of it inside the jit (masks and cumsums
over the R bytes, as for the response) and :func:`score` runs on them. So a Countdown rollout
needs nothing but the reference string in ``RolloutBatch.ref``, like every other task.

**Agreement contract.** For any bytes ``b`` and any problem in range
(:func:`compfn.tasks.countdown.scoring.check_problem`)::

    score(b, ...) == scoring.score_answer(b.decode('utf-8', errors='replace'), ...)[:2]

The rule's structure is ASCII and ASCII bytes always decode to themselves, so tags are found at
the same places; any non-ASCII byte inside the answer is an invalid character on both sides (as
its decoded character, or U+FFFD, is). A problem out of range scores as invalid here (the host
helpers and the Python reference raise ``ValueError`` instead).

**Algorithm** (per example):

1. Bytes (all O(T), masks and cumsums): window matches locate the last ``<answer>`` and the first
   ``</answer>`` after it; the answer bytes are classified (digit, operator, whitespace, other);
   literal starts, run lengths (reverse ``cummin``), values (Horner over at most 4 digits), the
   leading-zero and digit-count checks, the parenthesis depth (``cumsum``), and the token and
   literal counts are computed; tokens are compacted into a :data:`MAX_TOKENS` array and the
   literals into a :data:`MAX_OPERANDS` array by scatter at their ``cumsum`` ranks.
2. Tokens: one ``lax.scan`` over the :data:`MAX_TOKENS` slots runs a two-level
   operator-precedence machine. Each parenthesis level holds a running sum ``S``, the sign of the
   current term, a running product ``P`` of the current term, the pending ``*``/``/`` and the
   parity of pending unary minuses; ``(`` pushes the level on a :data:`MAX_DEPTH`-deep stack and
   ``)`` pops it, feeding the group's value to the parent as a factor. The same machine checks
   the grammar (expect-operand / expect-operator states, depth never below 0, ends after an
   operand at depth 0).
3. Exact arithmetic without int64: a value is kept as an *unreduced* fraction ``N/D`` (``a/b + c/d
   = (ad + bc)/bd`` etc.), stored as residues modulo :data:`PRIMES` (primes below 46341, so a
   product of two residues fits int32). For a subexpression over literals ``v_1..v_m``,
   ``|N|, |D| <= 2^(m-1) * prod(max(v_i, 1))`` (induction over the tree: sums at most double,
   products and quotients multiply). With at most :data:`MAX_OPERANDS` literals of at most
   :data:`MAX_INT_DIGITS` digits and ``|target| <= MAX_ABS_TARGET``, every number we test for zero
   (a divisor's ``N``; ``N - target * D`` at the end) has absolute value below ``prod(PRIMES) / 2``,
   so it is 0 exactly when all its residues are 0 (CRT). Division by a zero factor is therefore
   detected exactly, and ``value == target`` is decided exactly. (Answers beyond the caps are
   invalid anyway, so their residues are never trusted.)
4. The literal multiset is compared by sorting both padded arrays.

Worked example::

    >>> s, a = score_batch(['<answer>18 + 95 - 14</answer>', '<answer>(95-14)/18</answer>'],
    ...                    [[95, 14, 18], [95, 14, 18]], [99, 99])
    >>> s.tolist(), a.tolist()
    ([1, 0], [1, 0])
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compfn.buckets import next_power_of_two
from compfn.tasks.response_bytes import encode_responses
from compfn.tasks.countdown.scoring import (
    CLOSE_TAG,
    MAX_ABS_TARGET,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_OPERANDS,
    MAX_TOKENS,
    OPEN_TAG,
    REWARDS,
    WHITESPACE,
    check_problem,
    parse_reference,
)

__all__ = [
    'score',
    'score_refs',
    'parse_references',
    'verify',
    'score_batch',
    'encode_problems',
    'encode_references',
    'PRIMES',
    'INVALID',
    'WRONG',
    'CORRECT',
]

INVALID, WRONG, CORRECT = 0, 1, 2

# ------------------------------------------------------------------------------------------------
# Moduli: the largest primes below 46341 (46340^2 < 2^31), as many as the bound needs.
# ------------------------------------------------------------------------------------------------


def _primes_below(limit: int, count: int) -> tuple[int, ...]:
  out, c = [], limit - 1
  while len(out) < count:
    if c > 1 and all(c % d for d in range(2, int(c**0.5) + 1)):
      out.append(c)
    c -= 1
  return tuple(out)


def _needed_primes() -> tuple[int, ...]:
  bound = 2 ** (MAX_OPERANDS - 1) * (10**MAX_INT_DIGITS - 1) ** MAX_OPERANDS
  need = 2 * bound * (MAX_ABS_TARGET + 1)  # |N - t*D| <= bound * (1 + |t|) < P / 2
  for k in range(1, 64):
    ps = _primes_below(46341, k)
    if int(np.prod([int(p) for p in ps], dtype=object)) > need:
      return ps
  raise AssertionError('unreachable')


#: Residue moduli (9 primes for the default caps: product ~2^139 > 2 * 2^127.6).
PRIMES = _needed_primes()
assert max(PRIMES) ** 2 < 2**31
_K = len(PRIMES)

# Token codes.
_PAD, _NUM, _PLUS, _MINUS, _MUL, _DIV, _LP, _RP = range(8)
_OPEN = tuple(OPEN_TAG.encode())
_CLOSE = tuple(CLOSE_TAG.encode())
_WS = tuple(WHITESPACE.encode())
_SENTINEL = 1 << 20  # > any literal (<= 9999)


def _window(x, pat, n):
  """bool[T]: x[i:i+len(pat)] == pat and i + len(pat) <= n."""
  t = x.shape[0]
  xp = jnp.concatenate([x, jnp.full((len(pat),), -1, x.dtype)])
  hit = jnp.ones((t,), bool)
  for k, c in enumerate(pat):
    hit = hit & (xp[k : k + t] == c)
  return hit & (jnp.arange(t) + len(pat) <= n)


# ------------------------------------------------------------------------------------------------
# Residue arithmetic (int32 vectors of length K).
# ------------------------------------------------------------------------------------------------
def _p():
  return jnp.asarray(PRIMES, jnp.int32)


def _mul(a, b):
  return (a * b) % _p()


def _add(a, b):
  return (a + b) % _p()


def _neg(a):
  return (_p() - a) % _p()


def _iszero(a):
  return jnp.all(a == 0)


# ------------------------------------------------------------------------------------------------
# The token machine.
# ------------------------------------------------------------------------------------------------
# Level state: (SN, SD, PN, PD) int32[K] each; sneg (current term subtracted), div (pending '/'),
# neg (odd number of pending unary minuses) bool.


def _fresh_level():
  zero = jnp.zeros((_K,), jnp.int32)
  one = jnp.ones((_K,), jnp.int32)
  f = jnp.zeros((), bool)
  return (zero, one, one, one, f, f, f)


def _apply_factor(level, fn, fd):
  """Multiply (or divide, if '/' is pending) the current term by the factor fn/fd, negated if an
  odd number of unary minuses is pending. Returns (new level, division by zero)."""
  sn, sd, pn, pd, sneg, div, neg = level
  fn = jnp.where(neg, _neg(fn), fn)
  pn2 = jnp.where(div, _mul(pn, fd), _mul(pn, fn))
  pd2 = jnp.where(div, _mul(pd, fn), _mul(pd, fd))
  f = jnp.zeros((), bool)
  return (sn, sd, pn2, pd2, sneg, f, f), div & _iszero(fn)


def _close_term(level):
  """S + (-1)^sneg * P as (N, D)."""
  sn, sd, pn, pd, sneg, _, _ = level
  t = _mul(pn, sd)
  return _add(_mul(sn, pd), jnp.where(sneg, _neg(t), t)), _mul(sd, pd)


def _select(c, a, b):
  return jax.tree_util.tree_map(lambda u, v: jnp.where(c, u, v), a, b)


def _step(carry, tok):
  level, stack, depth, expect, err, dz = carry
  kind, val = tok
  one = jnp.ones((_K,), jnp.int32)
  is_num, is_lp, is_rp = kind == _NUM, kind == _LP, kind == _RP
  is_pm = (kind == _PLUS) | (kind == _MINUS)
  is_md = (kind == _MUL) | (kind == _DIV)

  # NUM (expecting an operand): apply as a factor.
  lit = jnp.remainder(val, _p()).astype(jnp.int32)
  num_level, num_dz = _apply_factor(level, lit, one)

  # '+'/'-': unary when expecting an operand, else close the term.
  unary_level = level[:6] + (level[6] ^ (kind == _MINUS),)
  sn, sd = _close_term(level)
  f = jnp.zeros((), bool)
  binary_level = (sn, sd, one, one, kind == _MINUS, f, f)

  # '*'/'/': set the pending operator.
  md_level = level[:5] + (kind == _DIV, level[6])

  # '(': push the level, start a fresh one.
  slot = jnp.clip(depth, 0, MAX_DEPTH - 1)
  pushed = jax.tree_util.tree_map(lambda s, v: s.at[slot].set(v), stack, level)

  # ')': the group's value becomes a factor of the parent level.
  gn, gd = _close_term(level)
  parent = jax.tree_util.tree_map(lambda s: s[jnp.clip(depth - 1, 0, MAX_DEPTH - 1)], stack)
  rp_level, rp_dz = _apply_factor(parent, gn, gd)

  new_level = _select(is_num & expect, num_level, level)
  new_level = _select(is_pm & expect, unary_level, new_level)
  new_level = _select(is_pm & ~expect, binary_level, new_level)
  new_level = _select(is_md & ~expect, md_level, new_level)
  new_level = _select(is_lp & expect, _fresh_level(), new_level)
  rp_ok = is_rp & ~expect & (depth > 0)
  new_level = _select(rp_ok, rp_level, new_level)
  new_stack = _select(is_lp & expect & (depth < MAX_DEPTH), pushed, stack)

  bad = (
      (is_num & ~expect)
      | (is_md & expect)
      | (is_lp & ~expect)
      | (is_rp & expect)
      | (is_rp & ~expect & (depth <= 0))
  )
  new_depth = depth + jnp.where(is_lp & expect, 1, 0) - jnp.where(rp_ok, 1, 0)
  new_expect = jnp.where(is_num | is_rp, False, jnp.where(is_pm | is_md | is_lp, True, expect))
  new_dz = dz | (is_num & expect & num_dz) | (rp_ok & rp_dz)
  return (new_level, new_stack, new_depth, new_expect, err | bad, new_dz), None


def _run_tokens(kinds, vals):
  """(value N, value D, syntax error, division by zero) of a token sequence."""
  level = _fresh_level()
  stack = jax.tree_util.tree_map(lambda v: jnp.zeros((MAX_DEPTH,) + v.shape, v.dtype), level)
  carry = (
      level,
      stack,
      jnp.zeros((), jnp.int32),
      jnp.ones((), bool),
      jnp.zeros((), bool),
      jnp.zeros((), bool),
  )
  (level, _, depth, expect, err, dz), _ = lax.scan(_step, carry, (kinds, vals))
  n, d = _close_term(level)
  return n, d, err | expect | (depth != 0), dz


# ------------------------------------------------------------------------------------------------
# Per example.
# ------------------------------------------------------------------------------------------------
def _verify_one(resp, resp_len, numbers, numbers_len, target):
  t = resp.shape[0]
  pos = jnp.arange(t)
  n = jnp.clip(resp_len, 0, t).astype(jnp.int32)
  x = jnp.where(pos < n, resp.astype(jnp.int32), -1)

  # 1. The answer span: last '<answer>', first '</answer>' after it.
  last_open = jnp.max(jnp.where(_window(x, _OPEN, n), pos, -1))
  cs = last_open + len(_OPEN)
  close_hit = _window(x, _CLOSE, n) & (pos >= cs)
  ce = jnp.min(jnp.where(close_hit, pos, t))
  found = (last_open >= 0) & (ce < t)
  inc = found & (pos >= cs) & (pos < ce)

  # 2. Classes, literals, tokens.
  digit = inc & (x >= 48) & (x <= 57)
  kind_of = jnp.select(
      [x == ord('+'), x == ord('-'), x == ord('*'), x == ord('/'), x == ord('('), x == ord(')')],
      [_PLUS, _MINUS, _MUL, _DIV, _LP, _RP],
      _PAD,
  )
  opch = inc & (kind_of != _PAD)
  ws = jnp.zeros((t,), bool)
  for c in _WS:
    ws = ws | (x == c)
  bad_char = jnp.any(inc & ~digit & ~opch & ~ws)

  prev_digit = jnp.concatenate([jnp.zeros((1,), bool), digit[:-1]])
  num_start = digit & ~prev_digit
  run_end = lax.cummin(jnp.where(digit, t, pos), axis=0, reverse=True)
  run_len = run_end - pos
  value = jnp.zeros((t,), jnp.int32)
  for k in range(MAX_INT_DIGITS):
    dk = x[jnp.clip(pos + k, 0, t - 1)] - 48
    value = jnp.where(k < run_len, value * 10 + dk, value)
  long_num = jnp.any(num_start & (run_len > MAX_INT_DIGITS))
  lead_zero = jnp.any(num_start & (x == 48) & (run_len > 1))

  tok_start = opch | num_start
  n_tok = jnp.sum(tok_start)
  n_lit = jnp.sum(num_start)
  depth_run = jnp.cumsum(
      jnp.where(inc & (kind_of == _LP), 1, 0) - jnp.where(inc & (kind_of == _RP), 1, 0)
  )
  too_deep = jnp.max(depth_run, initial=0) > MAX_DEPTH

  rank = jnp.cumsum(tok_start) - 1
  slot = jnp.where(tok_start & (rank < MAX_TOKENS), rank, MAX_TOKENS)
  kinds = (
      jnp.zeros((MAX_TOKENS,), jnp.int32)
      .at[slot]
      .set(jnp.where(num_start, _NUM, kind_of), mode='drop')
  )
  vals = jnp.zeros((MAX_TOKENS,), jnp.int32).at[slot].set(value, mode='drop')
  lrank = jnp.cumsum(num_start) - 1
  lslot = jnp.where(num_start & (lrank < MAX_OPERANDS), lrank, MAX_OPERANDS)
  lits = jnp.full((MAX_OPERANDS,), _SENTINEL, jnp.int32).at[lslot].set(value, mode='drop')

  # 3. Grammar and exact value.
  vn, vd, syntax_err, div_zero = _run_tokens(kinds, vals)

  # The problem (invalid if out of the verifier's range).
  m = numbers.shape[0]
  given = numbers.astype(jnp.int32)
  if m < MAX_OPERANDS:
    given = jnp.concatenate([given, jnp.full((MAX_OPERANDS - m,), _SENTINEL, jnp.int32)])
  given = given[:MAX_OPERANDS]
  g_used = jnp.arange(MAX_OPERANDS) < numbers_len
  given = jnp.where(g_used, given, _SENTINEL)
  problem_ok = (
      (numbers_len >= 1)
      & (numbers_len <= min(m, MAX_OPERANDS))
      & jnp.all(~g_used | ((given >= 0) & (given <= MAX_ABS_TARGET)))
      & (jnp.abs(target) <= MAX_ABS_TARGET)
  )

  valid = (
      found
      & ~bad_char
      & ~long_num
      & ~lead_zero
      & (n_tok > 0)
      & (n_tok <= MAX_TOKENS)
      & (n_lit <= MAX_OPERANDS)
      & ~too_deep
      & ~syntax_err
      & ~div_zero
      & problem_ok
  )
  same_numbers = (n_lit == numbers_len) & jnp.all(jnp.sort(lits) == jnp.sort(given))
  tgt = jnp.remainder(target.astype(jnp.int32), _p()).astype(jnp.int32)
  hits = _iszero((vn - _mul(tgt, vd)) % _p())
  return jnp.where(valid, jnp.where(same_numbers & hits, CORRECT, WRONG), INVALID).astype(jnp.int32)


def verify(resp, resp_len, numbers, numbers_len, target, overlong):
  """Outcome codes int32[B]: 0 invalid, 1 wrong (valid expression, wrong numbers or value),
  2 correct. Shapes as :func:`score`."""
  code = jax.vmap(_verify_one)(resp, resp_len, numbers, numbers_len, target)
  return jnp.where(overlong, INVALID, code).astype(jnp.int32)


def score(resp, resp_len, numbers, numbers_len, target, overlong, reward: str = 'binary'):
  """The Countdown reward on bytes (see the module docstring).

  Args:
    resp: int32[B, T] response UTF-8 bytes (0..255), padded.
    resp_len: int32[B] valid bytes per response.
    numbers: int32[B, M] the given numbers, padded.
    numbers_len: int32[B].
    target: int32[B].
    overlong: bool[B] (True: invalid).
    reward: 'binary' (int32 1/0) or 'reasoning_gym' (float32 1.0/0.05/0.01); static.
  Returns:
    (score int32[B] or float32[B], acc int32[B] in {0, 1}).
  """
  if reward not in REWARDS:
    raise ValueError(f'reward must be one of {sorted(REWARDS)}, got {reward!r}')
  code = verify(resp, resp_len, numbers, numbers_len, target, overlong)
  good, wrong, bad = REWARDS[reward]
  dtype = jnp.int32 if reward == 'binary' else jnp.float32
  table = jnp.asarray([bad, wrong, good], dtype)
  return table[code], (code == CORRECT).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# The reference as bytes: the device-scorer form (the registry's ``device_score``).
# ------------------------------------------------------------------------------------------------
_NUMBERS_KEY = tuple(b'"numbers"')
_TARGET_KEYS = (tuple(b'"target"'), tuple(b'"answer"'))
_JSON_WS = tuple(b' \t\n\r')


def _parse_reference_one(ref, ref_len):
  """(numbers int32[M], numbers_len, target, ok) from one reference's JSON bytes."""
  m = ref.shape[0]
  pos = jnp.arange(m)
  n = jnp.clip(ref_len, 0, m).astype(jnp.int32)
  x = jnp.where(pos < n, ref.astype(jnp.int32), -1)
  at = lambda i: x[jnp.clip(i, 0, m - 1)]  # noqa: E731
  digit = (x >= 48) & (x <= 57)
  ws = jnp.zeros((m,), bool)
  for c in _JSON_WS:
    ws = ws | (x == c)
  colon, comma = x == ord(':'), x == ord(',')
  run_len = lax.cummin(jnp.where(digit, m, pos), axis=0, reverse=True) - pos
  value = jnp.zeros((m,), jnp.int32)
  for k in range(MAX_INT_DIGITS):
    value = jnp.where(k < run_len, value * 10 + at(pos + k) - 48, value)
  lit_start = digit & ~jnp.concatenate([jnp.zeros((1,), bool), digit[:-1]])

  def value_start(hit, key_len):
    # The first byte after the first key hit that is neither whitespace nor the ':'; the gap
    # must hold exactly one ':'.
    k = jnp.min(jnp.where(hit, pos, m))
    after = pos >= k + key_len
    s = jnp.min(jnp.where(after & ~ws & ~colon, pos, m))
    return s, (k < m) & (s < m) & (jnp.sum(after & (pos < s) & colon) == 1)

  # "numbers": [a, b, ...] -- 1..MAX_OPERANDS literals of <= MAX_INT_DIGITS digits separated
  # by single commas.
  lb, ok_n = value_start(_window(x, _NUMBERS_KEY, n), len(_NUMBERS_KEY))
  ok_n = ok_n & (at(lb) == ord('['))
  rb = jnp.min(jnp.where((x == ord(']')) & (pos > lb), pos, m))
  inside = (pos > lb) & (pos < rb)
  lit, sep = inside & lit_start, inside & comma
  count = jnp.sum(lit)
  tok = lit | sep
  tok_rank = jnp.cumsum(tok) - 1
  ok_n = (
      ok_n
      & (rb < m)
      & jnp.all(~inside | digit | comma | ws)
      & (count >= 1)
      & (count <= MAX_OPERANDS)
      & (jnp.sum(sep) == count - 1)
      & jnp.all(~tok | (lit == (tok_rank % 2 == 0)))
      & ~jnp.any(lit & (run_len > MAX_INT_DIGITS))
  )
  rank = jnp.cumsum(lit) - 1
  slot = jnp.where(lit & (rank < MAX_OPERANDS), rank, MAX_OPERANDS)
  numbers = jnp.zeros((MAX_OPERANDS,), jnp.int32).at[slot].set(value, mode='drop')

  # "target": N (or the paper's "answer": N) -- an integer of <= MAX_INT_DIGITS digits.
  hit = _window(x, _TARGET_KEYS[0], n) | _window(x, _TARGET_KEYS[1], n)
  s, ok_t = value_start(hit, len(_TARGET_KEYS[0]))
  neg = at(s) == ord('-')
  d0 = s + neg.astype(jnp.int32)
  t_len = run_len[jnp.clip(d0, 0, m - 1)]
  nxt = jnp.where(d0 + t_len < m, at(d0 + t_len), -1)
  ok_t = (
      ok_t
      & (d0 < m)
      & digit[jnp.clip(d0, 0, m - 1)]
      & (t_len <= MAX_INT_DIGITS)
      & (nxt != ord('.'))
      & (nxt != ord('e'))
      & (nxt != ord('E'))
  )
  t_val = value[jnp.clip(d0, 0, m - 1)]
  target = jnp.where(neg, -t_val, t_val)
  ok = ok_n & ok_t
  return (
      jnp.where(ok, numbers, 0),
      jnp.where(ok, count, 1).astype(jnp.int32),
      jnp.where(ok, target, 0).astype(jnp.int32),
      ok,
  )


def parse_references(ref, ref_len):
  """Countdown references from their JSON bytes, on device (jittable, no host callback).

  Args:
    ref: int32[B, R] UTF-8 bytes of ``{"numbers": [95, 14, 18], "target": 99}`` (the records'
      form, :func:`compfn.tasks.countdown.scoring.reference_json`) or the paper's
      ``{"answer": 99, "numbers": [95, 14, 18]}``: any key order, JSON whitespace; padded.
    ref_len: int32[B] valid bytes per row.
  Returns:
    (numbers int32[B, MAX_OPERANDS], numbers_len int32[B], target int32[B], ok bool[B]).
    ``ok`` is False for a row that is not such a reference within the verifier's range (its
    other outputs are then placeholders); a reference accepted by
    :func:`~compfn.tasks.countdown.scoring.parse_reference` always parses to the same problem.
    (Validate references on the host with ``reference_json``: this parser is lenient about
    JSON it never sees, e.g. leading zeros.)
  """
  return jax.vmap(_parse_reference_one)(ref, ref_len)


def score_refs(resp, resp_len, ref, ref_len, overlong, reward: str = 'binary'):
  """The Countdown reward with the problem read from its reference bytes: the task's device
  scorer, with the signature of :func:`compfn.tasks.strings.device_scoring.score_trace`.

  Args:
    resp: int32[B, T] response UTF-8 bytes, padded.
    resp_len: int32[B].
    ref: int32[B, R] reference JSON bytes, padded (see :func:`parse_references`).
    ref_len: int32[B].
    overlong: bool[B] (True: invalid).
    reward: as in :func:`score` (static).
  Returns:
    (score, acc) as :func:`score`; a row whose reference does not parse scores as invalid.

      >>> ref = b'{"numbers": [95, 14, 18], "target": 99}'
      >>> resp = b'<answer>95 + 18 - 14</answer>'
      >>> s, a = score_refs(jnp.array([list(resp)]), jnp.array([len(resp)]),
      ...                   jnp.array([list(ref)]), jnp.array([len(ref)]), jnp.array([False]))
      >>> s.tolist(), a.tolist()
      ([1], [1])
  """
  numbers, numbers_len, target, ok = parse_references(ref, ref_len)
  return score(
      resp, resp_len, numbers, numbers_len, target, jnp.asarray(overlong, bool) | ~ok, reward
  )


# ------------------------------------------------------------------------------------------------
# Host helpers.
# ------------------------------------------------------------------------------------------------
_JITTED = {r: jax.jit(functools.partial(score, reward=r)) for r in REWARDS}
_MIN_T, _ROWS = 64, 512


def encode_problems(
    numbers_list: Sequence[Sequence[int]], targets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(numbers int32[B, MAX_OPERANDS], numbers_len int32[B], target int32[B]) for the device
  scorer; validates each problem (``ValueError`` if out of range)."""
  numbers_list, targets = list(numbers_list), list(targets)
  if len(numbers_list) != len(targets):
    raise ValueError(f'{len(numbers_list)} number lists but {len(targets)} targets')
  nums = np.zeros((len(targets), MAX_OPERANDS), np.int32)
  lens = np.zeros(len(targets), np.int32)
  tg = np.zeros(len(targets), np.int32)
  for i, (ns, t) in enumerate(zip(numbers_list, targets)):
    ns, t = check_problem(tuple(ns), t)
    nums[i, : len(ns)] = ns
    lens[i], tg[i] = len(ns), t
  return nums, lens, tg


def encode_references(refs: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """:func:`encode_problems` for references in the paper's ground-truth form (JSON strings
  ``{"answer": t, "numbers": [...]}``, mappings, or problems)."""
  parsed = [parse_reference(r) for r in refs]
  return encode_problems([p[0] for p in parsed], [p[1] for p in parsed])


def score_batch(
    responses: Sequence[Union[str, bytes]],
    numbers_list: Sequence[Sequence[int]],
    targets: Sequence[int],
    overlong: Optional[Sequence[bool]] = None,
    reward: str = 'binary',
) -> tuple[np.ndarray, np.ndarray]:
  """Score many responses on the device; returns (scores, accs) as numpy (scores int32 for
  ``reward='binary'``, float32 for ``'reasoning_gym'``).

  ``responses`` are ``str`` (UTF-8 encoded here) or raw ``bytes`` (invalid UTF-8 is scored as
  Python's ``errors='replace'`` decoding would be). Responses are grouped into power-of-two
  length buckets (at least 64 bytes) and scored 512 rows per call (the last call padded), so
  each bucket compiles once per ``reward``.
  """
  if reward not in _JITTED:
    raise ValueError(f'reward must be one of {sorted(REWARDS)}, got {reward!r}')
  if isinstance(responses, (str, bytes)):
    raise ValueError('responses must be a sequence, not a single string')
  responses = list(responses)
  nums, lens, tg = encode_problems(numbers_list, targets)
  if len(responses) != len(tg):
    raise ValueError(f'{len(responses)} responses but {len(tg)} problems')
  enc, overlong = encode_responses(responses, overlong)
  scores = np.zeros(len(enc), np.int32 if reward == 'binary' else np.float32)
  accs = np.zeros(len(enc), np.int32)
  buckets: dict[int, list[int]] = {}
  for i, b in enumerate(enc):
    buckets.setdefault(next_power_of_two(len(b), _MIN_T), []).append(i)
  fn = _JITTED[reward]
  rows = _ROWS
  for t, idx in sorted(buckets.items()):
    for lo in range(0, len(idx), rows):
      chunk = idx[lo : lo + rows]
      resp = np.zeros((rows, t), np.int32)
      rl = np.zeros(rows, np.int32)
      ol = np.zeros(rows, bool)
      bn = np.zeros((rows, MAX_OPERANDS), np.int32)
      bl = np.ones(rows, np.int32)
      bt = np.zeros(rows, np.int32)
      for j, i in enumerate(chunk):
        resp[j, : len(enc[i])] = np.frombuffer(enc[i], np.uint8)
        rl[j], ol[j] = len(enc[i]), bool(overlong[i])
      bn[: len(chunk)], bl[: len(chunk)], bt[: len(chunk)] = nums[chunk], lens[chunk], tg[chunk]
      s, a = fn(resp, rl, bn, bl, bt, ol)
      scores[chunk] = np.asarray(s)[: len(chunk)]
      accs[chunk] = np.asarray(a)[: len(chunk)]
  return scores, accs
