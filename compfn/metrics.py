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
