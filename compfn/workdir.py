"""The workdir I/O layer: every file a run reads or writes goes through here (``etils.epath``),
so ``--workdir=gs://BUCKET/run`` and shared filesystems work the same as a local folder.

Multi-process runs share one workdir. The *lead* process (``jax.process_index() == 0``) writes
every file — metrics, results, reports, plots, RFT records, ``DONE`` markers, exports — and the
others skip the write; :func:`barrier` is where the others wait for a file the lead has just
written. Checkpoints are the exception: orbax writes them from every process.

    >>> from compfn import workdir as workdir_lib
    >>> workdir_lib.write_json('gs://b/run/eval/eval.json', {'acc': 0.5})  # lead only, atomic
    >>> workdir_lib.barrier('eval written')                        # the others wait here
    >>> workdir_lib.read_json('gs://b/run/eval/eval.json')
    {'acc': 0.5}
    >>> with workdir_lib.local_file('gs://b/run/plot.png') as f:   # for writers that need a
    ...     fig.savefig(f)                                         # local path (matplotlib)

Local writes are atomic (a temporary file renamed into place), so a kill mid-write never leaves
a half-written result; an object store's single-object write is atomic by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]

_SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')


def path(p: PathLike) -> epath.Path:
  """``p`` as an ``epath.Path`` (a local path, ``gs://``, ...)."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  """Whether ``p`` names an object store (``gs://...``), not a local file."""
  return bool(_SCHEME.match(os.fspath(p)))


def resolve(p: PathLike) -> str:
  """An absolute local path, or a remote URL unchanged (what orbax and the logs should see)."""
  s = os.fspath(p)
  return s if is_remote(s) else os.path.abspath(os.path.expanduser(s))


def join(*parts: PathLike) -> str:
  """``os.path.join`` that keeps ``gs://`` URLs intact."""
  return os.fspath(epath.Path(parts[0]).joinpath(*[os.fspath(x) for x in parts[1:]]))


def is_lead() -> bool:
  """Whether this process writes the workdir's files (process 0; True on one process)."""
  import jax

  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all reach it (a no-op on one process). ``name`` must be the
  same on every process and unique per call site and step, e.g. ``'eval.json:before_rl'``."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def makedirs(p: PathLike) -> str:
  """Create the folder ``p`` (and its parents) if needed; returns it as a string."""
  path(p).mkdir(parents=True, exist_ok=True)
  return os.fspath(p)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding='utf-8')


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def write_text(p: PathLike, text: str, *, lead_only: bool = True) -> bool:
  """Write ``text`` to ``p`` atomically; with ``lead_only`` (the default) only the lead process
  writes. Returns whether this process wrote."""
  if lead_only and not is_lead():
    return False
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    target.write_text(text, encoding='utf-8')
    return True
  tmp = f'{os.fspath(p)}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, os.fspath(p))
  return True


def write_json(p: PathLike, obj: Any, *, lead_only: bool = True, **dumps_kw) -> bool:
  """:func:`write_text` of ``json.dumps(obj, **dumps_kw)``."""
  return write_text(p, json.dumps(obj, **dumps_kw), lead_only=lead_only)


@contextlib.contextmanager
def local_file(p: PathLike) -> Iterator[str]:
  """A local path to write ``p`` through, for writers that need one (matplotlib, csv,
  safetensors): a temporary file moved into place (local) or copied up (remote) on success;
  on an exception nothing is written."""
  target = os.fspath(p)
  path(target).parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(target):
    suffix = os.path.splitext(target)[1]
    tmp = f'{os.path.splitext(target)[0]}.tmp.{os.getpid()}{suffix}'
    try:
      yield tmp
      os.replace(tmp, target)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return
  with tempfile.TemporaryDirectory() as d:
    tmp = os.path.join(d, os.path.basename(target))
    yield tmp
    path(tmp).copy(path(target), overwrite=True)


@contextlib.contextmanager
def local_dir(p: PathLike) -> Iterator[str]:
  """A local folder whose files end up in the folder ``p`` (copied up when remote)."""
  target = os.fspath(p)
  if not is_remote(target):
    makedirs(target)
    yield target
    return
  with tempfile.TemporaryDirectory() as d:
    yield d
    makedirs(target)
    for name in sorted(os.listdir(d)):
      src = os.path.join(d, name)
      if os.path.isfile(src):
        path(src).copy(path(target) / name, overwrite=True)
      else:
        raise ValueError(f'local_dir({target!r}): nested folder {name!r} is not supported')


def open_append(p: PathLike):
  """A text handle appending to ``p`` (local), or None for a remote path (rewrite it instead:
  object stores cannot append)."""
  if is_remote(p):
    return None
  path(p).parent.mkdir(parents=True, exist_ok=True)
  return open(os.fspath(p), 'a', encoding='utf-8')
