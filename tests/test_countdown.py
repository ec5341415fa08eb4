"""Tests for the Countdown task: compfn.tasks.countdown (generator, prompt, Python verifier),
compfn.tasks.countdown.verifier (JAX verifier) and compfn.data.countdown_tfds (TFDS builder).

* Generator equality with reasoning-gym 0.1.25: digests in tests/fixtures/countdown_reference.json
  were produced by running reasoning-gym itself (scratch venv; it is not a compfn dependency) on
  the paper's four sets and five off-paper configs, plus sympy's str() of every chain template.
* The paper's prompt, byte for byte.
* Hand-written verdicts for every rule and every invalid reason, on both verifiers.
* A seeded fuzz corpus of 100,000 responses (valid/invalid expressions, unbalanced parentheses,
  division by zero, unused/repeated/foreign numbers, huge numbers, garbage, Unicode, invalid
  UTF-8, empty, missing/several/unclosed tags, overlong) on which the Python reference and the JAX
  verifier agree exactly.
* The TFDS builder round trip.
"""

import collections
import hashlib
import json
import os
import random
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn.tasks import registry
from compfn.tasks.countdown import generator
from compfn.tasks.countdown import prompts
from compfn.tasks.countdown import scoring
from compfn.tasks.countdown import verifier

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'countdown_reference.json')
N_FUZZ = 100_000
FUZZ_SEED = 5


@pytest.fixture(scope='module')
def reference():
  with open(FIXTURE) as f:
    return json.load(f)


def _digests(problems):
  h = hashlib.sha256()
  hp = hashlib.sha256()
  for p in problems:
    h.update(
        (
            json.dumps([list(p.numbers), p.target, p.expression], separators=(',', ':')) + '\n'
        ).encode()
    )
    hp.update((p.prompt + '\n').encode())
  return h.hexdigest(), hp.hexdigest()


def _record(p):
  return {'numbers': list(p.numbers), 'target': p.target, 'expression': p.expression}


# ================================================================================================
# Generator
# ================================================================================================


def test_paper_example():
  p = generator.generate(level=3, num=1)[0]
  assert (p.numbers, p.target, p.expression) == ((95, 14, 18), 99, '18 + 95 - 14')
  assert generator.make_problem(0, 42, generator.CountdownConfig(3, 3)) == p
  assert p.level == 3 and p.index == 0 and p.seed == 42
  assert json.loads(p.reference) == {'answer': 99, 'numbers': [95, 14, 18]}


@pytest.mark.parametrize('name', ['L2', 'L3', 'L4', 'L5'])
def test_paper_sets_match_reasoning_gym(reference, name):
  ref = reference['sets'][name]
  level = int(name[1:])
  assert ref['config']['min_numbers'] == ref['config']['max_numbers'] == level
  assert ref['config']['seed'] == 42 and ref['config']['size'] == generator.PAPER_SETS[level]
  problems = generator.generate(level, generator.PAPER_SETS[level])
  assert _record(problems[0]) == ref['first'] and _record(problems[-1]) == ref['last']
  assert _digests(problems) == (ref['sha256'], ref['prompts_sha256'])


def test_other_configs_match_reasoning_gym(reference):
  assert len(reference['extra_sets']) == 5
  for name, ref in reference['extra_sets'].items():
    cfg = dict(ref['config'])
    size, seed = cfg.pop('size'), cfg.pop('seed')
    problems = generator.generate(None, size, seed, **cfg)
    assert _record(problems[0]) == ref['first'], name
    assert _digests(problems) == (ref['sha256'], ref['prompts_sha256']), name


def test_chain_templates_match_sympy(reference):
  templates = reference['templates']
  assert len(templates) == 4 + 16 + 64 + 256 + 1024
  for ops, text in templates.items():
    assert generator.chain_template(ops) == text, ops
  assert generator.chain_template('+/-') == '-x_3 + (x_0 + x_1)/x_2'


def test_generator_values_and_options():
  for p in generator.generate(None, 300, 3, min_numbers=2, max_numbers=5):
    assert 2 <= p.level <= 5 and 1 <= p.target <= 999
    assert all(1 <= v <= 100 for v in p.numbers)
    # reasoning-gym's expression is a correct answer to its own problem
    assert scoring.score_answer(f'<answer>{p.expression}</answer>', p.numbers, p.target) == (
        1,
        1,
        'correct',
    )
  assert [p.index for p in generator.iter_generate(3, 5, start=2)] == [2, 3, 4]
  assert generator.generate(4, 3, seed=7) == generator.generate(4, 3, seed=7)
  for bad in (
      dict(level=1),
      dict(level=3, min_value=0),
      dict(level=3, min_target=0),
      dict(level=3, operators=('^',)),
      dict(level=3, operators=()),
      dict(level=None),
      dict(level=3, min_numbers=3, max_numbers=3),
  ):
    with pytest.raises(ValueError):
      generator.generate(num=1, **bad)
  with pytest.raises(ValueError, match='Failed to generate'):
    generator.generate(2, 1, min_target=990, max_target=990, operators=('+',))


# ================================================================================================
# Prompt
# ================================================================================================


def test_prompt_bytes():
  expected = (
      'Using the numbers [95, 14, 18], create an equation that equals 99. You can use '
      'basic arithmetic operations (+, -, *, /) and each number can only be used once. '
      'Show your work in <think> </think> tags. And return the final answer in '
      '<answer> </answer> tags, for example <answer> (1 + 2) / 3 * 4 </answer>.'
  )
  assert prompts.prompt([95, 14, 18], 99) == expected
  assert prompts.prompt((np.int32(95), 14, 18), np.int64(99)) == expected
  assert generator.generate(3, 1)[0].prompt == expected
  assert prompts.TEMPLATE.format(numbers='[95, 14, 18]', target=99) == expected


# ================================================================================================
# Verifier: hand-written cases (Python reference and JAX)
# ================================================================================================
N3, T3 = [95, 14, 18], 99
CASES = [
    # (response, numbers, target, reason)
    ('<answer>18 + 95 - 14</answer>', N3, T3, 'correct'),
    ('<think>95+18-14=99</think>\n<answer> 95 + 18 - 14 </answer>', N3, T3, 'correct'),
    ('<answer>\t(95 - 14)\n+ 18\r\n</answer>', N3, T3, 'correct'),
    ('<answer>95 - (14 - 18)</answer>', N3, 98, 'wrong_value'),
    ('<answer>95 - (14 - 18)</answer>', N3, 99, 'correct'),
    ('<answer>-14 + 95 + 18</answer>', N3, T3, 'correct'),  # unary minus
    ('<answer>95 - -(-14) + 18</answer>', N3, T3, 'correct'),
    ('<answer>+95 + 18 - 14</answer>', N3, T3, 'correct'),  # unary plus
    ('<answer>18 * -14 / -(-95)</answer>', N3, T3, 'wrong_value'),
    ('<answer>((((95)))) + ((18) - (14))</answer>', N3, T3, 'correct'),
    ('<answer>1 + 2 * 3</answer>', [1, 2, 3], 7, 'correct'),  # precedence
    ('<answer>(1 + 2) * 3</answer>', [1, 2, 3], 9, 'correct'),
    ('<answer>8 / 4 / 2</answer>', [8, 4, 2], 1, 'correct'),  # left associative
    ('<answer>8 - 4 - 2</answer>', [8, 4, 2], 2, 'correct'),
    ('<answer>8 / (4 / 2)</answer>', [8, 4, 2], 4, 'correct'),
    ('<answer>(1 + 2) / 3 * 4</answer>', [1, 2, 3, 4], 4, 'correct'),  # the prompt's example
    ('<answer>7 / 2 * 2</answer>', [7, 2, 2], 7, 'correct'),  # exact rationals
    ('<answer>1 / 3 + 1 / 3 + 1 / 3</answer>', [1, 3, 1, 3, 1, 3], 1, 'correct'),
    ('<answer>99*10 + 1/(100*100)</answer>', [99, 10, 1, 100, 100], 990, 'wrong_value'),
    ('<answer>95 + 18</answer>', N3, T3, 'wrong_numbers'),  # unused number
    ('<answer>95 + 18 - 14 + 14 - 14</answer>', N3, T3, 'wrong_numbers'),  # repeated
    ('<answer>95 + 18 - 14 + 0</answer>', N3, T3, 'wrong_numbers'),  # not given
    ('<answer>95 + 17 - 13</answer>', N3, T3, 'wrong_numbers'),
    ('<answer>1 + 1</answer>', [1, 1], 2, 'correct'),  # multiset
    ('<answer>1 + 1</answer>', [1, 2], 2, 'wrong_numbers'),
    ('<answer>0 * 5 + 5</answer>', [0, 5, 5], 5, 'correct'),
    # extraction
    ('95 + 18 - 14', N3, T3, 'no_answer_tag'),
    ('<ANSWER>95 + 18 - 14</ANSWER>', N3, T3, 'no_answer_tag'),
    ('<answer>95 + 18 - 14', N3, T3, 'unclosed_answer_tag'),
    ('<answer>95 + 18 - 14</answer> and <answer>', N3, T3, 'unclosed_answer_tag'),
    ('<answer>1 + 2</answer> final: <answer>95 + 18 - 14</answer>', N3, T3, 'correct'),
    ('<answer>95 + 18 - 14</answer> final: <answer>1 + 2</answer>', N3, T3, 'wrong_numbers'),
    ('<answer>95 + 18 - 14</answer></answer>', N3, T3, 'correct'),
    ('<answer><answer>95 + 18 - 14</answer>', N3, T3, 'correct'),
    ('<answer>95 + 18</answer> - 14</answer>', N3, T3, 'wrong_numbers'),
    ('<answer></answer>', N3, T3, 'empty_answer'),
    ('<answer> \n\t </answer>', N3, T3, 'empty_answer'),
    # lexing
    ('<answer>95 + 18 - 14 = 99</answer>', N3, T3, 'invalid_character'),
    ('<answer>95 × 18</answer>', [95, 18], 1710, 'invalid_character'),
    ('<answer>95 ÷ 5</answer>', [95, 5], 19, 'invalid_character'),
    ('<answer>95 − 14 + 18</answer>', N3, T3, 'invalid_character'),
    ('<answer>95 + 18 - 14.0</answer>', N3, T3, 'invalid_character'),
    ('<answer>2^3</answer>', [2, 3], 1, 'invalid_character'),
    ('<answer>x - x + 95 + 18 - 14</answer>', N3, T3, 'invalid_character'),
    ('<answer>٩٥ + 18 - 14</answer>', N3, T3, 'invalid_character'),  # Arabic-Indic digits
    ('<answer>95\u00a0+ 18 - 14</answer>', N3, T3, 'invalid_character'),  # NBSP
    ('<answer>95 + 18 - 14\x00</answer>', N3, T3, 'invalid_character'),
    ('<answer>95 + 18 - 14 \ufffd</answer>', N3, T3, 'invalid_character'),
    ('<answer>95 + 18 - 014</answer>', N3, T3, 'leading_zero'),
    ('<answer>00 + 95 + 18 - 14</answer>', N3, T3, 'leading_zero'),
    ('<answer>95 + 18 - 14 + 99999999999999999999</answer>', N3, T3, 'number_too_long'),
    ('<answer>10000 - 9901</answer>', [10000 - 9901], 99, 'number_too_long'),
    ('<answer>9999 - 9900</answer>', [9999, 9900], 99, 'correct'),
    # caps
    ('<answer>' + ' + '.join(['1'] * 9) + '</answer>', [1] * 8, 9, 'too_many_numbers'),
    ('<answer>' + ' + '.join(['1'] * 8) + '</answer>', [1] * 8, 8, 'correct'),
    ('<answer>' + '-' * 60 + '95 + 18 - 14</answer>', N3, T3, 'too_many_tokens'),
    ('<answer>' + '+' * 59 + '95 + 18 - 14</answer>', N3, T3, 'correct'),  # 64 tokens
    ('<answer>' + '-' * 58 + '95 + 18 - 14</answer>', N3, T3, 'correct'),
    ('<answer>' + '(' * 17 + '95' + ')' * 17 + ' + 18 - 14</answer>', N3, T3, 'too_deep'),
    ('<answer>' + '(' * 16 + '95' + ')' * 16 + ' + 18 - 14</answer>', N3, T3, 'correct'),
    # grammar
    ('<answer>(95 + 18 - 14</answer>', N3, T3, 'unbalanced_parentheses'),
    ('<answer>95 + 18) - 14</answer>', N3, T3, 'unbalanced_parentheses'),
    ('<answer>)95 + 18 - 14(</answer>', N3, T3, 'unbalanced_parentheses'),
    ('<answer>95 + 18 - 14 +</answer>', N3, T3, 'syntax_error'),
    ('<answer>* 95 + 18 - 14</answer>', N3, T3, 'syntax_error'),
    ('<answer>95 18 - 14</answer>', N3, T3, 'syntax_error'),
    ('<answer>95 + 18 - 14 ()</answer>', N3, T3, 'syntax_error'),
    ('<answer>95 + () + 18 - 14</answer>', N3, T3, 'syntax_error'),
    ('<answer>2 ** 3 + 1</answer>', [2, 3, 1], 9, 'syntax_error'),
    ('<answer>2(3)</answer>', [2, 3], 6, 'syntax_error'),
    ('<answer>(2)(3)</answer>', [2, 3], 6, 'syntax_error'),
    ('<answer>95 // 18</answer>', [95, 18], 5, 'syntax_error'),
    ('<answer>-</answer>', N3, T3, 'syntax_error'),
    # division by zero
    ('<answer>95 / (18 - 18) + 14</answer>', [95, 18, 18, 14], 14, 'division_by_zero'),
    ('<answer>0 / 0</answer>', [0, 0], 0, 'division_by_zero'),
    ('<answer>(1 / 0) * 0</answer>', [1, 0, 0], 0, 'division_by_zero'),
    ('<answer>5 / 0 + 95 + 18 - 14</answer>', N3, T3, 'division_by_zero'),  # before numbers
    ('<answer>0 / 5 + 99</answer>', [0, 5, 99], 99, 'correct'),
]


def _code(reason):
  return 2 if reason == 'correct' else 1 if reason in scoring.WRONG_REASONS else 0


def test_hand_cases_python():
  reasons = set()
  for resp, nums, tgt, reason in CASES:
    v = scoring.score_answer(resp, nums, tgt)
    assert v == ((1, 1) if reason == 'correct' else (0, 0)) + (reason,), (resp, v)
    shaped = scoring.score_answer(resp, nums, tgt, reward='reasoning_gym')
    assert shaped.score == (1.0, 0.05, 0.01)[2 - _code(reason)] and shaped.reason == reason
    reasons.add(reason)
  assert reasons >= set(scoring.INVALID_REASONS) - {'overlong'} | set(scoring.WRONG_REASONS) | {
      'correct'
  }


def test_hand_cases_device():
  resps = [c[0] for c in CASES]
  s, a = verifier.score_batch(resps, [c[1] for c in CASES], [c[2] for c in CASES])
  want = np.array([_code(c[3]) == 2 for c in CASES], np.int32)
  bad = [(CASES[i][0], CASES[i][3], s[i]) for i in np.nonzero(s != want)[0]]
  assert not bad
  assert s.dtype == np.int32 and np.array_equal(a, want)
  s, a = verifier.score_batch(
      resps, [c[1] for c in CASES], [c[2] for c in CASES], reward='reasoning_gym'
  )
  assert s.dtype == np.float32
  assert np.array_equal(s, np.array([(0.01, 0.05, 1.0)[_code(c[3])] for c in CASES], np.float32))


def test_overlong():
  good = '<answer>18 + 95 - 14</answer>'
  assert scoring.score_answer(good, N3, T3, overlong=True) == (0, 0, 'overlong')
  assert scoring.score_answer(good, N3, T3, overlong=True, reward='reasoning_gym').score == 0.01
  s, a = verifier.score_batch([good, good], [N3, N3], [T3, T3], overlong=[True, False])
  assert s.tolist() == [0, 1] and a.tolist() == [0, 1]


def _base9999(n):
  """An expression over literals <= 9999 whose value is n (> 0), and its literals."""
  digits = []
  while n:
    n, d = divmod(n, 9999)
    digits.append(d)
  text, lits = str(digits[-1]), [digits[-1]]
  for d in reversed(digits[:-1]):
    text, lits = f'({text}*9999 + {d})', lits + [9999, d]
  return text, lits


def test_exactness_adversarial():
  """Numbers divisible by some of the residue primes but not zero, near misses, and the largest
  values the caps allow."""
  p1, p2, p3 = verifier.PRIMES[:3]
  cases = []
  x12, l12 = _base9999(p1 * p2)  # 5 literals, value = p1 * p2
  cases.append((f'1 + 2 / {x12}', [1, 2] + l12, 1, 'wrong_value'))  # divisor = 0 mod p1, p2
  cases.append((f'5 + {x12}', [5] + l12, 5, 'wrong_value'))  # diff = 0 mod p1, p2
  x1, l1 = _base9999(p1)  # 3 literals, value = p1
  cases.append((f'{x1} / {x1}', l1 * 2, 1, 'correct'))
  cases.append((f'1 / ({x1} - {x1})', [1] + l1 * 2, 1, 'division_by_zero'))
  cases.append((f'1 / {x1} + {x1} - {x1}', [1] + l1 * 2, 0, 'too_many_numbers'))
  cases.append((f'1 / {x1} - 1 / {x1}', [1, 1] + l1 * 2, 0, 'correct'))
  x123, l123 = _base9999(p1 * p2 * p3)  # 7 literals
  assert len(l123) == 7
  cases.append((f'1 + {x123}', [1] + l123, 1, 'wrong_value'))
  nines = [9999] * 8
  cases += [
      ('9999*9999*9999*9999/(9999*9999*9999*9999)', nines, 1, 'correct'),
      ('(9999*9999*9999*9999 + 9999)/(9999*9999*9999)', nines, 9999, 'wrong_value'),
      ('-9999*9999*9999*9999*9999*9999*9999*9999', nines, -9999, 'wrong_value'),
      ('9999/(9999*9999*9999 - 9999*9999*9999)', [9999] * 7, 0, 'division_by_zero'),
      ('9999/(9999*9999*9999 - 9999*9999*9998)', [9999] * 6 + [9998], 0, 'wrong_value'),
      ('(9999*9999 - 9998*9998)/(9999 + 9998)', [9999, 9999, 9998, 9998, 9999, 9998], 1, 'correct'),
      ('1/9999 + 1/9999 + 1/9999 + 1/9999', [1, 9999] * 4, 0, 'wrong_value'),
      ('9999 - 1/(9999*9999*9999*9999*9999*9999)', [1] + [9999] * 7, 9999, 'wrong_value'),
  ]
  resps = [f'<answer>{c[0]}</answer>' for c in cases]
  for r, (_, nums, tgt, reason) in zip(resps, cases):
    assert scoring.score_answer(r, nums, tgt).reason == reason, r
  s, a = verifier.score_batch(
      resps, [c[1] for c in cases], [c[2] for c in cases], reward='reasoning_gym'
  )
  want = [(0.01, 0.05, 1.0)[_code(c[3])] for c in cases]
  assert s.tolist() == pytest.approx(want) and a.tolist() == [int(w == 1.0) for w in want]


def test_primes_cover_the_bound():
  bound = 2 ** (scoring.MAX_OPERANDS - 1) * (10**scoring.MAX_INT_DIGITS - 1) ** scoring.MAX_OPERANDS
  prod = 1
  for p in verifier.PRIMES:
    prod *= p
    assert p * p < 2**31
  assert prod > 2 * bound * (scoring.MAX_ABS_TARGET + 1)


def test_registry_and_reference_forms():
  task = registry.get('countdown')
  assert callable(task.device_score)
  probs = task.generate(level=3, num=2)
  assert task.prompt(probs[0]) == probs[0].prompt
  ref = task.reference(probs[0])
  assert ref == '{"answer": 99, "numbers": [95, 14, 18]}'
  assert task.score('<answer>95+18-14</answer>', ref) == (1, 1)
  assert task.score('<answer>95+18-14</answer>', ref, True) == (0, 0)
  assert scoring.score(
      '<answer>95+18</answer>', {'answer': 99, 'numbers': [95, 14, 18]}, reward='reasoning_gym'
  ) == (0.05, 0)
  assert scoring.score('<answer>95+18-14</answer>', probs[0]) == (1, 1)
  nums, lens, tg = verifier.encode_references([ref, probs[1]])
  assert nums.shape == (2, scoring.MAX_OPERANDS) and lens.tolist() == [3, 3] and tg[0] == 99
  for bad in ([], [1] * 9, [10000], [-1], [1.5]):
    with pytest.raises(ValueError):
      scoring.score_answer('<answer>1</answer>', bad, 1)
  for bad_t in (10000, -10000, 2.0, True):
    with pytest.raises(ValueError):
      scoring.score_answer('<answer>1</answer>', [1], bad_t)
  with pytest.raises(ValueError):
    scoring.score_answer('<answer>1</answer>', [1], 1, reward='shaped')
  with pytest.raises(ValueError):
    scoring.parse_reference('{"numbers": [1]}')


def test_parse_answer():
  assert scoring.parse_answer(' (1 + 2) / 3 * 4 ') == (Fraction(4), [1, 2, 3, 4])
  assert scoring.parse_answer('-(7)/-2') == (Fraction(7, 2), [7, 2])
  with pytest.raises(scoring.AnswerError) as e:
    scoring.parse_answer('1 +')
  assert e.value.reason == 'syntax_error'
  assert scoring.extract_answer('a<answer>b</answer>c<answer>d</answer>e') == 'd'


# ================================================================================================
# Verifier: JAX specifics
# ================================================================================================


def _bytes_batch(resps, width):
  arr = np.zeros((len(resps), width), np.int32)
  for i, r in enumerate(resps):
    b = r.encode()
    arr[i, : len(b)] = np.frombuffer(b, np.uint8)
  return arr, np.array([len(r.encode()) for r in resps], np.int32)


def test_device_under_jit_and_vmap():
  resps = ['<answer>18 + 95 - 14</answer>', '<answer>1 + 2</answer>', 'junk']
  resp, rl = _bytes_batch(resps, 48)
  numbers = np.array([[95, 14, 18], [1, 2, 0], [1, 2, 3]], np.int32)  # M = 3 < MAX_OPERANDS
  nl = np.array([3, 2, 3], np.int32)
  tgt = np.array([99, 4, 6], np.int32)
  ol = np.zeros(3, bool)

  @jax.jit
  def outer(resp, rl, numbers, nl, tgt, ol):
    shaped, a = verifier.score(resp, rl, numbers, nl, tgt, ol, reward='reasoning_gym')
    return shaped, a, jnp.sum(a)

  shaped, a, tot = outer(resp, rl, numbers, nl, tgt, ol)
  assert shaped.tolist() == pytest.approx([1.0, 0.05, 0.01]) and a.tolist() == [1, 0, 0]
  assert shaped.dtype == jnp.float32 and int(tot) == 1
  binary = jax.jit(verifier.score)
  s, a = binary(resp, rl, numbers, nl, tgt, ol)
  assert s.dtype == jnp.int32 and s.tolist() == [1, 0, 0] and a.tolist() == [1, 0, 0]
  # out-of-range problems (numbers_len 0 or > M, a target beyond the cap) score invalid
  s, _ = binary(
      resp, rl, numbers, np.array([0, 4, 3], np.int32), np.array([99, 4, 10**5], np.int32), ol
  )
  assert s.tolist() == [0, 0, 0]
  # bytes past resp_len are ignored
  resp2, _ = _bytes_batch(['<answer>18 + 95 - 14</answer>9'] * 3, 48)
  s, _ = binary(resp2, rl, numbers, nl, tgt, ol)
  assert s.tolist() == [1, 0, 0]
  # vmap over an extra leading axis
  f = jax.jit(jax.vmap(lambda *xs: verifier.verify(*xs)))
  out = f(*(np.stack([x, x]) for x in (resp, rl, numbers, nl, tgt, ol)))
  assert out.tolist() == [[2, 1, 0], [2, 1, 0]]


def test_score_batch_inputs():
  s, a = verifier.score_batch([], [], [])
  assert s.shape == a.shape == (0,)
  with pytest.raises(ValueError):
    verifier.score_batch('<answer>1</answer>', [[1]], [1])
  with pytest.raises(ValueError):
    verifier.score_batch(['a', 'b'], [[1]], [1])
  with pytest.raises(ValueError):
    verifier.score_batch(['a'], [[1]], [1], overlong=[True, False])
  with pytest.raises(ValueError):
    verifier.score_batch(['a'], [[1]], [1], reward='nope')
  with pytest.raises(ValueError):
    verifier.score_batch([1], [[1]], [1])
  with pytest.raises(ValueError):
    verifier.score_batch(['\ud800'], [[1]], [1])
  long = '<think>' + 'x' * 300 + '</think><answer>95 + 18 - 14</answer>'
  s, _ = verifier.score_batch([long, b'<answer>95 + 18 - 14</answer>\xff'], [N3, N3], [T3, T3])
  assert s.tolist() == [1, 1]


# ================================================================================================
# Fuzz: Python reference == JAX on 100,000 responses
# ================================================================================================
_GARBAGE = [
    'x',
    '=',
    '.',
    '^',
    '**',
    '×',
    '÷',
    '−',
    '٣',
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
]
_WS = ['', '', '', ' ', ' ', '  ', '\t', '\n', '\r\n', '\x0b', '\x0c']


def _fuzz_expr(rng, nums):
  """A random well-formed expression using each of nums once: (text, exact value or None)."""
  if len(nums) == 1:
    text, val = str(nums[0]), Fraction(nums[0])
  else:
    k = rng.randint(1, len(nums) - 1)
    lt, lv = _fuzz_expr(rng, nums[:k])
    rt, rv = _fuzz_expr(rng, nums[k:])
    op = rng.choice('+-*/')
    if lv is None or rv is None or (op == '/' and rv == 0):
      val = None
    else:
      val = lv + rv if op == '+' else lv - rv if op == '-' else lv * rv if op == '*' else lv / rv
    if rng.random() < 0.75:
      lt, rt = f'({lt})', f'({rt})'
    text = lt + rng.choice(_WS) + op + rng.choice(_WS) + rt
  r = rng.random()
  if r < 0.08:
    text, val = '-' + rng.choice(_WS) + '(' + text + ')', None if val is None else -val
  elif r < 0.1:
    text = '+(' + text + ')'
  elif r < 0.13:
    text = '((' + text + '))'
  return text, val


def _fuzz_mutate(rng, text, nums):
  kind = rng.randrange(14)
  chars = list(text)
  if kind == 0 and chars:
    del chars[rng.randrange(len(chars))]
  elif kind == 1:
    chars.insert(rng.randint(0, len(chars)), rng.choice(_GARBAGE))
  elif kind == 2:
    chars.insert(rng.randint(0, len(chars)), rng.choice('+-*/()(('))
  elif kind == 3:  # a number not given / huge
    return text.replace(
        str(rng.choice(nums)),
        str(rng.choice([0, 1, 7, 100, 101, 9999, 10000, 123456, 99999999999])),
        1,
    )
  elif kind == 4:  # a repeated number
    return f'{text} + {rng.choice(nums)}'
  elif kind == 5:  # truncated
    return text[: rng.randint(0, len(text))]
  elif kind == 6:  # division by zero
    a = rng.choice(nums)
    return f'{text} / ({a} - {a})' if rng.random() < 0.5 else f'({text}) * 0 / 0'
  elif kind == 7:  # leading zero
    return text.replace(str(rng.choice(nums)), '0' + str(rng.choice(nums)), 1)
  elif kind == 8:  # deep nesting
    d = rng.randint(10, 20)
    return '(' * d + text + ')' * d
  elif kind == 9:  # many unary signs
    return rng.choice(['-', '+', '- ']) * rng.randint(1, 40) + text
  elif kind == 10:  # long sums: token / operand caps
    return ' + '.join([text] + [str(rng.randint(0, 99)) for _ in range(rng.randint(1, 40))])
  elif kind == 11:  # power, implicit multiplication
    return rng.choice([text + '**2', '2(' + text + ')', text + '(1)', '(' + text + ')(2)'])
  elif kind == 12:
    return text + ' = ' + str(rng.randint(1, 999))
  else:
    chars.insert(rng.randint(0, len(chars)), rng.choice(')('))
  return ''.join(chars)


def _fuzz_case(rng):
  """(response str | bytes, numbers, target, overlong)."""
  nums = [
      rng.randint(0 if rng.random() < 0.05 else 1, rng.choice([10, 100, 100, 1000, 9999]))
      for _ in range(rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8]))
  ]
  order = nums[:]
  rng.shuffle(order)
  text, val = _fuzz_expr(rng, order)
  if val is not None and val.denominator == 1 and abs(val) <= 9999 and rng.random() < 0.8:
    target = int(val)
  else:
    target = rng.randint(-50, 999) if rng.random() < 0.9 else rng.choice([9999, -9999, 0])
  for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
    text = _fuzz_mutate(rng, text, nums)
  body = f'<answer>{rng.choice(_WS)}{text}{rng.choice(_WS)}</answer>'
  w = rng.randrange(20)
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
    resp = rng.choice(['<answer></answer>', '<answer>  \n </answer>', ''])
  elif w == 7:
    resp = f'<think>{rng.choice(_GARBAGE) * 3}</think>\n{body}'
  elif w == 8:
    resp = rng.choice(
        [f'<ANSWER>{text}</ANSWER>', f'< answer>{text}</answer>', f'<answer>{text}</ answer>']
    )
  elif w == 9:
    resp = ''.join(
        rng.choice(_GARBAGE + list('0123456789+-*/() ')) for _ in range(rng.randint(0, 30))
    )
    resp = f'<answer>{resp}</answer>' if rng.random() < 0.7 else resp
  else:
    resp = f'Let me think. {body}'
  if rng.random() < 0.05:  # raw bytes, possibly invalid UTF-8
    b = bytearray(resp.encode('utf-8'))
    for _ in range(rng.randint(1, 3)):
      b.insert(rng.randint(0, len(b)), rng.choice([0xFF, 0xC3, 0xE2, 0x80, 0xF0, 0xED, 0xA0, 0x0B]))
    resp = bytes(b)
  return resp, nums, target, rng.random() < 0.02


@pytest.fixture(scope='module')
def fuzz():
  rng = random.Random(FUZZ_SEED)
  cases = [_fuzz_case(rng) for _ in range(N_FUZZ)]
  verdicts = []
  for resp, nums, tgt, ol in cases:
    text = resp.decode('utf-8', errors='replace') if isinstance(resp, bytes) else resp
    verdicts.append(scoring.score_answer(text, nums, tgt, overlong=ol, reward='reasoning_gym'))
  return cases, verdicts


def test_fuzz_device_matches_reference(fuzz):
  cases, verdicts = fuzz
  s, a = verifier.score_batch(
      [c[0] for c in cases],
      [c[1] for c in cases],
      [c[2] for c in cases],
      [c[3] for c in cases],
      reward='reasoning_gym',
  )
  want_s = np.array([v.score for v in verdicts], np.float32)
  want_a = np.array([v.acc for v in verdicts], np.int32)
  bad = np.nonzero((s != want_s) | (a != want_a))[0]
  assert not len(bad), [(cases[i], verdicts[i], s[i]) for i in bad[:5]]


def test_fuzz_binary_matches_reference(fuzz):
  cases, verdicts = fuzz
  cases, verdicts = cases[:3000], verdicts[:3000]
  s, a = verifier.score_batch(
      [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases]
  )
  assert s.tolist() == [int(v.reason == 'correct') for v in verdicts] == a.tolist()


def test_fuzz_is_not_vacuous(fuzz):
  cases, verdicts = fuzz
  assert len(cases) >= 100_000
  counts = collections.Counter(v.reason for v in verdicts)
  for reason in scoring.INVALID_REASONS + scoring.WRONG_REASONS + ('correct',):
    assert counts[reason] >= 100, (reason, counts)
  assert counts['correct'] >= 5_000
  assert sum(isinstance(c[0], bytes) for c in cases) >= 3_000


# ================================================================================================
# TFDS builder
# ================================================================================================


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  import tensorflow_datasets as tfds
  from compfn.data import countdown_tfds

  tfds.disable_progress_bar()
  d1, d2 = tmp_path_factory.mktemp('cd1'), tmp_path_factory.mktemp('cd2')
  for cfg in ('L3', 'L2_n1000_seed7'):
    countdown_tfds.prepare(cfg, d1)
  countdown_tfds.prepare('L3', d2)
  return countdown_tfds, str(d1), str(d2)


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      p = os.path.join(dirpath, n)
      with open(p, 'rb') as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def test_builder_configs():
  from compfn.data import countdown_tfds

  assert countdown_tfds.named_configs() == ['L2', 'L3', 'L4', 'L5']
  cfgs = {c.name: c for c in countdown_tfds.Countdown.BUILDER_CONFIGS}
  assert cfgs['L2'].num == 50_000 and cfgs['L2'].split == 'train' and cfgs['L2'].seed == 42
  assert all(cfgs[f'L{k}'].num == 512 and cfgs[f'L{k}'].split == 'test' for k in (3, 4, 5))
  c = countdown_tfds.Countdown.config_for(3, 128, seed=7)
  assert (
      c.name == 'L3_n128_seed7'
      and countdown_tfds.config_from_name(c.name).generator_args() == c.generator_args()
  )
  assert countdown_tfds.config_from_name('L4') is cfgs['L4']
  for bad in ('L3_n512', 'L3_seed42', 'L1', 'stage2_test_L1to8', 'L3_n0'):
    with pytest.raises(ValueError):
      countdown_tfds.config_from_name(bad)


def test_builder_round_trip(built):
  import tensorflow_datasets as tfds

  countdown_tfds, d1, d2 = built
  src = countdown_tfds.data_source('L3', d1)
  assert len(src) == 512
  records = [countdown_tfds.decode_record(src[i]) for i in range(len(src))]
  assert records == countdown_tfds.generate_records('L3')
  assert records[0]['numbers'] == [95, 14, 18] and records[0]['target'] == 99
  assert records[0]['prompt'] == prompts.prompt([95, 14, 18], 99)
  assert scoring.score('<answer>95 + 18 - 14</answer>', records[0]['reference']) == (1, 1)
  src2 = tfds.data_source('countdown/L2_n1000_seed7', data_dir=d1)['train']
  assert [countdown_tfds.decode_record(src2[i]) for i in (0, 999)] == [
      countdown_tfds.problem_record(p, i)
      for i, p in (
          (0, generator.make_problem(0, 7, generator.CountdownConfig(2, 2))),
          (999, generator.make_problem(999, 7, generator.CountdownConfig(2, 2))),
      )
  ]
  f1 = {k: v for k, v in _files(os.path.join(d1, 'countdown', 'L3')).items()}
  f2 = _files(os.path.join(d2, 'countdown', 'L3'))
  assert f1.keys() == f2.keys() and all(f1[k] == f2[k] for k in f1 if 'array_record' in k)
  with pytest.raises(FileNotFoundError):
    countdown_tfds.data_source('L5', d1)
