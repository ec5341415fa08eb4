"""``GRPOConfig.gen_chunks``: a generation round sampled in sub-batches (one KV cache of
``round_prompts / gen_chunks`` x G rows at a time) gives the unsub-batched result — exactly when
greedy; when sampled, exactly the concatenation of the sub-batches' own rollouts."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from compfn import tokenizers
from compfn.data import sources
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import grpo
from compfn.rl.rollout import DetokTables, RolloutBatch, rollout_fn

TOK = tokenizers.CharTokenizer()
DETOK = DetokTables.from_tokenizer(TOK)


@functools.lru_cache(maxsize=None)
def _model():
  cfg = ModelConfig(
      family='llama',
      vocab_size=TOK.vocab_size,
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      max_position_embeddings=256,
      tie_word_embeddings=True,
  )
  params = transformer.init_params(cfg, jax.random.PRNGKey(0))
  return cfg, jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)


def _gcfg(**kw):
  base = dict(
      num_generations=4,
      batch_prompts=4,
      gen_prompts=4,
      max_rounds=2,
      max_new_tokens=6,
      task='strings_trace',
  )
  return grpo.GRPOConfig(**{**base, **kw})


def _pool(gcfg):
  recs = sources.trace_records('train', 1, 1, gcfg.pool_size, seed=0)[: gcfg.pool_size]
  return grpo.pool_from_host(
      [TOK.encode(r['prompt']) for r in recs], [r['ref'] for r in recs], gcfg, 32, 32
  )


def _generate(gcfg, rng=1):
  cfg, params = _model()
  scfg = gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)
  return jax.jit(lambda p, pl, r: grpo.generate(cfg, p, pl, r, gcfg, scfg, DETOK))(
      params, _pool(gcfg), jax.random.PRNGKey(rng)
  )


def _assert_trees_equal(a, b):
  """Integers/booleans (tokens, masks, lengths, rewards' sources) exactly; floats to 1e-5 (a
  matmul over fewer rows may round its last bit differently)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.floating):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    else:
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('chunks', [2, 4])
def test_greedy_sub_batched_generate_equals_unsub_batched(chunks):
  base = _gcfg(temperature=0.0, dynamic_sampling=False)
  buf1, st1 = _generate(base)
  bufk, stk = _generate(dataclasses.replace(base, gen_chunks=chunks))
  assert int(buf1.filled) == 4 and np.asarray(buf1.mask).sum() > 0
  _assert_trees_equal(buf1, bufk)
  _assert_trees_equal(st1, stk)


def test_greedy_round_rollout_equal_in_every_field():
  cfg, params = _model()
  base = _gcfg(temperature=0.0, dynamic_sampling=False)
  scfg = base.sampler_config(TOK.stop_ids, TOK.pad_id)
  pool, rng = _pool(base), jax.random.PRNGKey(3)
  f = lambda g: jax.jit(lambda p: grpo._round_rollout(cfg, p, pool, rng, g, scfg, DETOK))(params)  # noqa: E731
  one, two = f(base), f(dataclasses.replace(base, gen_chunks=2))
  _assert_trees_equal(one, two)
  np.testing.assert_array_equal(np.asarray(two.group), np.repeat(np.arange(4), 4))


def test_sampled_round_is_the_concatenation_of_its_sub_batches():
  cfg, params = _model()
  gcfg = _gcfg(temperature=1.0, gen_chunks=2)
  scfg = gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)
  pool = _pool(gcfg)
  sub = jax.tree.map(lambda x: x[:4], pool)
  rng = jax.random.PRNGKey(7)
  got = jax.jit(lambda p: grpo._round_rollout(cfg, p, sub, rng, gcfg, scfg, DETOK))(params)
  parts = [
      jax.jit(
          lambda p, b, i: rollout_fn(
              cfg, p, b, jax.random.fold_in(rng, i), scfg, gcfg.task, detok=DETOK
          )
      )(params, jax.tree.map(lambda x, i=i: x[2 * i : 2 * i + 2], sub), i)
      for i in range(2)
  ]
  for name in ('tokens', 'mask', 'lengths', 'score', 'reward', 'advantage', 'logprobs'):
    want = np.concatenate([np.asarray(getattr(p, name)) for p in parts])
    if name == 'logprobs':
      np.testing.assert_allclose(np.asarray(got.logprobs), want, rtol=0, atol=1e-5)
    else:
      np.testing.assert_array_equal(np.asarray(getattr(got, name)), want)
  np.testing.assert_array_equal(np.asarray(got.group), np.repeat(np.arange(4), 4))


def test_sampled_dynamic_sampling_step_runs_with_sub_batches():
  buf, st = _generate(_gcfg(temperature=1.0, gen_chunks=2, batch_prompts=2))
  assert 0 <= int(buf.filled) <= 2
  assert float(st.samples) == 16 * float(st.rounds)


def test_gen_chunks_must_divide_the_round():
  with pytest.raises(ValueError, match='gen_chunks=3'):
    _gcfg(gen_chunks=3)
  with pytest.raises(ValueError, match='gen_chunks'):
    _gcfg(gen_chunks=0)
