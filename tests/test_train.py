"""The trainer core: SFT/GRPO steps, accumulation, sharding invariance, resume, NaN guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compfn import errors, parallel, tokenizers, train
from compfn.checkpoint import NonFiniteError
from compfn.data import sources
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import grpo, sft
from compfn.rl.rollout import DetokTables

TOK = tokenizers.CharTokenizer()


def _config(**kw):
  base = dict(
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
  base.update(kw)
  return ModelConfig(**base)


def _sft_batch(n=16, length=48, seed=0):
  recs = sources.trace_records('train', 1, 1, n, seed=seed)
  ex = [(TOK.encode(r['prompt']), TOK.encode(r['target'])) for r in recs]
  return sft.make_batch(ex, length, TOK.eos_id, truncate=True)


def _sft_step_fn(cfg, tx, micro=1):
  return lambda state, batch: sft.sft_step(cfg, tx, state, batch, micro)


def test_make_batch_layout():
  b = sft.make_batch([([5, 6], [7, 8])], length=6, eos_id=1)
  np.testing.assert_array_equal(b.inputs, [[5, 6, 7, 8, 0, 0]])
  np.testing.assert_array_equal(b.targets, [[6, 7, 8, 1, 0, 0]])
  np.testing.assert_array_equal(b.loss_mask, [[0, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(b.segment_ids, [[1, 1, 1, 1, 0, 0]])
  with pytest.raises(ValueError, match='example 0 has 6 tokens'):
    sft.make_batch([([5, 6], [7, 8, 9])], length=4, eos_id=1)


def test_sft_loss_matches_hand_computation():
  """The token-mean NLL over response tokens + EOS, computed independently."""
  cfg = _config()
  params = transformer.init_params(cfg, jax.random.PRNGKey(0))
  b = _sft_batch(4)
  _, m = sft.sft_grads(cfg, params, b)
  logits = np.asarray(
      transformer.apply(cfg, params, b.inputs, segment_ids=b.segment_ids)[0], np.float64
  )
  logp = (
      logits
      - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
      - logits.max(-1, keepdims=True)
  )
  nll = -np.take_along_axis(logp, np.asarray(b.targets)[..., None], -1)[..., 0]
  want = (nll * b.loss_mask).sum() / b.loss_mask.sum()
  np.testing.assert_allclose(float(m['loss']), want, rtol=1e-5)


def test_accumulation_equals_full_batch():
  cfg = _config()
  params = transformer.init_params(cfg, jax.random.PRNGKey(1))
  b = _sft_batch(16)
  g1, m1 = jax.jit(lambda p, b: sft.sft_grads(cfg, p, b, 1))(params, b)
  g4, m4 = jax.jit(lambda p, b: sft.sft_grads(cfg, p, b, 4))(params, b)
  np.testing.assert_allclose(float(m1['loss']), float(m4['loss']), rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=2e-4, atol=1e-6)


def test_optimizer_schedules():
  opt = train.OptimizerConfig(learning_rate=1.0, warmup_ratio=0.1)
  s = opt.lr_schedule(100)
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and float(s(100)) < 1e-6
  c = train.OptimizerConfig(learning_rate=2.0, schedule='constant', warmup_ratio=0.0)
  assert float(c.lr_schedule(10)(7)) == 2.0
  with pytest.raises(ValueError, match='schedule'):
    train.OptimizerConfig(schedule='linear')


def _sharded_equals_unsharded(step_builder, batch, cfg, mesh_shape=(2, 4, 1)):
  # eps = 1e-3: Adam's first step is ~lr * sign(g), so a weight whose gradient is ~0 would move
  # by +-lr on reduction-order noise alone; a large eps makes its update proportional to g.
  tx = train.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, eps=1e-3).make(10)
  params = transformer.init_params(cfg, jax.random.PRNGKey(2))
  s0 = train.TrainState.create(params, tx, seed=3)
  fn = step_builder(tx)
  ref_state, ref_m = jax.jit(fn)(s0, batch)
  mesh = parallel.make_mesh(mesh_shape)
  rules = parallel.logical_rules()
  s1 = train.shard_state(train.TrainState.create(params, tx, seed=3), cfg, mesh, rules)
  emb = s1.params['token_embed']
  assert len(emb.sharding.device_set) == 8
  put = lambda x: jax.device_put(
      np.asarray(x),
      jax.sharding.NamedSharding(  # noqa: E731
          mesh, jax.sharding.PartitionSpec(('data', 'fsdp'), *([None] * (np.ndim(x) - 1)))
      ),
  )
  got_state, got_m = train.compile_step(fn, mesh, rules)(s1, jax.tree.map(put, batch))
  for k in ('loss', 'grad_norm'):
    np.testing.assert_allclose(float(got_m[k]), float(ref_m[k]), rtol=1e-4)
  # The weights after one step (eps above keeps near-zero gradients from moving them by +-lr);
  # loss and grad norm above catch a normalisation error, which Adam's step would hide.
  for a, c in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(got_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=2e-5)
  return ref_m, got_m


def test_sft_step_sharded_2x4_equals_unsharded():
  cfg = _config()
  _sharded_equals_unsharded(lambda tx: _sft_step_fn(cfg, tx, micro=2), _sft_batch(16), cfg)


def _grpo_setup(cfg_kw=None, n=64, seed=0):
  gcfg = grpo.GRPOConfig(
      **{
          **dict(
              num_generations=4,
              batch_prompts=4,
              gen_prompts=4,
              max_rounds=2,
              max_new_tokens=24,
              task='strings_trace',
          ),
          **(cfg_kw or {}),
      }
  )
  recs = sources.trace_records('train', 1, 1, n, seed=seed)
  recs = recs[: gcfg.pool_size]
  pool = grpo.pool_from_host(
      [TOK.encode(r['prompt']) for r in recs], [r['ref'] for r in recs], gcfg, 32, 32
  )
  return gcfg, gcfg.sampler_config(TOK.stop_ids, TOK.pad_id), pool


def test_grpo_step_sharded_2x4_equals_unsharded():
  cfg = _config()
  gcfg, scfg, pool = _grpo_setup(
      {'dynamic_sampling': False, 'batch_prompts': 8, 'micro_batches': 2}
  )
  detok = DetokTables.from_tokenizer(TOK)

  def build(tx):
    return lambda s, p: grpo.grpo_step(cfg, tx, gcfg, scfg, s, p, detok)

  ref_m, got_m = _sharded_equals_unsharded(build, pool, cfg)
  assert float(ref_m['generated_samples']) == 32


def test_dynamic_sampling_keeps_only_mixed_groups(monkeypatch):
  """Every kept group is mixed, every uniform group is dropped, and the counts add up. Rigged so
  that both branches always run: the real sampler runs, but each group's rewards are decided by
  its reference's byte length (mod 3: all 0 | [1, 0, 0, 0] | all -1), so which groups are mixed
  is known on the host, whatever the random model samples."""
  from compfn.rl.advantages import group_advantages

  real = grpo.rollout_fn

  def rigged(model_config, params, batch, rng, cfg, task='strings_json', *, detok, max_bytes=None):
    ro = real(model_config, params, batch, rng, cfg, task, detok=detok, max_bytes=max_bytes)
    g = cfg.num_samples
    kind = jnp.repeat(batch.ref_len % 3, g)
    first = jnp.arange(kind.shape[0]) % g == 0
    reward = jnp.where(kind == 2, -1.0, jnp.where((kind == 1) & first, 1.0, 0.0))
    return ro.replace(
        reward=reward,
        score=reward.astype(jnp.int32),
        acc=(reward > 0).astype(jnp.int32),
        advantage=group_advantages(reward, g),
    )

  monkeypatch.setattr(grpo, 'rollout_fn', rigged)
  cfg = _config()
  gcfg, scfg, pool = _grpo_setup(
      {'max_rounds': 3, 'gen_prompts': 4, 'batch_prompts': 2, 'max_new_tokens': 16}
  )
  # What dynamic sampling must do, from the references alone: rounds of 4 prompts until 2 mixed
  # groups are kept (or 3 rounds are used).
  kinds = np.asarray(pool.ref_len) % 3
  kept, rounds = [], 0
  while len(kept) < 2 and rounds < 3:
    sampled = range(4 * rounds, 4 * rounds + 4)
    kept += [i for i in sampled if kinds[i] == 1][: 2 - len(kept)]
    rounds += 1
  dropped = [i for i in range(4 * rounds) if kinds[i] != 1]
  assert kept and dropped, (kinds, kept, dropped)  # both branches run on this pool

  params = transformer.init_params(cfg, jax.random.PRNGKey(5))
  detok = DetokTables.from_tokenizer(TOK)
  buf, st = jax.jit(lambda p, pl, r: grpo.generate(cfg, p, pl, r, gcfg, scfg, detok))(
      params, pool, jax.random.PRNGKey(0)
  )
  filled = int(buf.filled)
  rew = np.asarray(buf.reward)
  assert filled == len(kept) and int(st.rounds) == rounds
  for i in range(filled):
    assert len(set(rew[i].tolist())) > 1, rew[i]  # mixed
    np.testing.assert_array_equal(rew[i], [1, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(buf.prompts)[:filled], np.asarray(pool.prompts)[kept])
  assert int(st.samples) == rounds * 16 and int(st.groups) == rounds * 4
  assert int(st.mixed_groups) == sum(kinds[: 4 * rounds] == 1)


def test_grpo_loss_hand_computed():
  """On-policy token-mean GRPO: loss = -sum(A_i * n_i) / sum(n_i) at ratio 1."""
  cfg = _config()
  gcfg, scfg, pool = _grpo_setup({'dynamic_sampling': False})
  params = transformer.init_params(cfg, jax.random.PRNGKey(7))
  detok = DetokTables.from_tokenizer(TOK)
  buf, _ = grpo.generate(cfg, params, pool, jax.random.PRNGKey(1), gcfg, scfg, detok)
  _, loss, aux = grpo.policy_grads(cfg, params, buf, gcfg, scfg)
  n = np.asarray(buf.mask).sum(-1)
  a = np.asarray(buf.advantage)
  np.testing.assert_allclose(float(loss), -(a * n).sum() / n.sum(), rtol=1e-5, atol=1e-7)
  assert float(aux['sampler_logprob_gap']) < 1e-4  # trainer and sampler agree


def test_nonfinite_step_is_not_applied_and_run_stops(tmp_path):
  cfg = _config()
  tx = optax.sgd(1e-2)
  params = transformer.init_params(cfg, jax.random.PRNGKey(0))
  state = train.TrainState.create(params, tx)

  def step(state, batch):
    g, m = sft.sft_grads(cfg, state.params, batch)
    loss = jnp.where(state.step >= 2, jnp.nan, m['loss'])
    return train.apply_gradients(state, g, tx, loss)[0], {'loss': loss}

  def bad_step(state, batch):
    g, m = sft.sft_grads(cfg, state.params, batch)
    loss = jnp.where(state.step >= 2, jnp.nan, m['loss'])
    new, u = train.apply_gradients(state, g, tx, loss)
    return new, {'loss': loss, **u}

  del step
  batch = _sft_batch(8)
  trainer = train.Trainer(str(tmp_path), 5, save_every=1, progress=False, async_save=False)
  with pytest.raises(NonFiniteError, match='step 3 produced a non-finite') as e:
    trainer.run(state, jax.jit(bad_step), iter(lambda: batch, None))
  assert 'last good checkpoint is step 2' in str(e.value)
  assert trainer.checkpointer.latest_step() == 2
  assert trainer.finished() is None
  trainer.close()


class _ListIter:
  """A resumable iterator over a fixed list (stands in for grain in the unit test)."""

  def __init__(self, items):
    self.items, self.i = items, 0

  def __next__(self):
    x = self.items[self.i % len(self.items)]
    self.i += 1
    return x

  def get_state(self):
    return {'i': self.i}

  def set_state(self, s):
    self.i = s['i']


def test_resume_is_bitwise_and_continues_data(tmp_path):
  cfg = _config()
  tx = train.OptimizerConfig(learning_rate=1e-2).make(6)
  params = transformer.init_params(cfg, jax.random.PRNGKey(0))
  batches = [_sft_batch(8, seed=s) for s in range(6)]
  fn = jax.jit(_sft_step_fn(cfg, tx))
  full = train.Trainer(str(tmp_path / 'a'), 6, progress=False, async_save=False)
  a = full.run(train.TrainState.create(params, tx), fn, _ListIter(batches))
  full.close()
  part = train.Trainer(str(tmp_path / 'b'), 3, progress=False, async_save=False)
  part.run(train.TrainState.create(params, tx), fn, _ListIter(batches))
  part.close()
  again = train.Trainer(str(tmp_path / 'b'), 6, progress=False, async_save=False)
  state, data = again.restore(train.TrainState.create(params, tx))
  assert int(state.step) == 3 and data == {'i': 3}
  it = _ListIter(batches)
  it.set_state(data)
  b = again.run(state, fn, it)
  again.close()
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rows = train.read_metrics(str(tmp_path / 'b'))
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_past_num_steps_is_not_taken_as_the_result(tmp_path):
  """A folder whose newest checkpoint is past num_steps (saved by a run configured for more
  steps): the checkpoint at num_steps is restored when kept, otherwise a clear error."""
  cfg = _config()
  tx = train.OptimizerConfig(learning_rate=1e-2).make(6)
  params = transformer.init_params(cfg, jax.random.PRNGKey(0))
  batches = [_sft_batch(8, seed=s) for s in range(6)]
  fn = jax.jit(_sft_step_fn(cfg, tx))
  d = str(tmp_path / 'run')
  for n in (3, 6):  # checkpoints at steps 3 and 6
    t = train.Trainer(d, n, progress=False, async_save=False)
    st, data = t.restore(train.TrainState.create(params, tx))
    it = _ListIter(batches)
    if data:
      it.set_state(data)
    t.run(st, fn, it)
    t.close()
  at3 = train.Trainer(d, 3, progress=False, async_save=False)
  state, data = at3.restore(train.TrainState.create(params, tx))
  at3.close()
  assert int(state.step) == 3 and data == {'i': 3}
  at4 = train.Trainer(d, 4, progress=False, async_save=False)
  with pytest.raises(errors.CheckpointMismatch, match=r'step 6, past num_steps=4.*kept: \[3, 6\]'):
    at4.restore(train.TrainState.create(params, tx))
  at4.close()
  at6 = train.Trainer(d, 6, progress=False, async_save=False)
  assert int(at6.restore(train.TrainState.create(params, tx))[0].step) == 6
  at6.close()


def test_rl_reward_rises():
  """GRPO learns, with a fixed seed: accuracy of 8 samples on 64 fixed held-out prompts rises.

  Setup: a tiny char model is fine-tuned on traces of two identity-like functions (func_4,
  func_21; inputs of 1-2 letters) where every prompt appears twice — once with the right
  answer and once with a wrong one (a trailing 'q'). It learns the format but is unsure whether
  to end with 'q'; the verifier rewards only the right answer, and GRPO must find out which."""
  cfg = _config(d_model=64, head_dim=16, mlp_dim=128)
  recs = list(sources.trace_records(['func_4', 'func_21'], 1, 1, 512, seed=0, input_len=(1, 2)))
  ex = [(TOK.encode(r['prompt']), TOK.encode(r['target'] + suf)) for r in recs for suf in ('', 'q')]
  tx = train.OptimizerConfig(learning_rate=3e-3, warmup_steps=5, schedule='constant').make(60)
  st = train.TrainState.create(transformer.init_params(cfg, jax.random.PRNGKey(0)), tx)
  sft_fn = jax.jit(_sft_step_fn(cfg, tx))
  rng = np.random.default_rng(0)
  for _ in range(200):
    idx = rng.choice(len(ex), 32, replace=False)
    st, _ = sft_fn(st, sft.make_batch([ex[i] for i in idx], 64, TOK.eos_id, truncate=True))
  detok = DetokTables.from_tokenizer(TOK)
  gcfg = grpo.GRPOConfig(
      num_generations=8,
      batch_prompts=8,
      gen_prompts=8,
      max_rounds=1,
      dynamic_sampling=False,
      max_new_tokens=40,
      task='strings_trace',
  )
  scfg = gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)
  ecfg = grpo.GRPOConfig(
      num_generations=8,
      batch_prompts=64,
      gen_prompts=64,
      max_rounds=1,
      dynamic_sampling=False,
      max_new_tokens=40,
      task='strings_trace',
  )
  held, train_recs = recs[-64:], recs[:-64]
  epool = grpo.pool_from_host(
      [TOK.encode(r['prompt']) for r in held], [r['ref'] for r in held], ecfg, 32, 32
  )
  ev = jax.jit(
      lambda p: grpo.generate(
          cfg,
          p,
          epool,
          jax.random.PRNGKey(5),
          ecfg,
          ecfg.sampler_config(TOK.stop_ids, TOK.pad_id),
          detok,
      )[1]
  )
  accuracy = lambda p: float(ev(p).correct / ev(p).samples)  # noqa: E731
  steps = 40
  tx_rl = train.OptimizerConfig(learning_rate=5e-4, schedule='constant', warmup_ratio=0.0).make(
      steps
  )
  rl = train.TrainState.create(st.params, tx_rl, seed=1)
  before = accuracy(rl.params)
  step = jax.jit(lambda s, p: grpo.grpo_step(cfg, tx_rl, gcfg, scfg, s, p, detok))
  for k in range(steps):
    sub = [train_recs[(k * 8 + i) % len(train_recs)] for i in range(8)]
    pool = grpo.pool_from_host(
        [TOK.encode(r['prompt']) for r in sub], [r['ref'] for r in sub], gcfg, 32, 32
    )
    rl, m = step(rl, pool)
    assert float(m['nonfinite']) == 0
  after = accuracy(rl.params)
  # measured: 0.240 -> 0.412 on one 2-core machine, 0.223 -> 0.307 on another (the same seeds;
  # XLA's CPU code differs between processors, so the trajectories do). Chance alone: the same
  # eval key before and after, 512 samples, sd ~0.02.
  assert after > before + 0.05, (before, after)


def test_skipped_update_keeps_weights_and_optimizer_state():
  """GRPO steps without a kept group must not move the weights through AdamW momentum/decay."""
  cfg = _config()
  tx = train.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule='constant').make(5)
  st = train.TrainState.create(transformer.init_params(cfg, jax.random.PRNGKey(0)), tx)
  g, m = sft.sft_grads(cfg, st.params, _sft_batch(8))
  st, _ = train.apply_gradients(st, g, tx, m['loss'])  # momentum is now non-zero
  zeros = jax.tree.map(jnp.zeros_like, g)
  moved, _ = train.apply_gradients(st, zeros, tx, jnp.zeros(()))
  kept, mk = train.apply_gradients(st, zeros, tx, jnp.zeros(()), skip=jnp.array(True))
  assert int(kept.step) == 2 and float(mk['skipped_update']) == 1.0
  diff = lambda a, b: max(
      float(jnp.abs(x - y).max())  # noqa: E731
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  assert diff(moved.params, st.params) > 1e-4  # AdamW alone would drift
  assert diff(kept.params, st.params) == 0.0
  assert diff(kept.opt_state, st.opt_state) == 0.0
