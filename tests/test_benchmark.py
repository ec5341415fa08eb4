"""tools/benchmark.py runs, checks the device results against the reference, and writes JSON."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
  spec = importlib.util.spec_from_file_location('benchmark', ROOT / 'tools' / 'benchmark.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_verifier_benchmark_small(tmp_path):
  bench = _load()
  out = tmp_path / 'v.json'
  bench.main(['verifier', '--batch', '16', '--repeats', '1', '--out', str(out)])
  r = json.loads(out.read_text())
  assert r['machine']['cores'] and r['machine']['jax']
  assert r['result']['batch'] == 16
  for k in ('python_run_only_per_s', 'device_steady_per_s', 'device_end_to_end_per_s'):
    assert r['result']['programs'][k] > 0
  assert sum(r['result']['responses']['score_counts'].values()) == 16
