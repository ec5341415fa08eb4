"""The pre-RL gate: pass@k and the fraction of mixed groups on sampled responses, recorded in
results.json or, when enforced, a stop (:class:`GateError`)."""

from __future__ import annotations

import gin
import numpy as np

from compfn import errors
from compfn.stages import base, evaluation
from compfn.stages.base import Run

__all__ = ['gate_stage', 'GateError']


class GateError(errors.GateNotMet):
  """The pre-RL gate (level-2 pass@k / mixed-reward fraction) was not met and is enforced."""


@gin.configurable
def gate_stage(
    run: Run,
    name: str = 'gate',
    records=gin.REQUIRED,
    task: str = 'strings_trace',
    num_samples: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    min_pass_at_k: float = 0.1,
    min_mixed_frac: float = 0.1,
    enforce: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    require_shape: bool = False,
):
  """The pre-RL gate (MINIATURE.md): pass@``num_samples`` and the fraction of problems whose
  samples are mixed (some right, some wrong: the groups GRPO learns from). ``enforce`` stops the
  pipeline with :class:`GateError` when either is below its threshold; otherwise the verdict is
  recorded in results.json.

  ``require_shape`` (trace task) counts a sample as correct only if its trace also has the right
  shape (the chain's calls, innermost first): a shortcut that lands on the answer without
  composing does not open the gate. Both counts are recorded."""
  if base.dry(run, name, records=records, task=task, num_samples=num_samples, enforce=enforce):
    return
  res = evaluation.evaluate_cached(
      run,
      name,
      records,
      task=task,
      greedy=False,
      num_samples=num_samples,
      temperature=temperature,
      max_new_tokens=max_new_tokens,
      ks=(1, num_samples),
      batch_size=batch_size,
      rng=seed,
      keep_responses=require_shape,
  )
  c = np.asarray(res.sample_correct)
  extra = {}
  if require_shape:
    classes = evaluation.classify(res, sampled=True)
    shaped = np.array([sum(x.category == 'correct' and x.shape_ok for x in row) for row in classes])
    extra = {
        'pass_at_k_any_shape': float(np.mean(c > 0)),
        'shape_rate': float(np.mean([x.shape_ok for row in classes for x in row])),
        'require_shape': True,
    }
    c = shaped
  pass_k = float(np.mean(c > 0))
  mixed = float(np.mean((c > 0) & (c < num_samples)))
  ok = pass_k >= min_pass_at_k and mixed >= min_mixed_frac
  verdict = {
      'pass_at_k': pass_k,
      'k': num_samples,
      'mixed_frac': mixed,
      'sample_accuracy': float(c.sum() / (num_samples * len(c))),
      'min_pass_at_k': min_pass_at_k,
      'min_mixed_frac': min_mixed_frac,
      'passed': ok,
      'enforced': enforce,
      'problems': int(len(c)),
      **extra,
  }
  run.results[run.key(name)] = res
  run.summaries[run.key(name)] = verdict
  print(
      f'[{run.key(name)}] pass@{num_samples} = {pass_k:.3f} (need {min_pass_at_k}), mixed '
      f'groups {mixed:.3f} (need {min_mixed_frac}): {"PASSED" if ok else "NOT MET"}',
      flush=True,
  )
  if enforce and not ok:
    raise GateError(
        f'[{run.key(name)}] gate not met: pass@{num_samples}={pass_k:.3f} '
        f'(min {min_pass_at_k}), mixed fraction {mixed:.3f} (min {min_mixed_frac}); '
        'RL would get (almost) no signal — train stage 0/1 longer'
    )
