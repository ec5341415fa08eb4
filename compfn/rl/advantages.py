"""Group-normalised advantages (GRPO) and the dynamic-sampling group filter, as pure functions.

Rewards of a rollout batch are laid out group-major: ``rewards[B * G]`` with the G samples of
prompt b at rows ``b*G .. b*G+G-1`` (DESIGN.md §3).

    >>> group_advantages(jnp.array([1., 0., 0., -1.]), group_size=2)   # groups [1, 0], [0, -1]
    # mean 0.5, unbiased std 0.7071 -> [0.7071, -0.7071, 0.7071, -0.7071] (up to eps)

As in veRL's ``compute_grpo_outcome_advantage``: A = (R - mean_g) / (std_g + eps) with the
unbiased (N-1) standard deviation; a group of size 1 has mean 0 and std 1.
"""

from __future__ import annotations

import jax.numpy as jnp


def _groups(x, group_size: int):
  if x.ndim != 1 or x.shape[0] % group_size:
    raise ValueError(
        f'rewards must be 1-D with a length divisible by group_size='
        f'{group_size}, got shape {x.shape}'
    )
  return x.reshape(-1, group_size)


def group_advantages(rewards, group_size: int, eps: float = 1e-6, norm_by_std: bool = True):
  """Advantages f32[B*G] from rewards f32[B*G] (see the module docstring).

  norm_by_std=False gives Dr.GRPO's unnormalised R - mean_g."""
  r = _groups(jnp.asarray(rewards, jnp.float32), group_size)
  if group_size == 1:
    mean, std = jnp.zeros_like(r), jnp.ones_like(r)
  else:
    mean = r.mean(axis=1, keepdims=True)
    std = jnp.sqrt(((r - mean) ** 2).sum(axis=1, keepdims=True) / (group_size - 1))
  adv = (r - mean) / (std + eps) if norm_by_std else r - mean
  return adv.reshape(-1)


def mixed_groups(rewards, group_size: int):
  """bool[B]: groups whose rewards are not all equal (population std > 0) — the groups that
  dynamic sampling keeps (the paper's code filters on the reward ``score``, so an all-wrong
  group mixing 0 and -1 is kept)."""
  r = _groups(jnp.asarray(rewards, jnp.float32), group_size)
  return jnp.any(r != r[:, :1], axis=1)
