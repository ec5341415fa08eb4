"""The Countdown transfer task (PAPER §2.4): reasoning-gym-identical generator, the paper's
prompt, and the verifier (Python reference + JAX on-device version).

Public contracts: :func:`generate` (:mod:`.generator`), :func:`prompt` (:mod:`.prompts`),
:func:`score` / :func:`score_answer` (:mod:`.scoring`), and :mod:`compfn.tasks.countdown.verifier`
(``score``, ``verify``, ``score_batch``; imported lazily since it imports JAX).

Importing this package registers the task ``'countdown'`` in :mod:`compfn.tasks.registry`
(problems of :func:`generate`; reference = the paper's ground-truth JSON; device scorer
``compfn.tasks.countdown.verifier:score``).
"""
from compfn.tasks.countdown.generator import (PAPER_SETS, CountdownConfig, Problem, generate,
                                              iter_generate, make_problem)
from compfn.tasks.countdown.prompts import TEMPLATE, prompt
from compfn.tasks.countdown.scoring import Verdict, parse_reference, score, score_answer

__all__ = ['PAPER_SETS', 'CountdownConfig', 'Problem', 'generate', 'iter_generate',
           'make_problem', 'TEMPLATE', 'prompt', 'Verdict', 'score', 'score_answer',
           'parse_reference', 'TASK', 'register']

#: Registry name.
TASK_NAME = 'countdown'


def register():
    """Register ``'countdown'`` in :mod:`compfn.tasks.registry` (idempotent); returns the Task."""
    from compfn.tasks import registry
    existing = registry._REGISTRY.get(TASK_NAME)
    if existing is not None:
        return existing
    return registry.register(registry.Task(
        TASK_NAME, generate, lambda p: p.prompt, lambda p: p.reference, score,
        'compfn.tasks.countdown.verifier:score',
        "reasoning-gym Countdown (paper §4.3): the paper's prompt, answer in the last "
        "<answer>...</answer>, exact multiset + value check, binary reward."))


TASK = register()
