"""The Countdown transfer task (PAPER §2.4): reasoning-gym-identical generator, the paper's
prompt, and the verifier (Python reference + JAX on-device version).

Public contracts: :func:`generate` (:mod:`.generator`), :func:`prompt` (:mod:`.prompts`),
:func:`score` / :func:`score_answer` (:mod:`.scoring`), and :mod:`compfn.tasks.countdown.verifier`
(``score``, ``verify``, ``score_batch``; imported lazily since it imports JAX).

The task ``'countdown'`` of :mod:`compfn.tasks.registry` is registered by :mod:`compfn.tasks`
(problems of :func:`generate`; reference = the paper's ground-truth JSON; device scorer
:func:`compfn.tasks.countdown.verifier.score_refs`, which reads the problem from the reference's
JSON bytes). This package does not import the registry.
"""

from compfn.tasks.countdown.generator import (
    PAPER_SETS,
    CountdownConfig,
    Problem,
    generate,
    iter_generate,
    make_problem,
)
from compfn.tasks.countdown.prompts import TEMPLATE, prompt
from compfn.tasks.countdown.scoring import (
    Verdict,
    parse_reference,
    reference_json,
    score,
    score_answer,
)

__all__ = [
    'PAPER_SETS',
    'CountdownConfig',
    'Problem',
    'generate',
    'iter_generate',
    'make_problem',
    'TEMPLATE',
    'prompt',
    'Verdict',
    'score',
    'score_answer',
    'parse_reference',
    'reference_json',
]
