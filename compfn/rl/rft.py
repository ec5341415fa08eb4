"""Rejection-sampling data collection: the paper's stage 1 and the iterative RFT baseline.

Public API::

    problems = [RFTProblem(sample_prompt, train_prompt, ref, level), ...]
    records, stats = collect(model_config, params, tokenizer, problems, num_samples=8,
                             task='strings_trace', temperature=1.0, max_new_tokens=128,
                             drop_all_correct=True, max_per_prompt=None, batch_size=32,
                             encode=None, rng=0, progress=True)
    write_records(records, 'rft.jsonl'); records = read_records('rft.jsonl')

Each problem is sampled ``num_samples`` times from ``sample_prompt`` (e.g. with the function
definitions visible) through the host rollout runner that evaluation uses too (:func:`compfn.rl.host_rollouts.sample_and_score`)
(sample -> detokenise -> score in one jit; Countdown is scored by its verifier). Correct samples
(``acc == 1``) become SFT records keyed by ``train_prompt`` (e.g. definitions hidden)::

    {'prompt': train_prompt, 'target': decoded response without the stop token,
     'target_ids': [sampled ids without the stop token], 'level': int}

``drop_all_correct`` (the paper's filter) drops problems whose samples are all correct: they
teach nothing new. ``max_per_prompt`` keeps at most that many correct samples per problem (the
first ones, in sample order). Records come in problem order, then sample order.

``stats``: ``problems``, ``samples`` (problems * num_samples), ``correct`` (correct samples),
``kept_records``, ``dropped_all_correct`` / ``dropped_none_correct`` (problems), ``accuracy``
(correct / samples).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np

from compfn.rl import host_rollouts as runner

__all__ = ['RFTProblem', 'collect', 'write_records', 'read_records']


@dataclasses.dataclass(frozen=True)
class RFTProblem:
  sample_prompt: str  # prompt used for sampling (e.g. with function definitions visible)
  train_prompt: str  # prompt stored in the SFT record (e.g. definitions hidden)
  ref: str
  level: int


def collect(
    model_config,
    params,
    tokenizer,
    problems: Sequence[RFTProblem],
    *,
    num_samples: int,
    task: str = 'strings_trace',
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    drop_all_correct: bool = True,
    max_per_prompt: Optional[int] = None,
    batch_size: int = 32,
    encode: Optional[Callable[[str], list]] = None,
    rng=0,
    progress: bool = True,
    mesh=None,
    rules=None,
    sample_chunk: int = 64,
    _rollout: Optional[Callable] = None,
) -> tuple[list[dict], dict]:
  """Sample, keep the correct responses, filter; see the module docstring."""
  problems = list(problems)
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  if max_per_prompt is not None and max_per_prompt < 1:
    raise ValueError(f'max_per_prompt must be >= 1 or None, got {max_per_prompt}')
  prompt_ids = runner.encode_prompts(tokenizer, [p.sample_prompt for p in problems], encode)
  run = runner.sample_and_score(
      model_config,
      params,
      tokenizer,
      prompt_ids,
      [p.ref for p in problems],
      task=task,
      num_samples=int(num_samples),
      temperature=temperature,
      max_new_tokens=max_new_tokens,
      batch_size=batch_size,
      rng=rng,
      mesh=mesh,
      rules=rules,
      progress=progress,
      keep=lambda p, s, a: a == 1,
      sample_chunk=sample_chunk,
      desc='rft collect',
      rollout_impl=_rollout,
  )
  correct = run.acc.sum(axis=1)
  records = []
  dropped_all = dropped_none = 0
  for i, p in enumerate(problems):
    c = int(correct[i])
    if c == 0:
      dropped_none += 1
      continue
    if drop_all_correct and c == num_samples:
      dropped_all += 1
      continue
    kept = 0
    for s in np.flatnonzero(run.acc[i] == 1):
      if max_per_prompt is not None and kept >= max_per_prompt:
        break
      ids = runner.strip_stop(tokenizer, run.kept[(i, int(s))])
      records.append(
          {
              'prompt': p.train_prompt,
              'target': runner.decode_response(tokenizer, ids),
              'target_ids': ids,
              'level': int(p.level),
          }
      )
      kept += 1
  samples = len(problems) * int(num_samples)
  stats = {
      'problems': len(problems),
      'samples': samples,
      'correct': int(correct.sum()),
      'kept_records': len(records),
      'dropped_all_correct': dropped_all,
      'dropped_none_correct': dropped_none,
      'accuracy': float(correct.sum()) / samples if samples else 0.0,
  }
  return records, stats


def write_records(records: Sequence[dict], path) -> int:
  """Write the records as JSONL (atomic; ``.gz`` -> gzip); returns the count."""
  from compfn.data.pipeline import write_jsonl

  return write_jsonl([dict(r) for r in records], os.fspath(path))


def read_records(path) -> list[dict]:
  """The records of :func:`write_records`."""
  from compfn.data.pipeline import read_jsonl

  return read_jsonl(path)
