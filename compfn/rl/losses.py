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

Worked example (token-mean, ratio 1, A = [1, -1], mask [[1,1,0],[1,0,0]]): the policy-gradient
loss per token is -A*ratio = [[-1,-1,·],[1,·,·]], summed -1 over 3 tokens -> -1/3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

AGG_MODES = ('token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean',
             'seq-mean-token-sum-norm')
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


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_low: float = 0.2,
                clip_high: float = 0.2, agg: str = 'token-mean', num_tokens=None,
                num_seqs=None):
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
    metrics = {'clip_frac': ((pg2 > pg1) * m).sum() / n,
               'ratio_mean': (ratio * m).sum() / n,
               'approx_kl': (0.5 * log_ratio ** 2 * m).sum() / n}
    return loss, metrics


def kl_penalty(logprobs, ref_logprobs, estimator: str = 'low_var_kl'):
    """Per-token KL(pi || pi_ref) estimate from sampled-token log-probs (Schulman's k1/k2/k3):

    k1 = logp - ref;  k2 = 0.5 (logp - ref)^2;  k3 = exp(ref - logp) - (ref - logp) - 1;
    low_var_kl = k3 clipped to [-10, 10] (veRL's default)."""
    d = logprobs - ref_logprobs
    if estimator == 'k1':
        return d
    if estimator == 'k2':
        return 0.5 * d ** 2
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
