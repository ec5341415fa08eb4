"""compfn.rl.rft: rejection sampling keeps only correct responses, drops all-correct prompts,
stores the train prompt; JSONL round trip. A "bigram" transformer (as in test_evaluate.py)
fixes the answers: 'x' is a coin flip between ';a' (right for ref 'a') and 'cd' (no ';':
wrong), 'y' is always ';a', 'w' always 'cd'."""

import numpy as np
import pytest

from compfn import tokenizers
from compfn.rl import rft
from test_evaluate import bigram


def trace_model():
  tok = tokenizers.CharTokenizer()
  t = tok.token_to_id
  chain = {
      'x': (';', 'c'),
      'y': (';',),
      'w': ('c',),
      ';': ('a',),
      'a': ('<eos>',),
      'c': ('d',),
      'd': ('<eos>',),
  }
  # equal logits: equally likely successors
  config, p = bigram(tok, {t(a): tuple(t(c) for c in succ) for a, succ in chain.items()})
  return tok, config, p


@pytest.fixture(scope='module')
def setup():
  return trace_model()


def _problems():
  return [
      rft.RFTProblem('x', 'TRAIN x', 'a', 1),
      rft.RFTProblem('y', 'TRAIN y', 'a', 2),
      rft.RFTProblem('w', 'TRAIN w', 'a', 3),
      rft.RFTProblem('qx', 'TRAIN qx', 'a', 4),
  ]


def test_collect_keeps_correct_and_drops_all_correct(setup, tmp_path):
  tok, config, params = setup
  kw = dict(
      num_samples=8,
      task='strings_trace',
      max_new_tokens=4,
      batch_size=2,
      sample_chunk=4,
      progress=False,
      rng=1,
  )
  records, stats = rft.collect(config, params, tok, _problems(), **kw)
  assert stats['problems'] == 4 and stats['samples'] == 32
  assert stats['dropped_all_correct'] == 1 and stats['dropped_none_correct'] == 1
  # Only the coin-flip prompts remain; every record is a correct response (';a' without EOS).
  assert {r['prompt'] for r in records} == {'TRAIN x', 'TRAIN qx'}
  for r in records:
    assert r['target'] == ';a'
    assert r['target_ids'] == tok.encode(';a')
    assert r['level'] == {'TRAIN x': 1, 'TRAIN qx': 4}[r['prompt']]
  n_x = sum(r['prompt'] == 'TRAIN x' for r in records)
  n_qx = len(records) - n_x
  assert 0 < n_x < 8 and 0 < n_qx < 8
  assert stats['correct'] == n_x + n_qx + 8  # + the 8 of 'y' (dropped)
  assert stats['kept_records'] == len(records)
  assert stats['accuracy'] == pytest.approx(stats['correct'] / 32)
  assert records == sorted(records, key=lambda r: r['level'])  # problem order

  # Same rng: same records. Keep all-correct prompts; cap per prompt.
  again, _ = rft.collect(config, params, tok, _problems(), **kw)
  assert again == records
  everything, st2 = rft.collect(config, params, tok, _problems(), drop_all_correct=False, **kw)
  assert st2['dropped_all_correct'] == 0
  assert sum(r['prompt'] == 'TRAIN y' for r in everything) == 8
  capped, st3 = rft.collect(config, params, tok, _problems(), max_per_prompt=1, **kw)
  assert [r['prompt'] for r in capped] == ['TRAIN x', 'TRAIN qx']
  assert st3['correct'] == stats['correct'] and st3['kept_records'] == 2

  path = tmp_path / 'rft.jsonl'
  assert rft.write_records(records, path) == len(records)
  assert rft.read_records(path) == records


def test_collect_arguments(setup):
  tok, config, params = setup
  with pytest.raises(ValueError):
    rft.collect(config, params, tok, _problems(), num_samples=0, progress=False)
  with pytest.raises(ValueError):
    rft.collect(config, params, tok, _problems(), num_samples=2, max_per_prompt=0, progress=False)
  records, stats = rft.collect(config, params, tok, [], num_samples=2, progress=False)
  assert records == [] and stats['samples'] == 0 and np.isclose(stats['accuracy'], 0.0)
