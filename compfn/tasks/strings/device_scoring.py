"""On-device (JAX) scorers: the paper's JSON reward rule and the trace rule, on UTF-8 bytes.

Both scorers are pure ``jax.numpy``/``lax`` code with static shapes: jittable, ``vmap``-able, free
of host callbacks, usable inside a larger jitted function (e.g. fused into a sampler). The Python
references are in :mod:`compfn.tasks.strings.scoring`; the module docstring there states the rule.

Inputs (B = batch, T = padded response bytes, R = padded reference bytes)::

    resp     int32[B, T]   response as UTF-8 bytes 0..255 (anything past resp_len is ignored)
    resp_len int32[B]      number of valid bytes (clipped to T)
    ref      int32[B, R]   reference output as UTF-8 bytes
    ref_len  int32[B]
    overlong bool[B]       the response hit the maximum length without EOS -> (-1, 0)
    -> (score int32[B] in {-1, 0, 1}, acc int32[B] in {0, 1})

**Agreement contract.** For any bytes ``b`` and reference string ``ref``::

    score_json(b, ref) == scoring.score(b.decode('utf-8', errors='replace'), ref)
    score_trace(b, ref) == scoring.score_trace(b.decode('utf-8', errors='replace'), ref)

provided ``ref`` is valid UTF-8 that does not contain U+FFFD (true of every reference of the
task; :func:`score_batch` checks it). The JSON rule's structure is ASCII, and an ASCII byte always
decodes to itself, so the scorer works on bytes and only looks at characters where Python does:

* the fence path's ``.strip()`` removes Unicode whitespace (``str.isspace``), including the
  multi-byte UTF-8 forms of U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F,
  U+205F and U+3000;
* Python's ``s[a:-1]`` drops the last *character*, which may be a multi-byte character or one
  U+FFFD standing for a run of invalid bytes (CPython's decoder replaces each *maximal subpart*
  of an ill-formed sequence by one U+FFFD);
* the ``"output"`` string value is decoded (escapes to UTF-8, surrogate pairs joined) and compared
  with the reference bytes; a lone surrogate or an invalid byte (U+FFFD) never matches.

Every byte carries three flags computed once on the response (starts a character, belongs to an
invalid sequence, belongs to a whitespace character). The fallback rewrites delete only ASCII
characters, so the flags travel with the bytes through every compaction.

**Algorithm** (per example, all O(T) with static shapes):

1. Three texts (the response, its ``\\{ \\} ( )`` rewrite, the ``\\boxed{`` content rewrite) are
   built with masks and cumsum-indexed compaction (``str.replace`` semantics: left-to-right,
   non-overlapping, applied in sequence).
2. In each text the candidate is located: the last ``````json`` fence (window matches) or the
   last complete top-level ``{...}`` from the clamped running brace depth
   ``d_i = max(0, d_{i-1} + delta_i)`` (computed as ``S_i - min(0, min_{k<=i} S_k)``).
3. Each candidate and its ``False/True/None`` rewrite (same length) go through a JSON pushdown
   automaton, one ``lax.scan`` over the bytes for all six at once: a table-driven lexer
   (state x top-of-stack x byte), a bit-per-level stack of :data:`MAX_JSON_DEPTH` levels, integer
   digit counting for the 4300-digit abort, ``\\n`` bytes skipped (the rule removes them), and a
   running comparison of the decoded key (against ``"output"``) and string value (against the
   reference) of the top-level object's members. Duplicate keys: the last ``"output"`` wins.
4. The outcomes are combined with the paper's fallback order.

Worked example::

    >>> s, a = score_batch(['```json\\n{"output": "cba"}\\n```', "{'output': 'cba'}"],
    ...                    ['cba', 'cba'])
    >>> s.tolist(), a.tolist()
    ([1, -1], [1, 0])

:func:`score_batch` is the host convenience: it encodes, pads into power-of-two buckets (so
different lengths share compilations), calls one jitted function per bucket and returns numpy.
:func:`benchmark_fn` gives a steady-state closure over the same calls for throughput numbers.

Cost: the automaton is a sequential loop over the *candidate's* bytes (the longest candidate
of the batch, not the padded response length) on a [B, 6] state; everything else is vectorized.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compfn.buckets import next_power_of_two
from compfn.tasks.response_bytes import encode_responses
from compfn.tasks.strings.scoring import (
    ANSWER_CREDIT,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    SHAPE_CREDIT,
    STEP_CREDIT,
)

__all__ = [
    'score_json',
    'score_trace',
    'score_trace_steps',
    'score_trace_shape',
    'score_batch',
    'benchmark_fn',
    'utf8_encode',
    'MAX_JSON_DEPTH',
]

# ------------------------------------------------------------------------------------------------
# Byte constants.
# ------------------------------------------------------------------------------------------------
_LF, _QUOTE, _BSL, _LBRACE, _RBRACE, _SEMI = 10, 34, 92, 123, 125, 59
_NWORDS = (MAX_JSON_DEPTH + 31) // 32  # stack words (one bit per nesting level)

# ------------------------------------------------------------------------------------------------
# The JSON lexer table: (state, top-of-stack, byte) -> next state | actions << 7.
# ------------------------------------------------------------------------------------------------
_BASE_STATES = (
    'VALUE',
    'ARR_FIRST',
    'OBJ_FIRST',
    'OBJ_KEY',
    'COLON',
    'AFTER',
    'STR',
    'ESC',
    'U1',
    'U2',
    'U3',
    'U4',
    'HI',
    'HI_ESC',
    'HU1',
    'HU2',
    'HU3',
    'HU4',
    'MINUS',
    'ZERO',
    'INT',
    'DOT',
    'FRAC',
    'E',
    'ESIGN',
    'EXP',
)
_LITERALS = ('true', 'false', 'null', 'NaN', 'Infinity', '-Infinity')
_LIT_PREFIXES = tuple(w[:k] for w in _LITERALS for k in range(1 if w[0] != '-' else 2, len(w)))
_STATE_NAMES = _BASE_STATES + tuple('LIT:' + p for p in _LIT_PREFIXES) + ('ERROR', 'ABORT')
_S = {name: i for i, name in enumerate(_STATE_NAMES)}
assert len(_STATE_NAMES) < 128
(S_VALUE, S_AFTER, S_COLON, S_STR, S_HI, S_ERROR, S_ABORT) = (
    _S['VALUE'],
    _S['AFTER'],
    _S['COLON'],
    _S['STR'],
    _S['HI'],
    _S['ERROR'],
    _S['ABORT'],
)
(S_ZERO, S_INT, S_DOT, S_FRAC, S_E, S_ESIGN, S_EXP) = (
    _S['ZERO'],
    _S['INT'],
    _S['DOT'],
    _S['FRAC'],
    _S['E'],
    _S['ESIGN'],
    _S['EXP'],
)

# Action bits (composable; several may fire on one byte).
A_PUSH_OBJ, A_PUSH_ARR, A_POP = 1 << 0, 1 << 1, 1 << 2
A_VS_OBJ, A_VS_NULL, A_VS_OTHER = 1 << 3, 1 << 4, 1 << 5  # a value starts (its kind)
A_STR_START, A_KEY, A_STR_END = 1 << 6, 1 << 7, 1 << 8
A_EMIT_RAW, A_EMIT_ESC = 1 << 9, 1 << 10  # a decoded character
A_U_START, A_HEX, A_U_DONE, A_U2_DONE, A_LONE = 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15
A_NUM_START, A_INT_DIGIT, A_FRAC = 1 << 16, 1 << 17, 1 << 18
A_NUM_END, A_INTCHK, A_LIT_END = 1 << 19, 1 << 20, 1 << 21

_TOP_NONE, _TOP_OBJ, _TOP_ARR = 0, 1, 2
_JSON_WS = (0x20, 0x09, 0x0D)  # LF is skipped before the table
_HEXDIGITS = b'0123456789abcdefABCDEF'
_ESCAPES = {
    ord('"'): 0x22,
    ord('\\'): 0x5C,
    ord('/'): 0x2F,
    ord('b'): 0x08,
    ord('f'): 0x0C,
    ord('n'): 0x0A,
    ord('r'): 0x0D,
    ord('t'): 0x09,
}
_DIGITS = b'0123456789'


def _trans(name: str, top: int, c: int) -> tuple[int, int]:
  """One lexer transition: (next state, action bits)."""
  err = (_S['ERROR'], 0)

  def value_start():
    if c == ord('{'):
      return _S['OBJ_FIRST'], A_PUSH_OBJ | A_VS_OBJ
    if c == ord('['):
      return _S['ARR_FIRST'], A_PUSH_ARR | A_VS_OTHER
    if c == _QUOTE:
      return S_STR, A_STR_START | A_VS_OTHER
    if c == ord('-'):
      return _S['MINUS'], A_NUM_START | A_VS_OTHER
    if c in _DIGITS:
      return (S_ZERO if c == ord('0') else S_INT), A_NUM_START | A_INT_DIGIT | A_VS_OTHER
    if chr(c) in 'tfnNI':
      return _S['LIT:' + chr(c)], (A_VS_NULL if c == ord('n') else A_VS_OTHER)
    return err

  def after():
    if c in _JSON_WS:
      return S_AFTER, 0
    if top == _TOP_OBJ and c == ord(','):
      return _S['OBJ_KEY'], 0
    if top == _TOP_ARR and c == ord(','):
      return S_VALUE, 0
    if (top, c) in ((_TOP_OBJ, _RBRACE), (_TOP_ARR, ord(']'))):
      return S_AFTER, A_POP
    return err

  def in_string():
    if c == _QUOTE:
      return S_AFTER, A_STR_END  # a key goes to COLON instead (decided at run time)
    if c == _BSL:
      return _S['ESC'], 0
    if c < 0x20:
      return err
    return S_STR, A_EMIT_RAW

  def escape():
    if c in _ESCAPES:
      return S_STR, A_EMIT_ESC
    if c == ord('u'):
      return _S['U1'], A_U_START
    return err

  def number_end(flags):
    nxt, act = after()
    return nxt, act | A_NUM_END | flags

  if name in ('ERROR', 'ABORT'):
    return _S[name], 0
  if name == 'VALUE':
    return (S_VALUE, 0) if c in _JSON_WS else value_start()
  if name == 'ARR_FIRST':
    if c in _JSON_WS:
      return _S['ARR_FIRST'], 0
    return (S_AFTER, A_POP) if c == ord(']') else value_start()
  if name in ('OBJ_FIRST', 'OBJ_KEY'):
    if c in _JSON_WS:
      return _S[name], 0
    if c == _QUOTE:
      return S_STR, A_STR_START | A_KEY
    if name == 'OBJ_FIRST' and c == _RBRACE:
      return S_AFTER, A_POP
    return err
  if name == 'COLON':
    if c in _JSON_WS:
      return S_COLON, 0
    return (S_VALUE, 0) if c == ord(':') else err
  if name == 'AFTER':
    return after()
  if name == 'STR':
    return in_string()
  if name == 'ESC':
    return escape()
  if name in ('U1', 'U2', 'U3', 'HU1', 'HU2', 'HU3'):
    return (_S[name[:-1] + str(int(name[-1]) + 1)], A_HEX) if c in _HEXDIGITS else err
  if name == 'U4':
    return (S_STR, A_HEX | A_U_DONE) if c in _HEXDIGITS else err
  if name == 'HU4':
    return (S_STR, A_HEX | A_U2_DONE) if c in _HEXDIGITS else err
  if name == 'HI':  # a high surrogate waits for "\uDC00".."\uDFFF"
    if c == _BSL:
      return _S['HI_ESC'], 0
    nxt, act = in_string()
    return nxt, (act | A_LONE) if nxt != _S['ERROR'] else 0
  if name == 'HI_ESC':
    if c == ord('u'):
      return _S['HU1'], A_U_START
    nxt, act = escape()
    return nxt, (act | A_LONE) if nxt != _S['ERROR'] else 0
  if name == 'MINUS':
    if c in _DIGITS:
      return (S_ZERO if c == ord('0') else S_INT), A_INT_DIGIT
    return (_S['LIT:-I'], 0) if c == ord('I') else err
  if name in ('ZERO', 'INT'):
    if name == 'INT' and c in _DIGITS:
      return S_INT, A_INT_DIGIT
    if c == ord('.'):
      return S_DOT, 0
    if c in b'eE':
      return S_E, 0
    return number_end(A_INTCHK)
  if name == 'DOT':
    return (S_FRAC, A_FRAC) if c in _DIGITS else (_S['ERROR'], A_INTCHK)
  if name == 'FRAC':
    if c in _DIGITS:
      return S_FRAC, 0
    return (S_E, 0) if c in b'eE' else number_end(0)
  if name == 'E':
    if c in b'+-':
      return S_ESIGN, 0
    return (S_EXP, 0) if c in _DIGITS else (_S['ERROR'], A_INTCHK)
  if name == 'ESIGN':
    return (S_EXP, 0) if c in _DIGITS else (_S['ERROR'], A_INTCHK)
  if name == 'EXP':
    return (S_EXP, 0) if c in _DIGITS else number_end(0)
  if name.startswith('LIT:'):
    prefix = name[4:]
    word = next(w for w in _LITERALS if w.startswith(prefix) and len(w) > len(prefix))
    if c != ord(word[len(prefix)]):
      return err
    if len(prefix) + 1 == len(word):
      return S_AFTER, A_LIT_END
    return _S['LIT:' + prefix + chr(c)], 0
  raise AssertionError(name)


@functools.lru_cache(maxsize=None)
def _tables():
  """(lexer table int32[states*3*256], escape map int32[256], hex values int32[256])."""
  table = np.zeros((len(_STATE_NAMES), 3, 256), np.int32)
  for si, name in enumerate(_STATE_NAMES):
    for top in range(3):
      for c in range(256):
        nxt, act = _trans(name, top, c)
        table[si, top, c] = nxt | (act << 7)
  esc = np.zeros(256, np.int32)
  for k, v in _ESCAPES.items():
    esc[k] = v
  hexv = np.zeros(256, np.int32)
  for i, ch in enumerate(b'0123456789abcdef'):
    hexv[ch] = i
    hexv[bytes([ch]).upper()[0]] = i
  return table.reshape(-1), esc, hexv


# ------------------------------------------------------------------------------------------------
# Small vectorized helpers (1-D, per example; vmapped over the batch).
# ------------------------------------------------------------------------------------------------
def _shift(a, k: int, fill):
  """``out[i] = a[i + k]`` (``fill`` outside)."""
  t = a.shape[0]
  if k == 0:
    return a
  if abs(k) >= t:
    return jnp.full_like(a, fill)
  pad = jnp.full((abs(k),), fill, a.dtype)
  return jnp.concatenate([a[k:], pad]) if k > 0 else jnp.concatenate([pad, a[: t + k]])


def _match_at(x, n, pat: bytes):
  """bool[T]: ``pat`` occurs at i, entirely inside the first n bytes."""
  pos = jnp.arange(x.shape[0])
  m = pos + len(pat) <= n
  for j, ch in enumerate(pat):
    m = m & (_shift(x, j, -1) == ch)
  return m


def _last(mask, pos):
  return jnp.max(jnp.where(mask, pos, -1))


def _first(mask, pos, default):
  return jnp.min(jnp.where(mask, pos, default))


def _compact(keep, arrays):
  """Keep the masked entries of each array, in order, at the front; returns (arrays, count)."""
  t = keep.shape[0]
  dest = jnp.where(keep, jnp.cumsum(keep) - 1, t)
  out = [jnp.zeros_like(a).at[dest].set(a, mode='drop') for a in arrays]
  return out, jnp.sum(keep).astype(jnp.int32)


def _utf8_flags(x, n):
  """Per byte: (starts a decoded character, part of an invalid run -> U+FFFD, part of a
  whitespace character) under CPython's ``decode('utf-8', errors='replace')``."""
  pos = jnp.arange(x.shape[0])
  xb = jnp.where(pos < n, x, -1)
  b1, b2, b3 = _shift(xb, 1, -1), _shift(xb, 2, -1), _shift(xb, 3, -1)

  def cont(b):
    return (b >= 0x80) & (b <= 0xBF)

  lead2 = (xb >= 0xC2) & (xb <= 0xDF)
  lead3 = (xb >= 0xE0) & (xb <= 0xEF)
  lead4 = (xb >= 0xF0) & (xb <= 0xF4)
  lo = jnp.where(xb == 0xE0, 0xA0, jnp.where(xb == 0xF0, 0x90, 0x80))
  hi = jnp.where(xb == 0xED, 0x9F, jnp.where(xb == 0xF4, 0x8F, 0xBF))
  ok1 = (b1 >= lo) & (b1 <= hi)
  ok2 = ok1 & cont(b2)
  ok3 = ok2 & cont(b3)
  need = 1 + lead2 + 2 * lead3 + 3 * lead4
  used = jnp.where(
      lead2, 1 + ok1, jnp.where(lead3, 1 + ok1 + ok2, jnp.where(lead4, 1 + ok1 + ok2 + ok3, 1))
  ).astype(jnp.int32)
  lead = lead2 | lead3 | lead4
  unit_ok = (xb >= 0) & (xb < 0x80) | (lead & (used == need))
  lead_used = jnp.where(lead, used, 0)
  absorbed = (
      (_shift(lead_used, -1, 0) >= 2)
      | (_shift(lead_used, -2, 0) >= 3)
      | (_shift(lead_used, -3, 0) >= 4)
  )
  start = (xb >= 0) & ~absorbed
  start_used = jnp.where(start, used, 0)

  def spread(flag):  # a flag of each character's first byte, copied onto its other bytes
    f = flag & start
    return (
        f
        | (_shift(f, -1, False) & (_shift(start_used, -1, 0) >= 2))
        | (_shift(f, -2, False) & (_shift(start_used, -2, 0) >= 3))
        | (_shift(f, -3, False) & (_shift(start_used, -3, 0) >= 4))
    )

  ws1 = ((xb >= 9) & (xb <= 13)) | ((xb >= 0x1C) & (xb <= 0x20))
  ws2 = (xb == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
  ws3 = (
      ((xb == 0xE1) & (b1 == 0x9A) & (b2 == 0x80))
      | (
          (xb == 0xE2)
          & (b1 == 0x80)
          & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8) | (b2 == 0xA9) | (b2 == 0xAF))
      )
      | ((xb == 0xE2) & (b1 == 0x81) & (b2 == 0x9F))
      | ((xb == 0xE3) & (b1 == 0x80) & (b2 == 0x80))
  )
  return start, spread(~unit_ok), spread(ws1 | ws2 | ws3)


# ------------------------------------------------------------------------------------------------
# Step 1: the three texts.  Step 2: candidates.
# ------------------------------------------------------------------------------------------------
def _unescape_braces(x, n, flags):
  """``\\{``->``{``, ``\\}``->``}``, ``(``->``[``, ``)``->``]`` (the paper's second text)."""
  pos = jnp.arange(x.shape[0])
  nxt = _shift(x, 1, -1)
  drop = (x == _BSL) & ((nxt == _LBRACE) | (nxt == _RBRACE)) & (pos + 1 < n)
  y = jnp.where(x == ord('('), ord('['), jnp.where(x == ord(')'), ord(']'), x))
  out, m = _compact((pos < n) & ~drop, [y, *flags])
  return out[0], m, tuple(out[1:])


def _boxed_content(x, n, flags):
  """The paper's third text (from the second one) and whether ``\\boxed{`` occurs at all."""
  pos = jnp.arange(x.shape[0])
  box = _match_at(x, n, b'\\boxed{')
  has_box = jnp.any(box)
  a = _last(box, pos) + 7
  close = _last((x == _RBRACE) & (pos >= a) & (pos < n), pos)
  last_char = _last(flags[0] & (pos < n), pos)
  b = jnp.where(close >= 0, close, last_char)  # s[a:-1] drops the last character
  region = (pos >= a) & (pos < b) & has_box
  # "\\\\" -> "\\": in each run of k backslashes keep offsets 0, 2, 4, ... (ceil(k/2) of them).
  bsl = region & (x == _BSL)
  run_start = lax.cummax(jnp.where(bsl, 0, pos + 1))
  even = ((pos - run_start) % 2) == 0
  b1, b2 = _shift(bsl, 1, False), _shift(bsl, 2, False)
  nxt1 = jnp.where(_shift(region, 1, False), _shift(x, 1, -1), -1)
  nxt2 = jnp.where(_shift(region, 2, False), _shift(x, 2, -1), -1)
  last_kept = bsl & even & (~b1 | ~b2)  # the last backslash that survives
  follow = jnp.where(b1, nxt2, nxt1)  # the character after the run
  drop = (bsl & ~even) | (last_kept & ((follow == _LBRACE) | (follow == _RBRACE)))
  out, m = _compact(region & ~drop, [x, *flags])
  for word in (b'\\left', b'\\right'):
    hit = _match_at(out[0], m, word)
    covered = hit
    for j in range(1, len(word)):
      covered = covered | _shift(hit, -j, False)
    out, m = _compact((pos < m) & ~covered, out)
  return out[0], m, tuple(out[1:]), has_box


def _candidate(x, n, flags):
  """(start, end, found) of the JSON candidate of one text, by the paper's two rules."""
  start_f, _, ws = flags
  pos = jnp.arange(x.shape[0])
  valid = pos < n
  fence = _match_at(x, n, b'```json')
  has_fence = jnp.any(fence)
  a = _last(fence, pos) + 7
  closing = _match_at(x, n, b'```') & (pos >= a)
  close = jnp.where(jnp.any(closing), _first(closing, pos, x.shape[0]), -1)
  fend = jnp.where(close >= 0, close, _last(start_f & valid, pos))  # -1: drop the last char
  body = (pos >= a) & (pos < fend) & ~ws  # .strip() of Unicode whitespace
  f_found = jnp.any(body)
  f_start, f_end = _first(body, pos, x.shape[0]), _last(body, pos) + 1
  # Brace scan: clamped running depth d_i = max(0, d_{i-1} + delta_i).
  delta = jnp.where(valid, (x == _LBRACE).astype(jnp.int32) - (x == _RBRACE), 0)
  csum = jnp.cumsum(delta)
  depth = csum - jnp.minimum(lax.cummin(csum), 0)
  prev = _shift(depth, -1, 0)
  closes = valid & (x == _RBRACE) & (prev == 1)
  b_found = jnp.any(closes)
  b_end = _last(closes, pos) + 1
  b_start = _last(valid & (x == _LBRACE) & (prev == 0) & (pos < b_end), pos)
  start = jnp.where(has_fence, f_start, b_start)
  end = jnp.where(has_fence, f_end, b_end)
  found = jnp.where(has_fence, f_found, b_found)
  return start, jnp.where(found, end - start, 0)


def _python_literals(c, m):
  """``False``/``True``/``None`` -> ``false``/``true``/``null`` (same length, in place)."""
  out = c
  for word, repl in ((b'False', b'false'), (b'True', b'true'), (b'None', b'null')):
    hit = _match_at(c, m, word)
    for j, ch in enumerate(repl):
      if ch != word[j]:
        out = jnp.where(_shift(hit, -j, False), ch, out)
  return out


# ------------------------------------------------------------------------------------------------
# Step 3: the JSON pushdown automaton.
# ------------------------------------------------------------------------------------------------
R_ERR, R_ABORT, R_NULL, R_OTHER, R_NOOUT, R_MISS, R_HIT = range(7)


def utf8_encode(cp):
  """UTF-8 encoding, elementwise and jittable: int32 code points ``cp`` -> ``((b0, b1, b2, b3),
  n)``, the 4 byte slots (those past ``n`` are meaningless) and the byte count ``n`` in 1..4."""
  n = jnp.where(cp < 0x80, 1, jnp.where(cp < 0x800, 2, jnp.where(cp < 0x10000, 3, 4)))
  c = lambda k: 0x80 | ((cp >> (6 * k)) & 0x3F)  # noqa: E731  (continuation byte k from the end)
  b0 = jnp.where(
      n == 1,
      cp,
      jnp.where(n == 2, 0xC0 | (cp >> 6), jnp.where(n == 3, 0xE0 | (cp >> 12), 0xF0 | (cp >> 18))),
  )
  b1 = jnp.where(n == 2, c(0), jnp.where(n == 3, c(1), c(2)))
  b2 = jnp.where(n == 3, c(0), c(1))
  b3 = c(0)
  return (b0, b1, b2, b3), n


def _json_outcome(cb, cinv, clen, tgt, ref_len):
  """Run the JSON automaton on one candidate; returns an R_* outcome code.

  cb int32[T] bytes, cinv bool[T] invalid-UTF-8 flags, clen scalar, tgt int32[6 + R] =
  b"output" + reference bytes, ref_len scalar.
  """
  table, escmap, hexval = (jnp.asarray(t) for t in _tables())
  tlen = tgt.shape[0]
  words0 = jnp.zeros((_NWORDS,), jnp.uint32)
  widx = jnp.arange(_NWORDS)
  i32, b_ = jnp.int32, jnp.bool_
  init = dict(
      st=i32(S_VALUE),
      d=i32(0),
      words=words0,
      top_kind=i32(0),
      is_key=b_(False),
      base=i32(0),
      lim=i32(0),
      pos=i32(0),
      ok=b_(True),
      acc=i32(0),
      hi=i32(0),
      ndig=i32(0),
      frac=b_(False),
      curkey=b_(False),
      out_present=b_(False),
      out_match=b_(False),
  )

  def body(c, inp):
    byte, inv, i = inp
    byte = jnp.clip(byte, 0, 255)
    active = (i < clen) & (byte != _LF)
    d = c['d']
    below = jnp.maximum(d - 1, 0)
    word = jnp.sum(jnp.where(widx == below // 32, c['words'], jnp.uint32(0)))
    is_arr = ((word >> (below % 32).astype(jnp.uint32)) & 1) == 1
    top = jnp.where(d == 0, _TOP_NONE, jnp.where(is_arr, _TOP_ARR, _TOP_OBJ))
    e = table[(c['st'] * 3 + top) * 256 + byte]
    nst, act = e & 127, e >> 7

    def has(bit):
      return (act & bit) != 0

    # Numbers: digit count of the integer part; ints over the limit abort.
    big = has(A_INTCHK) & ~c['frac'] & (c['ndig'] > MAX_INT_DIGITS)
    ndig = jnp.where(has(A_NUM_START), 0, c['ndig']) + has(A_INT_DIGIT)
    frac = jnp.where(has(A_NUM_START), False, c['frac']) | has(A_FRAC)
    # Containers.
    push = has(A_PUSH_OBJ) | has(A_PUSH_ARR)
    too_deep = push & (d >= MAX_JSON_DEPTH)
    pw = jnp.minimum(d, MAX_JSON_DEPTH - 1)
    pword = jnp.sum(jnp.where(widx == pw // 32, c['words'], jnp.uint32(0)))
    pbit = jnp.uint32(1) << (pw % 32).astype(jnp.uint32)
    pword = jnp.where(has(A_PUSH_ARR), pword | pbit, pword & ~pbit)
    words = jnp.where(push & (widx == pw // 32), pword, c['words'])
    d2 = d + push - has(A_POP)
    # Strings: \uXXXX accumulation, surrogates, decoded bytes compared with the target.
    hv = hexval[byte]
    cp = c['acc'] * 16 + hv
    acc = jnp.where(has(A_U_START), 0, jnp.where(has(A_HEX), cp, c['acc']))
    is_hi = (cp >= 0xD800) & (cp <= 0xDBFF)
    is_lo = (cp >= 0xDC00) & (cp <= 0xDFFF)
    u_done, u2_done = has(A_U_DONE), has(A_U2_DONE)
    joined = 0x10000 + ((c['hi'] - 0xD800) << 10) + (cp - 0xDC00)
    (e0, e1, e2, e3), en = utf8_encode(jnp.where(u2_done, joined, cp))
    single = has(A_EMIT_RAW) | has(A_EMIT_ESC)
    encoded = (u_done & ~is_hi) | (u2_done & is_lo)
    e0 = jnp.where(single, jnp.where(has(A_EMIT_RAW), byte, escmap[byte]), e0)
    ne = jnp.where(single, 1, jnp.where(encoded, en, 0))
    bad = (has(A_EMIT_RAW) & inv) | (u_done & is_lo) | (u2_done & ~is_lo) | has(A_LONE)
    pending = (u_done | u2_done) & is_hi & ~(u2_done & is_lo)
    hi = jnp.where(pending, cp, c['hi'])
    start = has(A_STR_START)
    is_key = jnp.where(start, has(A_KEY), c['is_key'])
    base = jnp.where(start, jnp.where(has(A_KEY), 0, 6), c['base'])
    lim = jnp.where(start, jnp.where(has(A_KEY), 6, ref_len), c['lim'])
    pos0 = jnp.where(start, 0, c['pos'])
    at = jnp.clip(base + pos0 + jnp.arange(4), 0, tlen - 1)
    want = tgt[at]
    same = jnp.all((jnp.stack([e0, e1, e2, e3]) == want) | (jnp.arange(4) >= ne))
    ok = jnp.where(start, True, c['ok']) & ~bad & (same & (pos0 + ne <= lim) | (ne == 0))
    pos = jnp.minimum(pos0 + ne, tlen)
    # Values of the top-level object's members (depth 1): the last "output" wins.
    str_end = has(A_STR_END)
    key_end = str_end & is_key
    val_str_end = str_end & ~is_key
    curkey = jnp.where(key_end & (d == 1), ok & (pos == 6), c['curkey'])
    here = (val_str_end | has(A_NUM_END) | has(A_LIT_END)) & (d == 1)
    commit = c['curkey'] & (here | (has(A_POP) & (d2 == 1)))
    out_present = c['out_present'] | commit
    out_match = jnp.where(commit, val_str_end & ok & (pos == lim), c['out_match'])
    top_kind = jnp.where(
        (d == 0) & (act & (A_VS_OBJ | A_VS_NULL | A_VS_OTHER) != 0),
        jnp.where(has(A_VS_OBJ), 1, jnp.where(has(A_VS_NULL), 2, 3)),
        c['top_kind'],
    )
    nst = jnp.where(pending, S_HI, nst)
    nst = jnp.where(key_end, S_COLON, nst)
    nst = jnp.where(too_deep | big, S_ABORT, nst)
    new = dict(
        st=nst,
        d=jnp.where(too_deep, d, d2),
        words=words,
        top_kind=top_kind,
        is_key=is_key,
        base=base,
        lim=lim,
        pos=pos,
        ok=ok,
        acc=acc,
        hi=hi,
        ndig=ndig,
        frac=frac,
        curkey=curkey,
        out_present=out_present,
        out_match=out_match,
    )
    new = jax.tree.map(lambda a, b: jnp.where(active, a.astype(b.dtype), b), new, c)
    return new, None

  # Only the candidate's bytes matter: loop over clen steps, not the padded length T (under
  # vmap the batched loop runs for the longest candidate of the batch).
  t = cb.shape[0]
  stop = jnp.minimum(clen, t)

  def step(state):
    i, c = state
    c, _ = body(c, (cb[i], cinv[i], i))
    return i + 1, c

  _, c = lax.while_loop(lambda state: state[0] < stop, step, (jnp.int32(0), init))
  st = c['st']
  in_int = (
      (st == S_ZERO)
      | (st == S_INT)
      | (st == S_DOT)
      | (((st == S_E) | (st == S_ESIGN)) & ~c['frac'])
  )
  abort = (st == S_ABORT) | (in_int & (c['ndig'] > MAX_INT_DIGITS))
  complete = (st == S_AFTER) | (st == S_ZERO) | (st == S_INT) | (st == S_FRAC) | (st == S_EXP)
  accepted = complete & (c['d'] == 0)
  kind = c['top_kind']
  value = jnp.where(
      kind == 1,
      jnp.where(c['out_present'], jnp.where(c['out_match'], R_HIT, R_MISS), R_NOOUT),
      jnp.where(kind == 2, R_NULL, R_OTHER),
  )
  return jnp.where(abort, R_ABORT, jnp.where(accepted, value, R_ERR))


# ------------------------------------------------------------------------------------------------
# Public scorers.
# ------------------------------------------------------------------------------------------------
def _prepare_one(resp, resp_len, ref, ref_len):
  t = resp.shape[0]
  pos = jnp.arange(t)
  n = jnp.clip(resp_len, 0, t).astype(jnp.int32)
  x = jnp.where(pos < n, resp.astype(jnp.int32), 0)
  tgt = jnp.concatenate([jnp.array(list(b'output'), jnp.int32), ref.astype(jnp.int32)])
  r_len = jnp.clip(ref_len, 0, ref.shape[0]).astype(jnp.int32)
  return x, n, _utf8_flags(x, n), tgt, r_len


def _texts_outcome(texts, lens, tflags, tgt, r_len):
  """Outcome per text (int32[K]) of K texts [K, T]: candidate, then the automaton on it and,
  if that fails to parse, on its False/True/None rewrite. R_ERR where there is no candidate."""
  pos = jnp.arange(texts.shape[1])
  starts, clens = jax.vmap(_candidate)(texts, lens, tflags)
  idx = jnp.clip(starts[:, None] + pos[None, :], 0, texts.shape[1] - 1)
  cands = jnp.take_along_axis(texts, idx, axis=1)
  cands = jnp.where(pos[None, :] < clens[:, None], cands, 0)
  cinv = jnp.take_along_axis(tflags[1], idx, axis=1)
  rewritten = jax.vmap(_python_literals)(cands, clens)
  k = texts.shape[0]
  outcome = jax.vmap(_json_outcome, in_axes=(0, 0, 0, None, None))(
      jnp.concatenate([cands, rewritten]),
      jnp.concatenate([cinv, cinv]),
      jnp.concatenate([clens, clens]),
      tgt,
      r_len,
  )
  first, retry = outcome[:k], outcome[k:]
  return jnp.where(clens > 0, jnp.where(first == R_ERR, retry, first), R_ERR)


def _nothing(outcome):
  return (outcome == R_ERR) | (outcome == R_NULL)


def _first_text_one(resp, resp_len, ref, ref_len):
  """The outcome of the response itself (the paper's first extraction)."""
  x, n, flags, tgt, r_len = _prepare_one(resp, resp_len, ref, ref_len)
  return _texts_outcome(x[None], n[None], [f[None] for f in flags], tgt, r_len)[0]


def _fallback_one(resp, resp_len, ref, ref_len):
  """The outcome of the paper's two fallbacks (the ``\\{ \\} ( )`` rewrite, then the
  ``\\boxed{`` content of that rewrite); R_ERR when neither yields a value."""
  x, n, flags, tgt, r_len = _prepare_one(resp, resp_len, ref, ref_len)
  x2, n2, flags2 = _unescape_braces(x, n, flags)
  x3, n3, flags3, has_box = _boxed_content(x2, n2, flags2)
  per_text = _texts_outcome(
      jnp.stack([x2, x3]),
      jnp.stack([n2, n3]),
      [jnp.stack(f) for f in zip(flags2, flags3)],
      tgt,
      r_len,
  )
  return jnp.where(
      ~_nothing(per_text[0]),
      per_text[0],
      jnp.where(has_box & ~_nothing(per_text[1]), per_text[1], R_ERR),
  )


def _fallback_rows(need, resp, resp_len, ref, ref_len, chunk: int):
  """Fallback outcomes for the rows where ``need`` (R_ERR elsewhere). Only those rows are
  processed, ``chunk`` at a time in a while_loop: most responses never need the fallbacks."""
  b = need.shape[0]
  count = jnp.sum(need).astype(jnp.int32)
  rows = jnp.nonzero(need, size=b, fill_value=0)[0].astype(jnp.int32)
  rows = jnp.concatenate([rows, jnp.zeros((chunk,), jnp.int32)])

  def body(state):
    k, out = state
    sel = lax.dynamic_slice(rows, (k * chunk,), (chunk,))
    live = k * chunk + jnp.arange(chunk) < count
    res = jax.vmap(_fallback_one)(resp[sel], resp_len[sel], ref[sel], ref_len[sel])
    out = out.at[jnp.where(live, sel, b)].set(res, mode='drop')
    return k + 1, out

  init = (jnp.int32(0), jnp.full((b,), R_ERR, jnp.int32))
  return lax.while_loop(lambda st: st[0] * chunk < count, body, init)[1]


def score_json(resp, resp_len, ref, ref_len, overlong):
  """The paper's JSON reward on bytes (see the module docstring).

  Args:
    resp: int32[B, T] response UTF-8 bytes (0..255), padded.
    resp_len: int32[B] valid bytes per response.
    ref: int32[B, R] reference UTF-8 bytes, padded.
    ref_len: int32[B].
    overlong: bool[B] (True: (-1, 0)).
  Returns:
    (score int32[B] in {-1, 0, 1}, acc int32[B] in {0, 1}).

  The first extraction runs on every row; the two fallbacks only on the rows whose first
  extraction gave nothing, packed into sub-batches of max(1, B // 8) rows (most responses
  never need them, so the common case stays cheap).

  Example: ``resp = b'{"output": "ab"}'`` (16 bytes), ``ref = b'ab'`` -> score 1, acc 1.
  """
  overlong = jnp.asarray(overlong, bool)
  first = jax.vmap(_first_text_one)(resp, resp_len, ref, ref_len)
  need = _nothing(first) & ~overlong & (resp_len > 0)  # empty rows (padding): nothing
  fallback = _fallback_rows(need, resp, resp_len, ref, ref_len, max(1, resp.shape[0] // 8))
  final = jnp.where(need, fallback, first)
  sc = jnp.where(final == R_HIT, 1, jnp.where(final == R_MISS, 0, -1))
  sc = jnp.where(overlong, -1, sc).astype(jnp.int32)
  return sc, (sc == 1).astype(jnp.int32)


def _score_trace_one(resp, resp_len, ref, ref_len, overlong):
  t, r = resp.shape[0], ref.shape[0]
  pos = jnp.arange(t)
  n = jnp.clip(resp_len, 0, t)
  ref_len = jnp.clip(ref_len, 0, r)
  semi = (resp == _SEMI) & (pos < n)
  last = _last(semi, pos)
  k = jnp.arange(r)
  got = resp[jnp.clip(last + 1 + k, 0, t - 1)]
  same = jnp.all((got == ref) | (k >= ref_len))
  match = (n - last - 1 == ref_len) & same
  sc = jnp.where(overlong | (last < 0), -1, jnp.where(match, 1, 0)).astype(jnp.int32)
  return sc, (sc == 1).astype(jnp.int32)


def score_trace(resp, resp_len, ref, ref_len, overlong):
  """The trace reward on bytes: (-1, 0) if overlong or no ``;``; (1, 1) if the bytes after the
  last ``;`` equal the reference; else (0, 0). Shapes as :func:`score_json`.

  Example: ``resp = b";f('ab')=ba;ba"``, ``ref = b'ba'`` -> (1, 1).
  """
  return jax.vmap(_score_trace_one)(resp, resp_len, ref, ref_len, overlong)


def _score_trace_steps_one(resp, resp_len, target, target_len, overlong, step_credit):
  t, r = resp.shape[0], target.shape[0]
  n = jnp.clip(resp_len, 0, t)
  target_len = jnp.clip(target_len, 0, r)
  k = jnp.arange(r)
  tsemi = (target == _SEMI) & (k < target_len)
  last_t = _last(tsemi, k)  # the ';' before the reference answer
  steps = jnp.sum(tsemi) - 1  # reference steps (the leading ';' is no step)
  # The reference answer is target[last_t + 1 : target_len]; the response's is after its own
  # last ';'. Compare them as the trace rule does.
  pos = jnp.arange(t)
  rsemi = (resp == _SEMI) & (pos < n)
  last_r = _last(rsemi, pos)
  ans_len = target_len - last_t - 1
  got = resp[jnp.clip(last_r + 1 + k, 0, t - 1)]
  want = target[jnp.clip(last_t + 1 + k, 0, r - 1)]
  match = (n - last_r - 1 == ans_len) & jnp.all((got == want) | (k >= ans_len))
  # Leading reference steps reproduced byte for byte: the longest common prefix of response
  # and reference trace, counted in ';'-terminated steps.
  same = (resp[jnp.clip(k, 0, t - 1)] == target) & (k < n) & (k < target_len) & (k < t)
  prefix = jnp.argmin(jnp.concatenate([same, jnp.zeros((1,), bool)]))
  done = jnp.sum(tsemi & (k >= 1) & (k < prefix))
  partial = step_credit * jnp.minimum(done, steps) / jnp.maximum(steps, 1)
  sc = jnp.where(overlong | (last_r < 0), -1.0, jnp.where(match, 1.0, partial))
  return sc.astype(jnp.float32), (match & ~overlong & (last_r >= 0)).astype(jnp.int32)


def score_trace_steps(resp, resp_len, ref, ref_len, overlong, step_credit: float = 0.5):
  """The trace reward with credit for correct steps (a departure from the paper, whose
  reward is the final answer only; :func:`compfn.tasks.strings.scoring.score_trace_steps`
  is the Python reference). ``ref`` is the whole reference *trace* (``;step=value;...;answer``).

  -1 if overlong or no ``;``; 1 if the answer after the last ``;`` equals the reference
  answer; otherwise ``step_credit * k / n``, where n is the number of reference steps and k
  the number of leading reference steps the response reproduces byte for byte. Accuracy is
  the final-answer match, as in :func:`score_trace`.

  Example: reference ``;f('ab')=ba;g('ba')=BA;BA``, response ``;f('ab')=ba;g('ba')=Ba;Ba``
  -> (0.25, 0): one of two steps right.
  """
  return jax.vmap(_score_trace_steps_one, in_axes=(0, 0, 0, 0, 0, None))(
      resp, resp_len, ref, ref_len, overlong, step_credit
  )


def _segment(values, seg, k: int, op: str, init):
  """Per-segment reduction of ``values`` into ``k`` slots (``seg`` outside [0, k) is dropped)."""
  idx = jnp.where((seg >= 0) & (seg < k), seg, k)
  out = jnp.full((k + 1,), init, values.dtype)
  out = out.at[idx].add(values) if op == 'add' else out.at[idx].min(values)
  return out[:k]


def _score_trace_shape_one(
    resp,
    resp_len,
    target,
    target_len,
    overlong,
    shape_credit,
    step_credit,
    answer_credit,
    overlong_penalty,
):
  t, r = resp.shape[0], target.shape[0]
  n = jnp.clip(resp_len, 0, t).astype(jnp.int32)
  tl = jnp.clip(target_len, 0, r).astype(jnp.int32)
  pos, k = jnp.arange(t), jnp.arange(r)
  rsemi = (resp == _SEMI) & (pos < n)
  tsemi = (target == _SEMI) & (k < tl)
  rc, tc = jnp.sum(rsemi), jnp.sum(tsemi)
  m, nref = jnp.maximum(rc - 1, 0), jnp.maximum(tc - 1, 0)  # steps (between first/last ';')
  # Positions of the ';' (sorted; padded with the text length).
  rsp = jnp.nonzero(rsemi, size=t + 1, fill_value=n)[0].astype(jnp.int32)
  tsp = jnp.nonzero(tsemi, size=r + 1, fill_value=tl)[0].astype(jnp.int32)
  kk = min(t, r)  # more steps than this cannot be in both
  big = jnp.int32(t + r + 1)
  # Every response byte: its step j (the ';' before it is the (j+1)-th), its offset in the
  # step, and the reference byte at the same offset of reference step j.
  rj = jnp.cumsum(rsemi) - 1
  r_in = ~rsemi & (pos < n) & (rj >= 0) & (rj < m) & (rj < nref)
  rjc = jnp.clip(rj, 0, r)
  off = pos - rsp[rjc] - 1
  q = tsp[rjc] + 1 + off
  byte_ok = r_in & (q < tsp[jnp.clip(rj + 1, 0, r)]) & (target[jnp.clip(q, 0, r - 1)] == resp)
  # Every reference byte: its step and offset; the first '(' of each step.
  tj = jnp.cumsum(tsemi) - 1
  t_in = ~tsemi & (k < tl) & (tj >= 0) & (tj < nref)
  toff = k - tsp[jnp.clip(tj, 0, r)] - 1
  paren_t = _segment(
      jnp.where(t_in & (target == ord('(')), toff, big).astype(jnp.int32),
      jnp.where(t_in, tj, -1),
      kk,
      'min',
      big,
  )
  paren_r = _segment(
      jnp.where(r_in & (resp == ord('(')), off, big).astype(jnp.int32),
      jnp.where(r_in, rj, -1),
      kk,
      'min',
      big,
  )
  seg = jnp.where(r_in, rj, -1)
  bad = _segment((r_in & ~byte_ok).astype(jnp.int32), seg, kk, 'add', 0)
  pt_of_byte = paren_t[jnp.clip(rj, 0, kk - 1)]
  bad_id = _segment((r_in & ~byte_ok & (off < pt_of_byte)).astype(jnp.int32), seg, kk, 'add', 0)
  j = jnp.arange(kk)
  live = (j < m) & (j < nref)
  has_paren = paren_t < big
  id_eq = live & has_paren & (paren_r == paren_t) & (bad_id == 0)
  len_eq = (rsp[j + 1] - rsp[j]) == (tsp[j + 1] - tsp[j])
  step_eq = live & has_paren & len_eq & (bad == 0)
  id_hits = jnp.sum(id_eq).astype(jnp.float32)
  step_hits = jnp.sum(step_eq).astype(jnp.float32)
  # The final answer, as the trace rule compares it.
  last_r, last_t = _last(rsemi, pos), _last(tsemi, k)
  ans_len = tl - last_t - 1
  got = resp[jnp.clip(last_r + 1 + k, 0, t - 1)]
  want = target[jnp.clip(last_t + 1 + k, 0, r - 1)]
  match = (n - last_r - 1 == ans_len) & jnp.all((got == want) | (k >= ans_len))
  hit = match & ~overlong & (rc > 0)
  f32 = jnp.float32
  denom = jnp.maximum(jnp.maximum(nref, m), 1).astype(f32)
  part = f32(shape_credit) * id_hits + f32(step_credit) * step_hits
  sc = part / denom + f32(answer_credit) * hit.astype(f32)
  fail = (rc == 0) | (overlong & overlong_penalty)
  return jnp.where(fail, f32(-1.0), sc).astype(f32), (hit & ~fail).astype(jnp.int32)


def score_trace_shape(
    resp,
    resp_len,
    ref,
    ref_len,
    overlong,
    shape_credit: float = SHAPE_CREDIT,
    step_credit: float = STEP_CREDIT,
    answer_credit: float = ANSWER_CREDIT,
    overlong_penalty: bool = False,
):
  """The shape-aware trace reward on bytes (a departure from the paper, whose reward is the
  final answer only; :func:`compfn.tasks.strings.scoring.score_trace_shape` is the Python
  reference and states the rule). ``ref`` is the whole reference *trace*. Returns
  (score float32[B], acc int32[B]), equal to the reference bit for bit (dyadic weights).

  Per example, O(T + R) with static shapes: the ``;`` positions of both texts
  (``jnp.nonzero`` with a static size), every response byte mapped to (step, offset) and
  compared with the reference byte at the same offset of the same step, then per-step
  reductions (scatter-add / scatter-min into min(T, R) slots): mismatching bytes, mismatching
  bytes before the reference step's first ``(`` (the function id), and each step's first ``(``.

  Example: reference ``;f('ab')=ba;g('ba')=BA;BA``, response ``;f('ab')=ba;ba`` (one step,
  the inner call right) -> (0.25, 0); ``;f('ab')=ba;g('ba')=Ba;Ba`` -> (0.375, 0).
  """
  return jax.vmap(_score_trace_shape_one, in_axes=(0, 0, 0, 0, 0, None, None, None, None))(
      resp,
      resp_len,
      ref,
      ref_len,
      jnp.asarray(overlong, bool),
      shape_credit,
      step_credit,
      answer_credit,
      overlong_penalty,
  )


# ------------------------------------------------------------------------------------------------
# Host convenience.
# ------------------------------------------------------------------------------------------------
_JITTED = {'json': jax.jit(score_json), 'trace': jax.jit(score_trace)}
_MIN_T, _MIN_R, _MAX_ROWS = 64, 16, 512


def _prepare(responses, refs, overlong, fmt, min_bucket):
  """Validate, encode and pad: returns (N, [(row indices, (resp, resp_len, ref, ref_len,
  overlong) numpy arrays)]), one entry per call of the jitted scorer."""
  if fmt not in _JITTED:
    raise ValueError(f"fmt must be 'json' or 'trace', got {fmt!r}")
  if not isinstance(min_bucket, int) or min_bucket < 1:
    raise ValueError(f'min_bucket must be a positive int, got {min_bucket!r}')
  if isinstance(responses, (str, bytes)) or isinstance(refs, (str, bytes)):
    raise ValueError('responses and refs must be sequences, not a single string')
  responses, refs = list(responses), list(refs)
  if len(responses) != len(refs):
    raise ValueError(f'{len(responses)} responses but {len(refs)} refs')
  enc, overlong = encode_responses(responses, overlong)
  ref_enc = []
  for i, r in enumerate(refs):
    if not isinstance(r, str):
      raise ValueError(f'ref {i} must be str, got {type(r).__name__}')
    if '\ufffd' in r:
      raise ValueError(f'ref {i} contains U+FFFD, which the byte-level scorer cannot match')
    try:
      ref_enc.append(r.encode('utf-8'))
    except UnicodeEncodeError as err:
      raise ValueError(f'ref {i} is not encodable as UTF-8: {err}') from None
  buckets: dict[int, list[int]] = {}
  for i, b in enumerate(enc):
    buckets.setdefault(next_power_of_two(len(b), next_power_of_two(min_bucket)), []).append(i)
  calls = []
  for t, idx in sorted(buckets.items()):
    rows = min(next_power_of_two(len(idx)), _MAX_ROWS)
    r = next_power_of_two(max(len(ref_enc[i]) for i in idx), _MIN_R)
    for lo in range(0, len(idx), rows):
      chunk = idx[lo : lo + rows]
      resp = np.zeros((rows, t), np.int32)
      ref = np.zeros((rows, r), np.int32)
      rl = np.zeros(rows, np.int32)
      ql = np.zeros(rows, np.int32)
      ol = np.zeros(rows, bool)
      for j, i in enumerate(chunk):
        resp[j, : len(enc[i])] = np.frombuffer(enc[i], np.uint8)
        ref[j, : len(ref_enc[i])] = np.frombuffer(ref_enc[i], np.uint8)
        rl[j], ql[j], ol[j] = len(enc[i]), len(ref_enc[i]), bool(overlong[i])
      calls.append((chunk, (resp, rl, ref, ql, ol)))
  return len(enc), calls


def score_batch(
    responses: Sequence[Union[str, bytes]],
    refs: Sequence[str],
    overlong: Optional[Sequence[bool]] = None,
    fmt: str = 'json',
    min_bucket: int = _MIN_T,
) -> tuple[np.ndarray, np.ndarray]:
  """Score many responses on the device; returns (scores int32[N], accs int32[N]) as numpy.

  ``responses`` are ``str`` (UTF-8 encoded here) or raw ``bytes`` (e.g. joined from a
  token->bytes table; invalid UTF-8 is scored as Python's ``errors='replace'`` decoding would
  be). ``refs`` are ``str`` without U+FFFD. ``fmt`` is ``'json'`` (the paper's rule) or
  ``'trace'``. Responses are grouped into power-of-two length buckets (at least ``min_bucket``
  bytes, itself rounded up to a power of two; a larger value means fewer distinct shapes), each
  padded to a power-of-two row count (at most 512 rows per call), so repeated calls reuse a
  handful of compilations. Bad input (length mismatch, non-``str`` ref, ...) raises ValueError.

      >>> score_batch([';f(a)=b;b', 'b'], ['b', 'b'], fmt='trace')[0].tolist()
      [1, -1]
  """
  n, calls = _prepare(responses, refs, overlong, fmt, min_bucket)
  scores = np.zeros(n, np.int32)
  accs = np.zeros(n, np.int32)
  fn = _JITTED[fmt]
  for chunk, args in calls:
    s, a = fn(*args)
    scores[chunk] = np.asarray(s)[: len(chunk)]
    accs[chunk] = np.asarray(a)[: len(chunk)]
  return scores, accs


def benchmark_fn(
    responses: Sequence[Union[str, bytes]],
    refs: Sequence[str],
    overlong: Optional[Sequence[bool]] = None,
    fmt: str = 'json',
    min_bucket: int = _MIN_T,
) -> Callable[[], None]:
  """A zero-argument function for steady-state throughput measurements: it runs the same
  jitted calls as :func:`score_batch` on inputs already encoded, padded and on the device
  (compiled and warmed up here), and blocks until the results are ready."""
  _, calls = _prepare(responses, refs, overlong, fmt, min_bucket)
  fn = _JITTED[fmt]
  dev_args = [jax.device_put(args) for _, args in calls]

  def run():
    jax.block_until_ready([fn(*args) for args in dev_args])

  run()
  return run
