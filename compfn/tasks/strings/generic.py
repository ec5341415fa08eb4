"""The "generic tracing" family: string functions disjoint from the paper's 25.

Stage 0 of the miniature pipeline (spec/MINIATURE.md, recommendations) teaches a tiny model to
trace *nested* calls on these functions, standing in for a pretrained LLM's ability to trace
code. None of them is one of the 25, a builtin, or behaviourally equal to any of them (a test
checks this on thousands of inputs), so nothing about func_0..func_24 leaks. Their ids are
``gen_0 .. gen_11`` (family ``'generic'``).

Family ``'generic_func'`` shows the same twelve behaviours in the *surface form of the 25*:
every behaviour under several ids ``func_25 .. func_99`` (:data:`ALIAS_IDS`; id ``func_k`` is
behaviour ``(k - 25) % 12``), so stage 0 teaches tracing of ``func_k(func_j(...))`` chains while
the ids of the 25 (``func_0 .. func_24``) never occur in a composition before RL (issue #10).
Aliasing keeps the tracing procedure id-agnostic: 75 ids, each seen in many contexts.

Examples (``s = 'abcdef'``)::

    take(s, 2) -> 'ab'        drop(s, 2) -> 'cdef'       evens(s) -> 'ace'
    swap_pairs(s) -> 'badcfe'  atbash(s) -> 'zyxwvu'      uniq('abab') -> 'ab'
    swap_ends(s) -> 'fbcdea'   append_len(s) -> 'abcdef6' half_reverse(s) -> 'cbadef'
    double_vowels(s) -> 'aabcdeef'   wrap(s, 'q') -> 'qabcdefq'   cut_middle(s) -> 'abef'
"""

from __future__ import annotations

from compfn.tasks.strings.functions import FunctionSpec


def take(s, n):
  """Keep the first n characters."""
  return s[:n]


def drop(s, n):
  """Drop the first n characters."""
  return s[n:]


def evens(s):
  """Keep the characters at even positions."""
  return s[::2]


def swap_pairs(s):
  """Swap each pair of adjacent characters (a trailing odd one stays)."""
  out = []
  for i in range(0, len(s) - 1, 2):
    out.append(s[i + 1] + s[i])
  if len(s) % 2:
    out.append(s[-1])
  return ''.join(out)


def atbash(s):
  """Mirror lowercase letters in the alphabet (a <-> z, b <-> y); keep the rest."""
  return ''.join(chr(ord('a') + ord('z') - ord(c)) if 'a' <= c <= 'z' else c for c in s)


def uniq(s):
  """Keep the first occurrence of every character."""
  seen = []
  for c in s:
    if c not in seen:
      seen.append(c)
  return ''.join(seen)


def swap_ends(s):
  """Swap the first and the last character."""
  if len(s) < 2:
    return s
  return s[-1] + s[1:-1] + s[0]


def append_len(s):
  """Append the last digit of the length."""
  return s + str(len(s) % 10)


def half_reverse(s):
  """Reverse the first half (the first len(s) // 2 characters)."""
  h = len(s) // 2
  return s[:h][::-1] + s[h:]


def double_vowels(s):
  """Write every lowercase vowel twice."""
  return ''.join(c + c if c in 'aeiou' else c for c in s)


def wrap(s, c):
  """Put a marker string before and after the string."""
  return c + s + c


def cut_middle(s):
  """Remove the middle third (characters from len//3 up to 2*len//3)."""
  n = len(s)
  return s[: n // 3] + s[2 * n // 3 :]


_ORDERED = [
    ('take', 'param', 'int'),
    ('drop', 'param', 'int'),
    ('evens', 'noparam', None),
    ('swap_pairs', 'noparam', None),
    ('atbash', 'noparam', None),
    ('uniq', 'noparam', None),
    ('swap_ends', 'noparam', None),
    ('append_len', 'noparam', None),
    ('half_reverse', 'noparam', None),
    ('double_vowels', 'noparam', None),
    ('wrap', 'param', 'str'),
    ('cut_middle', 'noparam', None),
]

GENERIC_FUNCTIONS: dict[str, FunctionSpec] = {
    name: FunctionSpec(name, f'gen_{k}', kind, globals()[name], param, 'generic')
    for k, (name, kind, param) in enumerate(_ORDERED)
}

#: Parameter ranges for the generic family (by behaviour name; aliases use their base name) (drawn by the trace generator).
GENERIC_PARAMS = {'take': ('int', 1, 4), 'drop': ('int', 1, 3), 'wrap': ('str', 1, 1)}


#: Ids of each behaviour in family 'generic_func': func_{25+j}, func_{37+j}, ... up to func_99.
ALIAS_IDS: dict[str, tuple[str, ...]] = {
    name: tuple(f'func_{k}' for k in range(25 + j, 100, len(_ORDERED)))
    for j, (name, _, _) in enumerate(_ORDERED)
}

#: Family 'generic_func': one spec per alias, keyed ``'<behaviour>@<id>'`` (e.g. ``'take@func_25'``).
GENERIC_FUNC_ALIASES: dict[str, FunctionSpec] = {
    f'{name}@{fid}': FunctionSpec(f'{name}@{fid}', fid, spec.kind, spec.fn, spec.param, 'generic')
    for name, spec in GENERIC_FUNCTIONS.items()
    for fid in ALIAS_IDS[name]
}

#: Family 'generic_func_wide': the same behaviours under ids func_25 .. func_199 (two- and
#: three-digit ids, ~15 per behaviour), so the tracing prior learns to copy an id of any width
#: (the 25's ids have one or two digits).
ALIAS_IDS_WIDE: dict[str, tuple[str, ...]] = {
    name: tuple(f'func_{k}' for k in range(25 + j, 200, len(_ORDERED)))
    for j, (name, _, _) in enumerate(_ORDERED)
}
GENERIC_FUNC_ALIASES_WIDE: dict[str, FunctionSpec] = {
    f'{name}@{fid}': FunctionSpec(f'{name}@{fid}', fid, spec.kind, spec.fn, spec.param, 'generic')
    for name, spec in GENERIC_FUNCTIONS.items()
    for fid in ALIAS_IDS_WIDE[name]
}


def base_name(name: str) -> str:
  """``'take@func_25'`` -> ``'take'`` (the behaviour of an alias); other names unchanged."""
  return name.split('@', 1)[0]
