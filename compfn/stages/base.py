"""What every stage shares: :class:`Run` (the model, tokenizer, mesh, current parameters and
results so far) and the helpers of the stage contract: :func:`dry` (a dry run records the
stage's configuration instead of running it) and :func:`digest` (a stage's data in its
fingerprint)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np

from compfn import workdir as workdir_lib
from compfn.model.config import ModelConfig

__all__ = ['Run', 'dry', 'digest']


@dataclasses.dataclass
class Run:
  """What the stages share: the model, tokenizer, mesh, current params and results so far."""

  workdir: str
  model_config: ModelConfig
  params: Any
  tokenizer: Any
  encode: Callable[[str], list]
  mesh: Any
  rules: Any
  seed: int = 0
  peak_flops: float = 290e9
  results: dict = dataclasses.field(default_factory=dict)  # eval/gate name -> EvalResult
  summaries: dict = dataclasses.field(default_factory=dict)  # stage name -> JSON-able summary
  resumed: list = dataclasses.field(default_factory=list)  # stages found already complete
  prefix: str = ''  # set inside a branch
  dry_run: bool = False  # configure every stage, run none
  lineage: list = dataclasses.field(default_factory=list)  # what produced the current params

  def stage_dir(self, name: str) -> str:
    return workdir_lib.makedirs(workdir_lib.join(self.workdir, self.prefix + name))

  def key(self, name: str) -> str:
    return self.prefix + name

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))


def digest(items) -> str:
  """A stable hash of a stage's data (records, encoded examples): part of its fingerprint."""
  import hashlib

  h = hashlib.sha256()
  for x in items:
    h.update(json.dumps(x, sort_keys=True, default=repr).encode('utf-8'))
  return h.hexdigest()[:16]


def dry(run: Run, name: str, **info) -> bool:
  """In a dry run, record the stage's resolved configuration instead of running it."""
  if run.dry_run:
    run.summaries[run.key(name)] = {'dry_run': True, **{k: repr(v) for k, v in info.items()}}
  return run.dry_run
