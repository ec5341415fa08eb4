"""Test configuration: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drop each test file's compiled XLA programs when the file is done. XLA:CPU keeps every
  compiled program's machine code in its own memory mappings; the whole suite in one process
  reached Linux's default ``vm.max_map_count`` (65,530) and a later compile died (abort or
  segfault inside ``backend_compile``, in tests/test_train.py, the last file)."""
  yield
  jax.clear_caches()
  gc.collect()
