"""Losses as pure functions: the GRPO/DAPO policy loss with named aggregation modes, KL
estimators, entropy, and the SFT negative log-likelihood.

All per-token inputs are ``[N, T]`` (N sequences of T response tokens) with a ``mask[N, T]``
of real response tokens. **Normalisation by global counts**: every mode divides by a count that
the caller may pass explicitly (``num_tokens`` / ``num_seqs``: the totals over the *global*
batch, e.g. summed across data-parallel shards and micro-batches), so a loss summed over shards
or accumulation steps equals the loss of the whole batch, whatever the mesh. Left as None they
are the counts of the arrays given.

Aggregation modes (veRL's names)::

    token-mean               sum(l * m) / num_tokens
    seq-mean-token-sum       sum_i (sum_t l*m) / num_seqs
    seq-mean-token-mean      sum_i (sum_t l*m / sum_t m) / num_seqs
    seq-mean-token-sum-norm  sum(l * m) / (num_seqs * T)        (Dr.GRPO: a constant per token)

**From hidden states** (:func:`token_stats_from_hidden`, :func:`token_logprobs_from_hidden`,
:func:`sft_loss_from_hidden`): per-token log-probs (and entropy / argmax hits) straight from the
transformer's pre-norm hidden states ``[B, N, D]`` (``transformer.apply(..., logits_index=...,
return_hidden=True)``), applying the final norm + LM head to ``logits_chunk`` positions at a
time under ``jax.checkpoint`` inside a ``lax.scan``: no ``[B, N, V]`` f32 logits tensor exists at
once, in the forward or the backward pass (which recomputes each chunk's logits), and the
values and gradients are those of the full-logits computation (``tests/
test_response_logits.py``: e.g. V=32768, N=256, 16 rows: 217 MiB of temporaries for the GRPO
loss + gradients, against 512 MiB for one [16, 256, 32768] f32 tensor and 3.1 GiB before).

Worked example (token-mean, ratio 1, A = [1, -1], mask [[1,1,0],[1,0,0]]): the policy-gradient
loss per token is -A*ratio = [[-1,-1,·],[1,·,·]], summed -1 over 3 tokens -> -1/3.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from compfn.model import transformer
from compfn.model.config import ModelConfig

AGG_MODES = ('token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm')
KL_ESTIMATORS = ('k1', 'k2', 'k3', 'low_var_kl')


def aggregate(loss, mask, mode: str = 'token-mean', num_tokens=None, num_seqs=None):
  """Reduce a per-token loss f32[N, T] to a scalar (see the module docstring)."""
  m = mask.astype(jnp.float32)
  lm = loss * m
  if mode == 'token-mean':
    denom = m.sum() if num_tokens is None else num_tokens
    return lm.sum() / jnp.maximum(denom, 1)
  seqs = loss.shape[0] if num_seqs is None else num_seqs
  if mode == 'seq-mean-token-sum':
    return lm.sum() / jnp.maximum(seqs, 1)
  if mode == 'seq-mean-token-mean':
    per_seq = lm.sum(-1) / jnp.maximum(m.sum(-1), 1)
    return per_seq.sum() / jnp.maximum(seqs, 1)
  if mode == 'seq-mean-token-sum-norm':
    return lm.sum() / jnp.maximum(seqs * loss.shape[1], 1)
  raise ValueError(f'unknown loss aggregation {mode!r}; one of {AGG_MODES}')


def policy_loss(
    logprobs,
    old_logprobs,
    advantages,
    mask,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = 'token-mean',
    num_tokens=None,
    num_seqs=None,
):
  """PPO-clip policy-gradient loss with separate low/high clip ratios (DAPO's clip-higher).

  logprobs, old_logprobs: f32[N, T] log-probabilities of the sampled tokens (current policy,
  behaviour policy); advantages: f32[N] (broadcast over tokens) or f32[N, T].
  Returns (loss, metrics) with metrics = {'clip_frac', 'ratio_mean', 'approx_kl'} over masked
  tokens. Strictly on-policy (old = current, stop-gradient) the ratio is 1 and this is
  REINFORCE with group-normalised advantages, as the paper's runs were.
  """
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  log_ratio = logprobs - old_logprobs
  ratio = jnp.exp(log_ratio)
  pg1 = -adv * ratio
  pg2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  per_token = jnp.maximum(pg1, pg2)
  loss = aggregate(per_token, mask, agg, num_tokens, num_seqs)
  m = mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1)
  metrics = {
      'clip_frac': ((pg2 > pg1) * m).sum() / n,
      'ratio_mean': (ratio * m).sum() / n,
      'approx_kl': (0.5 * log_ratio**2 * m).sum() / n,
  }
  return loss, metrics


def kl_penalty(logprobs, ref_logprobs, estimator: str = 'low_var_kl'):
  """Per-token KL(pi || pi_ref) estimate from sampled-token log-probs (Schulman's k1/k2/k3):

  k1 = logp - ref;  k2 = 0.5 (logp - ref)^2;  k3 = exp(ref - logp) - (ref - logp) - 1;
  low_var_kl = k3 clipped to [-10, 10] (veRL's default)."""
  d = logprobs - ref_logprobs
  if estimator == 'k1':
    return d
  if estimator == 'k2':
    return 0.5 * d**2
  if estimator in ('k3', 'low_var_kl'):
    k3 = jnp.exp(-d) + d - 1.0
    return jnp.clip(k3, -10.0, 10.0) if estimator == 'low_var_kl' else k3
  raise ValueError(f'unknown KL estimator {estimator!r}; one of {KL_ESTIMATORS}')


def entropy_from_logits(logits):
  """Entropy f32[..., ] of the categorical distribution given by logits f32[..., V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


def token_logprobs(logits, tokens):
  """log p(tokens) f32[N, T] from logits f32[N, T, V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def sft_loss(logits, targets, mask, num_tokens=None):
  """Token-mean negative log-likelihood of ``targets`` under ``logits`` over ``mask``
  (response tokens + EOS), normalised by the global token count when given."""
  nll = -token_logprobs(logits, targets)
  return aggregate(nll, mask, 'token-mean', num_tokens=num_tokens)


# ------------------------------------------------------------------ from hidden states, chunked

LOGITS_CHUNK_BYTES = 64 * 2**20  # default budget of one chunk's f32 logits [B, c, V]
ENTROPY_MODES = ('none', 'value', 'grad')


def logits_chunk_size(rows: int, n: int, vocab: int, budget_bytes: int = LOGITS_CHUNK_BYTES) -> int:
  """Positions per chunk so that one chunk's f32 logits ``[rows, c, vocab]`` fit in
  ``budget_bytes`` (at least 1), balanced over the chunks so the last one is not mostly
  padding: e.g. rows=16, V=32768 (2 MiB a position) -> 32 positions; n <= 32 -> n."""
  c_max = max(1, budget_bytes // (rows * vocab * 4))
  if c_max >= n:
    return n
  k = -(-n // c_max)
  return -(-n // k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _logit_stats(entropy: str, z, t):
  """(log_softmax(z)[t], entropy of softmax(z) or None) over the last axis of f32 ``z``.

  The backward pass is one elementwise map of ``z`` (``dz = g (onehot - p) - g_H p (logp +
  H)``): no one-hot / scatter buffer of ``z``'s size (the transpose of a gather), and no
  zero buffer hoisted out of the chunk loop. The entropy's cotangent is used only for
  ``entropy == 'grad'`` ('value': stop_gradient)."""
  return _logit_stats_fwd(entropy, z, t)[0]


def _log_softmax_parts(z):
  m = jax.lax.stop_gradient(z.max(-1, keepdims=True))
  logs = jnp.log(jnp.exp(z - m).sum(-1, keepdims=True))
  return m, logs  # log_softmax(z) = (z - m) - logs, as jax.nn.log_softmax


def _logit_stats_fwd(entropy, z, t):
  m, logs = _log_softmax_parts(z)
  zt = jnp.take_along_axis(z, t[..., None], axis=-1)
  lp = ((zt - m) - logs)[..., 0]
  ent = None
  if entropy != 'none':
    logp = (z - m) - logs
    ent = -(jnp.exp(logp) * logp).sum(-1)
  return (lp, ent), (z, t, m, logs, ent if entropy == 'grad' else None)


def _logit_stats_bwd(entropy, res, cot):
  z, t, m, logs, ent = res
  g_lp, g_ent = cot
  logp = (z - m) - logs
  p = jnp.exp(logp)
  hit = jnp.arange(z.shape[-1], dtype=jnp.int32) == t[..., None]
  dz = g_lp[..., None] * (hit.astype(z.dtype) - p)
  if entropy == 'grad':
    dz = dz - g_ent[..., None] * p * (logp + ent[..., None])
  return dz, None


_logit_stats.defvjp(_logit_stats_fwd, _logit_stats_bwd)


def token_stats_from_hidden(
    config: ModelConfig,
    params: Any,
    hidden,
    targets,
    chunk: int = 0,
    *,
    scale: float = 1.0,
    entropy: str = 'none',
    correct: bool = False,
) -> dict:
  """Per-token statistics of ``targets[B, N]`` under ``lm_head(hidden) / scale``, computed
  ``chunk`` positions at a time (0: :func:`logits_chunk_size`, <= 64 MiB of logits a chunk).

  ``hidden[B, N, D]``: pre-final-norm hidden states at the positions predicting ``targets``
  (``transformer.apply(..., logits_index=src, return_hidden=True)``). ``scale``: a static
  divisor of the logits (the sampling temperature). ``entropy``: 'none' | 'value' (the entropy
  under ``stop_gradient``: for metrics; no gradient path) | 'grad' (differentiable, for an
  entropy bonus). ``correct``: also ``argmax(logits) == target``.

  Returns ``{'logprobs': f32[B, N], 'entropy': f32[B, N] (unless 'none'),
  'correct': bool[B, N] (if asked)}``. With more than one chunk each chunk runs under
  ``jax.checkpoint`` in a ``lax.scan``: the backward pass recomputes a chunk's logits instead
  of storing them (one extra LM-head matmul), so the peak is a few chunks' logits (~3 on
  XLA:CPU: logits, softmax, dlogits), whatever N, and the gradients are exact."""
  if entropy not in ENTROPY_MODES:
    raise ValueError(f'entropy={entropy!r}; one of {ENTROPY_MODES}')
  b, n, d = hidden.shape
  if targets.shape != (b, n):
    raise ValueError(f'targets {targets.shape} do not match hidden {hidden.shape}')
  c = min(chunk or logits_chunk_size(b, n, config.vocab_size), n)
  if c < 1:
    raise ValueError(f'logits chunk must be >= 1 (or 0 = auto), got {chunk}')
  head_name = 'token_embed' if config.tie_word_embeddings else 'lm_head'
  head = {'final_norm': params['final_norm'], head_name: params[head_name]}

  def stats(head, h, t):
    logits = transformer.lm_head(config, head, h)
    if scale != 1.0:
      logits = logits / jnp.float32(scale)
    lp, ent = _logit_stats(entropy, logits, t)
    out = {'logprobs': lp}
    if entropy != 'none':
      out['entropy'] = ent
    if correct:
      out['correct'] = jnp.argmax(logits, axis=-1) == t
    return out

  targets = jnp.asarray(targets, jnp.int32)
  k = -(-n // c)
  if k == 1:  # one chunk (<= the budget): storing its logits for the backward is fine
    return stats(head, hidden, targets)
  pad = k * c - n
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [B, k*c, ...] -> [k, B, c, ...]: scan over chunks of positions; each chunk keeps the
  # whole (batch-sharded) row axis.
  hs = jnp.moveaxis(hidden.reshape(b, k, c, d), 1, 0)
  ts = jnp.moveaxis(targets.reshape(b, k, c), 1, 0)
  fn = jax.checkpoint(stats, prevent_cse=False)
  _, out = jax.lax.scan(lambda carry, x: (carry, fn(head, *x)), None, (hs, ts))
  return jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(b, k * c)[:, :n], out)


def token_logprobs_from_hidden(
    config: ModelConfig,
    params: Any,
    hidden,
    targets,
    mask=None,
    chunk: int = 0,
    *,
    scale: float = 1.0,
):
  """log p(targets) f32[B, N] from pre-norm ``hidden[B, N, D]`` (chunked, see
  :func:`token_stats_from_hidden`); 0 where ``mask`` (optional) is False. Equals
  ``token_logprobs(lm_head(hidden) / scale, targets)``."""
  lp = token_stats_from_hidden(config, params, hidden, targets, chunk, scale=scale)['logprobs']
  return lp if mask is None else jnp.where(jnp.asarray(mask).astype(bool), lp, 0.0)


def sft_loss_from_hidden(
    config: ModelConfig, params: Any, hidden, targets, mask, num_tokens=None, chunk: int = 0
):
  """(loss, correct_tokens): :func:`sft_loss` of ``lm_head(hidden)`` without its
  ``[B, T, V]`` logits (chunked, see :func:`token_stats_from_hidden`), and the number of
  masked positions whose argmax is the target (SFT's token accuracy numerator)."""
  st = token_stats_from_hidden(config, params, hidden, targets, chunk, correct=True)
  loss = aggregate(-st['logprobs'], mask, 'token-mean', num_tokens=num_tokens)
  correct = (st['correct'] * jnp.asarray(mask).astype(jnp.float32)).sum()
  return loss, correct
