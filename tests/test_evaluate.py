"""compfn.evaluate (+ compfn.eval_results, compfn.reports): per-level accuracy, pass@k, padding,
determinism, reports.

A "bigram" transformer (attention and MLP outputs zeroed, one-hot embeddings, an LM head that
maps each token to its successors) makes the model's answers known in advance: a token with one
successor is deterministic, one with two equally likely successors is a coin flip."""

import csv
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from compfn import eval_results
from compfn import evaluate
from compfn import metrics
from compfn import model
from compfn import reports
from compfn import tokenizers
from compfn.rl import rollout


def bigram(tok, chain):
  """chain: {token id: successor id or tuple of equally likely successor ids}."""
  v = tok.vocab_size
  d = 1 << (v - 1).bit_length()
  config = model.tiny('llama', vocab_size=v, d_model=d)
  p = jax.tree.map(np.array, model.init_params(config, jax.random.key(0)))
  p['layers']['attn']['wo'][:] = 0
  p['layers']['mlp']['wo'][:] = 0
  p['final_norm']['scale'][:] = 1
  p['token_embed'] = np.eye(v, d, dtype=np.float32)
  head = np.zeros((d, v), np.float32)
  for a, b in chain.items():
    for c in b if isinstance(b, tuple) else (b,):
      head[a, c] = 10.0
  p['lm_head'] = head
  return config, p


def trace_model():
  """x -> ';' or 'c' (coin flip); y -> ';'; w -> 'c'; ';a<eos>' and 'cd<eos>' (no ';');
  v -> 'v' forever (truncated). With ref 'a' (trace rule): y always right, w never, x ~half."""
  tok = tokenizers.CharTokenizer()
  t = tok.token_to_id
  chain = {
      'x': (';', 'c'),
      'y': ';',
      'w': 'c',
      ';': 'a',
      'a': '<eos>',
      'c': 'd',
      'd': '<eos>',
      'v': 'v',
  }
  chain = {
      t(k): (tuple(t(c) for c in v) if isinstance(v, tuple) else t(v)) for k, v in chain.items()
  }
  config, params = bigram(tok, chain)
  return tok, config, params


@pytest.fixture(scope='module')
def setup():
  return trace_model()


def _greedy_problems():
  # (prompt, ref, level, group); greedy: 'y' -> ';a', 'w' -> 'cd', 'qv' -> 'vvvv...'.
  rows = [
      ('y', 'a', 1, 'train'),
      ('qy', 'a', 1, 'heldout'),
      ('w', 'a', 1, 'train'),
      ('y', 'b', 2, 'train'),
      ('qqqqqqqqqqqqqqqqqqy', 'a', 2, 'heldout'),
      ('qv', 'v', 3, 'train'),
      ('y', 'a', 3, 'heldout'),
  ]
  return [eval_results.EvalProblem(*r) for r in rows]


def test_greedy_accuracy_by_level_and_padding(setup):
  tok, config, params = setup
  problems = _greedy_problems()
  # 7 problems, batch 4: the second batch repeats the last problem (correct) in one padded
  # row; padded rows must not count.
  res = evaluate.evaluate(
      config,
      params,
      tok,
      problems,
      task='strings_trace',
      max_new_tokens=6,
      batch_size=4,
      progress=False,
      num_examples=1,
  )
  np.testing.assert_array_equal(res.greedy_acc, [1, 1, 0, 0, 1, 0, 1])
  assert res.sample_correct is None
  assert res.accuracy_by_level('greedy') == {'1': 2 / 3, '2': 0.5, '3': 0.5}
  assert res.accuracy_by_level('greedy', group='heldout') == {'1': 1.0, '2': 1.0, '3': 1.0}
  assert res.accuracy_by_level('greedy', group='train') == {'1': 0.5, '2': 0.0, '3': 0.0}
  np.testing.assert_array_equal(res.greedy_truncated, [0, 0, 0, 0, 0, 1, 0])
  np.testing.assert_array_equal(res.greedy_length, [3, 3, 3, 3, 3, 6, 3])
  s = res.summary()
  assert s['accuracy_by_level'] == res.accuracy_by_level('greedy')
  assert s['accuracy_kind'] == 'greedy'
  assert s['counts_by_level'] == {'1': 3, '2': 2, '3': 2}
  assert s['groups']['heldout']['accuracy_by_level'] == {'1': 1.0, '2': 1.0, '3': 1.0}
  assert s['truncation_rate']['greedy'] == pytest.approx(1 / 7)
  # One example per level, decoded without the stop token.
  assert [(e['level'], e['response'], e['acc']) for e in res.examples] == [
      (1, ';a', 1),
      (2, ';a', 0),
      (3, 'vvvvvv', 0),
  ]
  with pytest.raises(ValueError):
    res.accuracy_by_level('sampled')
  # Batch size does not change the results.
  res1 = evaluate.evaluate(
      config, params, tok, problems, max_new_tokens=6, batch_size=64, progress=False
  )
  np.testing.assert_array_equal(res1.greedy_acc, res.greedy_acc)


def test_sampled_pass_at_k_chunking_and_determinism(setup):
  tok, config, params = setup
  problems = [
      eval_results.EvalProblem('x', 'a', 1),
      eval_results.EvalProblem('y', 'a', 1),
      eval_results.EvalProblem('w', 'a', 2),
      eval_results.EvalProblem('qx', 'a', 2),
  ]
  kw = dict(
      task='strings_trace',
      max_new_tokens=4,
      greedy=False,
      num_samples=10,
      batch_size=2,
      sample_chunk=4,
      progress=False,
  )  # 3 chunks of 4, 2 dropped
  res = evaluate.evaluate(config, params, tok, problems, rng=3, **kw)
  assert res.greedy_acc is None
  assert res.ks == (1, 2, 4, 8, 10)
  c = res.sample_correct
  assert c[1] == 10 and c[2] == 0
  assert 0 < c[0] < 10 and 0 < c[3] < 10  # coin flips (seed fixed)
  assert res.accuracy_by_level('sampled') == pytest.approx({'1': (c[0] + 10) / 20, '2': c[3] / 20})
  pk = res.pass_at_k_by_level()
  for lv, idx in (('1', [0, 1]), ('2', [2, 3])):
    assert pk[lv] == pytest.approx(metrics.mean_pass_at_k(c[idx].tolist(), 10, res.ks))
  assert pk['1'][10] == 1.0 and pk['2'][1] == pytest.approx(c[3] / 20)
  # Deterministic for a fixed rng; another rng gives other draws.
  again = evaluate.evaluate(config, params, tok, problems, rng=3, **kw)
  np.testing.assert_array_equal(again.sample_correct, c)
  draws = {
      tuple(evaluate.evaluate(config, params, tok, problems, rng=r, **kw).sample_correct)
      for r in (4, 5)
  }
  assert draws != {tuple(c)}
  s = res.summary()
  assert s['accuracy_kind'] == 'sampled'
  assert s['pass_at_k_by_level']['2']['1'] == pytest.approx(c[3] / 20)
  assert s['response_length']['sampled']['max'] <= 4


def test_json_round_trip_and_ks(setup):
  tok, config, params = setup
  problems = [
      eval_results.EvalProblem('x', 'a', 1, 'g'),
      eval_results.EvalProblem('y', 'a', 2, 'h'),
  ]
  res = evaluate.evaluate(
      config, params, tok, problems, max_new_tokens=4, num_samples=3, ks=[1, 3], progress=False
  )
  back = eval_results.EvalResult.from_json(res.to_json())
  assert back.problems == res.problems and back.ks == (1, 3)
  np.testing.assert_array_equal(back.sample_correct, res.sample_correct)
  np.testing.assert_array_equal(back.greedy_acc, res.greedy_acc)
  assert back.summary() == res.summary()
  assert json.loads(json.dumps(res.summary()))['accuracy_by_level'] == {'1': 1.0, '2': 1.0}
  with pytest.raises(ValueError):
    evaluate.evaluate(config, params, tok, problems, num_samples=3, ks=[4], progress=False)
  assert evaluate.default_ks(1) == (1,) and evaluate.default_ks(6) == (1, 2, 4, 6)
  assert evaluate.default_ks(1024)[-1] == 1024 and len(evaluate.default_ks(1024)) == 11


def _fake_rollout(texts_by_prompt, tok, pad_text=''):
  """A rollout whose response for each prompt row is a fixed text, scored as the real rollout
  scores it: by the task's registered device scorer on the response bytes and the batch's
  reference bytes. A row that repeats the previous row's prompt (batch padding) answers
  ``pad_text``."""

  def fake(model_config, params, batch, rng, cfg, task, *, detok, mesh=None, rules=None):
    del model_config, params, rng, detok, mesh, rules
    g = cfg.num_samples
    rows = np.asarray(batch.prompts).shape[0] * g
    m = 64
    resp = np.zeros((rows, m), np.int32)
    n = np.zeros(rows, np.int32)
    for r in range(rows):
      i = r // g
      prompts = np.asarray(batch.prompts)
      prompt = tok.decode(prompts[i, : int(batch.prompt_lens[i])])
      pad = i > 0 and (prompts[i] == prompts[i - 1]).all()
      b = (pad_text if pad else texts_by_prompt[prompt]).encode()
      resp[r, : len(b)] = np.frombuffer(b, np.uint8)
      n[r] = len(b)
    z = np.zeros(rows, np.int32)
    ref = np.repeat(np.asarray(batch.ref), g, axis=0)
    ref_len = np.repeat(np.asarray(batch.ref_len), g, axis=0)
    score, acc = rollout.TASKS[task](resp, n, ref, ref_len, z.astype(bool))
    tokens = np.zeros((rows, cfg.max_new_tokens), np.int32)
    return rollout.Rollout(
        tokens=tokens,
        mask=tokens > 0,
        logprobs=tokens * 0.0,
        lengths=np.minimum(n, cfg.max_new_tokens),
        reward=z * 0.0,
        score=np.asarray(score),
        acc=np.asarray(acc),
        advantage=z * 0.0,
        truncated=z.astype(bool),
        group=np.arange(rows) // g,
        response_bytes=resp,
        response_len=n,
        byte_overflow=z.astype(bool),
    )

  return fake


def test_countdown_scored_on_device_by_its_registered_scorer():
  tok = tokenizers.CharTokenizer()
  texts = {
      'p': '<answer>3 + 5</answer>',
      'q': '<answer>3 * 5</answer>',
      'r': 'no answer',
      't': '<answer>10 - 2</answer>',
      's': '<answer>10 + 2</answer>',
  }
  problems = [
      eval_results.EvalProblem('p', '{"numbers": [3, 5], "target": 8}', 1),
      eval_results.EvalProblem('q', '{"numbers": [3, 5], "target": 8}', 1),
      eval_results.EvalProblem('t', '{"answer": 8, "numbers": [2, 10]}', 2),
      eval_results.EvalProblem('r', '{"numbers": [3, 5], "target": 8}', 2),
      eval_results.EvalProblem('s', '{"numbers": [2, 10], "target": 8}', 2),
  ]
  # Batches of 3: [p, q, t], [r, s, s (padding)]; the padding row's answer would be right
  # for 's' but must not count.
  res = evaluate.evaluate(
      None,
      None,
      tok,
      problems,
      task='countdown',
      max_new_tokens=32,
      num_samples=2,
      batch_size=3,
      progress=False,
      _rollout=_fake_rollout(texts, tok, pad_text=texts['t']),
  )
  np.testing.assert_array_equal(res.greedy_acc, [1, 0, 1, 0, 0])
  np.testing.assert_array_equal(res.sample_correct, [2, 0, 2, 0, 0])
  assert res.accuracy_by_level('greedy') == pytest.approx({'1': 0.5, '2': 1 / 3})
  with pytest.raises(ValueError, match='problem 0: bad reference'):
    evaluate.evaluate(
        None,
        None,
        tok,
        [eval_results.EvalProblem('p', '{"numbers": [3]}', 1)],
        task='countdown',
        progress=False,
        _rollout=_fake_rollout(texts, tok),
    )


def test_write_report(setup, tmp_path):
  tok, config, params = setup
  problems = _greedy_problems()[:4]
  a = evaluate.evaluate(
      config, params, tok, problems, max_new_tokens=6, num_samples=4, progress=False
  )
  b = evaluate.evaluate(
      config, params, tok, problems, max_new_tokens=6, greedy=False, num_samples=2, progress=False
  )
  c = evaluate.evaluate(config, params, tok, problems, max_new_tokens=6, progress=False)
  results = {'run-a': a, 'run-b': b, 'run-c': c}
  paths = reports.write_report(results, tmp_path / 'report', title='test')
  assert set(paths) == {'markdown', 'csv', 'accuracy_plot', 'pass_at_k_plot'}
  for p in paths.values():
    assert os.path.getsize(p) > 0
  md = open(paths['markdown']).read()
  assert '| run-a | all | greedy |' in md and '| run-b | heldout | sampled (T=1) |' in md
  assert 'pass@4' in md and md.startswith('# test')
  with open(paths['csv']) as f:
    rows = list(csv.DictReader(f))
  got = {(r['name'], r['group'], r['level'], r['metric'], r['k']): float(r['value']) for r in rows}
  assert len(got) == len(rows)  # no duplicate keys
  for lv, v in a.accuracy_by_level('greedy').items():
    assert got[('run-a', '', lv, 'greedy_acc', '')] == pytest.approx(v)
  for lv, d in b.pass_at_k_by_level(group='train').items():
    for k, v in d.items():
      assert got[('run-b', 'train', lv, 'pass_at_k', str(k))] == pytest.approx(v)
  assert got[('run-c', '', 'all', 'count', '')] == 4
  assert not any(k[0] == 'run-c' and k[3] in ('sampled_acc', 'pass_at_k') for k in got)
  assert not any(k[0] == 'run-b' and k[3] == 'greedy_acc' for k in got)
  # No sampled run: no pass@k plot.
  paths = reports.write_report({'run-c': c}, tmp_path / 'greedy_only')
  assert 'pass_at_k_plot' not in paths
  assert not os.path.exists(tmp_path / 'greedy_only' / 'pass_at_k.png')
  assert '| run-c |' in reports.markdown_table({'run-c': c})


def test_bad_arguments(setup):
  tok, config, params = setup
  p = [eval_results.EvalProblem('y', 'a', 1)]
  with pytest.raises(ValueError):
    evaluate.evaluate(config, params, tok, p, task='nope', progress=False)
  with pytest.raises(ValueError):
    evaluate.evaluate(config, params, tok, p, greedy=False, num_samples=0, progress=False)
  assert dataclasses.is_dataclass(eval_results.EvalResult)
