"""Evaluation: running and scoring a model on a problem set (greedy and sampled), unbiased pass@k.

Public API::

    problems = [EvalProblem(prompt, ref, level, group=''), ...]      (compfn.eval_results)
    res = evaluate(model_config, params, tokenizer, problems, task='strings_trace',
                   max_new_tokens=128, greedy=True, num_samples=0, temperature=1.0, ks=None,
                   batch_size=64, encode=None, rng=0, mesh=None, rules=None, progress=True,
                   num_examples=2, sample_chunk=64) -> EvalResult
    res.accuracy_by_level('greedy' | 'sampled', group=None)  -> {"1": acc, ...}
    res.pass_at_k_by_level(group=None)                       -> {"1": {1: p, 2: p, ...}, ...}

The result model (:class:`~compfn.eval_results.EvalResult`: summaries, JSON round trip) is
``compfn.eval_results``; its tables and plots (``results.md`` / ``.csv`` / ``*.png``) are
``compfn.reports``.

How a problem set is run
------------------------
Every batch goes through :func:`compfn.rl.rollout.rollout`: sample -> detokenise on device ->
score in one jitted program (``acc`` is the accuracy bit). ``task``:

* ``'strings_json'``: the paper's JSON reward rule (``ref`` = the expected output string);
* ``'strings_trace'``: the trace rule (answer = the text after the last ``;``);
* ``'countdown'``: the Countdown verifier on device (:func:`compfn.tasks.countdown.verifier.
  score_refs`, the task's registered scorer); ``ref`` is ``'{"numbers": [..], "target": N}'``
  (the paper's ``{"answer": N, "numbers": [..]}`` is accepted too).

Any task in :mod:`compfn.tasks.registry` is scored the same way: its ``encode_reference`` turns
each reference into the bytes its ``device_score`` reads (a bad reference is a ``ValueError``
naming the problem, before any device work).

Greedy decoding is one sample per problem at temperature 0. ``num_samples > 0`` draws that many
samples per problem at ``temperature``; the G samples of a prompt share one prefill
(``SamplerConfig.num_samples``). Large G is split into ``ceil(G / sample_chunk)`` equal chunks
(each one rollout call with its own ``fold_in`` of the key; extra samples of the last chunk are
discarded), so one call holds at most ``batch_size * sample_chunk`` rows.

Padding: problems are cut into batches of ``rows = min(batch_size, next power of two >= P)``
(rounded up to a multiple of the mesh's batch devices); the last batch repeats the last problem
and the padded rows' results are dropped. Prompt and reference buffers have one size for the
whole problem set, so one compiled program serves every batch. Results are a pure function of
``rng`` (an int seed or a PRNG key).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from compfn.eval_results import EvalProblem, EvalResult
from compfn.rl.host_rollouts import (  # the runner lives below evaluation (and RFT)
    as_key as _as_key,
    decode_response as _decode,
    encode_prompts as _encode_prompts,
    sample_and_score as _run,
    strip_stop as _strip_stop,
)

__all__ = [
    'evaluate',
    'default_ks',
]


def default_ks(num_samples: int) -> tuple[int, ...]:
  """Powers of two up to ``num_samples``, plus ``num_samples`` itself (() for 0)."""
  if num_samples <= 0:
    return ()
  ks = {1 << i for i in range(num_samples.bit_length()) if (1 << i) <= num_samples}
  return tuple(sorted(ks | {num_samples}))


def evaluate(
    model_config,
    params,
    tokenizer,
    problems: Sequence[EvalProblem],
    *,
    task: str = 'strings_trace',
    max_new_tokens: int = 128,
    greedy: bool = True,
    num_samples: int = 0,
    temperature: float = 1.0,
    ks: Optional[Iterable[int]] = None,
    batch_size: int = 64,
    encode: Optional[Callable[[str], list]] = None,
    rng=0,
    mesh=None,
    rules=None,
    progress: bool = True,
    num_examples: int = 2,
    sample_chunk: int = 64,
    keep_responses: bool = False,
    _rollout: Optional[Callable] = None,
) -> EvalResult:
  """Evaluate a model on ``problems`` (see the module docstring).

  Args:
    task: the name of a task in :mod:`compfn.tasks.registry` (``'strings_json'``,
      ``'strings_trace'``, ``'countdown'``, ...), scored by its registered device scorer.
    greedy: run one greedy sample per problem (-> ``greedy_acc``).
    num_samples: samples per problem at ``temperature`` (0 = none; -> ``sample_correct``,
      pass@k for ``ks``, default :func:`default_ks`).
    batch_size: prompts per rollout call (rows = batch_size * min(G, sample_chunk)).
    encode: prompt text -> ids (default ``tokenizer.encode``; pass a chat-template encoder
      for instruction-tuned models).
    rng: int seed or PRNG key; results are deterministic for a fixed value.
    mesh, rules: run sharded (params must already be placed; batches are sharded here).
    num_examples: decoded responses kept per level in ``examples``.
    keep_responses: also decode every response (``greedy_responses``, ``sample_responses``),
      e.g. for failure-mode analysis of traces.
  """
  problems = list(problems)
  if not greedy and num_samples <= 0:
    raise ValueError('nothing to do: greedy=False and num_samples=0')
  num_samples = int(num_samples)
  if ks is None:
    ks = default_ks(num_samples)
  ks = tuple(sorted({int(k) for k in ks})) if num_samples > 0 else ()
  for k in ks:
    if not 1 <= k <= num_samples:
      raise ValueError(f'every k must be in [1, num_samples={num_samples}], got {k}')
  prompt_ids = _encode_prompts(tokenizer, [p.prompt for p in problems], encode)
  refs = [p.ref for p in problems]

  # Example problems: the first ``num_examples`` of each level, in the given order.
  per_level: dict[int, list[int]] = {}
  for i, p in enumerate(problems):
    lst = per_level.setdefault(int(p.level), [])
    if len(lst) < num_examples:
      lst.append(i)
  example_ids = sorted(i for lst in per_level.values() for i in lst)
  ex_set = np.zeros(len(problems) + 1, bool)
  ex_set[example_ids] = True
  keep0 = lambda p, s, a: ex_set[p] & (s == 0)  # noqa: E731
  keep_all = lambda p, s, a: np.ones_like(p, bool)  # noqa: E731

  key = _as_key(rng)
  import jax

  common = dict(
      task=task,
      max_new_tokens=max_new_tokens,
      batch_size=batch_size,
      mesh=mesh,
      rules=rules,
      progress=progress,
      sample_chunk=sample_chunk,
      rollout_impl=_rollout,
  )
  greedy_run = sampled_run = None
  if greedy:
    greedy_run = _run(
        model_config,
        params,
        tokenizer,
        prompt_ids,
        refs,
        num_samples=1,
        temperature=0.0,
        rng=jax.random.fold_in(key, 0),
        keep=keep_all if keep_responses else keep0,
        desc='eval greedy',
        **common,
    )
  if num_samples > 0:
    sampled_run = _run(
        model_config,
        params,
        tokenizer,
        prompt_ids,
        refs,
        num_samples=num_samples,
        temperature=temperature,
        rng=jax.random.fold_in(key, 1),
        keep=keep_all if keep_responses else keep0,
        desc=f'eval {num_samples} samples',
        **common,
    )

  examples = []
  for i in example_ids:
    p = problems[i]
    for kind, run in (('greedy', greedy_run), ('sampled', sampled_run)):
      if run is None or (i, 0) not in run.kept:
        continue
      ids = run.kept[(i, 0)]
      examples.append(
          {
              'kind': kind,
              'level': int(p.level),
              'group': p.group,
              'prompt': p.prompt,
              'ref': p.ref,
              'response': _decode(tokenizer, _strip_stop(tokenizer, ids)),
              'acc': int(run.acc[i, 0]),
              'score': float(run.score[i, 0]),
              'length': int(run.lengths[i, 0]),
              'truncated': bool(run.truncated[i, 0]),
          }
      )

  def texts(run, g):
    if run is None or not keep_responses:
      return None
    dec = lambda i, j: _decode(tokenizer, _strip_stop(tokenizer, run.kept[(i, j)]))  # noqa
    rows = [[dec(i, j) for j in range(g)] for i in range(len(problems))]
    return [r[0] for r in rows] if g == 1 else rows

  greedy_texts, sample_texts = texts(greedy_run, 1), texts(sampled_run, num_samples)
  config = {
      'task': task,
      'max_new_tokens': int(max_new_tokens),
      'greedy': bool(greedy),
      'num_samples': num_samples,
      'temperature': float(temperature),
      'batch_size': int(batch_size),
      'sample_chunk': int(sample_chunk),
  }
  return EvalResult(
      problems=problems,
      greedy_acc=None if greedy_run is None else greedy_run.acc[:, 0],
      sample_correct=None if sampled_run is None else sampled_run.acc.sum(axis=1),
      num_samples=num_samples,
      ks=ks,
      examples=examples,
      task=task,
      greedy_length=None if greedy_run is None else greedy_run.lengths[:, 0],
      greedy_truncated=None if greedy_run is None else greedy_run.truncated[:, 0],
      sample_length=None if sampled_run is None else sampled_run.lengths.mean(axis=1),
      sample_truncated=None if sampled_run is None else sampled_run.truncated.sum(axis=1),
      config=config,
      greedy_responses=greedy_texts,
      sample_responses=sample_texts,
  )
