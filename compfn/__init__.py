"""compfn: JAX/TPU-native RL post-training of LLMs on compositions of string functions."""

from compfn import host_allocator as _host_allocator

# Before any JAX computation: XLA:CPU's per-call buffers are reused from the heap instead of
# being mmap-ed and faulted in on every call (see compfn/host_allocator.py;
# COMPFN_HOST_ALLOCATOR=default opts out).
_host_allocator.configure()

__version__ = "0.1.0"
