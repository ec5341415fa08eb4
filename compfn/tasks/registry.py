"""Task registry (seqio-style): a name maps to how problems are made, asked and checked.

A :class:`Task` bundles a problem generator, a prompt accessor, the reference, the Python
scorer and the jittable device scorer of one task, so the trainer (``compfn.rl.rollout.TASKS``
is a view of the device scorers) and the evaluator handle every task the same way::

    >>> from compfn.tasks import registry
    >>> task = registry.get('strings_json')
    >>> problems = task.generate(stage=2, split='test', min_level=1, max_level=1, num=4)
    >>> ref = task.reference(problems[0])
    >>> task.score('... {"output": "%s"}' % ref, ref)
    (1, 1)

The registry is filled in one direction: :mod:`compfn.tasks` (the package ``__init__``) imports
the task modules and registers the built-in tasks (``strings_json``, ``strings_trace``,
``strings_trace_steps``, ``strings_trace_shape``, ``countdown``); no task module imports this
one (``tests/test_layers.py``). Other tasks register
themselves with :func:`register`. This module imports nothing of the tasks (and not JAX): a
device scorer may be a :class:`Lazy` reference, imported on its first call.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Union

__all__ = [
    'Task',
    'ComputedReference',
    'Lazy',
    'STORED',
    'METRICS',
    'register',
    'get',
    'names',
    'tasks',
    'aliases',
]

#: ``Task.reference`` value meaning "the reference is stored with the problem" (``ref``).
STORED = 'stored'
#: The metrics a task may support in evaluation (``Task.metrics``).
METRICS = ('accuracy', 'pass_at_k', 'failure_modes')


@dataclasses.dataclass(frozen=True)
class Lazy:
  """A function named ``'module:attr'``, imported on its first call (so that registering a
  device scorer does not import JAX). Calling it calls the function."""

  path: str

  def __post_init__(self):
    module, sep, attr = self.path.partition(':')
    if not (module and sep and attr):
      raise ValueError(f"Lazy path must be 'module:attr', got {self.path!r}")

  def resolve(self) -> Callable:
    """The named function (imports its module)."""
    module, _, attr = self.path.partition(':')
    return getattr(importlib.import_module(module), attr)

  def __call__(self, *args, **kwargs):
    return self.resolve()(*args, **kwargs)


def _identity(ref):
  return ref


@dataclasses.dataclass(frozen=True)
class ComputedReference:
  """How a task's reference can be *computed on device* instead of read from storage (the RL
  step's ``GRPOConfig.reference = 'execute'``, :mod:`compfn.rl.grpo`).

  Attributes:
    program: ``program(problem) -> (code, input)``: what runs to give the reference (a problem
      object or a record mapping).
    encode: ``encode(pairs, spec) -> batch`` (host, numpy): the ``(code, input)`` pairs as the
      device function reads them, with the static sizes of ``spec`` (``GRPOConfig.execute``).
    compute: ``compute(batch, spec, width) -> (ref int32[B, width], ref_len int32[B],
      flagged bool[B])`` (jittable): the references as the task's device scorer reads them
      (:attr:`Task.encode_reference` form, UTF-8 bytes); ``flagged`` marks the examples whose
      reference could not be computed within the fixed-size buffers (their ``ref`` is
      meaningless: the caller falls back to the stored reference).
  """

  program: Callable[[Any], tuple]
  encode: Callable[..., Any]
  compute: Callable[..., tuple]

  def __post_init__(self):
    for field in ('program', 'encode', 'compute'):
      if not callable(getattr(self, field)):
        raise TypeError(f'ComputedReference.{field} must be callable, got {getattr(self, field)!r}')


@dataclasses.dataclass(frozen=True)
class Task:
  """One task.

  Attributes:
    name: registry key (also ``GRPOConfig.task`` / the evaluator's ``task``).
    generate: ``generate(**kwargs) -> list`` of problems (host; each has ``.prompt``).
    prompt: ``prompt(problem) -> str``, the text given to the model.
    reference: ``reference(problem) -> str``, what the scorers compare against, or
      :data:`STORED` (the problem or record carries it as ``ref``); see :meth:`reference_of`.
    score: the Python scorer, ``score(response, ref, overlong=False) -> (score, acc)``.
    device_score: the jittable scorer, with the signature of
      :func:`compfn.tasks.strings.device_scoring.score_trace`: ``(resp int32[R, T],
      resp_len int32[R], ref int32[R, M], ref_len int32[R], overlong bool[R]) -> (score[R],
      acc int32[R])``, ``ref`` being the UTF-8 bytes of :attr:`encode_reference` of the
      reference. For every response ``b`` and reference ``r`` it equals ``score(b, r, overlong)``.
    metrics: which of :data:`METRICS` the evaluator can report for the task.
    encode_reference: ``encode_reference(ref) -> str``, the reference as the device scorer
      reads it (validated; raises ``ValueError`` on a bad one). Identity for the string tasks.
    description: one line for listings.
    computed_reference: a :class:`ComputedReference` when the reference can be computed on
      device from the problem's program (``GRPOConfig.reference = 'execute'``); None otherwise.
    record_reference: the key of a record (a mapping, as :mod:`compfn.data.sources` makes them)
      that holds this reference: ``'ref'``, or ``'target'`` for the tasks scored against the
      whole reference trace. The stages read every reference through :meth:`reference_of`.
  """

  name: str
  generate: Callable[..., list]
  prompt: Callable[[Any], str]
  reference: Union[str, Callable[[Any], str]]
  score: Callable[..., tuple]
  device_score: Callable[..., tuple]
  metrics: tuple[str, ...] = ('accuracy', 'pass_at_k')
  encode_reference: Callable[[Any], str] = _identity
  description: str = ''
  computed_reference: Optional[ComputedReference] = None
  record_reference: str = 'ref'

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f'a task needs a non-empty name, got {self.name!r}')
    if not isinstance(self.record_reference, str) or not self.record_reference:
      raise ValueError(
          f'task {self.name!r}: record_reference must be a non-empty str, got '
          f'{self.record_reference!r}'
      )
    for field in ('generate', 'prompt', 'score', 'device_score', 'encode_reference'):
      if not callable(getattr(self, field)):
        raise TypeError(
            f'task {self.name!r}: {field} must be callable, got ' f'{getattr(self, field)!r}'
        )
    if self.reference != STORED and not callable(self.reference):
      raise TypeError(
          f'task {self.name!r}: reference must be callable or {STORED!r}, got '
          f'{self.reference!r}'
      )
    if self.computed_reference is not None and not isinstance(
        self.computed_reference, ComputedReference
    ):
      raise TypeError(
          f'task {self.name!r}: computed_reference must be a ComputedReference or None, got '
          f'{self.computed_reference!r}'
      )
    object.__setattr__(self, 'metrics', tuple(self.metrics))
    unknown = [m for m in self.metrics if m not in METRICS]
    if unknown:
      raise ValueError(f'task {self.name!r}: unknown metrics {unknown}; known: {METRICS}')

  def reference_of(self, problem) -> str:
    """The reference the scorers compare against: a record's (mapping's)
    :attr:`record_reference` item; a problem object's ``reference(problem)``, or its ``.ref``
    when ``reference`` is :data:`STORED`. A record without the item is a KeyError naming it."""
    if isinstance(problem, Mapping):
      try:
        return problem[self.record_reference]
      except KeyError:
        raise KeyError(
            f"task {self.name!r} reads its reference from a record's "
            f'{self.record_reference!r}, which this record lacks (it has {sorted(problem)})'
        ) from None
    if self.reference != STORED:
      return self.reference(problem)
    return problem.ref


_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def register(task: Task, overwrite: bool = False, aliases=()) -> Task:
  """Adds ``task`` (and alternative names for it); raises ValueError if a name is taken (unless
  ``overwrite``). Returns the task."""
  if not isinstance(task, Task):
    raise TypeError(f'register takes a Task, got {type(task).__name__}')
  for name in (task.name, *aliases):
    taken = name in _REGISTRY or name in _ALIASES
    if taken and not overwrite:
      raise ValueError(f'task {name!r} is already registered')
  _ALIASES.pop(task.name, None)
  _REGISTRY[task.name] = task
  for alias in aliases:
    _REGISTRY.pop(alias, None)
    _ALIASES[alias] = task.name
  return task


def get(name: str) -> Task:
  """The task registered as ``name`` (or under the alias ``name``); KeyError naming the
  registered tasks otherwise."""
  try:
    return _REGISTRY[_ALIASES.get(name, name)]
  except KeyError:
    raise KeyError(f'unknown task {name!r}; registered: {", ".join(names())}') from None


def names(include_aliases: bool = True) -> list[str]:
  """Sorted registered names (with the aliases, unless ``include_aliases=False``)."""
  return sorted(list(_REGISTRY) + (list(_ALIASES) if include_aliases else []))


def tasks() -> dict[str, Task]:
  """name -> Task for every registered task (no aliases), sorted by name."""
  return {n: _REGISTRY[n] for n in sorted(_REGISTRY)}


def aliases() -> dict[str, str]:
  """alias -> task name."""
  return dict(_ALIASES)
