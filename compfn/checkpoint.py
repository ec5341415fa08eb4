"""Checkpoints: an orbax CheckpointManager over (train state pytree, JSON metadata).

The train state is any pytree of arrays (params, optimizer state, step, RNG key); the metadata
is JSON (data-iterator state such as grain's ``{'next_index': k}``, config, metrics). Writes are
atomic (orbax writes into a temporary folder and renames it when complete, so a crash or kill
mid-save leaves the previous checkpoint as the latest one), optionally asynchronous, and the
manager keeps the newest ``keep`` checkpoints.

    >>> ckpt = Checkpointer('/tmp/run/checkpoints', keep=3)
    >>> ckpt.save(100, state, {'data': it.get_state()})
    >>> step, state, meta = ckpt.restore_latest(abstract_state)    # None if there is none

:meth:`Checkpointer.save` refuses a state with NaN/inf values (``NonFiniteError``) so a diverged
run can never overwrite the last good checkpoint.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class NonFiniteError(FloatingPointError):
  """The state to be saved holds NaN or inf values."""


def _finite(tree) -> bool:
  leaves = [
      x
      for x in jax.tree.leaves(tree)
      if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return all(bool(jnp.isfinite(x).all()) for x in leaves)


def _bad_paths(tree, limit=5):
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if (
        hasattr(x, 'dtype')
        and jnp.issubdtype(x.dtype, jnp.inexact)
        and not bool(jnp.isfinite(x).all())
    ):
      out.append(jax.tree_util.keystr(path))
      if len(out) >= limit:
        break
  return out


class Checkpointer:
  """Atomic, keep-N checkpoints of (state pytree, JSON metadata) in ``directory``."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    from compfn import workdir

    self.directory = workdir.resolve(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta'))

  def save(self, step: int, state: Any, meta: Optional[dict] = None, force: bool = False) -> bool:
    """Save ``state`` and ``meta`` at ``step``; returns whether a checkpoint was written.
    Raises NonFiniteError (naming the offending leaves) instead of saving NaN/inf."""
    if not _finite(state):
      raise NonFiniteError(
          f'refusing to checkpoint step {step}: non-finite values in '
          f'{", ".join(_bad_paths(state))}; the last good checkpoint '
          f'({self.latest_step()}) is kept'
      )
    return self._mgr.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})
        ),
        force=force,
    )

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restore the state (with the shapes, dtypes and shardings of ``abstract_state``, a
    pytree of arrays or ``jax.ShapeDtypeStruct``) and the metadata of ``step``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self._mgr.restore(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return out['state'], dict(out['meta'] or {})

  def restore_latest(self, abstract_state: Any):
    """(step, state, meta) of the newest complete checkpoint, or None if there is none."""
    step = self.latest_step()
    if step is None:
      return None
    state, meta = self.restore(step, abstract_state)
    return step, state, meta

  def wait(self):
    """Block until pending asynchronous saves are on disk."""
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
