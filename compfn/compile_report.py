"""Ahead-of-time compilation of a pipeline's step programs for a topology (``--compile_only``).

    compfn-train --gin_file=gin/experiments/stage2_rl_L2.gin \\
        --gin_file=gin/models/llama3_1_8b_instruct.gin --gin_file=gin/hardware/tpu_v5p_128.gin \\
        --compile_only --topology=v5p:4x4x4 --model_preset=llama3_1_8b_instruct --workdir=DIR

compiles, on this (CPU) host and without any checkpoint or data, every device program the
configured :func:`compfn.pipeline.pipeline` would run, with the shapes, dtypes, mesh
(``pipeline.mesh_shape``), logical-axis rules (``logical_rules.rules``) and micro-batches of the
gin configuration:

==============  ===========================================================================
stage           programs
==============  ===========================================================================
sft_stage       ``sft_step`` (the jitted update, state donated); ``eval_hook`` (the greedy
                rollout of its periodic evaluation) when ``eval_records``/``eval_every``
rl_stage        ``grpo_step`` (the whole GRPO step: the dynamic-sampling loop of rollouts,
                log-probs, loss, AdamW); ``eval_hook`` as above
eval_stage      ``rollout_greedy`` and/or ``rollout_sampled`` (prefill + decode + detokenise +
                score: the one program ``compfn.evaluate`` calls per batch)
gate_stage      ``rollout_sampled``
rft_stage       ``collect_rollout`` (sampled, on the mesh, like ``rft.collect``) and
                the ``sft_step`` of its SFT (``<name>/iter_0/sft``)
branch          the programs of its stages (``<name>/...``)
export_stage    none (host only)
==============  ===========================================================================

Devices: ``topology`` (e.g. ``'v5p:4x4x4'``, ``'v5e:2x2'``) makes compile-only TPU devices
with :func:`jax.experimental.topologies.get_topology_desc` (needs ``libtpu``: ``pip install
'jax[tpu]'``; no TPU is needed); without it, the local devices. Every argument is a
``jax.ShapeDtypeStruct`` carrying the ``NamedSharding`` the run would give it (params and AdamW
moments by their logical axes, batches over the 'batch' rule, GRPO prompt pools and the
detokeniser tables replicated), lowered with ``jax.jit(...).lower(...)`` under the mesh and
rules, compiled, and measured with ``compiled.memory_analysis()`` (bytes per device).

How the stage configurations are read (without running anything): :func:`pipeline_stages`
walks ``pipeline.stages`` as gin references (``@scope/sft_stage``, nested ``branch`` stages)
without evaluating them, and :func:`stage_bindings` reads each parameter the programs depend on
with ``gin.get_bindings`` inside the stage's own ``gin.config_scope`` — the same scope
inheritance gin applies when the pipeline calls the stage — falling back to the function's
signature default. Only those parameters are evaluated (e.g. ``@GRPOConfig()``,
``@rl/OptimizerConfig()``), so ``records`` (data) is never touched; defaults built inside a
stage (``grpo or GRPOConfig()``) are built the same way, in the same scope.

The model: ``model_preset`` (a :data:`compfn.model.PRESETS` name) if given, else
``load_model.checkpoint``'s ``config.json`` (only that file is read), else
``load_model.config`` (a from-scratch model, e.g. ``@char_model()``); then
``load_model.overrides`` (dtypes, remat). Parameters are abstract: ``jax.eval_shape`` of
:func:`compfn.model.transformer.init_params`. The tokenizer (stop ids, pad id, detokeniser
table) is loaded when it is available, else synthesised from the model config (table width
``token_bytes``).

Shapes that depend on data are assumptions, recorded in the report (``assumptions``):
``prompt_len`` (RL: ``rl_stage.prompt_len`` when bound; evaluations: the bucket of the longest
prompt, here ``prompt_len``, default the largest bound ``rl_stage.prompt_len`` or 256),
``ref_len`` (the reference's UTF-8 bytes, default 64), evaluation rows =
``batch_size`` rounded up to the batch-sharding devices (a data set at least that large), SFT
packed rows = ``batch_size`` (an upper bound: packing never needs more rows than examples).

Writes ``DIR/compile_report.json`` (per program: stage, program, topology, mesh, argument /
output / alias / temp / peak bytes per device, the device memory and where it came from,
``fits``, ``shortfall_bytes``) and prints a table. A program needs ``required_bytes = max(peak,
argument + output - alias + temp)``; it fits when that is at most the device memory: the
``--device_memory_bytes`` flag, else the device's ``memory_stats()['bytes_limit']``, else
:data:`DEVICE_MEMORY` by device kind (TPU v5p 95 GiB, v5e 16 GiB, v4 32 GiB, v6e 32 GiB), else
(CPU) the host's RAM divided by the local device count. A program the TPU compiler itself
rejects for memory (``RESOURCE_EXHAUSTED``) does not fit; the report keeps the compiler's
numbers. Unless every program fits, :func:`compile_report` raises :class:`DoesNotFit` (exit
code 6) naming each stage, program and shortfall.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import pathlib
import re
import time
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from compfn import errors, parallel, train
from compfn.model.config import ModelConfig

__all__ = [
    'DoesNotFit',
    'DEVICE_MEMORY',
    'compile_report',
    'pipeline_stages',
    'stage_bindings',
    'model_from_gin',
    'topology_devices',
    'device_memory',
    'format_bytes',
]

GiB = 1 << 30

#: HBM per chip (one JAX device; megacore) by ``device_kind``.
DEVICE_MEMORY = {
    'TPU v5': 95 * GiB,
    'TPU v5p': 95 * GiB,
    'TPU v5 lite': 16 * GiB,
    'TPU v5e': 16 * GiB,
    'TPU v4': 32 * GiB,
    'TPU v6 lite': 32 * GiB,
    'TPU v6e': 32 * GiB,
}


class DoesNotFit(errors.CompfnError):
  """A compiled program needs more memory per device than the device has (``--compile_only``)."""

  exit_code = 6


# ------------------------------------------------------------------------------ gin reading


def _evaluate(value, scope: Sequence[str]):
  """A bound value with its references and macros evaluated in ``scope`` (as gin does at call
  time: the wrapper deep-copies its bindings inside the active scope)."""
  with gin.config_scope(list(scope)):
    return copy.deepcopy(value)


def _signature_default(fn: Callable, name: str):
  p = inspect.signature(fn).parameters[name]
  if p.default is inspect.Parameter.empty or p.default is gin.REQUIRED:
    return None
  return p.default


def stage_bindings(
    selector: str, fn: Callable, scope: Sequence[str], names: Sequence[str], raw: Sequence[str] = ()
) -> dict:
  """``{name: value}`` for the parameters ``names`` of the configurable ``selector`` called in
  ``scope``: the bound value (gin's scope inheritance: '', 'a', 'a/b', ... the most specific
  wins), evaluated in ``scope``, else ``fn``'s default. Names in ``raw`` are returned
  unevaluated (e.g. ``records``: only whether it is set matters; evaluating it would load data).
  """
  with gin.config_scope(list(scope)):
    bound = gin.get_bindings(selector, resolve_references=False)
  out = {}
  for n in list(names) + list(raw):
    if n in bound:
      out[n] = bound[n] if n in raw else _evaluate(bound[n], scope)
    else:
      out[n] = _signature_default(fn, n)
  return out


@dataclasses.dataclass
class StageRef:
  kind: str  # 'sft_stage', 'rl_stage', ...
  scope: tuple  # the gin scope the stage runs in
  name: str  # its key in the pipeline (branch prefix + name)


def _ref_parts(ref, parent_scope):
  """(selector, scope) of a non-evaluated stage reference (``@scope/sft_stage``)."""
  if not isinstance(ref, gin.config.ConfigurableReference):
    raise errors.ConfigError(
        f'--compile_only: pipeline stage {ref!r} is not a gin reference ' '(@name or @scope/name)'
    )
  selector = ref.configurable.name
  scope = tuple(ref.scopes) if ref.scopes else tuple(parent_scope)
  return selector, scope


def pipeline_stages(refs=None, scope: Sequence[str] = (), prefix: str = '') -> list[StageRef]:
  """The stages ``pipeline.stages`` runs, in order, with their scopes and names (``branch``
  stages expanded, their names prefixed ``<branch>/``). Nothing is evaluated."""
  from compfn import pipeline as pipeline_lib
  from compfn import stages as stages_lib

  if refs is None:
    bound = gin.get_bindings('pipeline', resolve_references=False)
    if 'stages' not in bound:
      raise errors.ConfigError(
          '--compile_only: pipeline.stages is not bound (run.job = '
          '@pipeline and a list of stages)'
      )
    refs = bound['stages']
  fns = {
      'sft_stage': stages_lib.sft_stage,
      'rl_stage': stages_lib.rl_stage,
      'eval_stage': stages_lib.eval_stage,
      'gate_stage': stages_lib.gate_stage,
      'rft_stage': stages_lib.rft_stage,
      'export_stage': stages_lib.export_stage,
      'branch': pipeline_lib.branch,
  }
  out = []
  for ref in refs:
    selector, sc = _ref_parts(ref, scope)
    if selector not in fns:
      raise errors.ConfigError(
          f'--compile_only: unknown stage @{ref.scoped_selector} (known: '
          f'{", ".join(sorted(fns))})'
      )
    if selector == 'branch':
      with gin.config_scope(list(sc)):
        b = gin.get_bindings('branch', resolve_references=False)
      name = _evaluate(b.get('name'), sc)
      if name is None or 'stages' not in b:
        raise errors.ConfigError(
            f'--compile_only: @{ref.scoped_selector} needs branch.name and ' 'branch.stages'
        )
      out += pipeline_stages(b['stages'], sc, f'{prefix}{name}/')
      continue
    name = stage_bindings(selector, fns[selector], sc, ['name'])['name']
    out.append(StageRef(selector, sc, prefix + str(name)))
  return out


# ----------------------------------------------------------------------------------- model


@dataclasses.dataclass
class TokenizerInfo:
  stop_ids: tuple
  pad_id: int
  detok: Any  # DetokTables of numpy arrays or of ShapeDtypeStructs
  source: str


def model_from_gin(model_preset: Optional[str] = None) -> tuple[ModelConfig, str, Any]:
  """(model config, where it came from, the tokenizer or None) from ``load_model``'s bindings
  without loading any weights (see the module docstring)."""
  from compfn import model
  from compfn import stages as stages_lib
  from compfn import tokenizers

  b = stage_bindings(
      'load_model',
      stages_lib.load_model,
      (),
      ['checkpoint', 'tokenizer', 'overrides'],
      raw=['config'],
  )
  ckpt, tok_path = b['checkpoint'], b['tokenizer']
  if model_preset:
    config, origin = model.preset(model_preset), f'preset:{model_preset}'
  elif ckpt is not None:
    path = os.fspath(ckpt)
    cfg_json = os.path.join(path, 'config.json')
    if not os.path.isfile(cfg_json):
      raise errors.ConfigError(
          f'--compile_only: load_model.checkpoint={path!r} has no config.json here; '
          '--compile_only reads only that file. Pass --model_preset=NAME (one of '
          f'{", ".join(sorted(model.PRESETS))}) to compile the model without its checkpoint'
      )
    from compfn.model import hf_io

    config, origin = ModelConfig.from_hf(hf_io.read_hf_config(path)), f'checkpoint:{path}'
  elif b['config'] is not None:
    config, origin = _evaluate(b['config'], ()), 'config'
  else:
    raise errors.ConfigError(
        '--compile_only: set load_model.checkpoint, load_model.config or ' '--model_preset'
    )
  overrides = b['overrides']
  if overrides:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
      raise errors.ConfigError(f'load_model.overrides: {unknown} are not ModelConfig fields')
    config = dataclasses.replace(config, **dict(overrides))
  if tok_path:
    candidates = [tok_path]
  elif origin.startswith('checkpoint:'):
    candidates = [ckpt]
  else:
    candidates = ['char'] if origin == 'config' else []
  tok = None
  for path in candidates:
    try:
      tok = tokenizers.load_tokenizer(os.fspath(path))
      break
    except (OSError, ValueError):
      continue
  return config, origin, tok


def tokenizer_info(config: ModelConfig, tok, token_bytes: int) -> TokenizerInfo:
  from compfn.rl.rollout import DetokTables

  if tok is not None:
    return TokenizerInfo(
        tuple(int(i) for i in (tok.stop_ids or ())),
        int(tok.pad_id or 0),
        DetokTables.from_tokenizer(tok),
        type(tok).__name__,
    )
  v = config.vocab_size
  S = jax.ShapeDtypeStruct
  detok = DetokTables(
      table=S((v, int(token_bytes)), jnp.uint8),
      lengths=S((v,), jnp.int32),
      first_skip=S((v,), jnp.int32),
  )
  return TokenizerInfo(
      tuple(config.eos_token_ids),
      int(config.pad_token_id or 0),
      detok,
      f'synthesised (vocab {v}, {token_bytes} bytes per token)',
  )


# --------------------------------------------------------------------------------- devices


def topology_devices(topology: Optional[str]) -> tuple[list, str]:
  """(devices, description): compile-only TPU devices of ``topology`` ('v5p:4x4x4') or the
  local devices."""
  if not topology:
    devs = jax.devices()
    return devs, f'local:{devs[0].platform}x{len(devs)}'
  from jax.experimental import topologies
  # libtpu takes /tmp/libtpu_lockfile for the process that loads it first (e.g. any JAX program
  # on this host that probed for a TPU); compiling opens no TPU, so sharing the library is safe.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    desc = topologies.get_topology_desc(topology, 'tpu')
  except Exception as e:  # noqa: BLE001  (no libtpu, or an unknown topology name)
    msg = ' '.join(str(e).split())[:300]
    hint = (
        ''
        if _have_libtpu()
        else " (libtpu is not installed: pip install 'jax[tpu]' — no TPU is needed to compile)"
    )
    raise errors.ConfigError(
        f'--topology={topology}: cannot make its devices: ' f'{type(e).__name__}: {msg}{hint}'
    ) from e
  return list(desc.devices), topology


def _mesh(shape: tuple, devices: list, topo: str, allow_split_physical_axes: bool = False):
  """``parallel.make_mesh(shape, devices)``, the mesh the run builds; a shape it cannot lay out
  is a :class:`ConfigError` (the run would fail the same way)."""
  try:
    return parallel.make_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError) as e:
    if not (allow_split_physical_axes and isinstance(e, NotImplementedError)):
      msg = ' '.join(str(e).split('\n')[0].split())
      hint = ''
      if isinstance(e, NotImplementedError):
        hint = (
            ' — the run would fail the same way (compfn.parallel.make_mesh uses '
            'jax.make_mesh): choose mesh axes that are products of the physical torus axes '
            '(e.g. (4, 16, 1) on 4x4x4), or bind '
            'compile_report.allow_split_physical_axes=True to measure this shape anyway'
        )
      raise errors.ConfigError(
          f'--compile_only: pipeline.mesh_shape={shape} on {topo} '
          f'({len(devices)} devices): {msg}{hint}'
      ) from e
  from jax.experimental import mesh_utils
  from jax.sharding import AxisType, Mesh

  shape = tuple(
      len(devices) // int(np.prod([s for s in shape if s != -1])) if s == -1 else s for s in shape
  )
  grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(grid, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _have_libtpu() -> bool:
  import importlib.util

  return importlib.util.find_spec('libtpu') is not None


def device_memory(
    device, override: Optional[int] = None, num_local: int = 1
) -> tuple[Optional[int], str]:
  """(bytes per device, source) — see the module docstring for the order."""
  if override:
    return int(override), '--device_memory_bytes'
  try:
    stats = device.memory_stats()
    if stats and stats.get('bytes_limit'):
      return int(stats['bytes_limit']), 'memory_stats'
  except Exception:  # noqa: BLE001  (compile-only devices have no memory stats)
    pass
  kind = getattr(device, 'device_kind', '')
  if kind in DEVICE_MEMORY:
    return DEVICE_MEMORY[kind], f'table ({kind})'
  if device.platform == 'cpu':
    try:
      total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
      return total // max(num_local, 1), f'host RAM / {num_local} devices'
    except (ValueError, OSError):
      pass
  return None, f'unknown ({kind})'


# ------------------------------------------------------------------------------ abstracts


def _S(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(
      tuple(shape), jnp.dtype(dtype) if not _is_key(dtype) else dtype, sharding=sharding
  )


def _is_key(dtype) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_dtype():
  return jax.eval_shape(lambda: jax.random.key(0)).dtype


class _Abstract:
  """Abstract (ShapeDtypeStruct) arrays placed as the run places them, on ``mesh``."""

  def __init__(self, config: ModelConfig, mesh, rules):
    from compfn.model import transformer

    self.config, self.mesh, self.rules = config, mesh, rules
    self.repl = NamedSharding(mesh, PartitionSpec())
    self.param_sh = parallel.param_shardings(config, mesh, rules)
    shapes = jax.eval_shape(lambda: transformer.init_params(config, jax.random.PRNGKey(0)))
    pdt = jnp.dtype(config.param_dtype)
    self.param_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, pdt), shapes)
    self.params = jax.tree.map(
        lambda x, s: _S(x.shape, x.dtype, s), self.param_shapes, self.param_sh
    )
    self.batch_axes = dict(rules).get('batch')

  def state(self, tx, seed: int) -> train.TrainState:
    st = jax.eval_shape(lambda p: train.TrainState.create(p, tx, seed), self.param_shapes)
    pstruct = jax.tree.structure(self.param_shapes)
    like = lambda x: jax.tree.structure(x) == pstruct  # noqa: E731
    put = lambda x, s: _S(x.shape, x.dtype, s)  # noqa: E731
    opt = jax.tree.map(
        lambda x: (jax.tree.map(put, x, self.param_sh) if like(x) else put(x, self.repl)),
        st.opt_state,
        is_leaf=like,
    )
    return st.replace(
        step=put(st.step, self.repl), params=self.params, opt_state=opt, rng=put(st.rng, self.repl)
    )

  def batched(self, shape, dtype):
    spec = PartitionSpec(self.batch_axes, *([None] * (len(shape) - 1)))
    return _S(shape, dtype, NamedSharding(self.mesh, spec))

  def replicated(self, shape, dtype):
    return _S(shape, dtype, self.repl)

  def replicate_tree(self, tree):
    return jax.tree.map(lambda x: self.replicated(np.shape(x), x.dtype), tree)

  @property
  def batch_devices(self) -> int:
    return parallel.batch_devices(self.mesh, self.rules)


# -------------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Program:
  stage: str
  program: str
  lower: Callable[[], Any]  # () -> jax.stages.Lowered
  shapes: dict  # what it was compiled for (recorded in the report)


def _round_up(n: int, m: int) -> int:
  return -(-int(n) // m) * m


def _sft_programs(stage: str, b: dict, ab: _Abstract, scope) -> list[Program]:
  from compfn.rl import sft

  opt = b['optimizer'] or _in_scope(scope, train.OptimizerConfig)
  steps = b['num_steps'] or 1
  tx, tx_lr = opt.make(steps), opt.lr_schedule(steps)
  mc, mb = ab.config, int(b['micro_batches'])
  rows, length = int(b['batch_size']), int(b['seq_len'])
  if b['packing']:
    ndev = jax.device_count() if ab.mesh is None else ab.mesh.devices.size
    rows = _round_up(rows, 8 * ndev // math.gcd(8, ndev))
  batch = sft.SFTBatch(
      inputs=ab.batched((rows, length), jnp.int32),
      targets=ab.batched((rows, length), jnp.int32),
      loss_mask=ab.batched((rows, length), jnp.float32),
      segment_ids=ab.batched((rows, length), jnp.int32),
      positions=(ab.batched((rows, length), jnp.int32) if b['packing'] else None),
  )
  state = ab.state(tx, int(b['seed']))

  def step(state, batch):
    state, m = sft.sft_step(mc, tx, state, batch, mb)
    return state, {**m, 'lr': tx_lr(state.step)}

  def lower():
    with parallel.use_mesh(ab.mesh, ab.rules):
      return jax.jit(step, donate_argnums=(0,)).lower(state, batch)

  return [
      Program(
          stage,
          'sft_step',
          lower,
          {'batch': [rows, length], 'micro_batches': mb, 'packing': bool(b['packing'])},
      )
  ]


def _rollout_program(
    stage: str,
    program: str,
    ab: _Abstract,
    tk: TokenizerInfo,
    *,
    rows: int,
    g: int,
    temperature: float,
    max_new_tokens: int,
    task: str,
    prompt_len: int,
    ref_len: int,
    sharded: bool = True,
    logprobs: str = 'raw',
) -> Program:
  """The evaluation's rollout (``compfn.rl.rollout.rollout``: prefill, the decode loop,
  detokenise, score) for ``rows`` prompts x ``g`` samples."""
  from compfn import sampling
  from compfn.rl import rollout

  cfg = sampling.SamplerConfig(
      int(max_new_tokens),
      temperature=float(temperature),
      stop_ids=tk.stop_ids,
      num_samples=int(g),
      pad_id=tk.pad_id,
      logprobs=logprobs,
  )
  put = ab.batched if sharded else ab.replicated
  batch = rollout.RolloutBatch(
      prompts=put((rows, prompt_len), jnp.int32),
      prompt_lens=put((rows,), jnp.int32),
      ref=put((rows, ref_len), jnp.int32),
      ref_len=put((rows,), jnp.int32),
  )
  rng = ab.replicated((), _key_dtype())
  detok = ab.replicate_tree(tk.detok)
  mesh, rules = (ab.mesh, ab.rules) if sharded else (None, None)

  def lower():
    return rollout.lower(
        ab.config, ab.params, batch, rng, cfg, task, detok=detok, mesh=mesh, rules=rules
    )

  return Program(
      stage,
      program,
      lower,
      {
          'prompts': rows,
          'samples_per_prompt': g,
          'prompt_len': prompt_len,
          'ref_len': ref_len,
          'max_new_tokens': int(max_new_tokens),
          'temperature': float(temperature),
          'task': task,
          'mesh_constrained': sharded,
      },
  )


def _eval_rows(batch_size: int, ab: _Abstract) -> int:
  return _round_up(int(batch_size), ab.batch_devices)


def _sample_chunks(num_samples: int, sample_chunk: int = 64) -> int:
  n = -(-int(num_samples) // sample_chunk)
  return -(-int(num_samples) // n)


def _in_scope(scope, fn, *args, **kwargs):
  with gin.config_scope(list(scope)):
    return fn(*args, **kwargs)


def _plan(
    stages: list[StageRef], ab: _Abstract, tk: TokenizerInfo, prompt_len: int, ref_len: int
) -> tuple[list[Program], list[dict]]:
  from compfn import stages as stages_lib
  from compfn.rl import grpo

  programs, notes = [], []
  for s in stages:
    sc = s.scope
    if s.kind == 'sft_stage':
      b = stage_bindings(
          'sft_stage',
          stages_lib.sft_stage,
          sc,
          [
              'batch_size',
              'seq_len',
              'micro_batches',
              'optimizer',
              'seed',
              'num_steps',
              'packing',
              'eval_every',
              'eval_task',
              'eval_max_new_tokens',
          ],
          raw=['eval_records'],
      )
      programs += _sft_programs(s.name, b, ab, sc)
      if b['eval_records'] is not None and b['eval_every']:
        programs.append(
            _rollout_program(
                s.name,
                'eval_hook',
                ab,
                tk,
                rows=_eval_rows(128, ab),
                g=1,
                temperature=0.0,
                max_new_tokens=b['eval_max_new_tokens'],
                task=b['eval_task'],
                prompt_len=prompt_len,
                ref_len=ref_len,
            )
        )
    elif s.kind == 'rl_stage':
      b = stage_bindings(
          'rl_stage',
          stages_lib.rl_stage,
          sc,
          [
              'grpo',
              'optimizer',
              'num_steps',
              'prompt_len',
              'ref_len',
              'seed',
              'eval_every',
              'eval_max_new_tokens',
          ],
          raw=['eval_records'],
      )
      programs.append(_grpo_program(s.name, b, ab, tk, sc, prompt_len, ref_len))
      cfg = b['grpo'] or _in_scope(sc, grpo.GRPOConfig)
      if b['eval_records'] is not None and b['eval_every']:
        programs.append(
            _rollout_program(
                s.name,
                'eval_hook',
                ab,
                tk,
                rows=_eval_rows(128, ab),
                g=1,
                temperature=0.0,
                max_new_tokens=b['eval_max_new_tokens'] or cfg.max_new_tokens,
                task=cfg.task,
                prompt_len=prompt_len,
                ref_len=ref_len,
            )
        )
    elif s.kind in ('eval_stage', 'gate_stage'):
      fn = stages_lib.eval_stage if s.kind == 'eval_stage' else stages_lib.gate_stage
      names = ['task', 'num_samples', 'temperature', 'max_new_tokens', 'batch_size']
      b = stage_bindings(s.kind, fn, sc, names + (['greedy'] if s.kind == 'eval_stage' else []))
      greedy = b.get('greedy', False)
      rows = _eval_rows(b['batch_size'], ab)
      common = dict(
          max_new_tokens=b['max_new_tokens'],
          task=b['task'],
          prompt_len=prompt_len,
          ref_len=ref_len,
          rows=rows,
      )
      if greedy:
        programs.append(
            _rollout_program(s.name, 'rollout_greedy', ab, tk, g=1, temperature=0.0, **common)
        )
      if b['num_samples'] and int(b['num_samples']) > 0:
        programs.append(
            _rollout_program(
                s.name,
                'rollout_sampled',
                ab,
                tk,
                g=_sample_chunks(b['num_samples']),
                temperature=b['temperature'],
                **common,
            )
        )
    elif s.kind == 'rft_stage':
      b = stage_bindings(
          'rft_stage',
          stages_lib.rft_stage,
          sc,
          ['num_samples', 'temperature', 'max_new_tokens', 'task', 'sample_batch_size', 'train'],
      )
      # rft.collect samples on the run's mesh, as the evaluation does (rows rounded up).
      programs.append(
          _rollout_program(
              s.name,
              'collect_rollout',
              ab,
              tk,
              rows=_eval_rows(b['sample_batch_size'], ab),
              g=_sample_chunks(b['num_samples']),
              temperature=b['temperature'],
              max_new_tokens=b['max_new_tokens'],
              task=b['task'],
              prompt_len=prompt_len,
              ref_len=ref_len,
          )
      )
      if b['train']:
        sb = stage_bindings(
            'sft_stage',
            stages_lib.sft_stage,
            sc,
            ['batch_size', 'seq_len', 'micro_batches', 'optimizer', 'seed', 'num_steps', 'packing'],
        )
        programs += _sft_programs(f'{s.name}/iter_0/sft', sb, ab, sc)
    else:
      notes.append({'stage': s.name, 'kind': s.kind, 'note': 'no device program'})
  return programs, notes


def _grpo_program(
    stage: str,
    b: dict,
    ab: _Abstract,
    tk: TokenizerInfo,
    scope,
    default_prompt_len: int,
    default_ref_len: int,
) -> Program:
  from compfn.rl import grpo
  from compfn.rl.rollout import RolloutBatch

  cfg = b['grpo'] or _in_scope(scope, grpo.GRPOConfig)
  opt = b['optimizer'] or _in_scope(
      scope,
      train.OptimizerConfig,
      learning_rate=1e-6,
      schedule='constant',
      warmup_ratio=0.0,
      b2=0.999,
  )
  tx = opt.make(int(b['num_steps']))
  sampler_cfg = cfg.sampler_config(tk.stop_ids, tk.pad_id)
  plen = int(b['prompt_len'] or default_prompt_len)
  rlen = int(b['ref_len'] or default_ref_len)
  n = cfg.pool_size
  pool = RolloutBatch(
      prompts=ab.replicated((n, plen), jnp.int32),
      prompt_lens=ab.replicated((n,), jnp.int32),
      ref=ab.replicated((n, rlen), jnp.int32),
      ref_len=ab.replicated((n,), jnp.int32),
  )
  if cfg.reference == 'execute':
    # The encoded programs have static shapes (cfg.execute): encode placeholders for the shapes.
    placeholder = cfg.computed_reference.encode([('x', '')] * n, cfg.execute)
    pool = grpo.ExecutePool(
        batch=pool,
        programs=ab.replicate_tree(placeholder),
    )
  detok = ab.replicate_tree(tk.detok)
  ref_params = ab.params if cfg.kl_coef > 0 else None
  state = ab.state(tx, int(b['seed']))
  step = grpo.make_step(ab.config, tx, cfg, sampler_cfg)

  def lower():
    with parallel.use_mesh(ab.mesh, ab.rules):
      return jax.jit(step, donate_argnums=(0,)).lower(state, pool, detok, ref_params)

  rows = cfg.batch_prompts * cfg.num_generations
  return Program(
      stage,
      'grpo_step',
      lower,
      {
          'pool': n,
          'rounds': cfg.rounds,
          'round_rows': cfg.round_prompts * cfg.num_generations,
          'gen_chunks': cfg.gen_chunks,
          'train_rows': rows,
          'micro_batches': cfg.micro_batches,
          'rows_per_micro_batch': rows // cfg.micro_batches,
          'prompt_len': plen,
          'ref_len': rlen,
          'max_new_tokens': cfg.max_new_tokens,
          'reference': cfg.reference,
          'kl': cfg.kl_coef > 0,
          'dynamic_sampling': cfg.dynamic_sampling,
      },
  )


# ----------------------------------------------------------------------------- compiling


_UNITS = {
    '': 1,
    'B': 1,
    'K': 1 << 10,
    'KB': 1 << 10,
    'KIB': 1 << 10,
    'M': 1 << 20,
    'MB': 1 << 20,
    'MIB': 1 << 20,
    'G': 1 << 30,
    'GB': 1 << 30,
    'GIB': 1 << 30,
    'T': 1 << 40,
    'TB': 1 << 40,
    'TIB': 1 << 40,
}
_SIZE = r'([\d.]+)\s*([KMGT]i?B?|B)?'


def _size(num: str, unit: Optional[str]) -> int:
  return int(float(num) * _UNITS[(unit or '').upper()])


def _oom_numbers(msg: str) -> dict:
  """The TPU compiler's out-of-memory figures: {'required_bytes', 'available_bytes'} when it
  names them ('Used 120.5G of 95.74G hbm', '... (64.00G) exceeds available HBM (15.75G)')."""
  for pat in (
      rf'Used {_SIZE} of {_SIZE} hbm',
      rf'\({_SIZE}\) exceeds available HBM \({_SIZE}\)',
      rf'requires {_SIZE}.*?(?:has|available|capacity)[^\d]*{_SIZE}',
  ):
    m = re.search(pat, msg, re.IGNORECASE | re.DOTALL)
    if m:
      return {
          'required_bytes': _size(m.group(1), m.group(2)),
          'available_bytes': _size(m.group(3), m.group(4)),
      }
  return {}


def _is_oom(e: Exception) -> bool:
  s = str(e)
  return 'RESOURCE_EXHAUSTED' in s or 'Ran out of memory' in s or 'out of memory' in s.lower()


def _measure(prog: Program, cache: dict) -> dict:
  t0 = time.perf_counter()
  lowered = prog.lower()
  key = hashlib.sha1(lowered.as_text().encode()).hexdigest()
  if key in cache:  # the same program (e.g. two evaluations with equal settings)
    return dict(
        cache[key],
        same_program_as=cache[key]['_first'],
        compile_seconds=round(time.perf_counter() - t0, 2),
    )
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (only out-of-memory is a result; the rest re-raise)
    if not _is_oom(e):
      raise
    msg = ' '.join(str(e).split())
    res = {'compiled': False, 'error': msg[:2000], **_oom_numbers(msg)}
  else:
    m = compiled.memory_analysis()
    get = lambda k: int(getattr(m, k, 0) or 0) if m is not None else 0  # noqa: E731
    res = {
        'compiled': True,
        'argument_bytes': get('argument_size_in_bytes'),
        'output_bytes': get('output_size_in_bytes'),
        'alias_bytes': get('alias_size_in_bytes'),
        'temp_bytes': get('temp_size_in_bytes'),
        'generated_code_bytes': get('generated_code_size_in_bytes'),
        'peak_memory_bytes': get('peak_memory_in_bytes'),
    }
    total = res['argument_bytes'] + res['output_bytes'] - res['alias_bytes'] + res['temp_bytes']
    res['peak_bytes'] = res['peak_memory_bytes'] or total
    res['required_bytes'] = max(res['peak_bytes'], total)
  res['compile_seconds'] = round(time.perf_counter() - t0, 2)
  cache[key] = dict(res, _first=f'{prog.stage}:{prog.program}')
  return res


def format_bytes(n: Optional[float]) -> str:
  if n is None:
    return '-'
  n = float(n)
  for unit, size in (('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
    if abs(n) >= size:
      return f'{n / size:.2f} {unit}'
  return f'{int(n)} B'


def _table(rows: list[dict]) -> str:
  head = ['stage', 'program', 'argument', 'output', 'temp', 'peak', 'required', 'device', 'fits']
  body = []
  for r in rows:
    body.append(
        [
            r['stage'],
            r['program'],
            format_bytes(r.get('argument_bytes')),
            format_bytes(r.get('output_bytes')),
            format_bytes(r.get('temp_bytes')),
            format_bytes(r.get('peak_bytes')),
            format_bytes(r.get('required_bytes')),
            format_bytes(r.get('device_memory_bytes')),
            'yes'
            if r['fits']
            else f'NO (short {format_bytes(r.get("shortfall_bytes"))})'
            if r.get('shortfall_bytes') is not None
            else 'NO',
        ]
    )
  widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
  fmt = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'  # noqa
  return '\n'.join(
      [fmt(head), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [fmt(r) for r in body]
  )


@gin.configurable
def compile_report(
    workdir: str,
    topology: Optional[str] = None,
    device_memory_bytes: Optional[int] = None,
    model_preset: Optional[str] = None,
    prompt_len: Optional[int] = None,
    ref_len: int = 64,
    token_bytes: int = 16,
    allow_split_physical_axes: bool = False,
    verbose: bool = True,
) -> dict:
  """Compile every step program of the configured pipeline for ``topology`` (or the local
  devices) and write ``workdir/compile_report.json`` (module docstring). Raises
  :class:`DoesNotFit` (exit code 6) unless every program fits the device memory.

  prompt_len: evaluation prompt width and the RL default when ``rl_stage.prompt_len`` is
    unbound (None: the largest bound ``rl_stage.prompt_len``, else 256).
  ref_len: reference width in bytes when ``rl_stage.ref_len`` is unbound, and for evaluations.
  token_bytes: detokeniser table width when no tokenizer is available.
  allow_split_physical_axes: lay out a mesh that ``parallel.make_mesh`` (``jax.make_mesh``)
    refuses on this torus by splitting physical axes — what the run would NOT do (it fails);
    only to measure such a mesh's memory. Recorded in the report."""
  from compfn import pipeline as pipeline_lib
  from compfn import stages as stages_lib

  t0 = time.time()
  mesh_shape = stage_bindings('pipeline', pipeline_lib.pipeline, (), ['mesh_shape'])['mesh_shape']
  devices, topo = topology_devices(topology)
  mesh = _mesh(tuple(mesh_shape), devices, topo, allow_split_physical_axes)
  rules = parallel.logical_rules()
  config, origin, tok = model_from_gin(model_preset)
  tk = tokenizer_info(config, tok, token_bytes)
  stages = pipeline_stages()
  if prompt_len is None:
    bound = [
        stage_bindings('rl_stage', stages_lib.rl_stage, s.scope, ['prompt_len'])['prompt_len']
        for s in stages
        if s.kind == 'rl_stage'
    ]
    bound = [int(p) for p in bound if p]
    prompt_len = max(bound) if bound else 256
  ab = _Abstract(config, mesh, rules)
  programs, notes = _plan(stages, ab, tk, int(prompt_len), int(ref_len))
  mem, mem_src = device_memory(
      devices[0], device_memory_bytes, num_local=len(devices) if not topology else 1
  )
  if mem is None:
    raise errors.ConfigError(
        f'--compile_only: the memory of a {devices[0].device_kind} device '
        'is not known here; pass --device_memory_bytes'
    )
  mesh_desc = {k: int(v) for k, v in mesh.shape.items()}
  if verbose:
    print(
        f'compile_only: {len(programs)} programs of {len(stages)} stages on {topo} '
        f'({devices[0].device_kind}, {len(devices)} devices, mesh {mesh_desc}); model '
        f'{config.family} {config.num_params():,} parameters ({origin}, param '
        f'{config.param_dtype}, compute {config.dtype}, remat {config.remat}); device '
        f'memory {format_bytes(mem)} ({mem_src})',
        flush=True,
    )
  cache, rows = {}, []
  for prog in programs:
    if verbose:
      print(f'  compiling [{prog.stage}] {prog.program} {json.dumps(prog.shapes)} ...', flush=True)
    res = _measure(prog, cache)
    need = res.get('required_bytes')
    fits = bool(res.get('compiled')) and need <= mem
    short = None
    if not fits and need is not None:
      short = need - (mem if res.get('compiled') else res.get('available_bytes', mem))
    row = {
        'stage': prog.stage,
        'program': prog.program,
        'topology': topo,
        'mesh': mesh_desc,
        'device_kind': devices[0].device_kind,
        'shapes': prog.shapes,
        **res,
        'device_memory_bytes': mem,
        'device_memory_source': mem_src,
        'fits': fits,
        'shortfall_bytes': short,
    }
    rows.append(row)
    if verbose:
      print(
          f'    {"compiled" if res.get("compiled") else "rejected by the compiler"} in '
          f'{res["compile_seconds"]} s: required {format_bytes(need)} per device'
          f'{"" if fits else " — DOES NOT FIT"}',
          flush=True,
      )
  report = {
      'topology': topo,
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'num_devices': len(devices),
      'mesh': mesh_desc,
      'rules': [list(r) for r in rules],
      'allow_split_physical_axes': bool(allow_split_physical_axes),
      'device_memory_bytes': mem,
      'device_memory_source': mem_src,
      'model': {
          'origin': origin,
          'family': config.family,
          'num_params': config.num_params(),
          'param_dtype': config.param_dtype,
          'dtype': config.dtype,
          'remat': config.remat,
      },
      'tokenizer': tk.source,
      'assumptions': {
          'prompt_len': int(prompt_len),
          'ref_len': int(ref_len),
          'eval_rows': 'batch_size rounded up to the batch devices',
          'sft_packed_rows': 'batch_size',
      },
      'programs': [{k: v for k, v in r.items() if k != '_first'} for r in rows],
      'no_program': notes,
      'fits': all(r['fits'] for r in rows),
      'seconds': round(time.time() - t0, 1),
  }
  out = pathlib.Path(workdir, 'compile_report.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))
  if verbose:
    print(_table(rows), flush=True)
    print(f'wrote {out}', flush=True)
  bad = [r for r in rows if not r['fits']]
  if bad:
    parts = []
    for r in bad:
      if r.get('shortfall_bytes') is not None:
        parts.append(
            f'[{r["stage"]}] {r["program"]} needs {format_bytes(r["required_bytes"])} '
            f'per device, short by {format_bytes(r["shortfall_bytes"])}'
        )
      else:
        got = r.get('required_bytes')
        parts.append(
            f'[{r["stage"]}] {r["program"]} rejected by the compiler for memory'
            + (
                f' (needs {format_bytes(got)}, has ' f'{format_bytes(r.get("available_bytes"))})'
                if got
                else ''
            )
        )
    raise DoesNotFit(
        f'does not fit device memory ({format_bytes(mem)} per device, {mem_src}) '
        f'on {topo}, mesh {mesh_desc}: ' + '; '.join(parts) + f' (see {out})'
    )
  return report
