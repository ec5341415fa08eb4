"""Tasks: what a model is asked and how its answers are checked (no model code here).

Importing this package fills :mod:`compfn.tasks.registry` with the built-in tasks (one
direction only: the task modules never import the registry):

=====================  ==========================================  ================================
name                   reference (what the scorers compare with)   device scorer
=====================  ==========================================  ================================
strings_json           the expected output string (paper's rule)   ``device_scoring.score_json``
strings_trace          the answer after the trace's last ``;``     ``device_scoring.score_trace``
strings_trace_steps    the whole reference trace (step credit)     ``device_scoring.
                                                                   score_trace_steps``
strings_trace_shape    the whole reference trace (shape-aware)     ``device_scoring.
                                                                   score_trace_shape``
countdown              ``{"numbers": [..], "target": N}`` JSON     ``countdown.verifier.
                                                                   score_refs``
=====================  ==========================================  ================================

``strings_json`` and ``strings_trace`` can also compute their reference on device, from the
problem's program and input (``Task.computed_reference``: :mod:`compfn.tasks.strings.
device_reference`, the JAX interpreter; ``GRPOConfig.reference = 'execute'``; for the trace task
the paper family's chains only); the other tasks read stored references only.

``strings/paper`` and ``strings/trace`` are aliases of ``strings_json`` and ``strings_trace``.
Device scorers are :class:`~compfn.tasks.registry.Lazy` (JAX is imported on their first call).
"""

import operator

from compfn.tasks import countdown as _countdown
from compfn.tasks import registry
from compfn.tasks.countdown import scoring as _countdown_scoring
from compfn.tasks.strings import generator as _strings_generator
from compfn.tasks.strings import scoring as _strings_scoring

__all__ = ['registry']

_STRINGS_DEVICE = 'compfn.tasks.strings.device_scoring:'
_STRINGS_REFERENCE = 'compfn.tasks.strings.device_reference:'
_PROMPT = operator.attrgetter('prompt')


def _register_builtin():
  task = registry.Task
  registry.register(
      task(
          'strings_json',
          _strings_generator.generate,
          _PROMPT,
          operator.attrgetter('output'),
          _strings_scoring.score,
          registry.Lazy(_STRINGS_DEVICE + 'score_json'),
          description="The paper's forward-prediction prompt, answer as the last JSON object.",
          computed_reference=registry.ComputedReference(
              registry.Lazy(_STRINGS_REFERENCE + 'code_and_input'),
              registry.Lazy(_STRINGS_REFERENCE + 'encode_programs'),
              registry.Lazy(_STRINGS_REFERENCE + 'reference_bytes'),
          ),
      ),
      aliases=('strings/paper',),
  )
  registry.register(
      task(
          'strings_trace',
          _strings_generator.generate_trace,
          _PROMPT,
          operator.attrgetter('answer'),
          _strings_scoring.score_trace,
          registry.Lazy(_STRINGS_DEVICE + 'score_trace'),
          metrics=('accuracy', 'pass_at_k', 'failure_modes'),
          description='Trace format for small from-scratch models (spec/MINIATURE.md).',
          computed_reference=registry.ComputedReference(
              registry.Lazy(_STRINGS_REFERENCE + 'trace_code_and_input'),
              registry.Lazy(_STRINGS_REFERENCE + 'encode_programs'),
              registry.Lazy(_STRINGS_REFERENCE + 'reference_bytes'),
          ),
      ),
      aliases=('strings/trace',),
  )
  registry.register(
      task(
          'strings_trace_steps',
          _strings_generator.generate_trace,
          _PROMPT,
          operator.attrgetter('target'),
          _strings_scoring.score_trace_steps,
          registry.Lazy(_STRINGS_DEVICE + 'score_trace_steps'),
          description='Trace format with credit for correct leading steps (ref = the whole '
          "reference trace; a departure from the paper's final-answer reward).",
          record_reference='target',
      )
  )
  registry.register(
      task(
          'strings_trace_shape',
          _strings_generator.generate_trace,
          _PROMPT,
          operator.attrgetter('target'),
          _strings_scoring.score_trace_shape,
          registry.Lazy(_STRINGS_DEVICE + 'score_trace_shape'),
          description='Trace format, shape-aware: credit for the right calls in the right order, '
          'for right steps and for the right answer; overlong keeps its step credit '
          "(ref = the whole reference trace; a departure from the paper's reward).",
          record_reference='target',
      )
  )
  registry.register(
      task(
          'countdown',
          _countdown.generate,
          _PROMPT,
          operator.attrgetter('reference'),
          _countdown_scoring.score,
          registry.Lazy('compfn.tasks.countdown.verifier:score_refs'),
          encode_reference=_countdown_scoring.reference_json,
          description="reasoning-gym Countdown (paper §4.3): the paper's prompt, answer in the last "
          '<answer>...</answer>, exact multiset + value check, binary reward.',
      )
  )


_register_builtin()
