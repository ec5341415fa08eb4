"""The Countdown verifier, Python reference (exact, no ``eval``).

The paper never released its Countdown scorer (PAPER §2.4, §4 item 10), so compfn uses the rule
of the generator the paper used: reasoning-gym's ``CountdownDataset.score_answer`` accepts an
expression whose integers are exactly the given numbers (as a multiset: each used once, all used)
and whose value equals the target. compfn checks the value with exact rational arithmetic
(:class:`fractions.Fraction`) instead of reasoning-gym's ``np.isclose`` on a float, parses a
small fixed grammar itself instead of calling sympy's ``parse_expr`` (``eval`` underneath), and
bounds the work with caps. :mod:`compfn.tasks.countdown.verifier` is the on-device (JAX) version;
the two agree exactly (``tests/test_countdown.py`` fuzzes them against each other).

**The rule**, for a response ``r`` to a problem (``numbers``, ``target``):

1. *Overlong* (the response hit the length limit without EOS) → invalid (``overlong``).
2. *Extraction*: ``i = r.rfind('<answer>')`` (the **last** opening tag); none → ``no_answer_tag``.
   ``j = r.find('</answer>', i + 8)`` (the first closing tag after it); none →
   ``unclosed_answer_tag`` (a response whose last ``<answer>`` is never closed scores 0 even if an
   earlier pair was complete). The answer is ``r[i + 8:j]``.
3. *Lexing*: ASCII whitespace (space, ``\\t \\n \\r \\v \\f``) separates tokens and is otherwise
   ignored; a maximal run of ASCII digits ``0-9`` is an integer literal; ``+ - * / ( )`` are
   operators. Anything else (letters, ``=``, ``.``, ``^``, ``×``, ``÷``, ``−``, Unicode digits or
   spaces, U+FFFD from invalid UTF-8) → ``invalid_character``. A literal with more than
   :data:`MAX_INT_DIGITS` digits → ``number_too_long``; with a leading zero (``07``; ``0`` itself is
   fine) → ``leading_zero``.
4. *Caps*: no tokens → ``empty_answer``; more than :data:`MAX_TOKENS` tokens →
   ``too_many_tokens``; more than :data:`MAX_OPERANDS` literals → ``too_many_numbers``; a prefix
   with more than :data:`MAX_DEPTH` unclosed ``(`` → ``too_deep``.
5. *Grammar* (Python's, restricted to these tokens)::

       expr   := term (('+' | '-') term)*          left-associative
       term   := factor (('*' | '/') factor)*      left-associative, binds tighter
       factor := ('+' | '-') factor | INTEGER | '(' expr ')'

   Unary ``+``/``-`` are accepted, as by sympy/Python (``-3 + 5``, ``2 * -3``, ``--4``); ``**``,
   implicit multiplication ``2(3)`` and empty parentheses are not. Unmatched parentheses →
   ``unbalanced_parentheses``; any other mismatch → ``syntax_error``.
6. *Exact evaluation* in rationals; dividing by a factor whose value is 0 →
   ``division_by_zero`` (so ``0/0`` and ``(1/0)*0`` are errors, not NaN).
7. ``sorted(literals) != sorted(numbers)`` → ``wrong_numbers``; value ``!= target`` →
   ``wrong_value``; otherwise ``correct``.

Steps 1–6 failing make the answer *invalid*; 7 failing makes it *wrong*. Rewards:

* ``reward='binary'`` (default): 1 if correct, else 0 (``acc`` = the same).
* ``reward='reasoning_gym'``: reasoning-gym's shaping — 1.0 correct, 0.05 wrong (the expression
  evaluated but used the wrong numbers or missed the target), 0.01 invalid (reasoning-gym: empty
  answer, or ``parse_expr``/``float()`` raised, e.g. a syntax error or ``1/0``).

**How this differs from reasoning-gym's ``score_answer``** (which sees the already-extracted
answer text; the paper's pipeline would have extracted it from ``<answer>`` tags):

* exact arithmetic: with numbers ``[99, 10, 1, 100, 100]`` and target 990, ``99*10 + 1/(100*100)``
  (= 990.0001) gets 1.0 from reasoning-gym (``np.isclose``: rtol 1e-5, atol 1e-6) and
  ``wrong_value`` here;
* grammar: reasoning-gym accepts anything sympy parses — ``2**3``, ``2.0``, ``3!``, symbols such as
  ``x - x + 5`` (its integer check only sees ``\\b\\d+\\b``) — while compfn accepts only integers,
  ``+ - * /``, parentheses and whitespace (those answers are invalid here); ``0/0`` is NaN there
  (0.05), a division by zero here (0.01 under shaping);
* whitespace: any ASCII whitespace between tokens is fine here; sympy's Python tokenizer rejects
  a bare newline (``95 +\n 18 - 14`` gets 0.01 there, 1 here);
* caps (:data:`MAX_TOKENS`, :data:`MAX_OPERANDS`, :data:`MAX_INT_DIGITS`, :data:`MAX_DEPTH`):
  beyond them an answer is invalid (0.01 under shaping; reasoning-gym would give 0.05 to, e.g., a
  long well-formed sum of wrong numbers). The answer's length is capped in tokens, not characters
  (whitespace is free; both verifiers' work is linear in the response length). No separate cap on
  values is needed: within the caps every intermediate numerator and denominator is at most
  ``2^7 * 9999^8`` in absolute value (see :mod:`compfn.tasks.countdown.verifier`);
* binary reward by default (the paper reports accuracy; no Countdown RL in the paper).

This follows reasoning-gym 0.1.25. Earlier revisions (e.g. commit ``1edc4f5``) generated the same
problems but scored differently: each integer used only had to be *among* the given numbers (no
multiset, not all required) and the value was truncated with ``int()``.

Problems must be in the verifier's range (:func:`check_problem`: 1..:data:`MAX_OPERANDS` numbers,
each 0..9999, ``|target| <= MAX_ABS_TARGET``; every generated set is), else ``ValueError``.

    >>> score_answer('<think>..</think><answer> 18 + 95 - 14 </answer>', [95, 14, 18], 99)
    Verdict(score=1, acc=1, reason='correct')
    >>> score_answer('<answer>(95 - 14) / 18</answer>', [95, 14, 18], 99).reason
    'wrong_value'
"""

from __future__ import annotations

import json
import operator
from fractions import Fraction
from typing import Any, Mapping, NamedTuple, Sequence

__all__ = [
    'Verdict',
    'AnswerError',
    'score_answer',
    'score',
    'extract_answer',
    'parse_answer',
    'check_problem',
    'parse_reference',
    'reference_json',
    'reward_value',
    'MAX_TOKENS',
    'MAX_DEPTH',
    'MAX_OPERANDS',
    'MAX_INT_DIGITS',
    'MAX_ABS_TARGET',
    'INVALID_REASONS',
    'WRONG_REASONS',
    'REWARDS',
    'OPEN_TAG',
    'CLOSE_TAG',
    'WHITESPACE',
]

#: At most this many tokens (literals, operators, parentheses) in an answer.
MAX_TOKENS = 64
#: At most this many nested unclosed '(' at any point.
MAX_DEPTH = 16
#: At most this many integer literals in an answer, and numbers in a problem.
MAX_OPERANDS = 8
#: At most this many digits per literal (so literals and given numbers are 0..9999).
MAX_INT_DIGITS = 4
#: Targets must satisfy |target| <= this.
MAX_ABS_TARGET = 10**MAX_INT_DIGITS - 1

OPEN_TAG, CLOSE_TAG = '<answer>', '</answer>'
WHITESPACE = ' \t\n\r\x0b\x0c'
_DIGITS = '0123456789'
_OPS = '+-*/()'

INVALID_REASONS = (
    'overlong',
    'no_answer_tag',
    'unclosed_answer_tag',
    'invalid_character',
    'number_too_long',
    'leading_zero',
    'empty_answer',
    'too_many_tokens',
    'too_many_numbers',
    'too_deep',
    'unbalanced_parentheses',
    'syntax_error',
    'division_by_zero',
)
WRONG_REASONS = ('wrong_numbers', 'wrong_value')
#: reward name -> (correct, wrong, invalid)
REWARDS = {'binary': (1, 0, 0), 'reasoning_gym': (1.0, 0.05, 0.01)}


class Verdict(NamedTuple):
  score: int | float
  acc: int
  reason: str


class AnswerError(ValueError):
  """An invalid answer; ``reason`` is one of :data:`INVALID_REASONS`."""

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason = reason
    self.detail = detail


def reward_value(outcome: str, reward: str = 'binary') -> int | float:
  """The reward for an outcome ('correct', 'wrong' or 'invalid')."""
  if reward not in REWARDS:
    raise ValueError(f'reward must be one of {sorted(REWARDS)}, got {reward!r}')
  return REWARDS[reward][('correct', 'wrong', 'invalid').index(outcome)]


def check_problem(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
  """Validate a problem against the verifier's range; returns (numbers, target) as ints."""
  nums = tuple(numbers)
  if not 1 <= len(nums) <= MAX_OPERANDS:
    raise ValueError(f'a problem needs 1..{MAX_OPERANDS} numbers, got {len(nums)}')
  try:
    if any(isinstance(v, bool) for v in nums + (target,)):
      raise TypeError
    nums, target = tuple(operator.index(v) for v in nums), operator.index(target)
  except TypeError:
    raise ValueError(
        f'numbers and target must be integers, got {list(nums)!r}, ' f'{target!r}'
    ) from None
  if any(not 0 <= v <= MAX_ABS_TARGET for v in nums):
    raise ValueError(f'numbers must be in 0..{MAX_ABS_TARGET}, got {list(nums)}')
  if abs(target) > MAX_ABS_TARGET:
    raise ValueError(f'|target| must be <= {MAX_ABS_TARGET}, got {target}')
  return nums, target


def extract_answer(response: str) -> str:
  """The text between the last ``<answer>`` and the first ``</answer>`` after it; raises
  :class:`AnswerError` (``no_answer_tag`` / ``unclosed_answer_tag``)."""
  i = response.rfind(OPEN_TAG)
  if i < 0:
    raise AnswerError('no_answer_tag')
  j = response.find(CLOSE_TAG, i + len(OPEN_TAG))
  if j < 0:
    raise AnswerError('unclosed_answer_tag')
  return response[i + len(OPEN_TAG) : j]


def _lex(text: str) -> list[tuple[str, int]]:
  """Tokens ('n', value) / (op, 0). Checks characters first, then literals, left to right."""
  for ch in text:
    if ch not in WHITESPACE and ch not in _DIGITS and ch not in _OPS:
      raise AnswerError('invalid_character', repr(ch))
  tokens = []
  i, n = 0, len(text)
  while i < n:
    ch = text[i]
    if ch in _DIGITS:
      j = i
      while j < n and text[j] in _DIGITS:
        j += 1
      lit = text[i:j]
      if len(lit) > MAX_INT_DIGITS:
        raise AnswerError('number_too_long', f'{lit[:MAX_INT_DIGITS + 1]}...')
      if len(lit) > 1 and lit[0] == '0':
        raise AnswerError('leading_zero', lit)
      tokens.append(('n', int(lit)))
      i = j
    else:
      if ch in _OPS:
        tokens.append((ch, 0))
      i += 1
  return tokens


class _Parser:
  """Recursive descent over the token list; builds a small AST of tuples:
  ('n', v) | ('neg', x) | (op, a, b)."""

  def __init__(self, tokens):
    self.toks = tokens
    self.i = 0

  def peek(self):
    return self.toks[self.i][0] if self.i < len(self.toks) else None

  def expr(self):
    node = self.term()
    while self.peek() in ('+', '-'):
      op = self.toks[self.i][0]
      self.i += 1
      node = (op, node, self.term())
    return node

  def term(self):
    node = self.factor()
    while self.peek() in ('*', '/'):
      op = self.toks[self.i][0]
      self.i += 1
      node = (op, node, self.factor())
    return node

  def factor(self):
    negate = False
    while self.peek() in ('+', '-'):  # unary signs (iterative: no deep recursion)
      negate ^= self.toks[self.i][0] == '-'
      self.i += 1
    kind = self.peek()
    if kind == 'n':
      node = self.toks[self.i]
      self.i += 1
    elif kind == '(':
      self.i += 1
      node = self.expr()
      if self.peek() != ')':
        raise AnswerError('syntax_error', f'expected ) at token {self.i}')
      self.i += 1
    else:
      raise AnswerError('syntax_error', f'expected a number or ( at token {self.i}')
    return ('neg', node) if negate else node


def _evaluate(node) -> Fraction:
  kind = node[0]
  if kind == 'n':
    return Fraction(node[1])
  if kind == 'neg':
    return -_evaluate(node[1])
  a, b = _evaluate(node[1]), _evaluate(node[2])
  if kind == '+':
    return a + b
  if kind == '-':
    return a - b
  if kind == '*':
    return a * b
  if b == 0:
    raise AnswerError('division_by_zero')
  return a / b


def parse_answer(text: str) -> tuple[Fraction, list[int]]:
  """The exact value and the integer literals (in order) of an extracted answer; raises
  :class:`AnswerError` with the first failing check of steps 3–6 of the rule."""
  tokens = _lex(text)
  if not tokens:
    raise AnswerError('empty_answer')
  if len(tokens) > MAX_TOKENS:
    raise AnswerError('too_many_tokens', str(len(tokens)))
  literals = [v for k, v in tokens if k == 'n']
  if len(literals) > MAX_OPERANDS:
    raise AnswerError('too_many_numbers', str(len(literals)))
  depth = low = high = 0
  for k, _ in tokens:
    depth += (k == '(') - (k == ')')
    low, high = min(low, depth), max(high, depth)
  if high > MAX_DEPTH:
    raise AnswerError('too_deep', str(high))
  if low < 0 or depth != 0:
    raise AnswerError('unbalanced_parentheses')
  p = _Parser(tokens)
  tree = p.expr()
  if p.i != len(tokens):
    raise AnswerError('syntax_error', f'unexpected token at {p.i}')
  return _evaluate(tree), literals


def score_answer(
    response: str,
    numbers: Sequence[int],
    target: int,
    *,
    overlong: bool = False,
    reward: str = 'binary',
) -> Verdict:
  """Score one response: ``Verdict(score, acc, reason)`` (see the module docstring).
  Never raises for any response text; raises ``ValueError`` for a problem out of range or an
  unknown ``reward``."""
  if reward not in REWARDS:
    raise ValueError(f'reward must be one of {sorted(REWARDS)}, got {reward!r}')
  nums, target = check_problem(numbers, target)
  good, wrong, bad = REWARDS[reward]
  if overlong:
    return Verdict(bad, 0, 'overlong')
  try:
    value, literals = parse_answer(extract_answer(response))
  except AnswerError as e:
    return Verdict(bad, 0, e.reason)
  if sorted(literals) != sorted(nums):
    return Verdict(wrong, 0, 'wrong_numbers')
  if value != target:
    return Verdict(wrong, 0, 'wrong_value')
  return Verdict(good, 1, 'correct')


def parse_reference(ref: Any) -> tuple[tuple[int, ...], int]:
  """(numbers, target) from a reference: the paper's ground-truth JSON string
  ``{"answer": target, "numbers": [...]}``, the records' ``{"numbers": [...], "target": N}``
  (:func:`compfn.data.sources.countdown_records`), a mapping with either pair of keys (both
  ``answer`` and ``target``: they must agree), or a problem with ``.numbers``/``.target``."""
  if hasattr(ref, 'numbers') and hasattr(ref, 'target'):
    return check_problem(tuple(ref.numbers), ref.target)
  if isinstance(ref, (str, bytes)):
    ref = json.loads(ref)
  if (
      not isinstance(ref, Mapping)
      or 'numbers' not in ref
      or ('answer' not in ref and 'target' not in ref)
  ):
    raise ValueError(f'reference must have "numbers" and "answer" (or "target"), got {ref!r}')
  if 'answer' in ref and 'target' in ref and ref['answer'] != ref['target']:
    raise ValueError(f'reference has "answer" {ref["answer"]!r} != "target" ' f'{ref["target"]!r}')
  if isinstance(ref['numbers'], (str, bytes)) or not isinstance(ref['numbers'], Sequence):
    raise ValueError(f'reference "numbers" must be a list, got {ref["numbers"]!r}')
  return check_problem(tuple(ref['numbers']), ref['answer'] if 'answer' in ref else ref['target'])


def reference_json(ref: Any) -> str:
  """The reference as the bytes the device scorer reads
  (:func:`compfn.tasks.countdown.verifier.score_refs`): validated by :func:`parse_reference`
  and written canonically as ``{"numbers": [95, 14, 18], "target": 99}`` (the records' form).

      >>> reference_json('{"answer": 99, "numbers": [95, 14, 18]}')
      '{"numbers": [95, 14, 18], "target": 99}'
  """
  numbers, target = parse_reference(ref)
  return json.dumps({'numbers': list(numbers), 'target': target})


def score(
    response: str, ref: Any, overlong: bool = False, reward: str = 'binary'
) -> tuple[int | float, int]:
  """Registry form: ``(score, acc)`` for ``ref`` as accepted by :func:`parse_reference`.

  >>> score('<answer>95 + 18 - 14</answer>', '{"answer": 99, "numbers": [95, 14, 18]}')
  (1, 1)
  """
  numbers, target = parse_reference(ref)
  v = score_answer(response, numbers, target, overlong=overlong, reward=reward)
  return v.score, v.acc
