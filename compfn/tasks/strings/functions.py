"""The 25 atomic string functions of the paper, the four builtins, and the generic-tracing family.

Every function here is compfn's own code with the paper's behaviour (PAPER.md §1.2). Their source
text is what a stage-1 prompt shows (renamed to the ``func_k`` ids by
:func:`compfn.tasks.strings.prompts.function_source`), so each function is self-contained:
no module-level helpers, and docstrings that never name another function.

Worked examples (``s = 'abcde'``)::

    deterministic_shuffle(s)  -> 'adbec'     # out[i] = s[(3*i) % 5]
    rotate_str(s, 2)          -> 'cdeab'
    interlace_str('abc', 'XY') -> 'aXbYc'
    backchain_palindrome('ab', 1) -> 'abba'

The *paper's* implementations of ``recursive_reverse`` and ``recursive_interlace`` recurse once per
character, so on CPython 3.11 they raise ``RecursionError`` for strings of about 1,000 characters;
the paper's generator silently skipped such programs. compfn's versions recurse on halves (depth
log2 n) and never fail; paper mode reproduces the skips explicitly
(:data:`PAPER_RECURSION_LIMIT_LEN`, used by the generator only).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Callable


# --------------------------------------------------------------------------------------------
# The 25 functions (internal names; prompts show them only as func_k).
# --------------------------------------------------------------------------------------------


def deterministic_shuffle(s):
  """Reorder the characters with a fixed multiplier permutation: out[i] = s[(i * m) % len(s)],
  where m is the smallest odd number >= 3 that is coprime with len(s)."""
  from math import gcd

  n = len(s)
  if n == 0:
    return s
  m = 3
  while gcd(m, n) != 1:
    m += 2
  return ''.join(s[(i * m) % n] for i in range(n))


def repeat_str(s, n):
  """Repeat the string n times."""
  return s * n


def remove_vowels(s):
  """Drop every vowel (a, e, i, o, u in either case)."""
  return ''.join(ch for ch in s if ch not in 'aeiouAEIOU')


def sort_chars(s):
  """Sort the characters by code point."""
  return ''.join(sorted(s))


def reverse_words(s):
  """Reverse the order of the whitespace-separated words, joining them with single spaces."""
  return ' '.join(s.split()[::-1])


def add_prefix(s, pre):
  """Put a fixed prefix in front of the string."""
  return pre + s


def add_suffix(s, suf):
  """Append a fixed suffix to the string."""
  return s + suf


def interlace_str(s1, s2):
  """Alternate the characters of two strings; the tail of the longer one is appended."""
  out = []
  for i in range(max(len(s1), len(s2))):
    if i < len(s1):
      out.append(s1[i])
    if i < len(s2):
      out.append(s2[i])
  return ''.join(out)


def rotate_str(s, n):
  """Rotate the string left by n positions (modulo its length)."""
  if not s:
    return s
  n %= len(s)
  return s[n:] + s[:n]


def mirror_str(s):
  """Append the reversed string to the string."""
  return s + s[::-1]


def alternate_case(s):
  """Lower-case the characters at even positions and upper-case those at odd positions."""
  return ''.join(ch.upper() if i % 2 else ch.lower() for i, ch in enumerate(s))


def shift_chars(s, shift):
  """Caesar-shift letters by a fixed amount, wrapping within a-z and A-Z; other characters
  are kept."""

  def shifted(ch):
    for first in ('a', 'A'):
      if first <= ch <= chr(ord(first) + 25):
        return chr((ord(ch) - ord(first) + shift) % 26 + ord(first))
    return ch

  return ''.join(shifted(ch) for ch in s)


def vowel_to_number(s):
  """Replace vowels by digits: a/A -> 1, e/E -> 2, i/I -> 3, o/O -> 4, u/U -> 5."""
  digits = {'a': '1', 'e': '2', 'i': '3', 'o': '4', 'u': '5'}
  return ''.join(digits.get(ch.lower(), ch) if ch in 'aeiouAEIOU' else ch for ch in s)


def insert_separator(s, sep):
  """Put a separator between every two adjacent characters."""
  return sep.join(s)


def duplicate_every_char(s):
  """Write every character twice."""
  return ''.join(ch + ch for ch in s)


def fancy_brackets(s):
  """Wrap every character in guillemets: c -> «c»."""
  return ''.join('«' + ch + '»' for ch in s)


def compress_repeats(s):
  """Collapse every run of equal adjacent characters into one character."""
  out = []
  for ch in s:
    if not out or out[-1] != ch:
      out.append(ch)
  return ''.join(out)


def recursive_reverse(s):
  """Reverse the string recursively: reverse both halves and swap them."""
  if len(s) <= 1:
    return s
  mid = len(s) // 2
  return recursive_reverse(s[mid:]) + recursive_reverse(s[:mid])


def loop_concat(s, n):
  """Concatenate n copies of the string with a loop."""
  out = ''
  for _ in range(n):
    out += s
  return out


def while_rotate(s, n):
  """Move the first character to the end, n times (while the string is non-empty)."""
  count = 0
  while s and count < n:
    s = s[1:] + s[0]
    count += 1
  return s


def recursive_interlace(s1, s2):
  """Alternate the characters of two strings recursively; the longer tail is appended."""
  n = min(len(s1), len(s2))
  if n <= 1:
    return s1[:n] + s2[:n] + s1[n:] + s2[n:]
  half = n // 2
  return recursive_interlace(s1[:half], s2[:half]) + recursive_interlace(s1[half:], s2[half:])


def loop_filter_nonalpha(s):
  """Keep only alphabetic characters, with an explicit loop."""
  out = ''
  for ch in s:
    if ch.isalpha():
      out += ch
  return out


def verify_even_length(s):
  """Return the string if its length is even, otherwise drop its last character."""
  return s if len(s) % 2 == 0 else s[:-1]


def backchain_add_digit(s, depth):
  """Backward chaining towards 'contains a digit': search (depth first, at most depth steps)
  through the moves append '1', prepend '2', 'a' -> '3', reverse; return the first string
  found that has a digit, or s unchanged if none is found."""

  def search(t, d):
    if any(ch.isdigit() for ch in t):
      return t
    if d == 0:
      return None
    for move in (
        lambda u: u + '1',
        lambda u: '2' + u,
        lambda u: u.replace('a', '3'),
        lambda u: u[::-1],
    ):
      found = search(move(t), d - 1)
      if found is not None:
        return found
    return None

  found = search(s, depth)
  return s if found is None else found


def backchain_palindrome(s, depth):
  """Backward chaining towards a palindrome: while s is not a palindrome and depth remains,
  append its reverse."""
  if s == s[::-1] or depth <= 0:
    return s
  return backchain_palindrome(s + s[::-1], depth - 1)


# --------------------------------------------------------------------------------------------
# Registry: ids, kinds, parameters, splits (PAPER.md §1.2, EXACT.md §1).
# --------------------------------------------------------------------------------------------

L = string.ascii_lowercase

#: Per-character recursion the paper's recursive_reverse/recursive_interlace needed: under
#: CPython 3.11's default recursion limit (1000) and the paper generator's call stack they raise
#: for a (shorter) argument of at least this many characters. Used by paper mode only.
PAPER_RECURSION_LIMIT_LEN = 996


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
  """One atomic function.

  name: internal name (never shown to a model).
  fid: the printed id, ``func_k``.
  kind: 'noparam' (f(s)), 'param' (f(s, p)) or 'binary' (f(s1, s2)).
  param: for 'param': 'int' or 'str' (printed as ``f(sub, 3)`` or ``f(sub, 'abc')``).
  split: 'train' (T, stage-2 training) or 'test' (E, held out).
  """

  name: str
  fid: str
  kind: str
  fn: Callable
  param: str | None = None
  split: str = 'train'


_ORDERED = [  # (name, kind, param, split) in func_k order
    ('deterministic_shuffle', 'noparam', None, 'test'),
    ('repeat_str', 'param', 'int', 'train'),
    ('remove_vowels', 'noparam', None, 'test'),
    ('sort_chars', 'noparam', None, 'train'),
    ('reverse_words', 'noparam', None, 'train'),
    ('add_prefix', 'param', 'str', 'train'),
    ('add_suffix', 'param', 'str', 'test'),
    ('interlace_str', 'binary', None, 'test'),
    ('rotate_str', 'param', 'int', 'test'),
    ('mirror_str', 'noparam', None, 'train'),
    ('alternate_case', 'noparam', None, 'test'),
    ('shift_chars', 'param', 'int', 'train'),
    ('vowel_to_number', 'noparam', None, 'test'),
    ('insert_separator', 'param', 'str', 'train'),
    ('duplicate_every_char', 'noparam', None, 'test'),
    ('fancy_brackets', 'noparam', None, 'train'),
    ('compress_repeats', 'noparam', None, 'test'),
    ('recursive_reverse', 'noparam', None, 'train'),
    ('loop_concat', 'param', 'int', 'test'),
    ('while_rotate', 'param', 'int', 'train'),
    ('recursive_interlace', 'binary', None, 'train'),
    ('loop_filter_nonalpha', 'noparam', None, 'test'),
    ('verify_even_length', 'noparam', None, 'train'),
    ('backchain_add_digit', 'param', 'int', 'train'),
    ('backchain_palindrome', 'param', 'int', 'test'),
]

FUNCTIONS: dict[str, FunctionSpec] = {
    name: FunctionSpec(name, f'func_{k}', kind, globals()[name], param, split)
    for k, (name, kind, param, split) in enumerate(_ORDERED)
}
BY_ID: dict[str, FunctionSpec] = {spec.fid: spec for spec in FUNCTIONS.values()}

#: The generator's candidate lists, in the paper's order (EXACT.md §1).
NO_PARAM = (
    'deterministic_shuffle',
    'remove_vowels',
    'sort_chars',
    'reverse_words',
    'mirror_str',
    'alternate_case',
    'vowel_to_number',
    'duplicate_every_char',
    'fancy_brackets',
    'compress_repeats',
    'recursive_reverse',
    'loop_filter_nonalpha',
    'verify_even_length',
)
PARAM = (
    'repeat_str',
    'add_prefix',
    'add_suffix',
    'rotate_str',
    'shift_chars',
    'insert_separator',
    'while_rotate',
    'loop_concat',
    'backchain_add_digit',
    'backchain_palindrome',
)

#: Builtin string methods reachable as ``(sub).op()``.
BUILTINS: dict[str, Callable[[str], str]] = {
    'upper': str.upper,
    'lower': str.lower,
    'capitalize': str.capitalize,
    'swapcase': str.swapcase,
}

TRAIN_FUNCTIONS = tuple(n for n, s in FUNCTIONS.items() if s.split == 'train')
TEST_FUNCTIONS = tuple(n for n, s in FUNCTIONS.items() if s.split == 'test')

#: Behaviourally identical pairs across the split (PAPER.md §1.2): held-out -> train twin.
IDENTICAL_ACROSS_SPLIT = {
    'loop_concat': 'repeat_str',
    'rotate_str': 'while_rotate',
    'interlace_str': 'recursive_interlace',
}


def function_set(stage: int, split: str) -> tuple[str, ...]:
  """The active set A of EXACT.md §1: stage 1 -> all 25; stage 2 train -> T; stage 2 test -> E."""
  if stage == 1:
    return tuple(FUNCTIONS)
  if stage == 2:
    if split == 'train':
      return TRAIN_FUNCTIONS
    if split == 'test':
      return TEST_FUNCTIONS
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  raise ValueError(f'stage must be 1 or 2, got {stage!r}')
