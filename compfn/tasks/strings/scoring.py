"""Reference (pure Python) scorers: the paper's JSON reward rule and compfn's trace format.

JSON rule (EXACT.md §2, PAPER.md §1.5)
--------------------------------------
:func:`score` reproduces the paper's ``codeio.compute_score`` *as it actually ran*:

1. **Extraction** (:func:`extract_answer`) tries up to three texts in turn, stopping at the first
   that yields a value other than ``None``:

   a. the response ``s`` itself;
   b. ``t`` = ``s`` with ``\\{`` -> ``{``, ``\\}`` -> ``}``, ``(`` -> ``[``, ``)`` -> ``]``;
   c. only if ``"\\boxed{"`` occurs in **t** (the *transformed* text, as the paper's code does,
      not ``s`` as EXACT.md's pseudocode says; they differ e.g. for ``\\boxed\\{...``): the text of
      ``t`` after the last ``\\boxed{`` up to the last ``}`` after it (no such ``}``: up to the end
      minus one character, Python's ``t[a:-1]``), with, in this order, ``\\\\`` -> ``\\``,
      ``\\{`` -> ``{``, ``\\}`` -> ``}``, ``\\left`` -> ``''``, ``\\right`` -> ``''`` (each a
      left-to-right, non-overlapping ``str.replace``).

   Each text is searched for one *candidate*: if it contains ``````json`` the text after the last
   ``````json`` up to the next ````````` (none: to the end minus one character), ``.strip()``-ped
   with Python's Unicode notion of whitespace (``str.isspace``: also ``\\x1c``-``\\x1f``,
   ``\\x85``, ``\\xa0``, ``\\u2000``-``\\u200a``, ``\\u3000``, ...); otherwise the last complete
   top-level ``{...}`` found by a brace counter that ignores quoting and unmatched ``}``. An empty
   or missing candidate yields ``None``. The candidate, with every ``\\n`` removed, goes to
   ``json.loads``; on ``JSONDecodeError`` it is retried once after ``False``/``True``/``None`` ->
   ``false``/``true``/``null`` (replaced before the newlines are removed). A JSON ``null`` is
   ``None`` too, so the next text is tried.

2. **Verdict**: ``(1, 1)`` if the value is a dict with key ``"output"`` whose (last, duplicate keys
   overwrite) value is a ``str`` equal to ``ref``; ``(0, 0)`` if it is a dict with ``"output"``
   holding anything else; ``(-1, 0)`` otherwise (nothing extracted, not a dict, no ``"output"``).

3. **Aborts**: ``json.loads`` errors other than ``JSONDecodeError`` escape the paper's ``try`` and
   make the whole score ``-1`` at once, with no retry and no further fallback. Two inputs do that:

   * an integer literal (no fraction, no exponent) with more than :data:`MAX_INT_DIGITS` (4300)
     digits (CPython's ``int`` string-conversion limit, ``ValueError``); the sign does not count;
   * nesting deeper than the interpreter's recursion limit (``RecursionError``). That limit
     depends on the caller's stack, so compfn fixes it: a parse that would open a container at
     nesting depth > :data:`MAX_JSON_DEPTH` (256; the top-level container is depth 1) *before*
     meeting any syntax error aborts. The on-device scorer implements the same rule.

4. **Overlong** responses (maximum length reached without EOS) score ``(-1, 0)`` whatever they say.

Worked example::

    >>> score('The answer is ```json\\n{"output": "cba"}\\n```', 'cba')
    (1, 1)
    >>> score("so {'output': 'cba'}", 'cba')       # single quotes are not JSON
    (-1, 0)
    >>> score('\\\\boxed{\\\\{"output": "abc"\\\\}}', 'abc')
    (1, 1)

Trace rule
----------
Small models answer prompts such as ``func_3(func_7('fgi','dnqjwha'))=`` with a trace::

    ;func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw

:func:`parse_trace` splits it into steps and the final answer (the text after the last ``;``);
:func:`score_trace` gives ``(1, 1)`` if the answer equals the reference, ``(0, 0)`` if not, and
``(-1, 0)`` when the response has no ``;`` or is overlong.

The batched, jittable versions of both rules are in :mod:`compfn.tasks.strings.device_scoring`.
"""

from __future__ import annotations

import json
from typing import Optional, Union

__all__ = [
    'MAX_JSON_DEPTH',
    'MAX_INT_DIGITS',
    'score',
    'extract_answer',
    'parse_trace',
    'score_trace',
    'score_trace_steps',
    'score_trace_shape',
    'trace_shape_counts',
    'SHAPE_CREDIT',
    'STEP_CREDIT',
    'ANSWER_CREDIT',
]

#: A parse that opens a JSON container at a nesting depth greater than this (top level = 1)
#: before any syntax error aborts the whole score (stands in for Python's ``RecursionError``).
MAX_JSON_DEPTH = 256
#: CPython's default ``sys.get_int_max_str_digits()``: longer integer literals raise ValueError.
MAX_INT_DIGITS = 4300

_FENCE = '```json'
_BOXED = '\\boxed{'
_CLOSE = {'{': '}', '[': ']'}


class _Abort(Exception):
  """``json.loads`` raised something that is not a ``JSONDecodeError``: the score is -1."""


def _parse_int(text: str) -> int:
  # json's int hook: the same conversion as the default, with the digit limit made explicit so
  # the rule does not depend on sys.set_int_max_str_digits.
  if len(text) - text.startswith('-') > MAX_INT_DIGITS:
    raise _Abort('integer literal longer than MAX_INT_DIGITS')
  return int(text)


def _too_deep_probe(text: str) -> Optional[str]:
  """If a container would be opened at depth > MAX_JSON_DEPTH, a probe text for it, else None.

  The probe is ``text`` up to and including that bracket, followed by the closing brackets of
  every container open there. ``json.loads`` reaches that bracket in ``text`` without an error
  exactly when the probe parses (nothing before the bracket can look past it), so the probe tells
  "aborts" from "a syntax error comes first" without any deep recursion in ``text`` itself.
  """
  stack = []
  in_str = esc = False
  for i, ch in enumerate(text):
    if in_str:
      if esc:
        esc = False
      elif ch == '\\':
        esc = True
      elif ch == '"':
        in_str = False
    elif ch == '"':
      in_str = True
    elif ch in '{[':
      stack.append(ch)
      if len(stack) > MAX_JSON_DEPTH:
        return text[: i + 1] + ''.join(_CLOSE[c] for c in reversed(stack))
    elif ch in '}]' and stack:
      stack.pop()
  return None


def _loads(text: str):
  """``json.loads(text)`` with the abort rules of the module docstring.

  Returns the value; raises ``json.JSONDecodeError`` (a parse failure) or :class:`_Abort`.
  """
  probe = _too_deep_probe(text)
  if probe is not None:
    json.loads(probe, parse_int=_parse_int)  # JSONDecodeError: the error comes first
    raise _Abort('JSON nested deeper than MAX_JSON_DEPTH')
  return json.loads(text, parse_int=_parse_int)


def _candidate(s: str) -> Optional[str]:
  """The text :func:`_sub_extract` hands to the JSON parser (None or '' for nothing)."""
  if _FENCE in s:
    start = s.rfind(_FENCE) + len(_FENCE)
    end = s.find('```', start)  # -1: Python drops the last character
    return s[start:end].strip()
  depth, start, found = 0, None, None
  for i, ch in enumerate(s):
    if ch == '{':
      if depth == 0:
        start = i
      depth += 1
    elif ch == '}' and depth:
      depth -= 1
      if depth == 0:
        found = s[start : i + 1]
  return found


def _sub_extract(s: str):
  cand = _candidate(s)
  if not cand:
    return None
  try:
    return _loads(cand.replace('\n', ''))
  except json.JSONDecodeError:
    pass
  cand = cand.replace('False', 'false').replace('True', 'true').replace('None', 'null')
  try:
    return _loads(cand.replace('\n', ''))
  except json.JSONDecodeError:
    return None


def _extract(s: str):
  """Extraction as in the module docstring; raises :class:`_Abort`."""
  res = _sub_extract(s)
  if res is not None:
    return res
  s = s.replace('\\{', '{').replace('\\}', '}').replace('(', '[').replace(')', ']')
  res = _sub_extract(s)
  if res is None and _BOXED in s:  # the transformed text, as the paper's code
    start = s.rfind(_BOXED) + len(_BOXED)
    end = s.rfind('}', start)  # -1: Python drops the last character
    content = (
        s[start:end]
        .replace('\\\\', '\\')
        .replace('\\{', '{')
        .replace('\\}', '}')
        .replace('\\left', '')
        .replace('\\right', '')
    )
    res = _sub_extract(content)
  return res


def _as_text(response: Union[str, bytes]) -> str:
  if isinstance(response, (bytes, bytearray)):
    return bytes(response).decode('utf-8', errors='replace')
  if not isinstance(response, str):
    raise TypeError(f'response must be str or bytes, got {type(response).__name__}')
  return response


def extract_answer(response: Union[str, bytes]):
  """The value the paper's scorer extracts from ``response`` (for debugging and analysis).

  Returns the parsed JSON value (usually a dict), or ``None`` when nothing was extracted or the
  parse aborted (see the module docstring). ``bytes`` are decoded as UTF-8 with
  ``errors='replace'``.

      >>> extract_answer('x {"a": 1} y {"output": (True)}')
      {'output': [True]}
  """
  try:
    return _extract(_as_text(response))
  except _Abort:
    return None


def score(response: Union[str, bytes], ref: str, overlong: bool = False) -> tuple[int, int]:
  """The paper's reward ``(score, acc)`` in ``{(1, 1), (0, 0), (-1, 0)}``.

  Args:
    response: the decoded response text (special tokens removed); ``bytes`` are decoded as
      UTF-8 with ``errors='replace'``.
    ref: the reference output string.
    overlong: the response reached the maximum length without EOS (then ``(-1, 0)``).

      >>> score('{"output": "abc"}', 'abc'), score('{"output": "abd"}', 'abc')
      ((1, 1), (0, 0))
  """
  if not isinstance(ref, str):
    raise TypeError(f'ref must be str, got {type(ref).__name__}')
  text = _as_text(response)
  if overlong:
    return -1, 0
  try:
    value = _extract(text)
  except _Abort:
    return -1, 0
  if not isinstance(value, dict) or 'output' not in value:
    return -1, 0
  out = value['output']
  if isinstance(out, str) and out == ref:
    return 1, 1
  return 0, 0


def parse_trace(response: str) -> tuple[list[tuple[str, Optional[str]]], Optional[str]]:
  """Split a trace response into its steps and final answer.

  The answer is the text after the last ``;`` (``None`` if there is no ``;``). The steps are the
  ``;``-separated pieces between the first and the last ``;``, each split at its last ``=`` into
  ``(call, value)``; a piece without ``=`` is malformed and gives ``(piece, None)``. Text before
  the first ``;`` is ignored.

      >>> parse_trace(";f('ab')=ba;g('ba')=BA;BA")
      ([("f('ab')", 'ba'), ("g('ba')", 'BA')], 'BA')
      >>> parse_trace('no separator')
      ([], None)
  """
  if not isinstance(response, str):
    raise TypeError(f'response must be str, got {type(response).__name__}')
  pieces = response.split(';')
  if len(pieces) == 1:
    return [], None
  steps = []
  for piece in pieces[1:-1]:
    call, eq, value = piece.rpartition('=')
    steps.append((call, value) if eq else (piece, None))
  return steps, pieces[-1]


def score_trace(response: Union[str, bytes], ref: str, overlong: bool = False) -> tuple[int, int]:
  """Trace-format reward: ``(-1, 0)`` if overlong or no ``;``; ``(1, 1)`` if the text after the
  last ``;`` equals ``ref``; else ``(0, 0)``.

      >>> score_trace(";f('ab')=ba;ba", 'ba'), score_trace(";f('ab')=ba;b", 'ba')
      ((1, 1), (0, 0))
  """
  if not isinstance(ref, str):
    raise TypeError(f'ref must be str, got {type(ref).__name__}')
  text = _as_text(response)
  if overlong or ';' not in text:
    return -1, 0
  return (1, 1) if text.rpartition(';')[2] == ref else (0, 0)


def score_trace_steps(
    response: Union[str, bytes], target: str, overlong: bool = False, step_credit: float = 0.5
) -> tuple[float, int]:
  """Trace reward with credit for correct steps (a departure from the paper; compfn's
  optional shaped reward for small models). ``target`` is the reference trace.

  ``(-1, 0)`` if overlong or no ``;``; ``(1, 1)`` if the final answer equals the reference
  answer; else ``(step_credit * k / n, 0)`` with n reference steps of which the first k are
  reproduced byte for byte (the response starts with the reference trace up to and including
  the ``;`` that ends step k).

      >>> score_trace_steps(";f('ab')=ba;g('ba')=Ba;Ba", ";f('ab')=ba;g('ba')=BA;BA")
      (0.25, 0)
  """
  if not isinstance(target, str):
    raise TypeError(f'target must be str, got {type(target).__name__}')
  if isinstance(response, (bytes, bytearray)):
    text = bytes(response)
  elif isinstance(response, str):
    text = response.encode('utf-8')
  else:
    raise TypeError(f'response must be str or bytes, got {type(response).__name__}')
  tb = target.encode('utf-8')
  if overlong or b';' not in text:
    return -1.0, 0
  if text.rpartition(b';')[2] == tb.rpartition(b';')[2]:
    return 1.0, 1
  steps = tb.count(b';') - 1
  prefix = 0
  while prefix < min(len(text), len(tb)) and text[prefix] == tb[prefix]:
    prefix += 1
  done = tb[1:prefix].count(b';')
  return step_credit * min(done, steps) / max(steps, 1), 0


#: Default weights of :func:`score_trace_shape`: the right calls in the right order, the right
#: steps (byte for byte), the right final answer. Dyadic, so the float32 arithmetic is exact
#: up to the one division (the device scorer gives the same float32 bit for bit).
SHAPE_CREDIT, STEP_CREDIT, ANSWER_CREDIT = 0.25, 0.25, 0.5


def _call_id(piece: bytes) -> Optional[bytes]:
  """The function id of a trace step: the bytes before its first ``(`` (None: no ``(``)."""
  cut = piece.find(b'(')
  return None if cut < 0 else piece[:cut]


def trace_shape_counts(response: Union[str, bytes], target: str) -> dict:
  """The counts :func:`score_trace_shape` is made of (for analysis and tests).

  Returns a dict: ``format_ok`` (the response has a ``;``), ``ref_steps`` n, ``steps`` m (the
  response's ``;``-separated pieces between its first and last ``;``, as :func:`parse_trace`),
  ``id_hits`` (positions i < min(n, m) where the response's step i calls the reference step i's
  function: same bytes before the first ``(``), ``step_hits`` (positions i < min(n, m) whose
  step is byte-identical to the reference step i: same call, same arguments, same value) and
  ``answer_ok`` (the text after the last ``;`` equals the reference answer).
  """
  if not isinstance(target, str):
    raise TypeError(f'target must be str, got {type(target).__name__}')
  if isinstance(response, (bytes, bytearray)):
    text = bytes(response)
  elif isinstance(response, str):
    text = response.encode('utf-8')
  else:
    raise TypeError(f'response must be str or bytes, got {type(response).__name__}')
  tb = target.encode('utf-8')
  rp, tp = text.split(b';'), tb.split(b';')
  rsteps, tsteps = rp[1:-1], tp[1:-1]
  both = min(len(rsteps), len(tsteps))
  id_hits = sum(
      1
      for a, b in zip(rsteps[:both], tsteps[:both])
      if _call_id(a) is not None and _call_id(a) == _call_id(b)
  )
  step_hits = sum(
      1 for a, b in zip(rsteps[:both], tsteps[:both]) if a == b and _call_id(a) is not None
  )
  return dict(
      format_ok=len(rp) > 1,
      ref_steps=len(tsteps),
      steps=len(rsteps),
      id_hits=id_hits,
      step_hits=step_hits,
      answer_ok=len(rp) > 1 and rp[-1] == tp[-1],
  )


def score_trace_shape(
    response: Union[str, bytes],
    target: str,
    overlong: bool = False,
    shape_credit: float = SHAPE_CREDIT,
    step_credit: float = STEP_CREDIT,
    answer_credit: float = ANSWER_CREDIT,
    overlong_penalty: bool = False,
) -> tuple[float, int]:
  """Shape-aware trace reward (a departure from the paper, whose reward is the final answer
  only: compfn's optional shaped reward for small models). ``target`` is the reference trace
  ``;c_1=v_1;...;c_n=v_n;answer``.

  With n reference steps, m response steps (see :func:`trace_shape_counts`) and
  D = max(n, m, 1)::

      score = (shape_credit * id_hits + step_credit * step_hits) / D
              + answer_credit * [answer after the last ';' == reference answer]

  * ``id_hits``: steps that call the right function at the right position (innermost first),
    whatever the values; ``step_hits``: steps byte-identical to the reference step. Dividing
    by max(n, m) charges both missing steps and extra ones, so at level 2 a one-step answer
    whose call is the inner one earns (0.25 + 0.25) / 2 = 0.25 while a two-step trace with the
    right calls and a wrong second value earns (0.5 + 0.25) / 2 = 0.375 (unlike
    :func:`score_trace_steps`, where both earn 0.25), and a right-answer full trace earns 1.
    A one-step answer that names the outer call first earns only the answer credit.
  * ``-1`` when the response has no ``;`` (nothing parsable).
  * **Overlong** (maximum length reached without EOS): the answer credit is 0 (the text after
    the last ``;`` was cut) but the completed steps still count, so a well-formed trace that
    runs long is not scored below a wrong short one. ``overlong_penalty=True`` restores the
    paper's ``-1`` instead.
  * ``acc`` is the final-answer match (as :func:`score_trace`), 0 when overlong.

  Returns ``(score, acc)``; the score is a float32 value (as a Python float) computed in the
  order above, which :func:`compfn.tasks.strings.device_scoring.score_trace_shape` reproduces
  bit for bit (exactly so for dyadic weights, such as the defaults).

      >>> t = ";f('ab')=ba;g('ba')=BA;BA"
      >>> score_trace_shape(t, t), score_trace_shape(";f('ab')=ba;g('ba')=Ba;Ba", t)
      ((1.0, 1), (0.375, 0))
      >>> score_trace_shape(";f('ab')=ba;ba", t), score_trace_shape(";g(f('ab'))=BA;BA", t)
      ((0.25, 0), (0.5, 1))
  """
  import numpy as np

  c = trace_shape_counts(response, target)
  if not c['format_ok'] or (overlong and overlong_penalty):
    return -1.0, 0
  f32 = np.float32
  denom = f32(max(c['ref_steps'], c['steps'], 1))
  part = f32(shape_credit) * f32(c['id_hits']) + f32(step_credit) * f32(c['step_hits'])
  hit = bool(c['answer_ok'] and not overlong)
  sc = part / denom + f32(answer_credit) * f32(hit)
  return float(f32(sc)), int(hit)
