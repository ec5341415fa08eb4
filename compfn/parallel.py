"""Meshes, logical-axis rules as data, sharding helpers, multi-host initialisation.

Mesh axes are ``('data', 'fsdp', 'tensor')``. Model code names its axes logically ('batch',
'embed', 'heads', ...; see :mod:`compfn.model.transformer`); a *rules table* maps each logical
name to a mesh axis (or a tuple of axes, or None = replicated), T5X-style, and is gin-bindable::

    DEFAULT_RULES = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('heads', 'tensor'), ...)

    >>> mesh = make_mesh((2, 2, 2))                          # 8 devices: data=2, fsdp=2, tensor=2
    >>> shardings = param_shardings(config, mesh)            # NamedSharding per parameter
    >>> params = jax.device_put(params, shardings)
    >>> batch = shard_batch({'tokens': tokens}, mesh)          # rows over ('data', 'fsdp')
    >>> with use_mesh(mesh, logical_rules()):                # activations follow the same rules
    ...     logits = jax.jit(fn)(params, batch['tokens'])

One of each helper lives here and nowhere else: :func:`normalize_rules` (a rules table as a
hashable, checked tuple), :func:`use_mesh` (the mesh and rules context every jitted call runs
under), :func:`shard_batch` (host batch -> global arrays on the mesh) and :func:`batch_devices`.

Meshes are built with ``AxisType.Auto`` (jax 0.10's ``make_mesh`` defaults to Explicit).
Multi-host: call :func:`initialize_distributed` first on every host (``compfn-train`` does, with
its ``--coordinator_address/--num_processes/--process_id`` flags when given); each host then
feeds its slice of the global batch (:func:`host_batch_slice`).
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

#: logical axis -> mesh axis. Weights are sharded over fsdp on their 'embed' dimension and over
#: tensor on heads/mlp/vocab; the batch over data x fsdp; the layer-scan axis is never sharded.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('layers', None),
)


def normalize_rules(rules) -> Optional[tuple]:
  """The one rules normaliser: a rules table (pairs; lists as gin and JSON write them are
  accepted) as a hashable tuple of ``(logical_name, mesh_axis | tuple of mesh axes | None)``
  pairs, so that it can be a static argument of ``jax.jit``. Raises ValueError when a logical
  name appears twice or an axis is not one of :data:`MESH_AXES`. ``None`` stays ``None`` (no
  rules)."""
  if rules is None:
    return None
  out = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)
  names = [k for k, _ in out]
  dup = sorted({k for k in names if names.count(k) > 1})
  if dup:
    raise ValueError(f'logical axis rules name {dup} more than once')
  for k, v in out:
    for ax in v if isinstance(v, tuple) else (v,):
      if ax is not None and ax not in MESH_AXES:
        raise ValueError(f'rule {k!r} -> {v!r}: {ax!r} is not a mesh axis {MESH_AXES}')
  return out


@gin.configurable
def logical_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple:
  """The rules table in force (bind ``logical_rules.rules`` in gin to change it)."""
  return normalize_rules(rules)


@gin.configurable
def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types. One entry of ``shape`` may be -1
  (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f'mesh shape must have 3 entries (data, fsdp, tensor), got {shape}')
  if shape.count(-1) > 1:
    raise ValueError(f'at most one mesh dimension may be -1, got {shape}')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {shape}')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
        f'mesh {tuple(shape)} needs {int(np.prod(shape))} devices, ' f'{len(devices)} available'
    )
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=None):
  """A pytree of logical ``PartitionSpec`` -> the same pytree of ``NamedSharding``."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules or logical_rules())


def param_shardings(config, mesh: Mesh, rules=None):
  """``NamedSharding`` for every parameter of the model described by ``config``."""
  from compfn.model import param_logical_axes

  return logical_to_sharding(param_logical_axes(config), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=None) -> NamedSharding:
  """Sharding of a ``[batch, ...]`` array: batch over the rule's mesh axes, rest replicated."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), rules or logical_rules())
  return NamedSharding(mesh, spec)


def batch_devices(mesh: Optional[Mesh], rules=None) -> int:
  """How many ways the rules' ``'batch'`` axis splits a batch on ``mesh`` (1 without a mesh):
  the row count of a batch placed by :func:`shard_batch` must be a multiple of it."""
  if mesh is None:
    return 1
  axes = dict(normalize_rules(rules) or logical_rules()).get('batch')
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return int(np.prod([mesh.shape[a] for a in axes]))


def shard_batch(tree, mesh: Mesh, rules=None, replicate: bool = False):
  """The one batch placement: host arrays (the whole global batch, the same on every process)
  -> global ``jax.Array``s on ``mesh``, each with its leading axis over the rules' ``'batch'``
  mesh axes (rules default to :func:`logical_rules`), or whole on every device with
  ``replicate=True`` (tables, pools). Scalars are replicated. Each process places the rows of its
  own devices (:func:`put_global`), so the batch does not depend on the process count."""
  axes = None if replicate else dict(normalize_rules(rules) or logical_rules()).get('batch')

  def put(x):
    x = np.asarray(x)
    spec = PartitionSpec(axes, *([None] * (x.ndim - 1))) if x.ndim else PartitionSpec()
    return put_global(x, NamedSharding(mesh, spec))

  return jax.tree.map(put, tree)


@contextlib.contextmanager
def use_mesh(mesh: Optional[Mesh] = None, rules=None):
  """The one mesh context: ``jax.set_mesh(mesh)`` when a mesh is given, and the logical-axis
  ``rules`` active (``nn.logical_axis_rules``, for the model's ``with_logical_constraint``
  annotations) when rules are given; nothing is entered for ``None``. Rules are normalised by
  :func:`normalize_rules`; pass :func:`logical_rules` for the gin-bound table."""
  rules = normalize_rules(rules)
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      stack.enter_context(jax.set_mesh(mesh))
    if rules is not None:
      stack.enter_context(nn.logical_axis_rules(rules))
    yield mesh


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    **kwargs,
) -> bool:
  """Start ``jax.distributed`` when this is one process of a multi-process job; returns whether
  it is initialised. Must run before any other JAX call; a second call is a no-op.

  With ``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and
  ``process_id`` (``compfn-train --coordinator_address=... --num_processes=N --process_id=I``):
  ``jax.distributed.initialize`` with them (all three or none, ``0 <= process_id < N``, else
  :class:`compfn.errors.ConfigError`); on CPU the cross-process collectives are gloo
  (``jax_cpu_collectives_implementation``). Without them: ``jax.distributed.initialize()`` with
  no arguments (TPU pod slices, Slurm, ... detect their own topology) when this looks like a
  multi-host job (several ``TPU_WORKER_HOSTNAMES``, ``JAX_COORDINATOR_ADDRESS`` or
  ``COMPFN_MULTIHOST=1`` set); otherwise a no-op (one host)."""
  from compfn.errors import ConfigError

  if jax.distributed.is_initialized():
    return True
  flags = {
      '--coordinator_address': coordinator_address,
      '--num_processes': num_processes,
      '--process_id': process_id,
  }
  given = [k for k, v in flags.items() if v is not None]
  if given:
    if len(given) != 3:
      missing = [k for k in flags if k not in given]
      raise ConfigError(
          f'{", ".join(given)} given without {", ".join(missing)}: a '
          'multi-process run needs all three of --coordinator_address, '
          '--num_processes and --process_id (or none of them on a TPU VM)'
      )
    host, _, port = str(coordinator_address).rpartition(':')
    if not host or not port.isdigit():
      raise ConfigError(f'--coordinator_address={coordinator_address!r} is not HOST:PORT')
    if int(num_processes) < 1:
      raise ConfigError(f'--num_processes={num_processes} must be >= 1')
    if not 0 <= int(process_id) < int(num_processes):
      raise ConfigError(
          f'--process_id={process_id} is not in [0, {num_processes}) '
          f'(--num_processes={num_processes})'
      )
    if _cpu_platform() and 'JAX_CPU_COLLECTIVES_IMPLEMENTATION' not in os.environ:
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # A peer that dies is noticed within this many seconds (JAX's default is 100): the
    # others then exit non-zero instead of waiting in a collective.
    kwargs.setdefault(
        'heartbeat_timeout_seconds', int(os.environ.get('COMPFN_HEARTBEAT_TIMEOUT_S', '20'))
    )
    jax.distributed.initialize(
        coordinator_address=str(coordinator_address),
        num_processes=int(num_processes),
        process_id=int(process_id),
        **kwargs,
    )
    return True
  multi = (
      os.environ.get('COMPFN_MULTIHOST') == '1'
      or 'JAX_COORDINATOR_ADDRESS' in os.environ
      or os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0
  )
  if multi:
    jax.distributed.initialize(**kwargs)
  return multi


def _cpu_platform() -> bool:
  """Whether JAX will run on CPU, judged without initialising a backend: ``jax_platforms`` /
  ``JAX_PLATFORMS`` when set, else no TPU and no NVIDIA device on this machine."""
  platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS') or ''
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  tpu = bool(
      glob.glob('/dev/accel*')
      or glob.glob('/dev/vfio/[0-9]*')
      or os.environ.get('TPU_ACCELERATOR_TYPE')
  )
  return not (tpu or glob.glob('/dev/nvidia[0-9]*'))


def host_batch_slice(global_batch: int) -> slice:
  """The rows of a global batch that this host feeds (contiguous, equal per host)."""
  n, i = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f'global batch {global_batch} is not divisible by {n} hosts')
  per = global_batch // n
  return slice(i * per, (i + 1) * per)


def put_global(x, sharding: NamedSharding):
  """A host array that every process holds whole (the same values everywhere) -> a global
  ``jax.Array`` with ``sharding``: each process places the rows of its own devices. Equal to
  ``jax.device_put(x, sharding)`` on one process; on several it needs no cross-host transfer,
  and a batch built this way is the same global batch whatever the process count."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly sharded, possibly multi-process) array as numpy, on every
  process: ``multihost_utils.process_allgather(x, tiled=True)`` when some of its shards live on
  other processes (a collective: every process must call it, in the same order), else
  ``np.asarray``. A pytree is fetched in one ``jax.device_get`` (one transfer, not one per
  leaf)."""

  def gather(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
      from jax.experimental import multihost_utils

      return multihost_utils.process_allgather(a, tiled=True)
    return a

  return jax.tree.map(np.asarray, jax.device_get(jax.tree.map(gather, x)))
