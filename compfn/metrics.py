"""Evaluation metrics as pure functions: the unbiased pass@k estimator and per-level accuracy.

pass@k (Chen et al. 2021): with n samples of which c are correct, the probability that at least
one of k samples drawn without replacement is correct, ``1 - C(n-c, k) / C(n, k)``, computed as
``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (stable for n up to thousands).

    >>> pass_at_k(n=4, c=1, k=2)      # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
"""

from __future__ import annotations

import collections
from typing import Iterable, Mapping

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k for one problem with n samples, c correct (k <= n)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f'need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}')
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct_counts: Iterable[int], n: int, ks: Iterable[int]) -> dict[int, float]:
  """Mean pass@k over problems, for every k in ks (each k <= n)."""
  counts = list(correct_counts)
  return {k: float(np.mean([pass_at_k(n, c, k) for c in counts])) for k in ks}


def accuracy_by_level(levels: Iterable[int], accs: Iterable[float]) -> dict[str, float]:
  """Mean accuracy per level, keyed by the level as a string ("1".."8"), as in results.json."""
  tot: Mapping[int, list] = collections.defaultdict(list)
  for lv, a in zip(levels, accs):
    tot[int(lv)].append(float(a))
  return {str(lv): float(np.mean(v)) for lv, v in sorted(tot.items())}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """The Wilson score interval (95% by default) for a binomial proportion ``successes / n``.

  Better than the normal approximation at small n and at proportions near 0 or 1, where
  per-level accuracies of small models live.

      >>> [round(x, 3) for x in wilson_interval(13, 128)]
      [0.06, 0.166]
  """
  if n <= 0:
    return (float('nan'), float('nan'))
  if not 0 <= successes <= n:
    raise ValueError(f'need 0 <= successes <= n, got {successes} of {n}')
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def difference_interval(
    s1: int, n1: int, s2: int, n2: int, z: float = 1.959964
) -> tuple[float, float]:
  """95% interval for ``s2/n2 - s1/n1`` (Newcombe's hybrid score method, from the two Wilson
  intervals); an interval above 0 means the second proportion is higher beyond noise.

      >>> [round(x, 3) for x in difference_interval(20, 128, 40, 128)]
      [0.053, 0.256]
  """
  p1, p2 = s1 / n1, s2 / n2
  l1, u1 = wilson_interval(s1, n1, z)
  l2, u2 = wilson_interval(s2, n2, z)
  d = p2 - p1
  return (
      float(d - np.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)),
      float(d + np.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)),
  )
