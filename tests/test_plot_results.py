"""tools/plot_results.py re-plots a pipeline's reports from its files (results.json, every
evaluation's eval.json, every training stage's metrics.jsonl) into another folder."""

import importlib.util
import json
import pathlib

import pytest

from compfn import eval_results
from compfn import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
  spec = importlib.util.spec_from_file_location('plot_results', ROOT / 'tools' / 'plot_results.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _fake_workdir(d: pathlib.Path):
  """A finished pipeline's files: an SFT stage's metrics, a gate and an evaluation."""
  problems = [
      eval_results.EvalProblem(prompt=f'p{i}', ref='x', level=lv, group='heldout')
      for i, lv in enumerate([1, 1, 2, 2])
  ]
  res = eval_results.EvalResult(
      problems=problems,
      greedy_acc=[1, 0, 1, 1],
      sample_correct=None,
      num_samples=0,
      ks=(),
      examples=[],
      task='strings_trace',
  )
  for name in ('gate', 'after'):
    (d / name).mkdir(parents=True)
    (d / name / 'eval.json').write_text(
        json.dumps({'lineage': [], 'settings': '', 'result': res.to_json()})
    )
  w = train.MetricsWriter(str(d / 'sft'), tensorboard=False)
  for step in (1, 2, 3):
    w.write(step, {'loss': 3.0 / step, 'token_accuracy': 0.1 * step})
  w.close()
  (d / 'results.json').write_text(
      json.dumps(
          {'stages': {'sft': {'steps': 3}, 'gate': {'passed': False}, 'after': {'greedy': {}}}}
      )
  )


def test_replots_into_another_folder(tmp_path):
  work, out = tmp_path / 'work', tmp_path / 'out'
  _fake_workdir(work)
  assert _tool().main([str(work), '--out', str(out), '--title', 'replotted']) == 0
  md = (out / 'results.md').read_text()
  assert md.startswith('# replotted') and '| after | heldout | greedy | 0.500 | 1.000 |' in md
  assert '| gate |' not in md  # gates are not evaluations
  for f in ('results.csv', 'accuracy_by_level.png', 'training_curves.png'):
    assert (out / f).stat().st_size > 0, f
  assert not (work / 'training_curves.png').exists()  # the source folder is left alone


def test_not_a_workdir_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    _tool().main([str(tmp_path)])
  assert e.value.code == 2 and 'results.json does not exist' in capsys.readouterr().err
