"""compfn/host_allocator.py: importing compfn makes XLA:CPU reuse its per-call buffers.

The behaviour is checked in fresh processes (this one created JAX's backend in conftest before
compfn was imported): a jitted call that returns a 64 MiB array, repeated, faults its pages in
on every call with glibc's defaults and reuses them after ``import compfn``: from the heap, once
freed neighbours have coalesced (``posix_memalign`` asks for a little more than the block it
returns, so a single freed block is just too small for the next call's request)."""

import json
import platform
import statistics
import subprocess
import sys
import textwrap

import pytest

from compfn import host_allocator

GLIBC = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'

PROBE = textwrap.dedent(
    """
    import json, resource
    import compfn
    from compfn import host_allocator
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    x = jnp.ones((16 * 1024 * 1024,), jnp.float32)   # 64 MiB in, 64 MiB out per call
    for _ in range(20):   # glibc reuses freed blocks once neighbours have coalesced
      f(x).block_until_ready()
    faults = []
    for _ in range(11):   # the result is dropped: its buffer is freed every call
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(dict(status=host_allocator.status(), faults=faults)))
"""
)


def _probe(mode: str) -> dict:
  env = {'COMPFN_HOST_ALLOCATOR': mode, 'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}
  out = subprocess.run(
      [sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason='the allocator settings are glibc mallopt')
def test_import_makes_xla_reuse_its_buffers_instead_of_faulting_them_in():
  pages = 64 * 1024 * 1024 // 4096
  default = _probe('default')
  assert default['status'] == dict(
      mode='default',
      applied=False,
      backend_initialized_before=False,
      reason='COMPFN_HOST_ALLOCATOR=default',
  )
  # glibc's defaults: the 64 MiB output is a fresh mmap every call, faulted in page by page.
  assert statistics.median(default['faults']) > 0.9 * pages, default
  reuse = _probe('reuse')
  assert reuse['status']['applied'] and reuse['status']['reason'] == 'mallopt', reuse
  assert reuse['status']['settings'] == dict(
      M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31 - 1
  )
  assert not reuse['status']['backend_initialized_before']
  # Frees are asynchronous, so now and then a call still finds no coalesced block: the median.
  assert statistics.median(reuse['faults']) < 0.05 * pages, reuse


def test_bad_mode_names_the_variable_and_the_choices(monkeypatch):
  monkeypatch.setenv('COMPFN_HOST_ALLOCATOR', 'tcmalloc')
  with pytest.raises(ValueError, match=r"COMPFN_HOST_ALLOCATOR='tcmalloc'.*reuse.*default"):
    host_allocator.configure()


def test_status_records_the_backend_created_first():
  # conftest created JAX's CPU backend before this import: the status says so.
  import jax

  jax.devices()
  saved = host_allocator.status()
  try:
    s = host_allocator.configure('reuse')
    assert s['backend_initialized_before'] is True
    assert s == host_allocator.status()
    assert host_allocator.configure('default')['applied'] is False
  finally:
    host_allocator._STATUS.clear()  # noqa: SLF001 (restore what the import recorded)
    host_allocator._STATUS.update(saved)
