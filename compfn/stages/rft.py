"""The RFT stage: rejection-sampling fine-tuning (collect correct samples with
``compfn.rl.rft``, then fine-tune on them with :func:`~compfn.stages.sft.sft_stage`)."""

from __future__ import annotations

import json
from typing import Optional

import gin

from compfn import workdir as workdir_lib
from compfn.stages import base
from compfn.stages.base import Run
from compfn.stages.sft import sft_stage

__all__ = ['rft_stage']


@gin.configurable
def rft_stage(
    run: Run,
    name: str = 'rft',
    records=gin.REQUIRED,
    iterations: int = 1,
    problems_per_iteration: Optional[int] = None,
    num_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    task: str = 'strings_trace',
    drop_all_correct: bool = True,
    max_per_prompt: Optional[int] = None,
    sample_batch_size: int = 32,
    seed: int = 0,
    train: bool = True,
):
  """Rejection-sampling fine-tuning (PAPER §2.2; iterative for the stage-2 baseline, §2.3).

  Each iteration samples ``num_samples`` responses per problem with the current model (prompt:
  ``sample_prompt``, e.g. definitions visible), keeps the correct ones, drops problems the
  model always solves, then runs :func:`sft_stage` (bindings of this gin scope) on
  ``train_prompt`` + the kept responses. ``problems_per_iteration`` takes consecutive disjoint
  slices (the paper's 8k problems per iteration). ``train=False`` only collects (one
  iteration): the records stay in ``<name>/iter_0/rft_records.jsonl`` for a later stage, e.g.
  a mixture of two tasks' collections (``gin/experiments/countdown_multibase.gin``)."""
  from compfn.rl import rft
  from compfn.tasks import registry as task_registry

  if not train and iterations != 1:
    raise ValueError(f'[{name}] rft_stage(train=False) collects once; got iterations={iterations}')
  if base.dry(
      run, name, records=records, iterations=iterations, num_samples=num_samples, train=train
  ):
    if train:
      sft_stage(run, name=f'{name}/iter_0/sft', records=records)
    return
  records = list(records)
  for k in range(iterations):
    d = run.stage_dir(f'{name}/iter_{k}')
    path = workdir_lib.join(d, 'rft_records.jsonl')
    stats_path = workdir_lib.join(d, 'rft_stats.json')
    if problems_per_iteration:
      lo = (k * problems_per_iteration) % len(records)
      chunk = [records[(lo + i) % len(records)] for i in range(problems_per_iteration)]
    else:
      chunk = records
    if workdir_lib.exists(stats_path):
      kept = rft.read_records(path)
      stats = workdir_lib.read_json(stats_path)
      print(f'[{run.key(name)}/iter_{k}] reusing {len(kept):,} collected records', flush=True)
    else:
      reference = task_registry.get(task).reference_of
      problems = [
          rft.RFTProblem(
              sample_prompt=r.get('sample_prompt', r['prompt']),
              train_prompt=r.get('train_prompt', r['prompt']),
              ref=reference(r),
              level=int(r['level']),
          )
          for r in chunk
      ]
      kept, stats = rft.collect(
          run.model_config,
          run.params,
          run.tokenizer,
          problems,
          num_samples=num_samples,
          task=task,
          temperature=temperature,
          max_new_tokens=max_new_tokens,
          drop_all_correct=drop_all_correct,
          max_per_prompt=max_per_prompt,
          batch_size=sample_batch_size,
          encode=run.encode,
          rng=seed + k,
          mesh=run.mesh,
          rules=run.rules,
      )
      if workdir_lib.is_lead():
        rft.write_records(kept, path)
      workdir_lib.write_json(
          stats_path, stats, indent=1
      )  # after the records: it marks them complete
      workdir_lib.barrier(f'rft:{stats_path}')
    print(f'[{run.key(name)}/iter_{k}] RFT collection: {json.dumps(stats)}', flush=True)
    run.summaries[run.key(f'{name}/iter_{k}/collect')] = stats
    if not train:
      return
    if not kept:
      raise ValueError(
          f'[{name}/iter_{k}] no correct responses to fine-tune on '
          f'({stats}); the model cannot bootstrap from this data'
      )
    sft_stage(run, name=f'{name}/iter_{k}/sft', records=kept)
