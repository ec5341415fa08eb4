"""Host (CPU) allocator settings for XLA:CPU, applied once when ``compfn`` is imported.

Why: XLA:CPU allocates every execution's temporary buffer (and its outputs) with
``posix_memalign``. With glibc's defaults, a request above the mmap threshold (at most 32 MiB)
made from one of XLA's worker threads is served by a fresh ``mmap`` and given back with
``munmap`` when freed, so every call faults its whole temporary buffer in again, page by page,
and the kernel zeroes each page. Measured on the 2-core machine (``strace`` + ``ru_minflt``):
the char model's SFT step (batch 128 x 128) maps and frees a 518 MB buffer per step, 129,000
minor page faults, about a quarter of the step.

What ``configure`` sets with glibc's ``mallopt`` (the process-wide equivalent of
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=...``):

* ``M_ARENA_MAX = 1``: XLA's worker threads allocate from the main arena. A secondary arena
  serves any request larger than its 64 MiB heap with ``mmap`` whatever ``M_MMAP_MAX`` says.
* ``M_MMAP_MAX = 0``: large blocks come from the heap (``brk``), so a freed temporary buffer is
  reused by the next call with its pages already mapped.
* ``M_TRIM_THRESHOLD = 2**31 - 1``: up to 2 GiB of free memory at the top of the heap is kept
  rather than returned to the kernel after every call.

The cost is that the process keeps its peak heap mapped (as XLA's GPU/TPU allocators and
tcmalloc do). Results do not change: the allocator only decides where buffers live.

Only threads that have not allocated yet pick up ``M_ARENA_MAX``: import ``compfn`` before the
first JAX computation of the process (``status()['backend_initialized_before']`` says whether
that held). Opt out with ``COMPFN_HOST_ALLOCATOR=default`` in the environment before the import.
On anything but Linux/glibc this module does nothing.

Example::

    >>> import compfn
    >>> from compfn import host_allocator
    >>> host_allocator.status()['applied']          # on Linux/glibc
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

ENV = "COMPFN_HOST_ALLOCATOR"
MODES = ("reuse", "default")

# glibc <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_STATUS: dict = {"mode": None, "applied": False, "reason": "not configured"}


def _backend_initialized() -> bool:
  """Whether JAX already created its backends (and so XLA's CPU worker threads)."""
  xb = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(xb, "_backends", None))


def configure(mode: str | None = None) -> dict:
  """Apply the allocator ``mode`` (``'reuse'``, the default, or ``'default'`` = glibc's own
  settings untouched); ``mode=None`` reads ``$COMPFN_HOST_ALLOCATOR``. Returns ``status()``.
  Calling it again with ``'reuse'`` is harmless; ``'default'`` does not undo an earlier
  ``'reuse'`` (glibc has no way back for threads already attached to the main arena)."""
  mode = mode if mode is not None else os.environ.get(ENV, "reuse")
  if mode not in MODES:
    raise ValueError(f"{ENV}={mode!r}: expected one of {MODES}")
  status = {"mode": mode, "applied": False, "backend_initialized_before": _backend_initialized()}
  if mode == "default":
    status["reason"] = f"{ENV}=default"
  elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    status["reason"] = f"not Linux/glibc ({sys.platform}, {platform.libc_ver()[0] or 'no libc'})"
  else:
    try:
      libc = ctypes.CDLL(None)
      settings = {
          "M_ARENA_MAX": (M_ARENA_MAX, 1),
          "M_MMAP_MAX": (M_MMAP_MAX, 0),
          "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
      }
      failed = [k for k, (p, v) in settings.items() if libc.mallopt(p, v) != 1]
    except (OSError, AttributeError) as e:  # no mallopt symbol: a libc without it
      status["reason"] = f"mallopt unavailable: {e}"
    else:
      status["applied"] = not failed
      status["settings"] = {k: v for k, (_, v) in settings.items()}
      status["reason"] = f"mallopt failed for {failed}" if failed else "mallopt"
  if status["applied"] and status["backend_initialized_before"]:
    logging.getLogger(__name__).info(
        "JAX's CPU backend was created before compfn was imported: XLA worker threads that "
        "already allocated keep their own malloc arenas (large buffers still mmap per call)"
    )
  _STATUS.clear()
  _STATUS.update(status)
  return status


def status() -> dict:
  """What ``configure`` did: ``mode``, ``applied``, ``reason``, ``settings`` and
  ``backend_initialized_before`` (recorded by the benchmarks)."""
  return dict(_STATUS)
