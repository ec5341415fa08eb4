"""Dataset statistics (the measurements of PAPER.md §1.3), e.g. to compare paper and clean sets.

    >>> from compfn.tasks.strings import generate, stats
    >>> s = stats.summarize(generate(1, 'train', 1, 1, 50_000))
    >>> round(s['input_dependent'], 3), round(s['no_function'], 3)     # PAPER.md: 23.1%, 14.1%
    (0.231, 0.141)
"""

from __future__ import annotations

import collections
import statistics

from compfn.tasks.strings import program


def summarize(problems) -> dict:
  """Counts per level, share of input-dependent and function-free problems, output length
  (median/max) per level, calls per problem per level, function frequencies."""
  by_level = collections.defaultdict(list)
  for p in problems:
    by_level[p.level].append(p)
  freq = collections.Counter(f for p in problems for f in p.functions)
  out = {
      'num': len(problems),
      'input_dependent': sum(p.depends_on_input for p in problems) / max(1, len(problems)),
      'no_function': sum(not p.functions for p in problems) / max(1, len(problems)),
      'levels': {},
      'function_frequency': dict(sorted(freq.items(), key=lambda kv: int(kv[0].split('_')[1]))),
  }
  for lv, ps in sorted(by_level.items()):
    lens = [len(p.output) for p in ps]
    calls = [program.count_calls(p.program) for p in ps]
    out['levels'][str(lv)] = {
        'num': len(ps),
        'input_dependent': sum(p.depends_on_input for p in ps) / len(ps),
        'output_len_median': statistics.median(lens),
        'output_len_max': max(lens),
        'calls_median': statistics.median(calls),
        'calls_min': min(calls),
        'calls_max': max(calls),
    }
  return out
