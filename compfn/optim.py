"""The pure optimizer and step helpers every training stage shares, below ``compfn.rl``:

    state = TrainState.create(params, tx, seed)          # step, params, opt_state, rng
    tx = OptimizerConfig(learning_rate=1e-5).make(num_steps)   # AdamW + schedule + clipping
    grads, loss, aux = accumulate(loss_fn, params, batch, micro_batches)   # lax.scan
    state, metrics = apply_gradients(state, grads, tx, loss)   # skips a non-finite update

Nothing here does I/O or knows about stages: the step functions of :mod:`compfn.rl` (SFT,
GRPO) are built from these, and the loop (:class:`compfn.train.Trainer`), the stages and the
pipeline sit above them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.struct
import gin
import jax
import jax.numpy as jnp
import optax

Array = jax.Array

__all__ = ['TrainState', 'OptimizerConfig', 'accumulate', 'apply_gradients']


# ------------------------------------------------------------------------------ state, optimizer


@flax.struct.dataclass
class TrainState:
  step: Array  # int32[]
  params: Any
  opt_state: Any
  rng: Array  # uint32[2] (a raw PRNG key: checkpointable as a plain array)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, seed: int = 0) -> 'TrainState':
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
    )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with a warmup + cosine (or constant) schedule and global-norm clipping.

  Defaults are veRL's SFT defaults (PAPER §2.2): betas (0.9, 0.95), weight decay 0.01,
  10% warmup then cosine to 0, clip 1.0. The paper's RL stage: ``schedule='constant'``,
  ``warmup_ratio=0``, ``b2=0.999``, ``learning_rate=1e-6``."""

  learning_rate: float = 2e-5
  schedule: str = 'cosine'  # 'cosine' (to final_lr_ratio * lr) | 'constant'
  warmup_steps: Optional[int] = None
  warmup_ratio: float = 0.1  # used when warmup_steps is None
  final_lr_ratio: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.01
  clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    if self.schedule not in ('cosine', 'constant'):
      raise ValueError(
          f"OptimizerConfig.schedule must be 'cosine' or 'constant', " f'got {self.schedule!r}'
      )
    if not self.learning_rate > 0:
      raise ValueError(f'OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}')

  def lr_schedule(self, total_steps: int) -> optax.Schedule:
    total = max(int(total_steps), 1)
    warm = (
        self.warmup_steps
        if self.warmup_steps is not None
        else int(round(self.warmup_ratio * total))
    )
    warm = min(max(warm, 0), total)
    lr = self.learning_rate
    if self.schedule == 'constant':
      if warm == 0:
        return optax.constant_schedule(lr)
      return optax.join_schedules(
          [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm]
      )
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warm, max(total, warm + 1), lr * self.final_lr_ratio
    )

  def make(self, total_steps: int) -> optax.GradientTransformation:
    chain = []
    if self.clip_norm:
      chain.append(optax.clip_by_global_norm(self.clip_norm))
    chain.append(
        optax.adamw(
            self.lr_schedule(total_steps),
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
    )
    return optax.chain(*chain)


# --------------------------------------------------------------------------- pure step helpers


def accumulate(
    loss_fn: Callable, params: Any, batch: Any, micro_batches: int = 1, active: Any = None
):
  """Sum of gradients of ``loss_fn(params, micro_batch) -> (loss, aux)`` over micro-batches.

  ``batch`` is a pytree whose leaves share a leading axis divisible by ``micro_batches``; each
  loss must already be normalised by *global* counts (then the sum is the whole batch's
  gradient). Returns (grads, loss_sum, aux_sum). One micro-batch = no loop.

  ``active`` (int32[], optional, with ``micro_batches > 1``): only the first ``active``
  micro-batches are computed (a ``lax.fori_loop`` with that trip count); the caller guarantees
  that the others would contribute exactly zero loss, gradient and aux (e.g. GRPO rows of
  groups dynamic sampling did not fill: mask 0, advantage 0), so the result is that of all
  ``micro_batches``, at the cost of the active ones only."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    (loss, aux), grads = grad_fn(params, batch)
    return grads, loss, aux
  lead = jax.tree.leaves(batch)[0].shape[0]
  if lead % micro_batches:
    raise ValueError(f'batch of {lead} rows is not divisible by micro_batches={micro_batches}')
  mbs = jax.tree.map(
      lambda x: x.reshape((micro_batches, lead // micro_batches) + x.shape[1:]), batch
  )
  zeros = jax.tree.map(jnp.zeros_like, params)
  (_, aux_shape), _ = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], mbs))
  aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
  init = (zeros, jnp.zeros((), jnp.float32), aux0)

  def add(carry, mb):
    g_acc, l_acc, a_acc = carry
    (loss, aux), g = grad_fn(params, mb)
    return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, jax.tree.map(jnp.add, a_acc, aux))

  if active is None:
    (grads, loss, aux), _ = jax.lax.scan(lambda c, mb: (add(c, mb), None), init, mbs)
    return grads, loss, aux
  take = lambda i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, False), mbs)
  n = jnp.clip(jnp.asarray(active, jnp.int32), 0, micro_batches)
  grads, loss, aux = jax.lax.fori_loop(0, n, lambda i, c: add(c, take(i)), init)
  return grads, loss, aux


def apply_gradients(
    state: TrainState,
    grads: Any,
    tx: optax.GradientTransformation,
    loss: Array,
    skip: Optional[Array] = None,
) -> tuple[TrainState, dict]:
  """One optimizer update.

  A non-finite loss or gradient norm leaves ``state`` unchanged (the step does not advance)
  and sets ``metrics['nonfinite'] = 1``: the host stops the run with a clear message.
  ``skip`` (bool[]): the step advances but params and optimizer state stay as they are — used
  by GRPO when dynamic sampling kept no group, so AdamW's momentum and weight decay do not move
  the weights on a step without any gradient signal."""
  gnorm = optax.tree.norm(grads)
  ok = jnp.isfinite(gnorm) & jnp.isfinite(loss)
  apply = ok if skip is None else ok & ~skip
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)  # noqa
  new = state.replace(
      step=state.step + ok.astype(jnp.int32),
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
  )
  metrics = {'grad_norm': gnorm, 'nonfinite': (~ok).astype(jnp.float32)}
  if skip is not None:
    metrics['skipped_update'] = skip.astype(jnp.float32)
  return new, metrics
