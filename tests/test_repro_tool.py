"""tools/repro.py: collect copies a finished run's artifacts; report builds the per-arm table, the
per-seed L3 comparison (same seed only) and the plots from them alone."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
  spec = importlib.util.spec_from_file_location('repro', ROOT / 'tools' / 'repro.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _results(l3: float, pass_l3: float = 0.5) -> dict:
  """A results.json as the pipeline writes it (stages -> eval summaries with groups)."""
  ev = {
      'accuracy_by_level': {'1': 0.8, '2': 0.3, '3': l3},
      'counts_by_level': {'1': 256, '2': 256, '3': 256},
  }
  pk = {'pass_at_k_by_level': {'3': {'1': l3, '8': pass_l3, '64': min(1.0, 2 * pass_l3)}}}
  return {
      'stages': {
          'final': dict(ev, groups={'heldout_clean': ev}),
          'final_passk': dict(pk, groups={'heldout_clean': pk}),
      }
  }


def _run_dir(runs: pathlib.Path, arm: str, seed: int, l3: float):
  d = runs / arm / f'seed{seed}'
  (d / 'rl_L2').mkdir(parents=True)
  (d / 'results.json').write_text(json.dumps(_results(l3)))
  (d / 'config.gin').write_text('# operative config\n')
  (d / 'rl_L2' / 'metrics.jsonl').write_text('{"step": 1}\n')
  (d / 'rl_L2' / 'checkpoints').mkdir()  # not an artifact: must not be copied
  return d


def test_collect_then_report(tmp_path, capsys):
  repro = _tool()
  runs, out = tmp_path / 'runs', tmp_path / 'results'
  l3 = {('rl_L2', 1): 0.2, ('rl_L1', 1): 0.05, ('rft_L2', 1): 0.1}
  l3.update({('rl_L2', 2): 0.1, ('rl_L1', 2): 0.15, ('rft_L2', 2): 0.0})
  l3[('rl_L2', 3)] = 0.3  # seed 3 has no controls: it must not borrow another seed's
  for (arm, seed), v in l3.items():
    _run_dir(runs, arm, seed, v)
  (runs / 'sft' / 'seed1').mkdir(parents=True)  # unfinished: no results.json, not collected

  assert repro.main(['collect', '--runs', str(runs), '--out', str(out)]) == 0
  copied = out / 'rl_L2' / 'seed1'
  assert (copied / 'results.json').is_file() and (copied / 'config.gin').is_file()
  assert (copied / 'rl_L2_metrics.jsonl').read_text() == '{"step": 1}\n'
  assert sorted(p.name for p in copied.iterdir()) == [
      'config.gin',
      'results.json',
      'rl_L2_metrics.jsonl',
  ]  # no checkpoints
  assert not (out / 'sft').exists()

  assert repro.main(['report', '--out', str(out), '--groups', 'heldout_clean']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  cmp_ = summary['groups']['heldout_clean']['l3_comparison']
  assert cmp_['1']['beats_rl_L1_and_rft_L2'] is True
  assert cmp_['2']['beats_rl_L1_and_rft_L2'] is False  # loses to rl_L1 in seed 2
  assert cmp_['3']['rl_L1'] is None and cmp_['3']['beats_rl_L1_and_rft_L2'] is False
  # 0.2 vs 0.05 and 0.1 of 256: both gaps have intervals above 0 (+0.15 [+0.09, +0.21], +0.10
  # [+0.04, +0.16]); seed 2 loses; seed 3 has no controls.
  d = cmp_['1']['diff_vs']
  assert d['rl_L1']['ci95'][0] > 0 and d['rft_L2']['ci95'][0] > 0
  assert d['rl_L1']['diff'] == pytest.approx(0.15, abs=0.005)
  assert cmp_['1']['clearly_beats_rl_L1_and_rft_L2'] is True
  assert cmp_['2']['clearly_beats_rl_L1_and_rft_L2'] is False
  assert cmp_['3']['clearly_beats_rl_L1_and_rft_L2'] is False and cmp_['3']['diff_vs'] == {}
  md = (out / 'summary.md').read_text()
  assert '| rl_L2 | 3 |' in md  # three seeds of rl_L2 in the mean table
  assert (out / 'accuracy_by_level_heldout_clean.png').stat().st_size > 0
  assert (out / 'pass_at_k_heldout_clean.png').stat().st_size > 0


def test_newcombe_difference_interval_matches_the_worked_example():
  # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 - 48/80.
  d, lo, hi = _tool().newcombe_diff(56, 70, 48, 80)
  assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
  # one problem of 256 apart (seed 1's rl_L2 17 vs rft_L2 16): far from clear
  d, lo, hi = _tool().newcombe_diff(17, 256, 16, 256)
  assert lo < 0 < hi


def test_report_without_artifacts_says_so(tmp_path, capsys):
  assert _tool().main(['report', '--out', str(tmp_path)]) == 2
  assert 'collect' in capsys.readouterr().out
