"""compfn.rl.grpo configuration: sampler/trainer log-prob agreement at T != 1 and greedy, the
top-k/top-p rejection, the dynamic-sampling signal (``filter_on``), ``min_groups`` skipping,
the step's metrics and the GRPOConfig/SamplerConfig consistency check."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import tokenizers, train
from compfn.data import sources
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import grpo
from compfn.rl.advantages import group_advantages
from compfn.rl.rollout import DetokTables

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
  # Larger weights than the 0.02 init: a peaked distribution, so T = 0.7 differs from T = 1.
  return cfg, jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)


def _gcfg(**kw):
  base = dict(
      num_generations=4,
      batch_prompts=3,
      gen_prompts=4,
      max_rounds=3,
      max_new_tokens=4,
      task='strings_trace',
  )
  return grpo.GRPOConfig(**{**base, **kw})


def _scfg(gcfg):
  return gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)


def _trace_pool(gcfg):
  recs = sources.trace_records('train', 1, 1, gcfg.pool_size, seed=0)[: gcfg.pool_size]
  return grpo.pool_from_host(
      [TOK.encode(r['prompt']) for r in recs], [r['ref'] for r in recs], gcfg, 32, 32
  )


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    'kw, match',
    [
        ({'top_k': 5}, 'top_k=5'),
        ({'top_p': 0.9}, 'top_p=0.9'),
        ({'filter_on': 'score'}, 'filter_on'),
        ({'min_groups': -1}, 'min_groups'),
        ({'min_groups': 4}, 'min_groups'),
        ({'temperature': -0.5}, 'temperature'),
    ],
)
def test_config_rejects(kw, match):
  with pytest.raises(ValueError, match=match):
    _gcfg(**kw)


def test_top_k_top_p_rejection_explains_why():
  with pytest.raises(ValueError, match='not be that of the sampling distribution'):
    _gcfg(top_p=0.95)


def test_sampler_config_matches_and_mismatch_raises():
  gcfg = _gcfg(temperature=0.7)
  scfg = _scfg(gcfg)
  assert scfg.logprobs == 'temperature' and scfg.temperature == 0.7
  assert scfg.num_samples == 4 and scfg.max_new_tokens == 4
  gcfg.check_sampler(scfg)
  for field, value in [
      ('num_samples', 2),
      ('max_new_tokens', 8),
      ('temperature', 1.0),
      ('logprobs', 'raw'),
  ]:
    bad = dataclasses.replace(scfg, **{field: value})
    with pytest.raises(ValueError, match=f'{field}='):
      gcfg.check_sampler(bad)
  cfg, params = _model()
  bad = dataclasses.replace(scfg, num_samples=2)
  with pytest.raises(ValueError, match='does not match the GRPOConfig'):
    grpo.generate(cfg, params, _trace_pool(gcfg), jax.random.PRNGKey(0), gcfg, bad, DETOK)
  buf = grpo._empty_buffer(3, 4, 4, 32)
  with pytest.raises(ValueError, match='does not match the GRPOConfig'):
    grpo.policy_grads(cfg, params, buf, gcfg, bad)


# ----------------------------------------------------------------- sampler vs trainer


@pytest.mark.parametrize('temperature', [0.7, 0.0], ids=['T0.7', 'greedy'])
def test_trainer_logprobs_equal_sampler_logprobs(temperature):
  """The trainer's teacher-forced log-probs of the sampled tokens are the sampler's (both of
  logits / T; raw logits when greedy), so the importance ratio against the sampler is 1."""
  cfg, params = _model()
  gcfg = _gcfg(
      temperature=temperature, dynamic_sampling=False, max_new_tokens=12, old_logprobs='sampler'
  )
  scfg = _scfg(gcfg)
  buf, _ = jax.jit(lambda p, pl, r: grpo.generate(cfg, p, pl, r, gcfg, scfg, DETOK))(
      params, _trace_pool(gcfg), jax.random.PRNGKey(1)
  )
  mask = np.asarray(buf.mask).reshape(-1, 12)
  assert int(buf.filled) == 3 and mask.sum() > 20
  lp = jax.jit(grpo.response_logprobs, static_argnums=(0, 3))
  got = np.asarray(lp(cfg, params, buf, gcfg))
  want = np.asarray(buf.logprobs).reshape(got.shape)
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
  raw = np.asarray(lp(cfg, params, buf, dataclasses.replace(gcfg, temperature=1.0)))
  if temperature:  # the check is sensitive: raw log-probs are far from the sampled ones
    assert np.abs(raw - want)[mask].max() > 1e-2
  else:
    np.testing.assert_allclose(raw[mask], want[mask], atol=1e-5)
  _, loss, aux = jax.jit(lambda p, b: grpo.policy_grads(cfg, p, b, gcfg, scfg))(params, buf)
  assert np.isfinite(float(loss))
  assert float(aux['sampler_logprob_gap']) < 1e-5
  assert float(aux['clip_frac']) == 0.0 and float(aux['approx_kl']) < 1e-9


# --------------------------------------------------- rigged rewards: filter_on, min_groups

# A prompt's length picks the rewards / accuracies of its group of G = 4 (sample 0 differs):
SAME, PENALTY, MIXED = 1, 2, 3  # rewards [0,0,0,0] | [-1,0,0,0] (all wrong) | [1,0,0,0]


def _rigged(real):
  """rollout_fn with rewards decided by the prompt lengths (the real sampler still runs)."""

  def fn(model_config, params, batch, rng, cfg, task='strings_json', *, detok, max_bytes=None):
    ro = real(model_config, params, batch, rng, cfg, task, detok=detok, max_bytes=max_bytes)
    g = cfg.num_samples
    kind = jnp.repeat(batch.prompt_lens, g)
    first = jnp.arange(kind.shape[0]) % g == 0
    reward = jnp.where(first & (kind == MIXED), 1.0, 0.0) - jnp.where(
        first & (kind == PENALTY), 1.0, 0.0
    )
    return ro.replace(
        reward=reward,
        score=reward.astype(jnp.int32),
        acc=(reward > 0).astype(jnp.int32),
        advantage=group_advantages(reward, g),
    )

  return fn


def _kinds_pool(gcfg, kinds):
  assert len(kinds) == gcfg.pool_size
  return grpo.pool_from_host(
      [TOK.encode('abc'[:k]) for k in kinds], ['x'] * len(kinds), gcfg, 4, 16
  )


S, P, M = SAME, PENALTY, MIXED
POOL_A = [M, S, P, S, S, S, S, M, P, P, M, M]  # 3 rounds of 4 prompts
POOL_B = [M, S, P, S, S, S, S, S, P, S, M, S]


def test_group_filter_hand_made_batch():
  reward = jnp.array([0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0])
  acc = jnp.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(grpo.group_filter(reward, acc, 4, 'reward'), [False, True, True])
  np.testing.assert_array_equal(grpo.group_filter(reward, acc, 4, 'acc'), [False, False, True])
  with pytest.raises(ValueError, match='filter_on'):
    grpo.group_filter(reward, acc, 4, 'score')


@pytest.mark.parametrize(
    'filter_on, kept_lens, rounds',
    [
        ('reward', [M, P, M], 2),  # round 0 keeps M and P, round 1 fills the buffer with M
        ('acc', [M, M, M], 3),
    ],  # P groups (all wrong, one overlong) are not kept
    ids=['reward', 'acc'],
)
def test_filter_on_decides_the_kept_groups(monkeypatch, filter_on, kept_lens, rounds):
  monkeypatch.setattr(grpo, 'rollout_fn', _rigged(grpo.rollout_fn))
  cfg, params = _model()
  gcfg = _gcfg(filter_on=filter_on)
  buf, st = jax.jit(lambda p, pl, r: grpo.generate(cfg, p, pl, r, gcfg, _scfg(gcfg), DETOK))(
      params, _kinds_pool(gcfg, POOL_A), jax.random.PRNGKey(0)
  )
  assert int(buf.filled) == 3 and int(st.rounds) == rounds
  np.testing.assert_array_equal(np.asarray(buf.prompt_lens), kept_lens)
  want = {S: [0, 0, 0, 0], P: [-1, 0, 0, 0], M: [1, 0, 0, 0]}
  np.testing.assert_array_equal(np.asarray(buf.reward), [want[k] for k in kept_lens])
  # Statistics count every sampled group, kept or not (the 4th mixed group of round 2 is not).
  sampled = POOL_A[: 4 * rounds]
  assert int(st.groups) == 4 * rounds
  assert int(st.mixed_groups) == sum(k != S for k in sampled)
  assert int(st.mixed_acc_groups) == sum(k == M for k in sampled)


def _step(cfg, tx, gcfg, state, pool):
  return jax.jit(lambda s, p: grpo.grpo_step(cfg, tx, gcfg, _scfg(gcfg), s, p, DETOK))(state, pool)


def test_min_groups_skips_the_update_and_metrics(monkeypatch):
  """POOL_B has 2 groups whose accuracies differ: min_groups=3 skips, min_groups=2 trains."""
  monkeypatch.setattr(grpo, 'rollout_fn', _rigged(grpo.rollout_fn))
  cfg, params = _model()
  tx = train.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule='constant').make(5)
  state = train.TrainState.create(params, tx)
  diff = lambda a, b: max(
      float(jnp.abs(x - y).max())  # noqa: E731
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  pool = _kinds_pool(_gcfg(), POOL_B)

  skipped, m = _step(cfg, tx, _gcfg(filter_on='acc', min_groups=3), state, pool)
  assert float(m['skipped_update']) == 1.0
  assert diff(skipped.params, state.params) == 0.0
  assert diff(skipped.opt_state, state.opt_state) == 0.0
  assert int(skipped.step) == 1
  assert float(m['groups_kept']) == 2 and float(m['groups_trained']) == 0
  assert float(m['filled']) == 0.0 and float(m['rounds_used']) == 3

  trained, m = _step(cfg, tx, _gcfg(filter_on='acc', min_groups=2), state, pool)
  assert float(m['skipped_update']) == 0.0 and float(m['nonfinite']) == 0.0
  assert diff(trained.params, state.params) > 1e-4
  assert float(m['groups_kept']) == 2 and float(m['groups_trained']) == 2
  np.testing.assert_allclose(float(m['filled']), 2 / 3)
  assert float(m['rounds_used']) == 3
  # 12 sampled groups: 4 with differing rewards (2 P, 2 M), 2 with differing accuracies.
  np.testing.assert_allclose(float(m['mixed_frac']), 4 / 12)
  np.testing.assert_allclose(float(m['kept_groups']), 4 / 12)
  np.testing.assert_allclose(float(m['mixed_acc_frac']), 2 / 12)
  np.testing.assert_allclose(float(m['sample_acc']), 2 / 48)
  np.testing.assert_allclose(float(m['accuracy']), 2 / 48)
  np.testing.assert_allclose(float(m['reward_mean']), 0 / 48)
  np.testing.assert_allclose(float(m['reward']), 0 / 48)
  assert 0.0 <= float(m['truncated_frac']) <= 1.0
  for k in ('generated_tokens', 'train_tokens', 'entropy', 'loss'):
    assert k in m
