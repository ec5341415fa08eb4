"""What the training stages (SFT, RL) share: the sharded initial :class:`~compfn.train.TrainState`,
the end of a stage (:func:`finish`: summary, resumption note, lineage), the MFU metrics hook and
the periodic greedy evaluation hook."""

from __future__ import annotations

import time

import jax

from compfn import train
from compfn.stages import models
from compfn.stages.base import Run

__all__ = ['train_state', 'finish', 'mfu_hook', 'eval_hook']


def train_state(run: Run, tx, seed: int) -> train.TrainState:
  state = train.TrainState.create(run.params, tx, seed)
  return train.shard_state(state, run.model_config, run.mesh, run.rules)


def finish(
    run: Run, name: str, trainer: train.Trainer, state, start_step: int, t0: float, extra: dict
):
  done = trainer.finished() or {}
  rows = train.read_metrics(trainer.directory)
  last = rows[-1] if rows else {}
  summary = {
      'steps': int(state.step),
      'resumed_from': start_step,
      'seconds_this_run': round(time.time() - t0, 1),
      'last_metrics': last,
      **extra,
  }
  if start_step >= trainer.num_steps and done:
    run.resumed.append(run.key(name))
    print(
        f'[{run.key(name)}] already finished at step {done.get("step")} — loaded its final '
        f'checkpoint from {trainer.checkpointer.directory} (delete {trainer.directory} to '
        'retrain it)',
        flush=True,
    )
  run.summaries[run.key(name)] = summary
  run.params = state.params
  tag = f'#{trainer.fingerprint}' if trainer.fingerprint else ''
  run.lineage = run.lineage + [f'{run.key(name)}@{int(state.step)}{tag}']
  trainer.close()


def mfu_hook(run: Run, tokens_key: str, factor: float, gen: bool = False):
  fpt = models.flops_per_token(run.model_config, run.num_params)

  def on_metrics(step, s):
    dt = max(s.get('time/step_s', 0.0), 1e-9)
    if gen:
      flops = fpt * s.get('generated_tokens', 0.0) + 3 * fpt * s.get('train_tokens', 0.0)
      s['tokens_per_s'] = (s.get('generated_tokens', 0.0)) / dt
    else:
      flops = factor * fpt * s.get(tokens_key, 0.0)
      s['tokens_per_s'] = s.get(tokens_key, 0.0) / dt
    s['mfu'] = flops / dt / (run.peak_flops * max(jax.device_count(), 1))
    return s

  return on_metrics


def eval_hook(run: Run, records, task: str, max_new_tokens: int):
  from compfn import eval_results
  from compfn import evaluate
  from compfn.tasks import registry as task_registry

  reference = task_registry.get(task).reference_of
  problems = [
      eval_results.EvalProblem(
          prompt=r['prompt'], ref=reference(r), level=int(r['level']), group=r.get('group', '')
      )
      for r in records
  ]

  def fn(step, state):
    res = evaluate.evaluate(
        run.model_config,
        state.params,
        run.tokenizer,
        problems,
        task=task,
        max_new_tokens=max_new_tokens,
        greedy=True,
        num_samples=0,
        batch_size=min(128, len(problems)),
        encode=run.encode,
        rng=step,
        mesh=run.mesh,
        rules=run.rules,
        progress=False,
    )
    out = {}
    for group in sorted({p.group for p in problems}):
      for lv, acc in res.accuracy_by_level('greedy', group=group or None).items():
        out[f'eval/{group or "all"}/L{lv}'] = acc
    return out

  return fn
