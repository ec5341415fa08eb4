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


def test_all_tiny_writes_each_json_and_the_summary(tmp_path):
  """``benchmark.py all --tiny``: one JSON per benchmark and summary.json with the rows
  {name, metric, compfn, peer, peer_value, ratio}, including one peer measured in the run
  (transformers ``generate`` on the tiny Llama; Tunix is skipped without its venv)."""
  out = tmp_path / 'bench'
  _load().main(
      [
          'all',
          '--tiny',
          '--out',
          str(out),
          '--tunix_python',
          '',
          '--cache_dir',
          str(tmp_path / 'cache'),
          '--only',
          'sampler,memory',  # train / rl-step / verifier: their own tiny tests above
      ]
  )
  s = json.loads((out / 'summary.json').read_text())
  assert s['partial'] is False and s['tiny'] is True
  assert 'load1' in s['load_at_start'] and s['matmul_peak']['median_flops'] > 0
  assert s['machine']['cpu'] is not None and s['wall_s'] > 0
  assert set(s['benchmarks']) == {'sampler', 'memory'}
  for name in s['benchmarks']:
    assert s['benchmarks'][name]['error'] is None, s['benchmarks'][name]
    assert (out / f'{name}.json').exists()
  rows = s['rows']
  keys = {'name', 'metric', 'compfn', 'peer', 'peer_value', 'ratio', 'target', 'meets_target'}
  assert all(set(r) == keys for r in rows)
  peer = [r for r in rows if r['peer'] == 'transformers' and r['metric'] == 'decode tok/s']
  assert peer and all(r['compfn'] > 0 and r['peer_value'] > 0 and r['ratio'] > 0 for r in peer)
  assert any(r['name'].startswith('verifier share of the fused rollout') for r in rows)
  assert any('compiled temp memory' in r['name'] for r in rows)
  # The tiny sampler model is reported, not judged; the memory row is judged by its bound.
  assert all(r['target'] is None and r['meets_target'] is None for r in peer)
  mem = [r for r in rows if 'compiled temp memory' in r['name']]
  no_logits = json.loads((out / 'memory.json').read_text())['results']['no_rows_T_V_logits']
  assert mem[0]['meets_target'] is bool(no_logits) and mem[0]['ratio'] is None
  md = (out / 'summary.md').read_text()
  assert '| name | metric |' in md and 'judged rows meet their target' in md
  # `summary` re-derives the same rows from the per-benchmark JSONs.
  (out / 'summary.md').unlink()
  _load().main(['summary', '--out', str(out)])
  assert json.loads((out / 'summary.json').read_text())['rows'] == rows
  assert (out / 'summary.md').read_text() == md


def test_summary_rows_judge_the_issue_targets_only():
  """SmolLM2 decode and end-to-end vs each peer, the SFT/GRPO steps vs Tunix (1.3x), the 4.2M
  model's MFU (40%) and the verifier share (2%) are judged; the tiny model and char MFU are
  reported with no target."""
  bm = _load()
  comp = {'decode_tok_s': 300.0, 'e2e_tok_s': 200.0}
  peer = {'decode_tok_s': 200.0, 'e2e_tok_s': 180.0}
  sampler = {
      'configs': [
          {'model': 'smollm2', 'batch': 16, 'results': {'compfn': comp, 'transformers': peer}},
          {'model': 'tiny', 'batch': 16, 'results': {'compfn': comp, 'transformers': peer}},
      ]
  }
  rows = {(r['name'], r['metric']): r for r in bm.summary_rows('sampler', sampler)}
  assert rows[('sampler smollm2 B=16', 'decode tok/s')]['meets_target'] is True  # 1.5x
  assert rows[('sampler smollm2 B=16', 'end-to-end tok/s')]['meets_target'] is False  # 1.11x
  assert rows[('sampler tiny B=16', 'decode tok/s')]['target'] is None
  res = {
      'results': {
          name: {
              'params': 1,
              'compfn': {'step_s': 1.0, 'mfu': mfu},
              'tunix': {'steady_step_s': 1.2},
          }
          for name, mfu in (('char', 0.3), ('L4d256', 0.45))
      }
  }
  rows = {r['name']: r for r in bm.summary_rows('train', res)}
  assert rows['SFT step char (1 params)']['meets_target'] is False  # 1.2x < 1.3x
  assert rows['SFT step MFU char']['target'] is None
  assert rows['SFT step MFU L4d256']['meets_target'] is True
