"""tools/benchmark_sampler.py --quick: JSON schema, the markdown table, and compfn's greedy tokens
equal transformers' on the tiny model in the same harness. The Tunix peer runs only where its
venv exists (/opt/tunix-venv; see the benchmark's docstring)."""

import importlib.util
import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUNIX_PYTHON = os.environ.get('COMPFN_TUNIX_PYTHON', '/opt/tunix-venv/bin/python')


def _load():
  spec = importlib.util.spec_from_file_location(
      'benchmark_sampler', ROOT / 'tools' / 'benchmark_sampler.py'
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope='module')
def bench():
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  return _load()


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('bench_cache')


def test_quick_schema_and_greedy_equality(bench, cache_dir, tmp_path):
  out = tmp_path / 's.json'
  r = bench.main(
      [
          '--quick',
          '--systems',
          'compfn,transformers',
          '--out',
          str(out),
          '--cache_dir',
          str(cache_dir),
      ]
  )
  j = json.loads(out.read_text())
  assert j['machine']['cores'] and j['machine']['jax']
  assert len(j['loadavg_start']) == 3 and len(j['loadavg_end']) == 3
  assert j['settings']['new_tokens'] == 8 and j['settings']['quick']
  assert j['models']['tiny']['prompt_len'] == 109
  assert [(c['model'], c['batch']) for c in j['configs']] == [('tiny', 1), ('tiny', 4)]
  for c in j['configs']:
    for name in ('compfn', 'transformers'):
      res = c['results'][name]
      assert 'error' not in res, res
      assert res['batch'] == c['batch'] and res['new_tokens'] == 8
      assert res['prompt_len'] == 109
      for k in (
          'prefill_s',
          'decode_s',
          'total_s',
          'decode_tok_s',
          'prefill_tok_s',
          'e2e_tok_s',
          'ms_per_step',
          'peak_rss_mib',
      ):
        assert res[k] > 0, (name, k, res[k])
    assert c['results']['compfn']['compile_s'] is not None
    assert set(c['ratios']) == {
        'decode_vs_transformers',
        'e2e_vs_transformers',
        'prefill_vs_transformers',
    }
  (g,) = j['greedy_check']
  assert g['equal'], g
  v = j['verifier_share']
  assert 'error' not in v, v
  assert v['batch'] == 4 and v['sample_s'] > 0 and v['fused_s'] > 0
  assert 0 <= v['verifier_share_separate'] <= 1
  # The verifier's ops were found inside the traced fused program, and cost something.
  assert v['profiled_verifier_events'] > 0 and v['profiled_verifier_op_s'] > 0
  assert 0 < v['verifier_share_profiled'] < 1
  assert v['profiled_matched_op_s'] >= 0.5 * v['profiled_call_s']
  assert set(v['scores']) <= {-1, 0, 1}
  table = j['markdown'].splitlines()
  assert table[0].startswith('| model | B | system |') and len(table) == 2 + 4
  assert r['markdown'] == j['markdown']


def test_missing_tunix_is_skipped_with_a_note(bench, cache_dir, tmp_path):
  out = tmp_path / 't.json'
  bench.main(
      [
          '--quick',
          '--systems',
          'tunix',
          '--batches',
          '1',
          '--out',
          str(out),
          '--cache_dir',
          str(cache_dir),
          '--tunix_python',
          str(tmp_path / 'nope'),
          '--verifier_batch',
          '0',
          '--greedy_tokens',
          '0',
      ]
  )
  j = json.loads(out.read_text())
  assert any('tunix skipped' in n for n in j['notes'])
  assert all(
      c['results']['tunix'] == {'skipped': 'tunix interpreter missing'} for c in j['configs']
  )
  assert 'greedy_check' not in j and 'verifier_share' not in j


@pytest.mark.skipif(not os.path.exists(TUNIX_PYTHON), reason=f'no tunix venv at {TUNIX_PYTHON}')
def test_tunix_peer_tiny(bench, cache_dir):
  s = bench.model_setup('tiny', cache_dir)
  spec = dict(
      model_dir=s['model_dir'],
      prompt_ids=s['prompt_ids'],
      batch=2,
      new_tokens=4,
      repeats=1,
      eos_id=s['eos_id'],
      pad_id=s['pad_id'],
      tunix_config=s['tunix_config'],
      has_tokenizer=False,
  )
  r = bench.run_worker(bench.worker_command('tunix', TUNIX_PYTHON), spec)
  assert 'error' not in r, r
  assert r['system'] == 'tunix' and r['batch'] == 2 and r['decode_forward_steps'] == 4
  assert r['decode_tok_s'] > 0 and r['peak_rss_mib'] > 0
