"""Experiments as gin-configured pipelines of stages (``compfn.stages``: sft / rft / rl / eval /
gate / export, and :func:`branch`, an arm of stages from the current parameters).

``compfn-train --gin_file=gin/demo.gin --workdir=DIR`` calls :func:`pipeline` (``run.job =
@pipeline``), which loads the model (:func:`compfn.stages.models.load_model`), builds the mesh,
runs each stage in order on a shared :class:`~compfn.stages.base.Run`, and writes
``DIR/results.json`` (DESIGN §4: ``accuracy_by_level`` maps "1".."8" to the final evaluation's
accuracy), ``DIR/results.md``/``.csv`` and plots (``compfn.reports``).

Every stage is resumable (``compfn.stages``), so rerunning a finished pipeline reloads
everything, rewrites the reports and prints which stages were already complete::

    run.job = @pipeline
    pipeline.stages = [@stage0/sft_stage, @stage1/sft_stage, @gate/gate_stage,
                       @stage2/rl_stage, @final/eval_stage]
    stage0/sft_stage.records = @stage0/trace_records()
    stage0/trace_records.functions = 'generic'
"""

from __future__ import annotations

import platform
import time
from typing import Callable, Optional, Sequence

import gin
import jax

from compfn import parallel, reports
from compfn.stages import models  # importing compfn.stages registers the stages with gin
from compfn.stages.base import Run

__all__ = ['pipeline', 'branch', 'arm']


@gin.configurable
def branch(run: Run, name: str = gin.REQUIRED, stages: Sequence[Callable] = gin.REQUIRED):
  """Run ``stages`` from the current parameters under ``<name>/``, then restore the parameters
  (an experiment arm, e.g. the RL arm and its control in ``gin/repro_cpu.gin``)."""
  saved, prefix, lineage = run.params, run.prefix, run.lineage
  run.prefix = f'{prefix}{name}/'
  try:
    for stage in stages:
      stage(run)
  finally:
    run.params, run.prefix, run.lineage = saved, prefix, lineage


@gin.configurable
def arm(name: str = gin.REQUIRED, arms: dict = gin.REQUIRED) -> list:
  """The stages of experiment arm ``name`` out of ``arms`` (name -> list of stages): one gin file
  holds every arm of an experiment and the command line picks one, e.g.
  ``gin/repro_cpu.gin`` with ``--gin_param="ARM='rl_L2'"``::

      pipeline.stages = @arm()
      arm.name = %ARM
      arm.arms = {'rl_L2': [@rl_L2/rl_stage, @after/eval_stage], 'base': [@after/eval_stage]}
  """
  if name not in arms:
    raise ValueError(f"arm {name!r} is not one of this experiment's arms: {sorted(arms)}")
  stages = list(arms[name])
  if not all(callable(s) for s in stages):
    raise ValueError(f'arm {name!r}: every entry must be a stage (@name/stage), got {stages}')
  return stages


@gin.configurable
def pipeline(
    workdir: str,
    stages: Sequence[Callable] = gin.REQUIRED,
    mesh_shape=(-1, 1, 1),
    final_eval: Optional[str] = None,
    seed: int = 0,
    peak_flops: float = 290e9,
    report_title: str = 'compfn',
    dry_run: bool = False,
) -> dict:
  """Load the model, run ``stages`` in order, write results.json / results.md / plots.

  final_eval: the eval stage whose accuracy is results.json's ``accuracy_by_level`` (default:
  the last eval stage that ran). peak_flops: per-device peak for MFU (the 2-core CPU measured
  ~290 GFLOP/s f32; set it in the hardware gin files). dry_run: load the model and resolve
  every stage's configuration (gin bindings, optimizer, GRPO config) without touching data or
  training — ``tests/test_gin_configs.py`` dry-runs every gin file with the model shrunk."""
  t0 = time.time()
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(tuple(mesh_shape))
  rules = parallel.logical_rules()
  config, params, tok, encode = models.load_model()
  params = jax.device_put(params, parallel.param_shardings(config, mesh, rules))
  run = Run(
      workdir=workdir,
      model_config=config,
      params=params,
      tokenizer=tok,
      encode=encode,
      mesh=mesh,
      rules=rules,
      seed=seed,
      peak_flops=peak_flops,
      dry_run=dry_run,
      lineage=[models.model_origin()],
  )
  print(
      f'model: {config.family}, {run.num_params:,} parameters; mesh {dict(mesh.shape)}; '
      f'{len(stages)} stages',
      flush=True,
  )
  for stage in stages:
    stage(run)
  if dry_run:
    return {'dry_run': True, 'stages': run.summaries}
  evals = {k: v for k, v in run.results.items() if run.summaries.get(k, {}).get('passed') is None}
  final = final_eval or (list(evals)[-1] if evals else None)
  if final is not None and final not in run.results:
    raise ValueError(
        f'pipeline.final_eval={final!r} is not an evaluation that ran; have '
        f'{sorted(run.results)}'
    )
  out = {
      'accuracy_by_level': {},
      'final_eval': final,
      'machine': {
          'platform': platform.platform(),
          'processor': platform.processor(),
          'devices': [str(d) for d in jax.devices()],
      },
      'num_params': run.num_params,
      'seconds': round(time.time() - t0, 1),
      'stages': run.summaries,
      'already_complete': run.resumed,
  }
  if final is not None:
    res = run.results[final]
    out['accuracy_by_level'] = res.accuracy_by_level(
        'greedy' if res.greedy_acc is not None else 'sampled'
    )
  if jax.process_index() == 0:
    path = reports.write_results(out, evals, run.summaries, workdir, title=report_title)
    print(f'wrote {path}: accuracy_by_level = {out["accuracy_by_level"]}', flush=True)
    if run.resumed:
      print(
          f'note: {len(run.resumed)} stage(s) were already complete in {workdir} and were '
          f'loaded, not rerun: {", ".join(run.resumed)}',
          flush=True,
      )
  return out
