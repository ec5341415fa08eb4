"""Losses, advantages and pass@k against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import metrics
from compfn.rl import advantages
from compfn.rl import losses


def test_group_advantages_by_hand():
  adv = advantages.group_advantages(jnp.array([1.0, 0.0, 0.0, -1.0]), group_size=2, eps=0.0)
  s = 1 / math.sqrt(2)  # unbiased std of [1, 0] is sqrt(0.5)
  np.testing.assert_allclose(adv, [0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s], rtol=1e-6)
  adv = advantages.group_advantages(jnp.array([1.0, 1.0, 1.0, 0.0]), group_size=4, eps=1e-6)
  mean, std = 0.75, math.sqrt((3 * 0.25**2 + 0.75**2) / 3)
  np.testing.assert_allclose(
      adv, [(1 - mean) / (std + 1e-6)] * 3 + [-mean / (std + 1e-6)], rtol=1e-6
  )
  # all-equal group: zero advantage; a group of one: mean 0, std 1
  np.testing.assert_allclose(advantages.group_advantages(jnp.array([1.0, 1.0]), 2), [0.0, 0.0])
  np.testing.assert_allclose(
      advantages.group_advantages(jnp.array([1.0, -1.0]), 1, eps=0.0), [1.0, -1.0]
  )
  np.testing.assert_allclose(
      advantages.group_advantages(jnp.array([1.0, 0.0]), 2, norm_by_std=False), [0.5, -0.5]
  )
  with pytest.raises(ValueError, match='divisible'):
    advantages.group_advantages(jnp.zeros(5), 2)


def test_mixed_groups():
  r = jnp.array([1, 1, 0, 1, 0, -1, -1, -1], jnp.float32)
  assert advantages.mixed_groups(r, 2).tolist() == [False, True, True, False]


def test_policy_loss_token_mean_by_hand():
  lp = jnp.zeros((2, 3))
  adv = jnp.array([1.0, -1.0])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  loss, m = losses.policy_loss(lp, lp, adv, mask)
  assert float(loss) == pytest.approx(-1 / 3)
  assert float(m['clip_frac']) == 0 and float(m['ratio_mean']) == pytest.approx(1)
  # seq-mean-token-mean: seq0 mean -1, seq1 mean +1 -> 0
  assert float(losses.policy_loss(lp, lp, adv, mask, agg='seq-mean-token-mean')[0]) == 0
  assert float(losses.policy_loss(lp, lp, adv, mask, agg='seq-mean-token-sum')[0]) == pytest.approx(
      (-2 + 1) / 2
  )
  assert float(
      losses.policy_loss(lp, lp, adv, mask, agg='seq-mean-token-sum-norm')[0]
  ) == pytest.approx(-1 / 6)
  with pytest.raises(ValueError, match='unknown loss aggregation'):
    losses.policy_loss(lp, lp, adv, mask, agg='mean')


def test_policy_loss_clipping_by_hand():
  # ratio e^0.5 = 1.6487 with A=+1: clipped at 1 + 0.28 -> loss -1.28; with A=-1 the
  # unclipped -A*ratio = +1.6487 is larger -> kept (pessimistic bound).
  lp, old = jnp.array([[0.5], [0.5]]), jnp.zeros((2, 1))
  mask = jnp.ones((2, 1))
  loss, m = losses.policy_loss(lp, old, jnp.array([1.0, -1.0]), mask, clip_low=0.2, clip_high=0.28)
  assert float(loss) == pytest.approx((-1.28 + math.exp(0.5)) / 2, rel=1e-6)
  assert float(m['clip_frac']) == pytest.approx(0.5)
  # ratio e^-0.5 = 0.6065 with A=-1: clipped at 1 - 0.2 -> 0.8
  loss, _ = losses.policy_loss(-lp[:1], old[:1], jnp.array([-1.0]), mask[:1], clip_low=0.2)
  assert float(loss) == pytest.approx(0.8, rel=1e-6)


def test_global_normalisation_is_shard_independent():
  rng = np.random.default_rng(0)
  lp, old = rng.normal(size=(8, 5)) * 0.1, rng.normal(size=(8, 5)) * 0.1
  adv, mask = rng.normal(size=8), rng.random((8, 5)) < 0.7
  for agg in losses.AGG_MODES:
    whole = losses.policy_loss(lp, old, adv, mask, agg=agg)[0]
    kw = dict(agg=agg, num_tokens=mask.sum(), num_seqs=8)
    parts = sum(
        losses.policy_loss(lp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], **kw)[0]
        for i in range(0, 8, 2)
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-5), agg


def test_kl_estimators_by_hand():
  lp, ref = jnp.array([0.0, -1.0]), jnp.array([-1.0, 0.0])
  np.testing.assert_allclose(losses.kl_penalty(lp, ref, 'k1'), [1.0, -1.0])
  np.testing.assert_allclose(losses.kl_penalty(lp, ref, 'k2'), [0.5, 0.5])
  np.testing.assert_allclose(
      losses.kl_penalty(lp, ref, 'k3'), [math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1], rtol=1e-6
  )
  assert float(losses.kl_penalty(jnp.array([30.0]), jnp.array([0.0]), 'low_var_kl')[0]) == 10.0
  with pytest.raises(ValueError, match='unknown KL'):
    losses.kl_penalty(lp, ref, 'k9')


def test_entropy_and_sft_loss_by_hand():
  np.testing.assert_allclose(
      losses.entropy_from_logits(jnp.zeros((1, 4))), [math.log(4)], rtol=1e-6
  )
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
  loss = losses.sft_loss(logits, jnp.array([[0, 2]]), jnp.array([[1, 1]]))
  assert float(loss) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-6)
  assert float(losses.sft_loss(logits, jnp.array([[0, 2]]), jnp.array([[1, 0]]))) == pytest.approx(
      -math.log(0.5), rel=1e-6
  )
  g = jax.grad(lambda z: losses.sft_loss(z, jnp.array([[0, 2]]), jnp.array([[1, 1]])))(logits)
  assert np.isfinite(np.asarray(g)).all()


def test_pass_at_k_by_hand():
  assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)
  assert metrics.pass_at_k(10, 0, 5) == 0.0 and metrics.pass_at_k(10, 10, 1) == 1.0
  assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)
  assert metrics.pass_at_k(1024, 3, 1024) == 1.0
  want = 1 - math.comb(1000 - 7, 100) / math.comb(1000, 100)
  assert metrics.pass_at_k(1000, 7, 100) == pytest.approx(want, rel=1e-9)
  assert metrics.mean_pass_at_k([0, 2], 4, [1, 4]) == {1: pytest.approx(0.25), 4: 0.5}
  with pytest.raises(ValueError):
    metrics.pass_at_k(4, 5, 1)
  assert metrics.accuracy_by_level([1, 1, 2], [1, 0, 1]) == {'1': 0.5, '2': 1.0}
