"""The on-device verifier of the string task: public entry points (DESIGN.md §4).

Two jittable pieces. The reward rules run inside the fused RL step (``compfn.rl.rollout``,
``compfn.rl.grpo``). The interpreter runs there too when ``GRPOConfig.reference = 'execute'``:
the GRPO step then computes each prompt's reference from its encoded program and input
(:mod:`compfn.tasks.strings.device_reference`) and scores against it, falling back to the stored
reference (and counting it, ``reference_overflow_frac``) where the interpreter's buffers
overflow. With the default ``reference='stored'`` the step scores against stored references, and
:func:`execute` serves the agreement tests, ``tools/fuzz.py`` and the verifier benchmark:

* :func:`execute` — the JAX stack-machine interpreter over encoded programs
  (:mod:`compfn.tasks.strings.interpreter`);
* :func:`score_json` / :func:`score_trace` — the paper's reward rule and the trace rule on UTF-8
  response bytes (:mod:`compfn.tasks.strings.device_scoring`).

And their host conveniences::

    >>> execute_batch(["def main_solution(x):\\n    return func_8((x + 'ab'), 2)"], ['xyz'])
    ['zabxy']
    >>> scores, accs = score_batch(['... {"output": "zabxy"}'], ['zabxy'])
    >>> scores.tolist(), accs.tolist()
    ([1], [1])

``execute_batch(codes, inputs, capacity=4096) -> list[str | None]`` (None: a value exceeded
``capacity`` code points); ``score_batch(responses, refs, overlong=None, fmt='json') ->
(scores, accs)`` as numpy int32 arrays.
"""

from compfn.tasks.strings.device_scoring import score_batch, score_json, score_trace
from compfn.tasks.strings.interpreter import (
    EncodedPrograms,
    decode,
    encode,
    encode_strings,
    execute,
    execute_batch,
)

__all__ = [
    'execute',
    'execute_batch',
    'encode',
    'encode_strings',
    'decode',
    'EncodedPrograms',
    'score_json',
    'score_trace',
    'score_batch',
]
