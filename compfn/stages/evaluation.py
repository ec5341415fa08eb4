"""The evaluation stage (per-level accuracy, pass@k, failure modes) and what the gate shares with
it: evaluations cached per stage in ``eval.json`` (:func:`evaluate_cached`) and the failure-mode
classification of kept responses (:func:`classify`)."""

from __future__ import annotations

import json
from typing import Optional, Sequence

import gin
import numpy as np

from compfn import workdir as workdir_lib
from compfn.stages import base
from compfn.stages.base import Run

__all__ = ['eval_stage', 'evaluate_cached', 'classify']


def _eval_problems(records, task: str):
  """Records -> EvalProblems, each with the reference ``task`` scores against
  (``Task.reference_of``)."""
  from compfn import eval_results
  from compfn.tasks import registry as task_registry

  reference = task_registry.get(task).reference_of
  return [
      eval_results.EvalProblem(
          prompt=r['prompt'],
          ref=reference(r),
          level=int(r['level']),
          group=r.get('group', ''),
          target=r.get('target'),
      )
      for r in records
  ]


def classify(res, sampled: bool = False):
  """Failure-mode classifications of an evaluation's kept responses (trace task): a flat
  list for greedy, a list per problem for samples."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  if any(p.target is None for p in res.problems):
    raise ValueError('failure-mode analysis needs trace records with a target')
  if not sampled:
    trunc = (
        res.greedy_truncated
        if res.greedy_truncated is not None
        else np.zeros(len(res.problems), np.int32)
    )
    return [
        failure_modes_lib.classify(t, p.target, p.ref, truncated=bool(tr))
        for p, t, tr in zip(res.problems, res.greedy_responses, trunc)
    ]
  return [
      [failure_modes_lib.classify(t, p.target, p.ref) for t in row]
      for p, row in zip(res.problems, res.sample_responses)
  ]


def _failure_summary(res, classes) -> dict:
  """{'failure_modes': {level: {category: count}}, 'shape_rate_by_level': {level: rate}} per
  group (key '' = every problem)."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  out = {}
  for g in [None] + res.groups:
    idx = [i for i, p in enumerate(res.problems) if g is None or p.group == g]
    lv = [res.problems[i].level for i in idx]
    cl = [classes[i] for i in idx]
    shape = {}
    for level in sorted(set(lv)):
      sel = [c for c, x in zip(cl, lv) if x == level]
      shape[str(level)] = sum(c.shape_ok for c in sel) / len(sel)
    out[g or 'all'] = {
        'failure_modes': failure_modes_lib.tally(cl, lv),
        'shape_rate_by_level': shape,
    }
  return out


def evaluate_cached(run: Run, name: str, records, **kw):
  from compfn import eval_results
  from compfn import evaluate

  d = run.stage_dir(name)
  path = workdir_lib.join(d, 'eval.json')
  problems = _eval_problems(records, kw.get('task', 'strings_trace'))
  settings = json.dumps({'kw': kw, 'problems': len(problems)}, sort_keys=True, default=str)
  if workdir_lib.exists(path):
    saved = workdir_lib.read_json(path)
    if saved.get('lineage') == run.lineage and saved.get('settings') == settings:
      res = eval_results.EvalResult.from_json(saved['result'])
      run.resumed.append(run.key(name))
      print(f'[{run.key(name)}] already evaluated these parameters — read {path}', flush=True)
      return res
    print(
        f'[{run.key(name)}] the parameters or the evaluation settings changed since {path} '
        'was written; re-evaluating',
        flush=True,
    )
  res = evaluate.evaluate(
      run.model_config,
      run.params,
      run.tokenizer,
      problems,
      encode=run.encode,
      mesh=run.mesh,
      rules=run.rules,
      **kw,
  )
  workdir_lib.write_json(
      path, {'lineage': run.lineage, 'settings': settings, 'result': res.to_json()}
  )
  workdir_lib.barrier(f'eval:{path}')
  return res


@gin.configurable
def eval_stage(
    run: Run,
    name: str = 'eval',
    records=gin.REQUIRED,
    task: str = 'strings_trace',
    greedy: bool = True,
    num_samples: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    ks: Optional[Sequence[int]] = None,
    batch_size: int = 64,
    seed: int = 0,
    failure_modes: bool = False,
):
  """Per-level accuracy (greedy and/or ``num_samples`` at ``temperature``) and pass@k.

  ``failure_modes`` (trace task, greedy): classify every greedy response against its reference
  trace (``compfn.tasks.strings.failure_modes``: correct / ignores composition / incomplete
  trace / incorrect composition / atomic error / format error) and report the counts and the
  trace-shape rate (the right calls, innermost first) per level; the pipeline tabulates and
  plots them for every evaluation that has them."""
  from compfn import reports

  if base.dry(run, name, records=records, task=task, greedy=greedy, num_samples=num_samples):
    return
  if failure_modes:
    from compfn.tasks import registry as task_registry

    if 'failure_modes' not in task_registry.get(task).metrics or not greedy:
      able = [n for n, t in task_registry.tasks().items() if 'failure_modes' in t.metrics]
      raise ValueError(
          f'[{name}] failure_modes needs greedy=True and a task that reports them '
          f'(Task.metrics: {", ".join(able)}), got task={task!r}, greedy={greedy}'
      )
  res = evaluate_cached(
      run,
      name,
      records,
      task=task,
      greedy=greedy,
      num_samples=num_samples,
      temperature=temperature,
      max_new_tokens=max_new_tokens,
      ks=tuple(ks) if ks else None,
      batch_size=batch_size,
      rng=seed,
      keep_responses=failure_modes,
  )
  run.results[run.key(name)] = res
  summary = res.summary()
  if failure_modes:
    summary['failure_analysis'] = _failure_summary(res, classify(res))
  run.summaries[run.key(name)] = summary
  print(reports.markdown_table({run.key(name): res}), flush=True)
