"""Host records to device batches: a resumable grain iterator of record lists mapped to batches
(:func:`record_iterator`) and the placement of host arrays on the mesh (:func:`place`)."""

from __future__ import annotations

from typing import Callable, Sequence


from compfn import parallel

__all__ = ['Batches', 'record_iterator', 'place']


class Batches:
  """A grain iterator of record lists mapped to device batches; forwards get/set_state."""

  def __init__(self, it, fn):
    self._it, self._fn = it, fn

  def __iter__(self):
    return self

  def __next__(self):
    return self._fn(next(self._it))

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def record_iterator(
    records: Sequence[dict], global_batch: int, seed: int, fn: Callable, shuffle: bool = True
):
  """Batches of ``global_batch`` records. Every process reads the same whole global batch (the
  records are small host data; :func:`place` places each process's rows on its devices), so a
  run's batches, and hence its losses, do not depend on the number of processes."""
  from compfn.data import pipeline as pipeline_lib

  ds = pipeline_lib.make_dataset(
      list(records),
      global_batch,
      seed=seed,
      shuffle=shuffle,
      num_epochs=None,
      batch_fn=list,
      decode=False,
      num_threads=0,
      shard_index=0,
      shard_count=1,
  )
  return Batches(iter(ds), fn)


#: Host arrays (the whole global batch, the same on every process) -> global arrays on the mesh:
#: the one batch placement, :func:`compfn.parallel.shard_batch`.
place = parallel.shard_batch
