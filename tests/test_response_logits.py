"""The train half's logits only where the loss is (issue #11): response-only LM head, chunked
log-softmax, the entropy / KL static guards and the memory of the GRPO loss.

The reference implementation of the former full-logits path (``_old_*``) is kept here: full
``[rows, P+N, V]`` logits, gathered at the response positions, then log-softmax / entropy."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import tokenizers
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import grpo, losses

TOK = tokenizers.CharTokenizer()
P, G, LP, N = 3, 4, 6, 8  # prompts, samples per prompt, prompt width, response tokens


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
  return ModelConfig(**{**base, **kw})


CONFIGS = {'tied': {}, 'untied_softcap': {'tie_word_embeddings': False, 'final_logit_softcap': 5.0}}


@functools.lru_cache(maxsize=None)
def _model(name='tied', seed=0):
  cfg = _config(**CONFIGS[name])
  params = transformer.init_params(cfg, jax.random.PRNGKey(seed))
  # Larger weights than the 0.02 init: peaked distributions, so temperature and entropy matter.
  return cfg, jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)


def _buffer(seed=0, filled=2, p=P, g=G, lp=LP, n=N, vocab=TOK.vocab_size):
  """A hand-made kept-group buffer: random prompts/responses, prefix masks of random lengths
  (one empty response), random sampler log-probs and advantages, ``filled`` < P groups."""
  rng = np.random.default_rng(seed)
  prompt_lens = rng.integers(1, lp + 1, p).astype(np.int32)
  prompts = rng.integers(2, vocab, (p, lp)).astype(np.int32)
  prompts[np.arange(lp)[None] >= prompt_lens[:, None]] = 0
  lengths = rng.integers(0, n + 1, (p, g))
  lengths[0, 0] = n
  mask = np.arange(n)[None, None] < lengths[..., None]
  tokens = np.where(mask, rng.integers(2, vocab, (p, g, n)), 0).astype(np.int32)
  return grpo.Buffer(
      prompts=jnp.asarray(prompts),
      prompt_lens=jnp.asarray(prompt_lens),
      tokens=jnp.asarray(tokens),
      mask=jnp.asarray(mask),
      logprobs=jnp.asarray(np.where(mask, -rng.uniform(0.5, 4, mask.shape), 0), jnp.float32),
      advantage=jnp.asarray(rng.normal(size=(p, g)), jnp.float32),
      reward=jnp.zeros((p, g), jnp.float32),
      filled=jnp.asarray(filled, jnp.int32),
  )


def _gcfg(**kw):
  base = dict(
      num_generations=G,
      batch_prompts=P,
      gen_prompts=P,
      max_rounds=1,
      max_new_tokens=N,
      task='strings_trace',
      dynamic_sampling=False,
  )
  return grpo.GRPOConfig(**{**base, **kw})


# --------------------------------------------------------- the former full-logits path


def _old_response_logits(cfg, params, rows, gcfg):
  logits, _ = transformer.apply(
      cfg, params, rows.tokens, rows.positions, segment_ids=rows.segment_ids
  )
  lg = jnp.take_along_axis(logits, rows.src[:, :, None], axis=1).astype(jnp.float32)
  return lg if gcfg.logit_scale == 1.0 else lg / jnp.float32(gcfg.logit_scale)


def _old_policy_loss(cfg, params, buf, gcfg, ref_params=None):
  """(loss, aux) of the GRPO loss as computed before: whole batch, full logits."""
  rows = grpo._flat_rows(buf, gcfg)
  num_tokens = jnp.maximum(rows.mask.sum().astype(jnp.float32), 1.0)
  num_seqs = jnp.maximum(rows.row_valid.sum().astype(jnp.float32), 1.0)
  lg = _old_response_logits(cfg, params, rows, gcfg)
  lp = losses.token_logprobs(lg, rows.response)
  old = jax.lax.stop_gradient(lp) if gcfg.old_logprobs == 'recompute' else rows.old_logprobs
  pg, pm = losses.policy_loss(
      lp,
      old,
      rows.advantage,
      rows.mask,
      gcfg.clip_low,
      gcfg.clip_high,
      gcfg.loss_agg,
      num_tokens,
      num_seqs,
  )
  ent_tok = losses.entropy_from_logits(lg)
  ent = losses.aggregate(ent_tok, rows.mask, gcfg.loss_agg, num_tokens, num_seqs)
  loss = pg - gcfg.entropy_coef * ent
  m = rows.mask.astype(jnp.float32)
  aux = {
      'pg_loss': pg,
      'entropy': (ent_tok * m).sum() / num_tokens,
      'clip_frac': pm['clip_frac'],
      'approx_kl': pm['approx_kl'],
      'kl': jnp.zeros((), jnp.float32),
  }
  if gcfg.kl_coef > 0:
    rl = _old_response_logits(cfg, ref_params, rows, gcfg)
    ref = jax.lax.stop_gradient(losses.token_logprobs(rl, rows.response))
    kl = losses.aggregate(
        losses.kl_penalty(lp, ref, gcfg.kl_estimator),
        rows.mask,
        gcfg.loss_agg,
        num_tokens,
        num_seqs,
    )
    loss = loss + gcfg.kl_coef * kl
    aux['kl'] = kl
  return loss, aux


def _close(got, want, rtol=1e-5):
  """Relative closeness of arrays, with an absolute floor of rtol * max|want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = max(np.abs(want).max(initial=0.0), 1e-30)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------- (a) log-probs


@pytest.mark.parametrize('name', list(CONFIGS))
def test_logits_index_2d_and_lm_head_equal_full_logits(name):
  cfg, params = _model(name)
  buf = _buffer()
  rows = grpo._flat_rows(buf, _gcfg())
  full, _ = transformer.apply(
      cfg, params, rows.tokens, rows.positions, segment_ids=rows.segment_ids
  )
  want = jnp.take_along_axis(full, rows.src[:, :, None], axis=1)
  got, _ = transformer.apply(
      cfg,
      params,
      rows.tokens,
      rows.positions,
      segment_ids=rows.segment_ids,
      logits_index=rows.src,
  )
  assert got.shape == (P * G, N, cfg.vocab_size)
  _close(got, want)
  hidden, _ = transformer.apply(
      cfg,
      params,
      rows.tokens,
      rows.positions,
      segment_ids=rows.segment_ids,
      logits_index=rows.src,
      return_hidden=True,
  )
  assert hidden.shape == (P * G, N, cfg.d_model)
  _close(transformer.lm_head(cfg, params, hidden), want)
  whole, _ = transformer.apply(
      cfg,
      params,
      rows.tokens,
      rows.positions,
      segment_ids=rows.segment_ids,
      return_hidden=True,
  )
  _close(transformer.lm_head(cfg, params, whole), full)


@pytest.mark.parametrize('name', list(CONFIGS))
@pytest.mark.parametrize('chunk', [0, 1, 3, N])
@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_chunked_response_logprobs_equal_full_logits(name, chunk, temperature):
  """``response_logprobs`` (response-only head, ``chunk`` positions at a time; 3 pads the last
  chunk) == log_softmax of the gathered full logits; entropy and argmax likewise."""
  cfg, params = _model(name)
  buf = _buffer()
  gcfg = _gcfg(temperature=temperature, logits_chunk=chunk)
  rows = grpo._flat_rows(buf, gcfg)
  lg = _old_response_logits(cfg, params, rows, gcfg)
  want = jnp.where(rows.mask, losses.token_logprobs(lg, rows.response), 0.0)
  got = jax.jit(grpo.response_logprobs, static_argnums=(0, 3))(cfg, params, buf, gcfg)
  _close(got, want)
  hidden, _ = transformer.apply(
      cfg,
      params,
      rows.tokens,
      rows.positions,
      segment_ids=rows.segment_ids,
      logits_index=rows.src,
      return_hidden=True,
  )
  st = losses.token_stats_from_hidden(
      cfg,
      params,
      hidden,
      rows.response,
      chunk,
      scale=gcfg.logit_scale,
      entropy='value',
      correct=True,
  )
  _close(st['logprobs'], losses.token_logprobs(lg, rows.response))
  _close(st['entropy'], losses.entropy_from_logits(lg))
  np.testing.assert_array_equal(st['correct'], jnp.argmax(lg, -1) == rows.response)


def test_logits_chunk_size():
  assert losses.logits_chunk_size(16, 256, 32768) == 32  # 2 MiB a position: 64 MiB
  assert losses.logits_chunk_size(16, 20, 32768) == 20  # fits in one chunk
  assert losses.logits_chunk_size(16, 33, 32768) == 17  # balanced: 2 chunks of 17
  assert losses.logits_chunk_size(1024, 8, 128256) == 1  # at least one position
  with pytest.raises(ValueError, match='entropy'):
    cfg, params = _model()
    losses.token_stats_from_hidden(
        cfg, params, jnp.zeros((1, 2, 32)), jnp.zeros((1, 2)), entropy='yes'
    )
  with pytest.raises(ValueError, match='logits_chunk'):
    _gcfg(logits_chunk=-1)


def test_sft_loss_from_hidden_equals_sft_loss():
  """The function the SFT path can adopt: loss and argmax hits equal the full-logits ones, and
  so do the gradients (chunked: 5 positions of 12)."""
  cfg, params = _model('untied_softcap')
  rng = np.random.default_rng(3)
  inputs = jnp.asarray(rng.integers(2, TOK.vocab_size, (4, 12)), jnp.int32)
  targets = jnp.asarray(rng.integers(2, TOK.vocab_size, (4, 12)), jnp.int32)
  mask = jnp.asarray(rng.random((4, 12)) < 0.7, jnp.float32)

  def old(prm):
    logits, _ = transformer.apply(cfg, prm, inputs)
    correct = ((jnp.argmax(logits, -1) == targets) * mask).sum()
    return losses.sft_loss(logits, targets, mask, num_tokens=20.0), correct

  def new(prm):
    hidden, _ = transformer.apply(cfg, prm, inputs, return_hidden=True)
    return losses.sft_loss_from_hidden(cfg, prm, hidden, targets, mask, num_tokens=20.0, chunk=5)

  (l0, c0), g0 = jax.value_and_grad(old, has_aux=True)(params)
  (l1, c1), g1 = jax.value_and_grad(new, has_aux=True)(params)
  _close(l1, l0)
  assert float(c1) == float(c0)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    _close(a, b)
  hidden, _ = transformer.apply(cfg, params, inputs, return_hidden=True)
  lp = losses.token_logprobs_from_hidden(cfg, params, hidden, targets, mask, chunk=5)
  logits, _ = transformer.apply(cfg, params, inputs)
  _close(lp, jnp.where(mask > 0, losses.token_logprobs(logits, targets), 0.0))


# ---------------------------------------------------- (b) GRPO loss and gradients


@pytest.mark.parametrize(
    'kw',
    [
        dict(),
        dict(entropy_coef=0.01, kl_coef=0.05, logits_chunk=3),
        dict(
            entropy_coef=0.02,
            kl_coef=0.1,
            kl_estimator='k2',
            temperature=0.7,
            old_logprobs='sampler',
            loss_agg='seq-mean-token-mean',
            logits_chunk=1,
            micro_batches=2,
        ),
        # 3 micro-batches of 4 rows, 2 of 3 groups filled: the third micro-batch is skipped.
        dict(entropy_coef=0.01, kl_coef=0.05, micro_batches=3),
        # Length-sorted groups, each micro-batch at the smallest width holding it.
        dict(train_widths=(2, 5), micro_batches=3),
        dict(
            train_widths=(3,),
            micro_batches=3,
            entropy_coef=0.01,
            kl_coef=0.05,
            old_logprobs='sampler',
            temperature=0.7,
        ),
    ],
    ids=[
        'defaults',
        'ent_kl_chunk3',
        'ent_kl_T0.7_sampler_micro2',
        'micro3_skips_unfilled',
        'widths_micro3',
        'widths_ent_kl_sampler',
    ],
)
def test_grpo_loss_and_grads_equal_full_logits_path(kw):
  cfg, params = _model()
  _, ref_params = _model(seed=1)
  buf = _buffer(seed=2)
  gcfg = _gcfg(**kw)
  ref = ref_params if gcfg.kl_coef > 0 else None
  grads, loss, aux = jax.jit(lambda p, b, r: grpo.policy_grads(cfg, p, b, gcfg, ref_params=r))(
      params, buf, ref
  )
  (want_loss, want_aux), want_grads = jax.jit(
      jax.value_and_grad(lambda p, b, r: _old_policy_loss(cfg, p, b, gcfg, r), has_aux=True)
  )(params, buf, ref)
  _close(loss, want_loss)
  for k in ('pg_loss', 'entropy', 'kl', 'clip_frac', 'approx_kl'):
    _close(aux[k], want_aux[k])
  if gcfg.kl_coef > 0:
    assert float(aux['kl']) > 0
  if gcfg.old_logprobs == 'sampler':
    assert float(aux['clip_frac']) > 0  # the clipped branch is exercised
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    _close(a, b)


def test_train_widths_sort_groups_and_pick_the_smallest_width():
  buf = _buffer(seed=3, filled=2)
  longest = np.asarray(buf.mask).sum(-1).max(-1)
  got = grpo._longest_groups_first(buf)
  order = [int(np.argmax(longest[:2])), int(np.argmin(longest[:2])), 2]  # filled, then unfilled
  if longest[0] == longest[1]:
    order = [0, 1, 2]
  np.testing.assert_array_equal(got.tokens, np.asarray(buf.tokens)[order])
  np.testing.assert_array_equal(got.advantage, np.asarray(buf.advantage)[order])
  mask = np.zeros((2, 16), bool)
  mask[1, :6] = True
  assert int(grpo.width_index(jnp.asarray(mask), (4, 8, 16))) == 1
  mask[0, :16] = True
  assert int(grpo.width_index(jnp.asarray(mask), (4, 8, 16))) == 2
  assert int(grpo.width_index(jnp.zeros((2, 16), bool), (4, 8, 16))) == 0
  with pytest.raises(ValueError, match='train_widths'):
    _gcfg(train_widths=(4, 2))
  with pytest.raises(ValueError, match='train_widths'):
    _gcfg(train_widths=(N,))
  with pytest.raises(ValueError, match='whole groups'):
    _gcfg(train_widths=(2,), micro_batches=2)


# ------------------------------------------------------------- (c) static guards


def _hlo(fn, *args):
  return jax.jit(fn).lower(*args).as_text()


def _count(text, op):
  return len(re.findall(rf'\b{re.escape(op)}\b', text))


def _main_args(text):
  sig = next(line for line in text.splitlines() if 'func.func public @main' in line)
  return len(re.findall(r'%arg\d+:', sig))


def test_no_reference_forward_at_kl_coef_0():
  """kl_coef = 0: the reference params are unused (pruned from the program's arguments) and
  the program has exactly the matmuls of the one without them; kl_coef > 0 adds the reference
  trunk + head forward."""
  cfg, params = _model()
  _, ref_params = _model(seed=1)
  buf = _buffer()
  off = _gcfg()
  on = _gcfg(kl_coef=0.1)
  fn = lambda g: lambda p, b, r: grpo.policy_grads(cfg, p, b, g, ref_params=r)[:2]  # noqa
  without = _hlo(lambda p, b: grpo.policy_grads(cfg, p, b, off)[:2], params, buf)
  off_ref = _hlo(fn(off), params, buf, ref_params)
  on_ref = _hlo(fn(on), params, buf, ref_params)
  dots = _count(without, 'stablehlo.dot_general')
  assert _count(off_ref, 'stablehlo.dot_general') == dots
  assert _main_args(off_ref) == _main_args(without)
  assert _main_args(on_ref) > _main_args(without)
  # reference forward: per layer q, k, v, scores, probs@v, o, gate, up, down (9) + the head
  assert _count(on_ref, 'stablehlo.dot_general') >= dots + 9
  with pytest.raises(ValueError, match='reference params'):
    grpo.policy_grads(cfg, params, buf, on)


def test_entropy_not_differentiated_at_entropy_coef_0():
  """entropy='value' (GRPO at entropy_coef = 0): the gradient program is the one without any
  entropy ('none'): the metric's computation is dead in it, so it has no backward pass; with
  'grad' (entropy_coef != 0) the program differs. In the whole step, entropy_coef = 0 gives a
  smaller program than 0.01 and the same gradients as the full-logits path (see (b))."""
  cfg, params = _model()
  buf = _buffer()
  rows = grpo._flat_rows(buf, _gcfg())

  def grads(mode, chunk):
    def f(prm):
      hidden, _ = transformer.apply(
          cfg,
          prm,
          rows.tokens,
          rows.positions,
          segment_ids=rows.segment_ids,
          logits_index=rows.src,
          return_hidden=True,
      )
      st = losses.token_stats_from_hidden(cfg, prm, hidden, rows.response, chunk, entropy=mode)
      out = (st['logprobs'] * rows.mask).sum()
      return out + (st['entropy'].sum() if mode == 'grad' else 0.0)

    return lambda p: jax.grad(f)(p)

  for chunk in (0, 3):
    none = _hlo(grads('none', chunk), params)
    assert _hlo(grads('value', chunk), params) == none
    assert _hlo(grads('grad', chunk), params) != none
  small = _hlo(lambda p, b: grpo.policy_grads(cfg, p, b, _gcfg())[0], params, buf)
  big = _hlo(lambda p, b: grpo.policy_grads(cfg, p, b, _gcfg(entropy_coef=0.01))[0], params, buf)
  assert len(small.splitlines()) < len(big.splitlines())


def test_make_step_takes_detok_and_ref_params_as_arguments():
  """``make_step``'s arrays are all arguments: the lowered step embeds no large constant
  (neither the detokeniser's byte table nor the reference params)."""
  from compfn.rl.rollout import DetokTables
  import optax
  from compfn import train

  cfg, params = _model()
  _, ref_params = _model(seed=1)
  gcfg = grpo.GRPOConfig(
      num_generations=2,
      batch_prompts=2,
      gen_prompts=2,
      max_rounds=1,
      max_new_tokens=4,
      task='strings_trace',
      dynamic_sampling=False,
      kl_coef=0.1,
  )
  scfg = gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)
  tx = optax.sgd(1e-3)
  state = train.TrainState.create(params, tx, 0)
  pool = grpo.pool_from_host([TOK.encode('ab'), TOK.encode('c')], ['x', 'y'], gcfg, 8, 8)
  detok = DetokTables.from_tokenizer(TOK)
  text = (
      jax.jit(grpo.make_step(cfg, tx, gcfg, scfg)).lower(state, pool, detok, ref_params).as_text()
  )
  sizes = [
      int(np.prod([int(d) for d in m.split('x')[:-1]] or [1]))
      for m in re.findall(r'stablehlo\.constant dense<[^>]{40,}>\s*:\s*tensor<([^>]*)>', text)
  ]
  assert max(sizes, default=0) < 256, sizes  # no embedded table or weight matrix


# ------------------------------------------------------------------- (d) memory


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_grpo_loss_memory_is_well_below_one_full_logits_tensor():
  """V = 32768, N = 256, 16 rows, tiny one-head trunk: one [rows, N, V] f32 tensor is 512 MiB;
  the chunked GRPO loss + gradients needs a fraction of it (the former path, several)."""
  v, n, p, g = 32768, 256, 4, 4
  cfg = _config(vocab_size=v, d_model=32, num_layers=1, num_heads=1, num_kv_heads=1)
  params = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.PRNGKey(0)))
  buf = jax.eval_shape(lambda: _buffer(p=p, g=g, lp=16, n=n, vocab=v))
  full = p * g * n * v * 4
  gcfg = _gcfg(batch_prompts=p, gen_prompts=p, num_generations=g, max_new_tokens=n)
  new = _temp_bytes(lambda q, b: grpo.policy_grads(cfg, q, b, gcfg)[:2], params, buf)
  small = _temp_bytes(
      lambda q, b: grpo.policy_grads(cfg, q, b, dataclasses.replace(gcfg, logits_chunk=8))[:2],
      params,
      buf,
  )
  print(
      f'\n[rows={p * g}, N={n}, V={v}] one [rows, N, V] f32 tensor: {full / 2**20:.0f} MiB; '
      f'GRPO loss+grads temp: default chunk {new / 2**20:.1f} MiB, logits_chunk=8 '
      f'{small / 2**20:.1f} MiB'
  )
  # CPU: ~24 MiB of trunk + ~3 chunks' worth of logits ([rows, c, V] f32; default c = 32).
  assert new < full / 2
  assert small < full / 5
  if jax.default_backend() == 'cpu':
    old = _temp_bytes(
        jax.value_and_grad(lambda q, b: _old_policy_loss(cfg, q, b, gcfg), has_aux=True),
        params,
        buf,
    )
    print(f'former full-logits path temp: {old / 2**20:.1f} MiB')
    assert old > full and new < old / 4


# ------------------------------------- (c) grouped responses: the prompt computed once per group


@pytest.mark.parametrize(
    'kind,overrides',
    [
        ('llama', {}),
        ('qwen2', {}),
        ('gemma2', {}),  # soft-caps, sliding window 4 (< the 16 positions here)
        ('llama', {'scan_layers': True, 'remat': 'full'}),
    ],
    ids=['llama', 'qwen2', 'gemma2', 'llama_scan_remat'],
)
def test_response_hidden_equals_full_rows(kind, overrides):
  """``transformer.response_hidden`` (each prompt once, G responses attending to its keys)
  equals ``apply`` on the ``[prompt | response]`` rows at the positions predicting the response
  tokens: ragged prompts (one full, one of 2 tokens), responses of random lengths (one full,
  one empty)."""
  from compfn import model as model_lib
  from compfn import sampling

  cfg = model_lib.tiny(kind, **overrides)
  params = model_lib.init_params(cfg, jax.random.key(1))
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 1 else x + 0.1, params)
  p, g, lp, n = 3, 4, 7, 9
  rng = np.random.default_rng(0)
  lens = np.array([7, 2, 5], np.int32)
  prompts = rng.integers(2, 200, (p, lp)).astype(np.int32)
  prompts[np.arange(lp)[None] >= lens[:, None]] = 0
  rl = rng.integers(1, n + 1, p * g)
  rl[0], rl[1] = n, 0
  mask = np.arange(n)[None] < rl[:, None]
  resp = np.where(mask, rng.integers(2, 200, (p * g, n)), 0).astype(np.int32)
  samples = sampling.Samples(
      tokens=jnp.asarray(resp),
      lengths=jnp.asarray(rl),
      logprobs=jnp.zeros((p * g, n)),
      mask=jnp.asarray(mask),
      truncated=jnp.zeros(p * g, bool),
      group=jnp.repeat(jnp.arange(p), g),
  )
  full, pos, seg = sampling.full_sequences(prompts, lens, samples, g)
  src = sampling.response_logit_positions(jnp.repeat(jnp.asarray(lens), g), lp, n)
  want, _ = transformer.apply(
      cfg, params, full, pos, segment_ids=seg, logits_index=src, return_hidden=True
  )
  got = jax.jit(transformer.response_hidden, static_argnums=(0, 6))(
      cfg, params, prompts, lens, resp, mask, g
  )
  assert got.shape == want.shape == (p * g, n, cfg.d_model)
  # Positions that predict a real response token: the prompt's last, then the response's own.
  used = np.concatenate([np.ones((p * g, 1), bool), mask[:, :-1]], axis=1) & (
      np.arange(n)[None] < np.maximum(rl, 1)[:, None]
  )
  _close(np.asarray(got)[used], np.asarray(want)[used])
