"""grain pipelines over the string-task sources, and JSONL files.

Order of operations (:func:`make_dataset`) — all index arithmetic on a ``grain.MapDataset``, so
the position in the stream is one integer and resuming costs nothing::

    source ─► shuffle(seed) ─► [:N - N % shards] ─► repeat(num_epochs) ─► [shard::shards]
           ─► map(decode_record) ─► batch(batch_size) ─► to_iter_dataset (threads, prefetch)

* Deterministic: the same (source, seed, shuffle, num_epochs, shards, batch_size) always gives
  the same batches. Each epoch is shuffled with a different permutation derived from ``seed``
  (grain reseeds per epoch), and shuffling is global, before sharding.
* Per-host sharding: shard ``i`` of ``n`` takes every n-th element of the shuffled stream, so
  hosts see disjoint records within each epoch. With ``equal_shards`` (default) the ``N % n``
  records at the end of each epoch's permutation are dropped so every host gets the same number
  of records and batches (multi-host steps stay in lockstep). By default ``i, n`` are
  ``jax.process_index(), jax.process_count()`` (``grain.sharding.ShardByJaxProcess``).
* Resumable: ``it = iter(ds)``; ``state = it.get_state()`` is a small JSON-able dict (the next
  batch index); ``it2 = iter(make_dataset(...same args...)); it2.set_state(state)`` continues
  with exactly the batch ``it`` would yield next, by random access — no data is replayed.
  Save ``state`` with the training checkpoint (e.g. orbax ``grain.checkpoint.CheckpointSave``
  or ``json.dumps``).

Batches are Python records by column: ``{'prompt': [str, ...], 'functions': [[str, ...], ...],
'level': np.int32[B], 'index': np.int64[B], 'depends_on_input': np.bool_[B], ...}`` (see
:func:`collate`). Tokenisation, padding and length bucketing belong to the model-side pipeline,
which can pass its own ``batch_fn``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import numpy as np

from compfn.data import strings_tfds

_NUMERIC_DTYPES = {
    'level': np.int32,
    'stage': np.int32,
    'index': np.int64,
    'depends_on_input': np.bool_,
}


def string_source(config_name: str, data_dir: str | None = None):
  """The random-access source of a prepared config (``tfds`` ``ArrayRecordDataSource``:
  ``len(src)``, ``src[i]`` → raw record). ``config_name`` is any :class:`StringTask` or
  :class:`StringTrace` config name (named or canonical); ``data_dir`` defaults to
  ``$COMPFN_DATA_DIR`` or ``~/compfn_data``. Raises ``FileNotFoundError`` with the
  ``compfn-data build`` command when the config is not built."""
  return strings_tfds.data_source(config_name, data_dir)


def collate(records: Sequence[dict]) -> dict[str, Any]:
  """Records → one batch by column: numeric fields (level, stage, index, depends_on_input)
  become numpy arrays, text fields lists of ``str``, ``functions`` a list of lists."""
  if not records:
    raise ValueError('cannot collate an empty batch')
  out: dict[str, Any] = {}
  for key in records[0]:
    col = [r[key] for r in records]
    if key in _NUMERIC_DTYPES:
      out[key] = np.asarray(col, dtype=_NUMERIC_DTYPES[key])
    elif isinstance(col[0], (bool, np.bool_, int, np.integer, float, np.floating)):
      out[key] = np.asarray(col)
    else:
      out[key] = col
  return out


def _shard_options(
    shard_index: int | None, shard_count: int | None, equal_shards: bool
) -> grain.sharding.ShardOptions:
  if shard_index is None and shard_count is None:
    return grain.sharding.ShardByJaxProcess(drop_remainder=equal_shards)
  if shard_index is None or shard_count is None:
    raise ValueError(
        'give both shard_index and shard_count, or neither (one shard per '
        f'JAX process); got shard_index={shard_index}, shard_count={shard_count}'
    )
  return grain.sharding.ShardOptions(
      shard_index=shard_index, shard_count=shard_count, drop_remainder=equal_shards
  )


def make_dataset(
    source: Sequence,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    *,
    equal_shards: bool = True,
    drop_remainder: bool = False,
    decode: bool = True,
    batch_fn: Callable[[Sequence[dict]], Any] | None = collate,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.IterDataset:
  """A deterministic, resumable, per-host-sharded ``grain.IterDataset`` of batches.

  source: a random-access sequence of records — :func:`string_source`, any
      ``tfds.data_source(...)[split]``, or a list of dicts (e.g. :func:`read_jsonl`).
  batch_size: records per batch on this host. ``batch_fn`` turns the list of records into a
      batch (default :func:`collate`; ``list`` keeps a list of record dicts; ``None`` = grain's
      default stacking).
  seed, shuffle: a global shuffle seeded by ``seed``, different each epoch; ``shuffle=False``
      keeps the stored (generator) order.
  num_epochs: passes over the data; ``None`` repeats forever.
  shard_index, shard_count: this host's shard; both ``None`` → ``jax.process_index()`` of
      ``jax.process_count()``. ``equal_shards`` drops ``N % shard_count`` records per epoch so
      every shard has the same length.
  drop_remainder: drop a final partial batch.
  decode: apply :func:`compfn.data.strings_tfds.decode_record` (bytes → str, numpy scalars →
      int/bool); plain-Python records pass through unchanged.
  num_threads, prefetch_buffer_size: grain ``ReadOptions`` (batches read ahead in threads;
      0 threads reads inline).

  Iterate with ``it = iter(ds)``; ``it.get_state()`` / ``it.set_state(state)`` checkpoint and
  resume (module docstring).
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
    raise ValueError(f'num_epochs must be a positive integer or None, got {num_epochs!r}')
  shard = _shard_options(shard_index, shard_count, equal_shards)
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  n = len(ds)
  if shard.drop_remainder and n % shard.shard_count:
    ds = ds[: n - n % shard.shard_count]
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if shard.shard_count > 1:
    ds = ds[shard.shard_index :: shard.shard_count]
  if decode:
    ds = ds.map(strings_tfds.decode_record)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
  )


# ------------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------------


def _open(path, mode: str, gz: bool | None = None):
  """A text handle on a local or remote (``gs://``, through ``etils.epath``) file."""
  from compfn import workdir

  path = os.fspath(path)
  raw = workdir.path(path).open(mode + 'b') if workdir.is_remote(path) else path
  if path.endswith('.gz') if gz is None else gz:
    return io.TextIOWrapper(gzip.open(raw, mode + 'b'), encoding='utf-8')
  if workdir.is_remote(path):
    return io.TextIOWrapper(raw, encoding='utf-8')
  return open(path, mode, encoding='utf-8')


def as_record(item: Any, index: int) -> dict:
  """A ``Problem`` / ``TraceProblem`` / record dict → the stored record dict."""
  from compfn.tasks.strings.generator import Problem, TraceProblem

  if isinstance(item, Problem):
    return strings_tfds.problem_record(item, index)
  if isinstance(item, TraceProblem):
    return strings_tfds.trace_record(item, index)
  if isinstance(item, dict):
    return strings_tfds.decode_record(item)
  raise TypeError(f'cannot write {type(item).__name__} as a JSONL record')


def write_jsonl(items: Iterable, path: str | os.PathLike) -> int:
  """Write one JSON object per line (UTF-8, ``.gz`` → gzip) atomically; returns the count.
  Items are ``Problem`` / ``TraceProblem`` (stored with their position as ``index``, the same
  fields as the TFDS example) or record dicts (raw TFDS records are decoded)."""
  from compfn import workdir

  path = os.fspath(path)
  n = 0
  with workdir.local_file(path) as tmp:  # a temporary file, moved into place (or copied up)
    with _open(tmp, 'w', gz=path.endswith('.gz')) as f:
      for n, item in enumerate(items, 1):
        f.write(json.dumps(as_record(item, n - 1), ensure_ascii=False) + '\n')
  return n


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
  """Yield the records of a JSONL file (blank lines skipped; errors name file and line)."""
  with _open(path, 'r') as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{os.fspath(path)}:{lineno}: not valid JSON ({e})') from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """All records of a JSONL file (a valid :func:`make_dataset` source)."""
  return list(iter_jsonl(path))


__all__ = [
    'string_source',
    'make_dataset',
    'collate',
    'write_jsonl',
    'read_jsonl',
    'iter_jsonl',
    'as_record',
]
