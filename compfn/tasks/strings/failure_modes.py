"""Failure modes of trace-format responses (PAPER §3.5), classified by rules, not an LLM judge.

The paper has an LLM judge sort wrong answers into Ignores Composition, Incomplete Trace,
Incorrect Composition and Atomic Error. In the trace format (:mod:`compfn.tasks.strings.prompts`)
every step is a flat call on literals, so the same categories follow from the text alone. With
the level-2 problem ``func_3(func_7('fgi','dnqjwha'))=`` and its target::

    ;func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw

:func:`classify` applies these rules in order (E = the target's function ids innermost-first,
n = len(E); R = the response's):

1. ``format_error``: the response is truncated (no EOS), has no ``;``, or has a step without
   ``=`` or whose call is not ``fid(arg, ...)`` (args: ``'text'`` literals, integers, or nested
   calls). ``func_7('fgi','dnqjwha');adfghijnqw`` (no ``=``).
2. ``correct``: the text after the last ``;`` equals ``ref``, whatever the steps say
   (``shape_ok`` still tells whether they were the right calls). ``;adfghijnqw``.
3. ``ignores_composition``: n >= 2 and the response has at most one step — it answers a
   composition as a single call, or with no step at all.
   ``;func_3(func_7('fgi','dnqjwha'))=adfghijnq;adfghijnq``.
4. ``incomplete_trace``: the response has fewer steps than E otherwise (2 <= len(R) < n; also a
   level-1 answer with no step). At level 3: ``;f1(..)=..;f2(..)=..;wrong``.
5. ``incorrect_composition``: len(R) >= n and R != E (wrong functions, wrong order, extra steps):
   ``;func_3('fgi')=fgi;func_7('fgi','dnqjwha')=fdgniqjwha;fdgniqjwha``. Also when R == E but
   the arguments are wrong: the first step's arguments differ from the target's first step (it
   does not start from the program input, or a parameter differs), or a later step's input is not
   the previous step's value (as the response wrote it) or its parameters differ:
   ``;func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fgidnqjwha')=adfghijnqw;...``. And when every
   step is right but the answer is not the last step's value (detail ``'answer does not copy the
   last step'``).
6. ``atomic_error``: R == E, the chaining is right, and some step's value differs from running
   that step's call (the registry's function on the literals the response wrote); ``step`` is the
   first such step (1-based). ``;func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnq;
   adfghijnq`` is an atomic error at step 2.

At level 1 (n = 1) a wrong one-step answer is therefore ``atomic_error`` when the call is the
target's and ``incorrect_composition`` when the function or its arguments are not.

Function ids are resolved through :data:`compfn.tasks.strings.functions.FUNCTIONS` and
:data:`compfn.tasks.strings.generic.GENERIC_FUNCTIONS` at call time (no id prefix is assumed).
Literals are read as the trace format writes them (``'`` + text + ``'``, no escapes; the format
never puts ``'``, ``;`` or ``=`` inside one); nothing is ever ``eval``-ed. The concatenation and
builtin steps ``('a'+'b')`` and ``('ab').upper()`` of general programs are not calls and count as
format errors (:func:`compfn.tasks.strings.generator.generate_trace` makes pure chains only).

Example::

    >>> t = ";func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw"
    >>> classify(t, t, 'adfghijnqw').category
    'correct'
    >>> c = classify(t.replace('=adfghijnqw;adfghijnqw', '=adfgijnqw;adfgijnqw'), t, 'adfghijnqw')
    >>> c.category, c.step, c.shape_ok
    ('atomic_error', 2, True)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Optional, Union

from compfn.tasks.strings import functions
from compfn.tasks.strings import generic
from compfn.tasks.strings import scoring

__all__ = [
    'CATEGORIES',
    'Classification',
    'classify',
    'shape_ok',
    'parse_call',
    'tally',
    'shares',
    'markdown_table',
    'plot_stacked',
]

#: The paper's five categories (PAPER §3.5) plus ``format_error``, in reporting order.
CATEGORIES = (
    'correct',
    'ignores_composition',
    'incomplete_trace',
    'incorrect_composition',
    'atomic_error',
    'format_error',
)

#: Plot colours, one per category.
COLORS = {
    'correct': '#4caf50',
    'ignores_composition': '#9c27b0',
    'incomplete_trace': '#ff9800',
    'incorrect_composition': '#f44336',
    'atomic_error': '#2196f3',
    'format_error': '#9e9e9e',
}


@dataclasses.dataclass(frozen=True)
class Classification:
  """The verdict on one response.

  category: one of :data:`CATEGORIES`.
  step: for ``atomic_error`` the 1-based index of the first wrong step, else None.
  shape_ok: the response's steps call the target's functions, innermost first, same count.
  num_steps: the number of steps the response wrote.
  detail: a short human-readable reason.
  """

  category: str
  step: Optional[int] = None
  shape_ok: bool = False
  num_steps: int = 0
  detail: str = ''


@dataclasses.dataclass(frozen=True)
class _Call:
  """A parsed step call ``fid(args...)``; args are str, int or nested :class:`_Call`."""

  fid: str
  args: tuple


# ------------------------------------------------------------------------------------------------
# Parsing step calls (a tiny recursive-descent parser; never eval)
# ------------------------------------------------------------------------------------------------

_ID = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(')
_STR = re.compile(r"\s*'([^']*)'")
_INT = re.compile(r'\s*(-?[0-9]+)')
_PUNCT = re.compile(r'\s*([,)])')


def _call_at(text: str, i: int):
  m = _ID.match(text, i)
  if m is None:
    return None
  fid, i, args = m.group(1), m.end(), []
  close = _PUNCT.match(text, i)
  if close is not None and close.group(1) == ')':
    return _Call(fid, ()), close.end()
  while True:
    m = _STR.match(text, i)
    if m is not None:
      args.append(m.group(1))
      i = m.end()
    else:
      m = _INT.match(text, i)
      if m is not None:
        args.append(int(m.group(1)))
        i = m.end()
      else:
        sub = _call_at(text, i)
        if sub is None:
          return None
        args.append(sub[0])
        i = sub[1]
    m = _PUNCT.match(text, i)
    if m is None:
      return None
    i = m.end()
    if m.group(1) == ')':
      return _Call(fid, tuple(args)), i


def parse_call(text: str) -> Optional[_Call]:
  """Parse a step call such as ``func_7('fgi','dnqjwha')``; None if it is not ``fid(args)``.

  >>> parse_call("func_8('abc',2)")
  _Call(fid='func_8', args=('abc', 2))
  >>> parse_call("('ab'+'c')") is None
  True
  """
  got = _call_at(text, 0)
  if got is None or text[got[1] :].strip():
    return None
  return got[0]


def _registry() -> dict:
  """id -> FunctionSpec over the 25 functions and the generic family, ``gen_k`` and its
  ``func_25 .. func_99`` aliases (built at call time)."""
  out = {s.fid: s for s in generic.GENERIC_FUNCTIONS.values()}
  out.update({s.fid: s for s in generic.GENERIC_FUNC_ALIASES_WIDE.values()})
  out.update({s.fid: s for s in functions.FUNCTIONS.values()})
  return out


def _parse(text: str):
  """(steps [(call, value)], answer) or a string saying why the text is malformed."""
  steps, answer = scoring.parse_trace(text)
  if answer is None:
    return 'no ";" in the response'
  out = []
  for k, (call, value) in enumerate(steps, 1):
    if value is None:
      return f'step {k} has no "="'
    parsed = parse_call(call)
    if parsed is None:
      return f'step {k} is not a call fid(args): {call[:40]!r}'
    out.append((parsed, value))
  return out, answer


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


def _chain_positions(spec, expected_args: tuple, expected_prev: str) -> list:
  """Argument positions that carry the previous step's value in a target step."""
  if spec.kind != 'binary':
    return [0]
  pos = [j for j, a in enumerate(expected_args) if a == expected_prev]
  return pos or list(range(len(expected_args)))


def _check_chain(resp, exp, registry) -> Optional[str]:
  """None if every step's arguments are right (R == E assumed), else why not."""
  for i, ((rc, _), (ec, _)) in enumerate(zip(resp, exp)):
    if i == 0:
      if rc.args != ec.args:
        return 'step 1 does not start from the program input with the right parameters'
      continue
    spec = registry.get(ec.fid)
    if spec is None:
      raise ValueError(f'target calls unknown function {ec.fid!r}')
    if len(rc.args) != len(ec.args):
      return f'step {i + 1} has {len(rc.args)} arguments, expected {len(ec.args)}'
    prev = resp[i - 1][1]
    ok_input = False
    for p in _chain_positions(spec, ec.args, exp[i - 1][1]):
      if rc.args[p] != prev:
        continue
      ok_input = True
      if all(rc.args[j] == ec.args[j] for j in range(len(ec.args)) if j != p):
        break
    else:
      if not ok_input:
        return f"step {i + 1}'s input is not step {i}'s value"
      return f'step {i + 1} has the wrong parameters'
  return None


def _run_step(spec, args: tuple) -> Optional[str]:
  try:
    return spec.fn(*args)
  except Exception:  # pylint: disable=broad-except
    return None


def classify(response: str, target: str, ref: str, truncated: bool = False) -> Classification:
  """Sort a trace-format response into one of :data:`CATEGORIES` (rules: module docstring).

  Args:
    response: the decoded response (special tokens removed), e.g. ``;f(..)=v;...;answer``.
    target: the record's target trace; ref: the reference answer.
    truncated: the response hit the length limit without EOS.

      >>> t = ";func_3('zbrx')=brxz;brxz"
      >>> classify(";func_3('zbrx')=bxrz;bxrz", t, 'brxz').category
      'atomic_error'
      >>> classify(";func_2('zbrx')=zbrx;zbrx", t, 'brxz').category
      'incorrect_composition'
  """
  if not isinstance(response, str):
    raise TypeError(f'response must be str, got {type(response).__name__}')
  parsed_target = _parse(target)
  if isinstance(parsed_target, str):
    raise ValueError(f'malformed target {target!r}: {parsed_target}')
  exp = parsed_target[0]
  expected = [c.fid for c, _ in exp]
  n = len(expected)
  if truncated:
    return Classification(
        'format_error', num_steps=len(scoring.parse_trace(response)[0]), detail='truncated (no EOS)'
    )
  parsed = _parse(response)
  if isinstance(parsed, str):
    return Classification(
        'format_error', num_steps=len(scoring.parse_trace(response)[0]), detail=parsed
    )
  resp, answer = parsed
  got = [c.fid for c, _ in resp]
  ok = got == expected
  m = len(resp)

  def verdict(category, detail, step=None):
    return Classification(category, step=step, shape_ok=ok, num_steps=m, detail=detail)

  if answer == ref:
    return verdict('correct', 'answer equals ref')
  if n >= 2 and m <= 1:
    return verdict(
        'ignores_composition', f'{m} step for a {n}-call composition' if m else 'no steps'
    )
  if m < n:
    return verdict('incomplete_trace', f'{m} of {n} steps')
  if not ok:
    return verdict('incorrect_composition', f'calls {got}, expected {expected}')
  registry = _registry()
  why = _check_chain(resp, exp, registry)
  if why is not None:
    return verdict('incorrect_composition', why)
  for i, (call, value) in enumerate(resp):
    spec = registry.get(call.fid)
    if spec is None:
      raise ValueError(f'target calls unknown function {call.fid!r}')
    if _run_step(spec, call.args) != value:
      return verdict('atomic_error', f'step {i + 1} ({call.fid}) has the wrong value', i + 1)
  if answer != resp[-1][1]:
    return verdict('incorrect_composition', 'answer does not copy the last step')
  return verdict('incorrect_composition', 'steps are consistent but the answer differs from ref')


def shape_ok(response: str, target: str) -> bool:
  """Whether the response's steps call the target's functions, innermost first, same count.

  >>> t = ";func_0('qdq')=qqd;func_11('qqd',4)=uuh;uuh"
  >>> shape_ok(";func_0('qdq')=qdq;func_11('qdq',4)=uhu;uhu", t)
  True
  """
  a, b = _parse(response), _parse(target)
  if isinstance(b, str):
    raise ValueError(f'malformed target {target!r}: {b}')
  if isinstance(a, str):
    return False
  return [c.fid for c, _ in a[0]] == [c.fid for c, _ in b[0]]


# ------------------------------------------------------------------------------------------------
# Tallies, tables and plots
# ------------------------------------------------------------------------------------------------


def _level_key(level) -> tuple:
  s = str(level)
  return (0, int(s), s) if s.lstrip('-').isdigit() else (1, 0, s)


def tally(
    classifications: Iterable[Union[Classification, str]], levels: Iterable
) -> dict[str, dict[str, int]]:
  """Counts per level: ``{'1': {'correct': 3, 'atomic_error': 1, ...}, ...}`` (every category
  present; levels as strings, in numeric order). Items may be Classifications or category names.

      >>> tally(['correct', 'atomic_error', 'correct'], [1, 1, 2])['1']['atomic_error']
      1
  """
  out: dict[str, dict[str, int]] = {}
  cs, ls = list(classifications), list(levels)
  if len(cs) != len(ls):
    raise ValueError(f'{len(cs)} classifications but {len(ls)} levels')
  for c, level in zip(cs, ls):
    cat = c.category if isinstance(c, Classification) else c
    if cat not in CATEGORIES:
      raise ValueError(f'unknown category {cat!r}')
    row = out.setdefault(str(level), dict.fromkeys(CATEGORIES, 0))
    row[cat] += 1
  return {k: out[k] for k in sorted(out, key=_level_key)}


def shares(classifications, levels=None) -> dict[str, dict[str, float]]:
  """Fractions per level; pass (classifications, levels) or a :func:`tally` result alone.

  >>> shares({'2': {'correct': 1, 'atomic_error': 3}})['2']['atomic_error']
  0.75
  """
  t = classifications if levels is None else tally(classifications, levels)
  out = {}
  for level, row in t.items():
    total = sum(row.values())
    out[level] = {c: (row.get(c, 0) / total if total else 0.0) for c in CATEGORIES}
  return out


def _levels(tallies: Mapping[str, Mapping]) -> list[str]:
  found = {str(lv) for t in tallies.values() for lv in t}
  return sorted(found, key=_level_key)


def markdown_table(
    tallies: Mapping[str, Mapping[str, Mapping[str, int]]], title: Optional[str] = None
) -> str:
  """A markdown table of several named evaluations' tallies: one row per (evaluation, level),
  one column per category as ``percent (count)``.

      >>> print(markdown_table({'sft': {'1': {'correct': 3, 'atomic_error': 1}}}, 'L1'))
      ... # doctest: +ELLIPSIS
      ### L1
      <BLANKLINE>
      | evaluation | level | n | correct | ...
  """
  lines = [f'### {title}', ''] if title else []
  lines.append('| evaluation | level | n | ' + ' | '.join(CATEGORIES) + ' |')
  lines.append('|' + '---|' * (3 + len(CATEGORIES)))
  for name, t in tallies.items():
    for level in sorted(t, key=_level_key):
      row = t[level]
      total = sum(row.values())
      cells = [
          f'{100 * row.get(c, 0) / total:.1f}% ({row.get(c, 0)})' if total else '-'
          for c in CATEGORIES
      ]
      lines.append(f'| {name} | {level} | {total} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot_stacked(
    tallies: Mapping[str, Mapping[str, Mapping[str, int]]], path: str, title: Optional[str] = None
) -> str:
  """Stacked bars of category shares: one group per level, one bar per evaluation; returns path.

  plot_stacked({'before_rl': t0, 'after_rl': t1}, 'failure_modes.png')
  """
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names, levels = list(tallies), _levels(tallies)
  width = 0.8 / max(len(names), 1)
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(levels) * max(len(names), 1) + 2), 3.6))
  ticks, labels = [], []
  for g, level in enumerate(levels):
    for b, name in enumerate(names):
      row = tallies[name].get(level) or tallies[name].get(_maybe_int(level)) or {}
      total = sum(row.values())
      x = g + (b - (len(names) - 1) / 2) * width
      bottom = 0.0
      for c in CATEGORIES:
        h = 100.0 * row.get(c, 0) / total if total else 0.0
        ax.bar(
            x,
            h,
            width * 0.92,
            bottom=bottom,
            color=COLORS[c],
            label=c if (g == 0 and b == 0) else None,
        )
        bottom += h
      ticks.append(x)
      labels.append(f'{name}\nL{level}' if len(names) > 1 else f'L{level}')
  ax.set_xticks(ticks)
  ax.set_xticklabels(labels, fontsize=7)
  ax.set_ylabel('% of responses')
  ax.set_ylim(0, 100)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _maybe_int(level: str):
  return int(level) if level.lstrip('-').isdigit() else level
