"""The miniature's data (issue #10): stage 0 in the surface form of the 25, inputs that look like
intermediate values, shortcut filtering, and the 95% intervals the reports print."""

import pytest

from compfn import metrics
from compfn.data import sources
from compfn.tasks.strings import functions
from compfn.tasks.strings import generic
from compfn.tasks.strings import program
from compfn.tasks.strings import prompts
from compfn.tasks.strings.generator import generate_trace, shortcut


def test_generic_func_family_uses_func_ids_outside_the_25():
  assert len(generic.GENERIC_FUNC_ALIASES) == 75
  ids = [s.fid for s in generic.GENERIC_FUNC_ALIASES.values()]
  assert sorted(int(i.split('_')[1]) for i in ids) == list(range(25, 100))
  paper_ids = {s.fid for s in functions.FUNCTIONS.values()}
  ps = generate_trace(
      generic.GENERIC_FUNC_ALIASES, 1, 3, 300, seed=0, family='generic_func', max_chars=160
  )
  assert {p.level for p in ps} == {1, 2, 3}
  for p in ps:
    assert not set(p.functions) & paper_ids
    assert all(f.startswith('func_') for f in p.functions)
    assert p.target.rsplit(';', 1)[1] == p.answer
  # every alias behaves as its base function
  for name, spec in generic.GENERIC_FUNC_ALIASES.items():
    assert spec.fn is generic.GENERIC_FUNCTIONS[generic.base_name(name)].fn
  family, names = sources.resolve_functions('generic_func')
  assert family == 'generic_func' and len(names) == 75


def test_input_mix_draws_outputs_of_one_call_and_stays_atomic():
  plain = generate_trace(list(functions.FUNCTIONS), 1, 1, 400, seed=3)
  mixed = generate_trace(list(functions.FUNCTIONS), 1, 1, 400, seed=3, input_mix=1.0)
  assert all(p.input.isalpha() and p.input.islower() for p in plain)
  assert all(p.level == 1 and p.target.count('=') == 1 for p in mixed)
  assert any(not (p.input.isalpha() and p.input.islower()) for p in mixed)
  assert max(len(p.input) for p in mixed) <= 16 < 2 * max(len(p.input) for p in plain) + 5
  with pytest.raises(ValueError, match='input_mix'):
    generate_trace(list(functions.FUNCTIONS), 1, 1, 4, input_mix=1.5)


def test_input_depths_hand_over_zero_one_or_two_calls():
  """Inputs pass through d random calls with probability w_d: depth 0 is plain letters, deeper
  inputs are the strings a composition hands to its second and third calls."""
  fns = list(functions.FUNCTIONS)
  only0 = generate_trace(fns, 1, 1, 300, seed=4, input_depths=(1.0,))
  assert all(p.input.isalpha() and p.input.islower() and 3 <= len(p.input) <= 6 for p in only0)
  deep = generate_trace(fns, 1, 1, 600, seed=4, input_depths=(0.0, 0.0, 1.0), input_mix_max_len=24)
  assert all(p.level == 1 and p.target.count('=') == 1 for p in deep)
  assert max(len(p.input) for p in deep) <= 24
  assert sum(len(p.input) > 6 for p in deep) > 200  # most grew through two calls
  assert any(not p.input.isalpha() for p in deep)  # separators, digits, brackets
  for bad in [(-1.0, 2.0), (), (0.0, 0.0)]:
    with pytest.raises(ValueError, match='input_depths'):
      generate_trace(fns, 1, 1, 4, input_depths=bad)
  with pytest.raises(ValueError, match='input_depths'):
    generate_trace(fns, 1, 1, 4, input_depths=(0.5, 0.5), input_mix=0.3)


def test_step_records_make_bare_steps_with_optional_context():
  atomic = sources.trace_records(functions='all', num=400, seed=2)
  ctx = sources.trace_records(
      functions='generic_func_wide', min_level=1, max_level=2, num=50, seed=3
  )
  full = list(atomic)
  steps = list(sources.step_records(records=atomic, p=1.0, context=ctx, context_p=0.5, seed=1))
  assert len(steps) == len(full)
  with_ctx = 0
  for r, s in zip(full, steps):
    head = ';' + r['prompt']
    assert s['prompt'].endswith(head) and r['target'] == head + s['target']
    assert s['target'] == f"{r['ref']};{r['ref']}"
    assert s['ref'] == r['ref'] and s['level'] == 1
    if s['prompt'] != head:
      with_ctx += 1
      pre = s['prompt'][: -len(head)]
      assert pre.endswith(' ') and any(pre == c['prompt'] + c['target'] + ' ' for c in ctx)
  assert 120 < with_ctx < 280  # context_p = 0.5
  kept = list(sources.step_records(records=atomic, p=0.0))
  assert kept == full
  again = list(sources.step_records(records=atomic, p=1.0, context=ctx, context_p=0.5, seed=1))
  assert again == steps  # deterministic
  with pytest.raises(ValueError, match='level-1'):
    list(sources.step_records(records=sources.trace_records(min_level=2, max_level=2, num=4)))
  with pytest.raises(ValueError, match='context'):
    list(sources.step_records(records=atomic, context_p=0.5))


def test_shortcut_rule_on_hand_made_chains():
  # answer == x
  assert shortcut([('f', 'ab')], 'ab', 'ab', []) == 'identity'
  # a one-call answer scores: f(g(x)) == f(x)
  assert shortcut([('g', 'ba'), ('f', 'zz')], 'ab', 'zz', ['zz', 'ba']) == 'single_call'
  # an identity step: g(x) == x
  assert shortcut([('g', 'ab'), ('f', 'zz')], 'ab', 'zz', ['yy', 'ab']) == 'identity_step'
  assert shortcut([('g', 'ba'), ('f', 'zz')], 'ab', 'zz', ['yy', 'ba']) is None
  assert shortcut([('f', 'ba')], 'ab', 'ba', ['ba']) is None  # level 1: f(x) is the task


def test_drop_shortcuts_leaves_only_chains_that_need_composing():
  stats = {}
  ps = generate_trace(
      functions.TRAIN_FUNCTIONS, 2, 3, 600, seed=0, drop_shortcuts=True, stats=stats
  )
  assert len(ps) == 600 and stats['made'] == 600
  assert sum(stats['shortcuts'].values()) > 50  # the train split is full of them
  registry = functions.FUNCTIONS
  for p in ps:
    node = program.parse_expr(p.prompt[:-1])
    # the input literal inlined in the prompt is the chain's input
    steps = prompts.trace_steps(node, p.input, program.run)
    assert steps[-1][1] == p.answer != p.input
    prev = p.input
    for _, value in steps:
      assert value != prev
      prev = value
    singles = []
    n = node
    while isinstance(n, program.Call):
      singles.append(
          program.run(
              program.Call(
                  n.fn,
                  tuple(a if isinstance(a, program.Lit) else program.Lit(p.input) for a in n.args),
                  n.param,
              ),
              '',
              registry=registry,
          )
      )
      n = next((a for a in n.args if isinstance(a, program.Call)), None)
    assert p.answer not in singles


def test_wilson_and_difference_intervals():
  lo, hi = metrics.wilson_interval(0, 128)
  assert lo == 0.0 and 0.02 < hi < 0.04
  lo, hi = metrics.wilson_interval(64, 128)
  assert lo < 0.5 < hi and hi - lo == pytest.approx(0.17, abs=0.01)
  lo, hi = metrics.difference_interval(10, 128, 30, 128)
  assert 0 < lo < 30 / 128 - 10 / 128 < hi
  lo, hi = metrics.difference_interval(20, 128, 24, 128)
  assert lo < 0 < hi


def test_step_credit_trace_reward_device_equals_reference():
  import numpy as np
  from compfn.tasks.strings import device_scoring
  from compfn.tasks.strings import scoring
  from compfn.tasks.strings.generator import generate_trace as gen

  assert scoring.score_trace_steps(";f('ab')=ba;g('ba')=Ba;Ba", ";f('ab')=ba;g('ba')=BA;BA") == (
      0.25,
      0,
  )
  rng = np.random.default_rng(0)
  cases = []
  for p in gen(functions.TRAIN_FUNCTIONS, 1, 3, 90, seed=4):
    t = p.target
    variants = [
        t,
        t[: len(t) // 2],
        t[:-1],
        t + 'x',
        t.replace('=', '', 1),
        'abc',
        '',
        t[: t.index(';', 1) + 1] + 'zz;zz',
        ';' + p.answer,
        t[: rng.integers(1, len(t))],
    ]
    cases += [(v, t) for v in variants]
  T = R = max(len(v.encode()) for c in cases for v in c)
  resp = np.zeros((len(cases), T), np.int32)
  ref = np.zeros((len(cases), R), np.int32)
  rl, fl = [], []
  for i, (v, t) in enumerate(cases):
    vb, tb = v.encode(), t.encode()
    resp[i, : len(vb)] = list(vb)
    ref[i, : len(tb)] = list(tb)
    rl.append(len(vb))
    fl.append(len(tb))
  over = np.arange(len(cases)) % 17 == 0
  sc, acc = device_scoring.score_trace_steps(resp, np.array(rl), ref, np.array(fl), over)
  for i, (v, t) in enumerate(cases):
    want = scoring.score_trace_steps(v, t, overlong=bool(over[i]))
    assert (float(sc[i]), int(acc[i])) == pytest.approx(want), (v, t)
  assert len({float(x) for x in sc}) >= 5  # -1, 0, partial credits, 1 all occur


def test_clean_split_and_twin_groups():
  """The clean split drops the 3 behavioural twin pairs (PAPER §1.2); twin_group labels the
  problems that call a twin, so one evaluation reports both splits."""
  _, train_clean = sources.resolve_functions('train_clean')
  _, heldout_clean = sources.resolve_functions('heldout_clean')
  assert len(train_clean) == 10 and len(heldout_clean) == 9
  twins = set(functions.IDENTICAL_ACROSS_SPLIT) | set(functions.IDENTICAL_ACROSS_SPLIT.values())
  assert not twins & (set(train_clean) | set(heldout_clean))
  twin_ids = {functions.FUNCTIONS[n].fid for n in twins}
  recs = list(
      sources.trace_records(
          functions='heldout',
          min_level=1,
          max_level=2,
          num=200,
          seed=2,
          group='clean',
          twin_group='twin',
      )
  )
  groups = {r['group'] for r in recs}
  assert groups == {'clean', 'twin'}
  for r in recs:
    assert (r['group'] == 'twin') == bool(set(r['functions']) & twin_ids)
