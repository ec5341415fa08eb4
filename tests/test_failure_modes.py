"""Tests for compfn.tasks.strings.failure_modes (hand-edited traces of real problems)."""

import pytest

from compfn.tasks.strings import failure_modes
from compfn.tasks.strings import functions
from compfn.tasks.strings import generator as Gen
from compfn.tasks.strings import generic


@pytest.fixture(scope='module')
def targets():
  """Level 1-3 problems of seed 0 over all 25 functions, checked against the literals below."""
  probs = Gen.generate_trace(list(functions.FUNCTIONS), 1, 3, 6, seed=0)
  by_prompt = {p.prompt: p for p in probs}
  want = {
      "func_3('zbrx')=": ";func_3('zbrx')=brxz;brxz",
      "func_11(func_0('qdq'),4)=": ";func_0('qdq')=qqd;func_11('qqd',4)=uuh;uuh",
      "func_22(func_20(func_12('kctrm'),'zyjlk'))=": (
          ";func_12('kctrm')=kctrm;func_20('kctrm','zyjlk')=kzcytjrlmk;"
          "func_22('kzcytjrlmk')=kzcytjrlmk;kzcytjrlmk"
      ),
      "func_6(func_5(func_14('ceuvl'),'wgb'),'zb')=": (
          ";func_14('ceuvl')=cceeuuvvll;func_5('cceeuuvvll','wgb')=wgbcceeuuvvll;"
          "func_6('wgbcceeuuvvll','zb')=wgbcceeuuvvllzb;wgbcceeuuvvllzb"
      ),
  }
  for prompt, target in want.items():
    assert by_prompt[prompt].target == target
  return {k: (v, by_prompt[k].answer) for k, v in want.items()}


def check(response, target, ref, category, step=None, shape=None, truncated=False):
  c = failure_modes.classify(response, target, ref, truncated=truncated)
  assert c.category == category, (response, c)
  assert c.step == step, (response, c)
  if shape is not None:
    assert c.shape_ok == shape, (response, c)
  return c


def test_level1(targets):
  t, ref = targets["func_3('zbrx')="]
  assert ref == 'brxz'
  check(t, t, ref, 'correct', shape=True)
  check(";func_2('zbrx')=krr;brxz", t, ref, 'correct', shape=False)  # right answer anyway
  check(";func_3('zbrx')=bxrz;bxrz", t, ref, 'atomic_error', step=1, shape=True)
  check(";func_2('zbrx')=zbr;zbr", t, ref, 'incorrect_composition', shape=False)
  check(";func_3('zbr')=brz;brz", t, ref, 'incorrect_composition', shape=True)  # wrong input
  check(
      ";func_3('zbrx')=brxz;func_3('brxz')=bxzr;bxzr", t, ref, 'incorrect_composition', shape=False
  )  # extra step
  c = check(";func_3('zbrx')=brxz;brx", t, ref, 'incorrect_composition', shape=True)
  assert c.detail == 'answer does not copy the last step'
  c = check(';brx', t, ref, 'incomplete_trace', shape=False)
  assert c.num_steps == 0
  check('brxz', t, ref, 'format_error', shape=False)  # no ';'
  check(";func_3('zbrx')brxz;brxz", t, ref, 'format_error')  # no '='
  check(';func_3(zbrx)=brxz;brxz', t, ref, 'format_error')  # bare word arg
  check(t, t, ref, 'format_error', truncated=True)


def test_level2(targets):
  t, ref = targets["func_11(func_0('qdq'),4)="]
  check(t, t, ref, 'correct', shape=True)
  # Ignores composition: one nested call, one flat call, or no step at all.
  c = check(";func_11(func_0('qdq'),4)=uhu;uhu", t, ref, 'ignores_composition', shape=False)
  assert c.num_steps == 1
  check(";func_11('qdq',4)=uhu;uhu", t, ref, 'ignores_composition')
  check(';uhu', t, ref, 'ignores_composition')
  # Incorrect composition: order, extra step, parameter, chaining, first input.
  check(";func_11('qdq',4)=uhu;func_0('uhu')=uhu;uhu", t, ref, 'incorrect_composition', shape=False)
  check(
      t.replace(';uuh', ";func_9('uuh')=uuhhuu;uuhhuu"),
      t,
      ref,
      'incorrect_composition',
      shape=False,
  )
  c = check(
      ";func_0('qdq')=qqd;func_11('qqd',3)=ttg;ttg", t, ref, 'incorrect_composition', shape=True
  )
  assert 'parameters' in c.detail
  c = check(
      ";func_0('qdq')=qqd;func_11('qdq',4)=uhu;uhu", t, ref, 'incorrect_composition', shape=True
  )
  assert "step 2's input" in c.detail
  c = check(";func_0('qqd')=qdq;func_11('qdq',4)=uhu;uhu", t, ref, 'incorrect_composition')
  assert 'step 1' in c.detail
  check(";func_0('qdq')=qqd;func_11(func_0('qdq'),4)=uuh;uuh", t, ref, 'correct')
  check(";func_0('qdq')=qqd;func_11(func_0('qdq'),4)=uuj;uuj", t, ref, 'incorrect_composition')
  # Atomic errors: a wrong value chained on correctly is an error at that step.
  check(";func_0('qdq')=qdq;func_11('qdq',4)=uhu;uhu", t, ref, 'atomic_error', step=1, shape=True)
  check(";func_0('qdq')=qqd;func_11('qqd',4)=uuj;uuj", t, ref, 'atomic_error', step=2, shape=True)
  # Format errors.
  check(";('qdq'+'a')=qdqa;func_11('qdqa',4)=uhue;uhue", t, ref, 'format_error')
  check(";func_0('qdq')=qqd;func_11('qqd',4;uuh", t, ref, 'format_error')
  check(";func_0('qdq')=qqd;func_11('qqd',4)=uu", t, ref, 'format_error', truncated=True)


def test_level3(targets):
  t, ref = targets["func_22(func_20(func_12('kctrm'),'zyjlk'))="]
  steps = t.split(';')[1:-1]
  check(t, t, ref, 'correct', shape=True)
  check(';' + steps[2] + ';kzcytjrlmk', t, ref, 'correct', shape=False)
  check(";func_22('kctrm')=kctr;kctr", t, ref, 'ignores_composition')
  c = check(
      ";func_12('kctrm')=kctrm;func_20('kctrm','zyjlk')=kzcytjrlm;kzcytjrlm",
      t,
      ref,
      'incomplete_trace',
      shape=False,
  )
  assert c.num_steps == 2
  check(";func_12('kctrm')=kctrm;func_22('kctrm')=kctr;kctr", t, ref, 'incomplete_trace')
  # The binary function's chained argument is its first one: swapping them breaks the chain.
  check(
      t.replace(
          "func_20('kctrm','zyjlk')=kzcytjrlmk", "func_20('zyjlk','kctrm')=zkyccjtlkr"
      ).replace(
          "func_22('kzcytjrlmk')=kzcytjrlmk;kzcytjrlmk",
          "func_22('zkyccjtlkr')=zkyccjtlkr;" 'zkyccjtlkr',
      ),
      t,
      ref,
      'incorrect_composition',
      shape=True,
  )
  check(
      ";func_12('kctrm')=kctrm;func_22('kctrm')=kctr;func_20('kctr','zyjlk')=kzcytjrl;kzcytjrl",
      t,
      ref,
      'incorrect_composition',
      shape=False,
  )  # wrong order
  check(
      t.replace('=kzcytjrlmk;func_22', '=kzcytjrlkm;func_22').replace(
          "func_22('kzcytjrlmk')=kzcytjrlmk;kzcytjrlmk",
          "func_22('kzcytjrlkm')=kzcytjrlkm;kzcytjrlkm",
      ),
      t,
      ref,
      'atomic_error',
      step=2,
      shape=True,
  )
  check(t.replace('=kzcytjrlmk;kzcytjrlmk', '=kzcytjrl;kzcytjrl'), t, ref, 'atomic_error', step=3)
  # [:-1]: the answer loses a character, so it is not ref (which would be 'correct').
  check(
      t.replace("func_12('kctrm')=kctrm", "func_12('kctrm')=k1ctrm")[:-1],
      t,
      ref,
      'incorrect_composition',
  )  # step 2 no longer reads step 1's value

  t, ref = targets["func_6(func_5(func_14('ceuvl'),'wgb'),'zb')="]
  check(
      t.replace("'wgb')=wgb", "'wgc')=wgc")
      .replace('=wgbcceeuuvvllzb;wgbcceeuuvvllzb', '=wgccceeuuvvllzb;wgccceeuuvvllzb')
      .replace("func_6('wgbcc", "func_6('wgccc"),
      t,
      ref,
      'incorrect_composition',
      shape=True,
  )
  check(
      t.replace(",'zb')=wgbcceeuuvvllzb;wgbcceeuuvvllzb", ",'zb')=wgbcceeuuvvlzb;wgbcceeuuvvlzb"),
      t,
      ref,
      'atomic_error',
      step=3,
      shape=True,
  )
  check(t.replace('=cceeuuvvll;', '=cceeuuvvl;')[:-1], t, ref, 'incorrect_composition')


def test_binary_chain_in_second_position():
  probs = Gen.generate_trace(['interlace_str', 'sort_chars'], 2, 2, 40, seed=3)
  second = [p for p in probs if p.prompt.startswith("func_7('")]
  assert second, 'expected a problem with the chained argument second'
  for p in second:
    assert failure_modes.classify(p.target, p.target, p.answer).category == 'correct'
    steps = p.target.split(';')
    call, value = steps[2].rsplit('=', 1)
    args = call[len('func_7(') : -1].split(',')
    bad = ';'.join(steps[:2] + [f'func_7({args[1]},{args[0]})={value}', value + 'x'])
    assert failure_modes.classify(bad, p.target, p.answer).category == 'incorrect_composition'


def _corrupt_last(target):
  steps = target.split(';')
  call, value = steps[-2].rsplit('=', 1)
  bad = value + 'x'
  return ';'.join(steps[:-2] + [f'{call}={bad}', bad])


@pytest.mark.parametrize(
    'family,names',
    [('paper', list(functions.FUNCTIONS)), ('generic', list(generic.GENERIC_FUNCTIONS))],
)
def test_generated_problems(family, names):
  probs = Gen.generate_trace(names, 1, 4, 300, seed=7, family=family)
  assert len(probs) == 300
  seen = set()
  for p in probs:
    n = p.level
    seen.update(p.functions)
    c = failure_modes.classify(p.target, p.target, p.answer)
    assert (c.category, c.shape_ok, c.num_steps) == ('correct', True, n), (p, c)
    assert failure_modes.shape_ok(p.target, p.target)
    c = failure_modes.classify(_corrupt_last(p.target), p.target, p.answer)
    assert (c.category, c.step, c.shape_ok) == ('atomic_error', n, True), (p, c)
    c = failure_modes.classify(p.target + 'x', p.target, p.answer)
    assert c.category == 'incorrect_composition', (p, c)
    assert c.detail == 'answer does not copy the last step'
  assert len(seen) == len(names)


def test_parse_call_never_executes():
  assert failure_modes.parse_call("func_8('abc',2)") == failure_modes._Call('func_8', ('abc', 2))
  assert failure_modes.parse_call("func_7('a,b)','')") == failure_modes._Call(
      'func_7', ('a,b)', '')
  )
  assert failure_modes.parse_call("f(g('a'),-1)") == failure_modes._Call(
      'f', (failure_modes._Call('g', ('a',)), -1)
  )
  for bad in ("('a'+'b')", "('ab').upper()", "f('a'", "f('a') x", 'f(a)', "f('a',)", ''):
    assert failure_modes.parse_call(bad) is None, bad
  t = ";func_3('zbrx')=brxz;brxz"
  c = failure_modes.classify(";__import__('os')=x;x", t, 'brxz')
  assert c.category == 'incorrect_composition'
  with pytest.raises(ValueError):
    failure_modes.classify(';x', 'no separator', 'x')


def test_tally_shares_table_plot(tmp_path):
  cs = [
      failure_modes.Classification('correct'),
      failure_modes.Classification('atomic_error', step=1),
      'correct',
      'ignores_composition',
  ]
  t = failure_modes.tally(cs, [1, 1, 2, 2])
  assert list(t) == ['1', '2']
  assert t['1'] == {**dict.fromkeys(failure_modes.CATEGORIES, 0), 'correct': 1, 'atomic_error': 1}
  assert failure_modes.shares(cs, [1, 1, 2, 2])['2']['ignores_composition'] == 0.5
  assert failure_modes.shares(t) == failure_modes.shares(cs, [1, 1, 2, 2])
  assert list(failure_modes.tally(['correct'] * 2, [10, 2])) == ['2', '10']
  with pytest.raises(ValueError):
    failure_modes.tally(['nonsense'], [1])
  evals = {'before_rl': t, 'after_rl': failure_modes.tally(['correct'] * 3, [1, 2, 2])}
  md = failure_modes.markdown_table(evals, 'Failure modes')
  lines = md.splitlines()
  assert lines[0] == '### Failure modes'
  assert lines[2].split('|')[1:4] == [' evaluation ', ' level ', ' n ']
  assert len(lines) == 4 + 4
  assert '| before_rl | 1 | 2 | 50.0% (1) |' in md
  assert '| after_rl | 2 | 2 | 100.0% (2) |' in md
  path = failure_modes.plot_stacked(evals, str(tmp_path / 'modes.png'), title='modes')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
