"""The string-function task: the paper's 25 functions, generator, prompts and scorers.

Public contracts (DESIGN.md §4): :func:`generate`, :func:`run_code`, :func:`score`, and
:mod:`compfn.tasks.strings.verifier` (``execute_batch``, ``score_batch``).
"""

from compfn.tasks.strings.generator import (
    CleanOptions,
    Problem,
    TraceProblem,
    generate,
    generate_trace,
    iter_generate,
)
from compfn.tasks.strings.program import ProgramError, parse_code, run_code

__all__ = [
    'CleanOptions',
    'Problem',
    'TraceProblem',
    'generate',
    'generate_trace',
    'iter_generate',
    'ProgramError',
    'parse_code',
    'run_code',
    'score',
]


def __getattr__(name):  # score lives in scoring.py; imported lazily
  if name == 'score':
    from compfn.tasks.strings.scoring import score

    return score
  raise AttributeError(name)
