"""The trainer core: train state, optimizer, gradient accumulation, the sharded jitted update,
checkpoint/resume, metrics, and the step loop shared by every stage (sft / rft / rl).

Pieces (each a pure function or a small class)::

    state = TrainState.create(params, tx, seed)          # step, params, opt_state, rng
    grads, loss, aux = accumulate(loss_fn, params, batch, micro_batches)   # lax.scan
    state, metrics = apply_gradients(state, grads, tx)   # skips a non-finite update, flags it
    step_fn = Trainer.compile(fn)                        # jit + donation + shardings on a mesh

:class:`Trainer` runs ``num_steps`` steps of a step function over a resumable batch iterator:
it restores the newest checkpoint (params, optimizer state, step, RNG key *and* the data
iterator's position, so a resumed run continues exactly — bitwise on CPU — without replaying
data), saves every ``save_every`` steps and at the end (orbax, atomic, async, keep-N), stops
with :class:`NonFiniteStepError` (a :class:`compfn.errors.NonFiniteLoss`, exit code 4, and a
:class:`compfn.checkpoint.NonFiniteError`) when a step produces a non-finite loss or gradient
(the update is not applied and the last good checkpoint stays the newest), checks a preemption
signal each step (SIGTERM → save, then :class:`compfn.errors.Preempted`, exit code 75, so a
scheduler requeues the run and the rerun resumes), writes metrics to ``<dir>/metrics.jsonl``
and TensorBoard, and shows a progress bar. A checkpoint that does not fit the configured state
(tree structure or shapes) raises :class:`compfn.errors.CheckpointMismatch` (exit code 5)
naming the folder and the leaves that differ.

Everything runs under one mesh (``compfn.parallel``): parameters are sharded by their logical
axes and the gin-bound rules table, batches over ('data', 'fsdp'), and losses are normalised by
global counts, so a step on a (2, 4) mesh equals the unsharded step (``tests/test_train.py``).
"""

from __future__ import annotations

import json
import math
import signal
import time
from typing import Any, Callable, Optional

import gin
import jax
import numpy as np

from compfn import checkpoint as ckpt_lib
from compfn import errors
from compfn import parallel
from compfn import workdir

Array = jax.Array

__all__ = [
    'TrainState',
    'OptimizerConfig',
    'accumulate',
    'apply_gradients',
    'Trainer',
    'MetricsWriter',
    'PreemptionWatcher',
    'Preempted',
    'NonFiniteStepError',
]


# The pure helpers live below compfn.rl (compfn/optim.py); re-exported here for callers of the
# trainer.
from compfn.optim import (
    OptimizerConfig,
    TrainState,
    accumulate,  # noqa: E402,F401
    apply_gradients,
)


# ----------------------------------------------------------------------------------- metrics


class MetricsWriter:
  """Scalars to ``<dir>/metrics.jsonl`` (one JSON object per step) and TensorBoard event files
  (tensorboardX; no TensorFlow). Rows are appended, so a resumed run continues the file; rows
  with a step beyond the restored step are dropped first so a replayed step is not logged twice.

  Only the lead process writes (:mod:`compfn.workdir`); on the others it is a no-op. On a remote
  workdir (``gs://``, which cannot append) the file is rewritten at most every ``flush_s``
  seconds and on :meth:`close`."""

  def __init__(
      self, directory: str, resume_step: int = 0, tensorboard: bool = True, flush_s: float = 30.0
  ):
    self.path = workdir.join(directory, 'metrics.jsonl')
    self._lead = workdir.is_lead()
    self._f = self._tb = None
    self._rows: list[str] = []
    self._flush_s, self._last_flush = flush_s, time.monotonic()
    if not self._lead:
      return
    workdir.makedirs(directory)
    if workdir.exists(self.path):
      rows = [ln for ln in workdir.read_text(self.path).splitlines() if ln.strip()]
      kept = [ln for ln in rows if json.loads(ln).get('step', 0) <= resume_step]
      if len(kept) != len(rows):
        workdir.write_text(self.path, ''.join(ln + '\n' for ln in kept))
      self._rows = kept
    self._f = workdir.open_append(self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(workdir.join(directory, 'tensorboard'))

  def write(self, step: int, scalars: dict):
    if not self._lead:
      return
    row = {'step': int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    line = json.dumps(row)
    self._rows.append(line)
    if self._f is not None:
      self._f.write(line + '\n')
      self._f.flush()
    elif time.monotonic() - self._last_flush > self._flush_s:
      self._rewrite()
    if self._tb is not None:
      for k, v in row.items():
        if k != 'step' and math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def _rewrite(self):
    workdir.write_text(self.path, ''.join(ln + '\n' for ln in self._rows))
    self._last_flush = time.monotonic()

  def close(self):
    if self._f is not None:
      self._f.close()
    elif self._lead:
      self._rewrite()
    if self._tb is not None:
      self._tb.close()


def read_metrics(directory: str) -> list[dict]:
  path = workdir.join(directory, 'metrics.jsonl')
  if not workdir.exists(path):
    return []
  return [json.loads(ln) for ln in workdir.read_text(path).splitlines() if ln.strip()]


def config_fingerprint(config: dict) -> str:
  """A short stable hash of a stage's configuration (JSON with ``repr`` for the rest)."""
  import hashlib

  text = json.dumps(config, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]


# -------------------------------------------------------------------------------- preemption


class PreemptionWatcher:
  """Whether the loop should checkpoint and stop because of a preemption notice (SIGTERM: what
  a preempted TPU VM or a cluster scheduler sends). The loop calls :meth:`reached` each step.

  One process: a Python SIGTERM handler sets :attr:`flag`, which :meth:`reached` returns.
  Several processes (``jax.process_count() > 1``): JAX's preemption sync manager, which
  ``jax.distributed.initialize`` starts (``jax_enable_preemption_service``, on by default),
  catches SIGTERM itself and agrees with the other processes, through the coordination service,
  on a step at which all of them stop; :meth:`reached` asks it with
  ``multihost_utils.reached_preemption_sync_point(step)``, as MaxText does. Without it (the
  service disabled, or the call fails) the local flag is allgathered each step instead, so every
  process still stops at the same step."""

  def __init__(self):
    self.flag = False
    self._old = None
    self._installed = False
    self._sync = jax.process_count() > 1 and _preemption_sync_manager() is not None
    if not self._sync:  # the sync manager owns SIGTERM; a Python handler would hide it
      self._install()

  def _install(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    except ValueError:  # not the main thread
      self._old = None

  def _handler(self, signum, frame):
    self.flag = True

  def reached(self, step: Optional[int] = None) -> bool:
    """Whether to save and stop after ``step`` (the step just completed; every process must
    call this at every step, with the same step numbers)."""
    if jax.process_count() == 1:
      return self.flag
    from jax.experimental import multihost_utils

    if self._sync and step is not None:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except Exception as e:  # noqa: BLE001  (no coordination service: fall back)
        print(
            f'warning: preemption sync point unavailable ({type(e).__name__}: {e}); '
            'falling back to a per-step allgather of the SIGTERM flag',
            flush=True,
        )
        self._sync = False
        self._install()
    return bool(multihost_utils.process_allgather(np.array([self.flag])).any())

  def close(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)
      self._installed = False


def _preemption_sync_manager():
  """JAX's preemption sync manager when ``jax.distributed`` started one, else None."""
  try:
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager
  except Exception:  # noqa: BLE001  (a private API: treat any change as "none")
    return None


#: The run saved a checkpoint and stopped because it received SIGTERM (exit code 75).
Preempted = errors.Preempted


class NonFiniteStepError(errors.NonFiniteLoss, ckpt_lib.NonFiniteError):
  """A step produced a non-finite loss or gradient (exit code 4); the message names the last
  good checkpoint. Also a :class:`compfn.checkpoint.NonFiniteError`, as before."""


# ---------------------------------------------------------------------- checkpoint mismatch

#: What orbax 0.12's ValueError says when a restore target does not fit the checkpoint.
_ORBAX_MISMATCH = ('tree structures do not match', 'is not compatible with the stored shape')


def _leaf_name(path) -> str:
  """``params.layers.attn.q``, ``opt_state.1.0.mu.embed``: the dotted names orbax stores."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return '.'.join(parts)


def _shapes(tree) -> dict:
  return {
      _leaf_name(p): tuple(x.shape)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
      if getattr(x, 'shape', None) is not None
  }


def _checkpoint_diff(step_dir: str, state: Any, shapes_only: bool = False) -> list[str]:
  """What differs between the arrays stored in ``step_dir/state`` (orbax metadata: names and
  shapes, no data read) and ``state``: leaves whose shapes differ, and unless ``shapes_only``
  leaves only on one side. [] when they agree or the metadata cannot be read."""
  try:
    import orbax.checkpoint as ocp
    from etils import epath

    handler = ocp.PyTreeCheckpointHandler()
    try:
      tree = getattr(handler.metadata(epath.Path(step_dir) / 'state'), 'tree', None)
    finally:
      handler.close()
    if tree is None:
      return []
    stored, want = _shapes(tree), _shapes(state)
  except Exception:  # noqa: BLE001  (only used to explain a mismatch; never block a restore)
    return []
  out = [
      (k, f'checkpoint {stored[k]}, config {want[k]}')
      for k in stored.keys() & want.keys()
      if stored[k] != want[k]
  ]
  if not shapes_only:
    out += [(k, 'only in the checkpoint') for k in stored.keys() - want.keys()]
    out += [(k, 'only in the config') for k in want.keys() - stored.keys()]
  return [
      f'{k}: {what}' for k, what in sorted(out, key=lambda x: (not x[0].startswith('params'), x[0]))
  ]


# ------------------------------------------------------------------------------------- loop


def _host_scalars(metrics: dict) -> dict:
  scalars = {k: v for k, v in metrics.items() if np.ndim(v) == 0}
  return {k: float(v) for k, v in parallel.to_host(scalars).items()}  # one fetch per step


@gin.configurable
def planned_stop(step: Optional[int] = None) -> Optional[int]:
  """Stop every training stage when it reaches ``step`` (its own step count) as if preempted:
  checkpoint, then exit 75; the same command without the binding resumes. For jobs that must
  fit a scheduler's time limit, and the resume tests (``planned_stop.step = 3``)."""
  return None if step is None else int(step)


class Trainer:
  """Runs a jitted ``step(state, batch) -> (state, metrics)`` over a resumable iterator.

  ``directory`` holds ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/`` and, when the stage
  completes, ``DONE`` (JSON: final step, time). ``make_batches(state) -> iterator`` must return
  an iterator with ``get_state()/set_state()`` (grain) or None state; its state is saved in
  every checkpoint's metadata and restored on resume.
  """

  def __init__(
      self,
      directory: str,
      num_steps: int,
      *,
      save_every: int = 100,
      keep: int = 2,
      log_every: int = 1,
      async_save: bool = True,
      progress: bool = True,
      name: str = 'train',
      tensorboard: bool = True,
      config: Optional[dict] = None,
  ):
    if num_steps < 0:
      raise ValueError(f'num_steps must be >= 0, got {num_steps}')
    self.directory = directory
    self.num_steps = int(num_steps)
    self.save_every = max(int(save_every), 1)
    self.keep, self.log_every, self.progress, self.name = keep, log_every, progress, name
    self.async_save = async_save
    self.tensorboard = tensorboard
    workdir.makedirs(directory)
    self.fingerprint = config_fingerprint(config) if config is not None else None
    self.checkpointer = ckpt_lib.Checkpointer(
        workdir.join(directory, 'checkpoints'), keep=keep, async_save=async_save
    )
    if config is not None:
      self._check_config(config)

  @property
  def done_path(self) -> str:
    return workdir.join(self.directory, 'DONE')

  @property
  def config_path(self) -> str:
    return workdir.join(self.directory, 'stage_config.json')

  def _check_config(self, config: dict):
    """Refuse (:class:`compfn.errors.CheckpointMismatch`, exit code 5) to resume or reuse a
    stage whose configuration changed since its checkpoints were written: comparing
    ``stage_config.json`` (the fingerprint and the settings) with ``config``. A stage folder
    without one (written before fingerprints existed) adopts the current configuration."""
    if workdir.exists(self.config_path):
      saved = workdir.read_json(self.config_path)
      if saved.get('fingerprint') != self.fingerprint:
        old = saved.get('config', {})
        new = json.loads(json.dumps(config, sort_keys=True, default=repr))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ', '.join(
            f'{k}: {_short(old.get(k))} -> {_short(new.get(k))}' for k in diff[:4]
        ) + (f' (+{len(diff) - 4} more)' if len(diff) > 4 else '')
        raise errors.CheckpointMismatch(
            f'{self.name}: the stage configuration changed since {self.directory} was written '
            f'({shown or "fingerprint " + str(saved.get("fingerprint"))}); its checkpoints and '
            f'results belong to the old configuration. Restore it, or use a new --workdir (or '
            f'delete {self.directory}) to run this stage again'
        )
    else:
      workdir.write_json(
          self.config_path,
          {'fingerprint': self.fingerprint, 'config': config},
          indent=1,
          sort_keys=True,
          default=repr,
      )
    workdir.barrier(f'stage_config:{self.directory}')

  def finished(self) -> Optional[dict]:
    if workdir.exists(self.done_path):
      return workdir.read_json(self.done_path)
    return None

  def restore(self, state: TrainState) -> tuple[TrainState, Optional[dict]]:
    """(state, data-iterator state) of the newest checkpoint, or (state, None) if none.

    Raises :class:`compfn.errors.CheckpointMismatch` when the checkpoint's tree structure or
    array shapes differ from ``state``'s (the model or optimizer configuration changed since it
    was saved), naming the folder and the leaves that differ.

    A newest checkpoint *past* ``num_steps`` (saved by a run configured for more steps) is not
    taken as this run's result: the checkpoint at exactly ``num_steps`` is restored if the folder
    keeps one, and otherwise this raises CheckpointMismatch naming both steps."""
    latest = self.checkpointer.latest_step()
    if latest is not None and latest > self.num_steps:
      kept = sorted(self.checkpointer.all_steps())
      if self.num_steps not in kept:
        raise errors.CheckpointMismatch(
            f'the newest checkpoint in {self.checkpointer.directory} is step {latest}, past '
            f'num_steps={self.num_steps} (a run configured for more steps saved it), and no '
            f'checkpoint at step {self.num_steps} is kept (kept: {kept}). Set num_steps to '
            f'{latest} or more to continue it, or delete {self.directory} to retrain'
        )
      print(
          f'[{self.name}] checkpoint {latest} in {self.checkpointer.directory} is past '
          f'num_steps={self.num_steps}: restoring the one at step {self.num_steps}',
          flush=True,
      )
      latest = self.num_steps
    if latest is not None:
      # Shapes are checked before orbax reads anything (its shape error names no leaf).
      diff = _checkpoint_diff(self._step_dir(latest), state, shapes_only=True)
      if diff:
        raise self._mismatch(latest, diff)
    try:
      got = None if latest is None else (latest, *self.checkpointer.restore(latest, state))
    except ValueError as e:
      msg = str(e)
      if not any(p in msg for p in _ORBAX_MISMATCH):
        raise
      diff = _checkpoint_diff(self._step_dir(latest), state) if latest is not None else []
      raise self._mismatch(latest, diff or [msg.splitlines()[0]]) from e
    if got is None:
      return state, None
    step, restored, meta = got
    if int(restored.step) != step:
      raise errors.CheckpointMismatch(
          f'checkpoint {step} in {self.checkpointer.directory} holds step '
          f'{int(restored.step)}: the folder is inconsistent'
      )
    return restored, meta.get('data')

  def _step_dir(self, step: int) -> str:
    return workdir.join(self.checkpointer.directory, str(step))

  def _mismatch(self, step: Optional[int], diff: list) -> errors.CheckpointMismatch:
    shown = '; '.join(diff[:4]) + (f'; ... ({len(diff)} differences)' if len(diff) > 4 else '')
    return errors.CheckpointMismatch(
        f'{self.name}: checkpoint {step} in {self.checkpointer.directory} does not match the '
        f'configured state: {shown}. The model or optimizer configuration changed since it was '
        f'saved: restore that configuration, or use a new --workdir (or delete '
        f'{self.directory}) to start this stage over'
    )

  def run(
      self,
      state: TrainState,
      step_fn: Callable,
      iterator,
      *,
      on_metrics: Optional[Callable[[int, dict], dict]] = None,
      hooks: tuple = (),
  ) -> TrainState:
    """Train from ``state.step`` to ``num_steps``. ``iterator`` must already be positioned
    (the caller restores it from the data state returned by :meth:`restore`). ``hooks``:
    ``(every, fn(step, state) -> dict of scalars)`` pairs run after every ``every``-th step
    (e.g. a small evaluation); their scalars join that step's metrics row."""
    start = int(state.step)
    writer = MetricsWriter(self.directory, resume_step=start, tensorboard=self.tensorboard)
    watcher = PreemptionWatcher()
    stop_at = planned_stop()
    bar = None
    if self.progress and jax.process_index() == 0:
      from tqdm.auto import tqdm

      bar = tqdm(total=self.num_steps, initial=start, desc=self.name, dynamic_ncols=True)
    step = start
    try:
      while step < self.num_steps:
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        scalars = _host_scalars(metrics)  # blocks until the step is done
        t2 = time.perf_counter()
        if scalars.get('nonfinite', 0.0) > 0:
          self.checkpointer.wait()  # the last good checkpoint may still be being written
          raise NonFiniteStepError(
              f'{self.name}: step {step + 1} produced a non-finite loss or gradient '
              f'(loss={scalars.get("loss")}, grad_norm={scalars.get("grad_norm")}); the update '
              f'was not applied and nothing was saved — the last good checkpoint is step '
              f'{self.checkpointer.latest_step()} in {self.checkpointer.directory}. Lower the '
              'learning rate or check the data, then rerun to resume from it.'
          )
        step += 1
        scalars['time/step_s'] = t2 - t0
        scalars['time/data_s'] = t1 - t0
        if on_metrics is not None:
          scalars = on_metrics(step, scalars)
        for every, fn in hooks:
          if every and (step % every == 0 or step == self.num_steps):
            scalars.update(fn(step, state))
        if step % self.log_every == 0 or step == self.num_steps:
          writer.write(step, scalars)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(
              {
                  k: f'{v:.3g}'
                  for k, v in scalars.items()
                  if k in ('loss', 'reward', 'accuracy', 'token_accuracy', 'kept_groups')
              }
          )
        preempted = watcher.reached(step) or step == stop_at
        if step % self.save_every == 0 or step == self.num_steps or preempted:
          self.save(step, state, iterator)
        if preempted:
          self.checkpointer.wait()
          if step == self.num_steps:  # the stage is complete: the rerun goes on from here
            self._write_done(step)
          why = 'SIGTERM received' if step != stop_at else f'planned_stop.step = {stop_at}'
          raise Preempted(
              f'{self.name}: {why}; saved step {step} to '
              f'{self.checkpointer.directory}; rerun the same command to resume'
          )
      self.checkpointer.wait()
      self._write_done(step)
    except BaseException:
      # Whatever stops the run, a save in flight is the newest good checkpoint: let it land
      # (a process exiting with an asynchronous save pending loses it).
      try:
        self.checkpointer.wait()
      except Exception:  # noqa: BLE001  (keep the original error)
        pass
      raise
    finally:
      if bar is not None:
        bar.close()
      writer.close()
      watcher.close()
    return state

  def _write_done(self, step: int):
    workdir.write_json(
        self.done_path, {'step': step, 'time': time.time(), 'fingerprint': self.fingerprint}
    )
    workdir.barrier(f'DONE:{self.directory}')

  def save(self, step: int, state: TrainState, iterator=None):
    data = iterator.get_state() if hasattr(iterator, 'get_state') else None
    self.checkpointer.save(step, state, {'data': data, 'step': step}, force=True)

  def close(self):
    self.checkpointer.close()


def _short(v, n: int = 40) -> str:
  t = json.dumps(v, sort_keys=True, default=repr)
  return t if len(t) <= n else t[: n - 3] + '...'


def compile_step(fn: Callable, mesh=None, rules=None, donate_state: bool = True) -> Callable:
  """``jax.jit(fn)`` with the state donated, traced under ``mesh`` and the logical-axis
  ``rules`` (activations constrained by the model's logical names; default: the gin-bound
  :func:`compfn.parallel.logical_rules`)."""
  jitted = jax.jit(fn, donate_argnums=(0,) if donate_state else ())
  if mesh is None:
    return jitted
  rules = parallel.normalize_rules(rules) or parallel.logical_rules()

  def call(*args):
    with parallel.use_mesh(mesh, rules):
      return jitted(*args)

  return call


def shard_state(state: TrainState, model_config, mesh, rules=None) -> TrainState:
  """``device_put`` a TrainState: params and every param-shaped subtree of the optimizer state
  (AdamW's moments) by their logical axes; scalars (step, counts) and the RNG key replicated."""
  shard = parallel.param_shardings(model_config, mesh, rules)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  pstruct = jax.tree.structure(state.params)
  like_params = lambda x: jax.tree.structure(x) == pstruct  # noqa: E731
  opt_state = jax.tree.map(
      lambda x: jax.device_put(x, shard if like_params(x) else repl),
      state.opt_state,
      is_leaf=like_params,
  )
  return state.replace(
      step=jax.device_put(state.step, repl),
      params=jax.device_put(state.params, shard),
      opt_state=opt_state,
      rng=jax.device_put(state.rng, repl),
  )
