"""Task registry (seqio-style): a name maps to how problems are made, asked and checked.

A :class:`Task` bundles a problem generator, a prompt accessor, the Python reference scorer
(``score(response, ref, overlong) -> (score, acc)``) and the name of its on-device scorer, so the
trainer and the evaluator handle every task the same way::

    >>> task = get('strings/paper')
    >>> problems = task.generate(stage=2, split='test', min_level=1, max_level=1, num=4)
    >>> task.score('... {"output": "%s"}' % problems[0].output, problems[0].output)
    (1, 1)

Other tasks (Countdown) register themselves with :func:`register`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Task:
    """name: registry key. generate(**kwargs) -> list of problems with .prompt/.output (or
    .target/.answer for trace tasks). prompt(problem) -> str. reference(problem) -> the string the
    scorer compares against. score(response, ref, overlong=False) -> (score, acc).
    device_score: import path ``module:function`` of the task's jittable scorer (the string
    tasks: :func:`compfn.tasks.strings.device_scoring.score_json`'s signature; Countdown:
    :func:`compfn.tasks.countdown.verifier.score`, whose reference arrays come from its
    ``encode_references``)."""
    name: str
    generate: Callable
    prompt: Callable
    reference: Callable
    score: Callable
    device_score: str
    description: str = ''


_REGISTRY: dict[str, Task] = {}


def register(task: Task, overwrite: bool = False) -> Task:
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f'task {task.name!r} is already registered')
    _REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    _register_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f'unknown task {name!r}; registered: {", ".join(sorted(_REGISTRY))}') \
            from None


def names() -> list[str]:
    _register_builtin()
    return sorted(_REGISTRY)


def _register_builtin():
    if 'strings/paper' in _REGISTRY:
        return
    from compfn.tasks.strings import generator, scoring

    def _paper(**kw):
        return generator.generate(**kw)

    register(Task('strings/paper', _paper, lambda p: p.prompt, lambda p: p.output,
                  scoring.score, 'compfn.tasks.strings.device_scoring:score_json',
                  "The paper's forward-prediction prompt, answer as the last JSON object."))
    register(Task('strings/trace', generator.generate_trace, lambda p: p.prompt,
                  lambda p: p.answer, scoring.score_trace,
                  'compfn.tasks.strings.device_scoring:score_trace',
                  'Trace format for small from-scratch models (spec/MINIATURE.md).'))
    import compfn.tasks.countdown  # noqa: F401  (registers 'countdown')
