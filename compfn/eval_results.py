"""The result model of an evaluation: :class:`EvalProblem` (one problem) and :class:`EvalResult`
(per-problem raw results, their per-level summaries and a JSON round trip).

    res.accuracy_by_level('greedy' | 'sampled', group=None)  -> {"1": acc, ...}
    res.pass_at_k_by_level(group=None)                       -> {"1": {1: p, 2: p, ...}, ...}
    res.summary()                                            -> JSON-able dict
    res.to_json() / EvalResult.from_json(text_or_dict)       (round trip)

``compfn.evaluate.evaluate`` produces it; ``compfn.reports`` renders it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import numpy as np

from compfn import metrics

__all__ = ['EvalProblem', 'EvalResult']


@dataclasses.dataclass(frozen=True)
class EvalProblem:
  prompt: str  # text given to the model (formatted; ``encode`` turns it into ids)
  ref: str  # reference answer; for task='countdown' '{"numbers": [..], "target": N}'
  level: int
  group: str = ''  # e.g. 'heldout' / 'train'; reports split by it when non-empty
  target: Optional[str] = None  # the reference trace (trace task), for failure-mode analysis


def _arr(x, dtype):
  return None if x is None else np.asarray(x, dtype)


def _lvl(level) -> str:
  return str(int(level))


@dataclasses.dataclass
class EvalResult:
  """Per-problem raw results and their summaries (JSON round-trippable)."""

  problems: list
  greedy_acc: Optional[np.ndarray]  # int[P] 0/1, None when greedy was off
  sample_correct: Optional[np.ndarray]  # int[P] correct samples out of num_samples
  num_samples: int
  ks: tuple
  examples: list  # a few decoded responses per level
  task: str = ''
  greedy_length: Optional[np.ndarray] = None  # int[P] generated tokens (incl. stop)
  greedy_truncated: Optional[np.ndarray] = None  # int[P] 0/1 hit max_new_tokens
  sample_length: Optional[np.ndarray] = None  # float[P] mean generated tokens
  sample_truncated: Optional[np.ndarray] = None  # int[P] truncated samples
  config: dict = dataclasses.field(default_factory=dict)
  greedy_responses: Optional[list] = None  # str[P] decoded greedy responses (keep_responses)
  sample_responses: Optional[list] = None  # str[P][num_samples] decoded samples (likewise)

  def __post_init__(self):
    self.problems = [p if isinstance(p, EvalProblem) else EvalProblem(**p) for p in self.problems]
    self.greedy_acc = _arr(self.greedy_acc, np.int32)
    self.sample_correct = _arr(self.sample_correct, np.int32)
    self.greedy_length = _arr(self.greedy_length, np.int32)
    self.greedy_truncated = _arr(self.greedy_truncated, np.int32)
    self.sample_length = _arr(self.sample_length, np.float64)
    self.sample_truncated = _arr(self.sample_truncated, np.int32)
    self.num_samples = int(self.num_samples)
    self.ks = tuple(int(k) for k in self.ks)

  # -- selection --------------------------------------------------------------------------
  @property
  def levels(self) -> np.ndarray:
    return np.array([p.level for p in self.problems], np.int64)

  @property
  def groups(self) -> list[str]:
    """The non-empty groups, in first-seen order."""
    return list(dict.fromkeys(p.group for p in self.problems if p.group))

  def mask(self, group: Optional[str]) -> np.ndarray:
    """bool[P]: the problems of ``group`` (None: every problem)."""
    if group is None:
      return np.ones(len(self.problems), bool)
    return np.array([p.group == group for p in self.problems], bool)

  def _by_level(self, values: np.ndarray, group: Optional[str]) -> dict[str, float]:
    m = self.mask(group)
    return metrics.accuracy_by_level(self.levels[m], np.asarray(values, np.float64)[m])

  # -- metrics ----------------------------------------------------------------------------
  def counts_by_level(self, group: Optional[str] = None) -> dict[str, int]:
    lv, n = np.unique(self.levels[self.mask(group)], return_counts=True)
    return {_lvl(a): int(b) for a, b in zip(lv, n)}

  def _per_problem(self, kind: str) -> np.ndarray:
    if kind == 'greedy':
      if self.greedy_acc is None:
        raise ValueError('no greedy results (evaluate(..., greedy=False))')
      return self.greedy_acc.astype(np.float64)
    if kind == 'sampled':
      if self.sample_correct is None:
        raise ValueError('no sampled results (evaluate(..., num_samples=0))')
      return self.sample_correct / float(self.num_samples)
    raise ValueError(f"kind must be 'greedy' or 'sampled', got {kind!r}")

  def accuracy_by_level(
      self, kind: str = 'greedy', group: Optional[str] = None
  ) -> dict[str, float]:
    """Mean accuracy per level ("1".."8"): greedy = the greedy bit; sampled = the fraction
    of correct samples (= pass@1). ``group`` restricts to problems of that group."""
    return self._by_level(self._per_problem(kind), group)

  def interval_by_level(self, group: Optional[str] = None) -> dict[str, tuple[float, float]]:
    """95% Wilson interval of the greedy accuracy per level (``compfn.metrics``)."""
    from compfn.metrics import wilson_interval

    if self.greedy_acc is None:
      return {}
    m = self.mask(group)
    lv, acc = self.levels[m], self.greedy_acc[m]
    return {
        str(int(x)): wilson_interval(int(acc[lv == x].sum()), int((lv == x).sum()))
        for x in sorted(set(lv.tolist()))
    }

  def accuracy(self, kind: str = 'greedy', group: Optional[str] = None) -> float:
    m = self.mask(group)
    return float(np.mean(self._per_problem(kind)[m])) if m.any() else float('nan')

  def pass_at_k_by_level(self, group: Optional[str] = None) -> dict[str, dict[int, float]]:
    """Unbiased pass@k (compfn.metrics.pass_at_k, n = num_samples) averaged per level."""
    if self.sample_correct is None:
      return {}
    m = self.mask(group)
    out = {}
    for lv in sorted(set(self.levels[m].tolist())):
      sel = m & (self.levels == lv)
      out[_lvl(lv)] = metrics.mean_pass_at_k(
          self.sample_correct[sel].tolist(), self.num_samples, self.ks
      )
    return out

  def pass_at_k(self, group: Optional[str] = None) -> dict[int, float]:
    m = self.mask(group)
    if self.sample_correct is None or not m.any():
      return {}
    return metrics.mean_pass_at_k(self.sample_correct[m].tolist(), self.num_samples, self.ks)

  # -- summary ----------------------------------------------------------------------------
  def _summary_for(self, group: Optional[str]) -> dict:
    m = self.mask(group)
    out: dict[str, Any] = {
        'num_problems': int(m.sum()),
        'counts_by_level': self.counts_by_level(group),
    }
    kinds = []
    if self.greedy_acc is not None:
      kinds.append('greedy')
      out['greedy_accuracy_by_level'] = self.accuracy_by_level('greedy', group)
      out['greedy_accuracy'] = self.accuracy('greedy', group)
    if self.sample_correct is not None:
      kinds.append('sampled')
      out['sampled_accuracy_by_level'] = self.accuracy_by_level('sampled', group)
      out['sampled_accuracy'] = self.accuracy('sampled', group)
      out['pass_at_k_by_level'] = {
          lv: {str(k): v for k, v in d.items()} for lv, d in self.pass_at_k_by_level(group).items()
      }
      out['pass_at_k'] = {str(k): v for k, v in self.pass_at_k(group).items()}
    if kinds:
      out['accuracy_kind'] = kinds[0]
      out['accuracy_by_level'] = out[f'{kinds[0]}_accuracy_by_level']
      out['accuracy'] = out[f'{kinds[0]}_accuracy']
    return out

  def summary(self) -> dict:
    """JSON-able summary: ``accuracy_by_level`` (greedy if run, else sampled),
    ``greedy_/sampled_accuracy_by_level``, ``pass_at_k_by_level`` (k as strings), counts,
    ``groups`` (the same per non-empty group), response-length stats and truncation rates."""
    out = {'task': self.task, 'num_samples': self.num_samples, 'ks': list(self.ks)}
    out.update(self._summary_for(None))
    out['groups'] = {g: self._summary_for(g) for g in self.groups}
    lengths, trunc = {}, {}
    if self.greedy_length is not None:
      x = self.greedy_length.astype(np.float64)
      lengths['greedy'] = _stats(x)
      trunc['greedy'] = float(np.mean(self.greedy_truncated)) if x.size else 0.0
    if self.sample_length is not None:
      lengths['sampled'] = _stats(self.sample_length)
      trunc['sampled'] = float(np.sum(self.sample_truncated)) / max(
          1, self.sample_truncated.size * self.num_samples
      )
    out['response_length'] = lengths
    out['truncation_rate'] = trunc
    out['config'] = dict(self.config)
    return out

  # -- JSON -------------------------------------------------------------------------------
  def to_dict(self) -> dict:
    lst = lambda x: None if x is None else x.tolist()  # noqa: E731
    return {
        'problems': [dataclasses.asdict(p) for p in self.problems],
        'greedy_acc': lst(self.greedy_acc),
        'sample_correct': lst(self.sample_correct),
        'num_samples': self.num_samples,
        'ks': list(self.ks),
        'examples': list(self.examples),
        'task': self.task,
        'greedy_length': lst(self.greedy_length),
        'greedy_truncated': lst(self.greedy_truncated),
        'sample_length': lst(self.sample_length),
        'sample_truncated': lst(self.sample_truncated),
        'config': dict(self.config),
        'greedy_responses': self.greedy_responses,
        'sample_responses': self.sample_responses,
    }

  def to_json(self, indent: Optional[int] = None) -> str:
    return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

  @classmethod
  def from_json(cls, data) -> 'EvalResult':
    """From :meth:`to_json`'s text or :meth:`to_dict`'s dict."""
    if isinstance(data, (str, bytes)):
      data = json.loads(data)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _stats(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  if not x.size:
    return {'mean': 0.0, 'median': 0.0, 'max': 0.0}
  return {'mean': float(x.mean()), 'median': float(np.median(x)), 'max': float(x.max())}
