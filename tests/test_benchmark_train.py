"""tools/benchmark.py train / rl-step run end to end on a tiny config and write JSON with the
expected keys (a smoke test: nothing is timed or compared here; the Tunix peer is skipped)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
  spec = importlib.util.spec_from_file_location('benchmark_train', ROOT / 'tools' / 'benchmark.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _common(r):
  assert r['machine']['cores'] and r['machine']['cpu'] is not None
  assert 'load1' in r['machine']['load_at_start'] and 'load1' in r['machine']['load_at_end']
  assert r['matmul_peak']['median_flops'] > 0
  assert r['flops_formula'] and r['table_markdown'].count('| tiny |') == 1
  res = r['results']['tiny']
  assert res['params'] > 0 and res['matmul_params'] > 0
  assert 'skipped' in res['tunix'] and res['tunix_s_over_compfn_s'] is None
  return res


def test_train_subcommand_tiny(tmp_path):
  out = tmp_path / 'train.json'
  _load().main(['train', '--tiny', '--models', 'tiny', '--tunix_python', '', '--out', str(out)])
  r = json.loads(out.read_text())
  assert r['benchmark'] == 'train'
  assert r['config']['batch'] == 4 and r['config']['seq'] == 16
  c = _common(r)['compfn']
  for k in ('step_s', 'tokens_per_s', 'mfu', 'model_flops_per_step', 'first_step_s'):
    assert c[k] > 0


def test_rl_step_subcommand_tiny(tmp_path):
  out = tmp_path / 'rl.json'
  _load().main(['rl-step', '--tiny', '--models', 'tiny', '--tunix_python', '', '--out', str(out)])
  r = json.loads(out.read_text())
  assert r['benchmark'] == 'rl-step' and r['config']['dynamic_sampling'] is False
  res = _common(r)
  assert res['generated_tokens_per_step'] == 2 * 2 * 8
  c = res['compfn']
  for k in ('step_s', 'generated_tokens_per_s', 'trained_positions_per_s', 'mfu'):
    assert c[k] > 0
  assert set(c['split_s']) == {'generate', 'verify', 'train', 'sum_of_pieces', 'fused_step'}
