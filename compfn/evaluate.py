"""Evaluation: per-level accuracy (greedy and sampled), unbiased pass@k, reports and plots.

Public API::

    problems = [EvalProblem(prompt, ref, level, group=''), ...]
    res = evaluate(model_config, params, tokenizer, problems, task='strings_trace',
                   max_new_tokens=128, greedy=True, num_samples=0, temperature=1.0, ks=None,
                   batch_size=64, encode=None, rng=0, mesh=None, rules=None, progress=True,
                   num_examples=2, sample_chunk=64) -> EvalResult
    res.accuracy_by_level('greedy' | 'sampled', group=None)  -> {"1": acc, ...}
    res.pass_at_k_by_level(group=None)                       -> {"1": {1: p, 2: p, ...}, ...}
    res.summary()                                            -> JSON-able dict
    res.to_json() / EvalResult.from_json(text_or_dict)       (round trip)
    paths = write_report({'run name': res, ...}, outdir)     -> results.md / .csv / *.png
    print(markdown_table({'run name': res}))

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

import csv
import io
import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from compfn import metrics
from compfn.rl.host_rollouts import (  # the runner lives below evaluation (and RFT)
    as_key as _as_key,
    decode_response as _decode,
    encode_prompts as _encode_prompts,
    sample_and_score as _run,
    strip_stop as _strip_stop,
)

__all__ = [
    'EvalProblem',
    'EvalResult',
    'evaluate',
    'default_ks',
    'markdown_table',
    'write_report',
    'TASKS',
]

#: The built-in tasks (:func:`evaluate` scores every task in :mod:`compfn.tasks.registry`).
TASKS = ('strings_json', 'strings_trace', 'countdown')


@dataclasses.dataclass(frozen=True)
class EvalProblem:
  prompt: str  # text given to the model (formatted; ``encode`` turns it into ids)
  ref: str  # reference answer; for task='countdown' '{"numbers": [..], "target": N}'
  level: int
  group: str = ''  # e.g. 'heldout' / 'train'; reports split by it when non-empty
  target: Optional[str] = None  # the reference trace (trace task), for failure-mode analysis


def default_ks(num_samples: int) -> tuple[int, ...]:
  """Powers of two up to ``num_samples``, plus ``num_samples`` itself (() for 0)."""
  if num_samples <= 0:
    return ()
  ks = {1 << i for i in range(num_samples.bit_length()) if (1 << i) <= num_samples}
  return tuple(sorted(ks | {num_samples}))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _arr(x, dtype):
  return None if x is None else np.asarray(x, dtype)


def _lvl(level) -> str:
  return str(int(level))


@dataclasses.dataclass
class EvalResult:
  """Per-problem raw results and their summaries (JSON round-trippable)."""

  problems: list
  greedy_acc: Optional[np.ndarray]  # int[P] 0/1, None when greedy was off
  sample_correct: Optional[np.ndarray]  # int[P] correct samples out of num_samples
  num_samples: int
  ks: tuple
  examples: list  # a few decoded responses per level
  task: str = ''
  greedy_length: Optional[np.ndarray] = None  # int[P] generated tokens (incl. stop)
  greedy_truncated: Optional[np.ndarray] = None  # int[P] 0/1 hit max_new_tokens
  sample_length: Optional[np.ndarray] = None  # float[P] mean generated tokens
  sample_truncated: Optional[np.ndarray] = None  # int[P] truncated samples
  config: dict = dataclasses.field(default_factory=dict)
  greedy_responses: Optional[list] = None  # str[P] decoded greedy responses (keep_responses)
  sample_responses: Optional[list] = None  # str[P][num_samples] decoded samples (likewise)

  def __post_init__(self):
    self.problems = [p if isinstance(p, EvalProblem) else EvalProblem(**p) for p in self.problems]
    self.greedy_acc = _arr(self.greedy_acc, np.int32)
    self.sample_correct = _arr(self.sample_correct, np.int32)
    self.greedy_length = _arr(self.greedy_length, np.int32)
    self.greedy_truncated = _arr(self.greedy_truncated, np.int32)
    self.sample_length = _arr(self.sample_length, np.float64)
    self.sample_truncated = _arr(self.sample_truncated, np.int32)
    self.num_samples = int(self.num_samples)
    self.ks = tuple(int(k) for k in self.ks)

  # -- selection --------------------------------------------------------------------------
  @property
  def levels(self) -> np.ndarray:
    return np.array([p.level for p in self.problems], np.int64)

  @property
  def groups(self) -> list[str]:
    """The non-empty groups, in first-seen order."""
    return list(dict.fromkeys(p.group for p in self.problems if p.group))

  def _mask(self, group: Optional[str]) -> np.ndarray:
    if group is None:
      return np.ones(len(self.problems), bool)
    return np.array([p.group == group for p in self.problems], bool)

  def _by_level(self, values: np.ndarray, group: Optional[str]) -> dict[str, float]:
    m = self._mask(group)
    return metrics.accuracy_by_level(self.levels[m], np.asarray(values, np.float64)[m])

  # -- metrics ----------------------------------------------------------------------------
  def counts_by_level(self, group: Optional[str] = None) -> dict[str, int]:
    lv, n = np.unique(self.levels[self._mask(group)], return_counts=True)
    return {_lvl(a): int(b) for a, b in zip(lv, n)}

  def _per_problem(self, kind: str) -> np.ndarray:
    if kind == 'greedy':
      if self.greedy_acc is None:
        raise ValueError('no greedy results (evaluate(..., greedy=False))')
      return self.greedy_acc.astype(np.float64)
    if kind == 'sampled':
      if self.sample_correct is None:
        raise ValueError('no sampled results (evaluate(..., num_samples=0))')
      return self.sample_correct / float(self.num_samples)
    raise ValueError(f"kind must be 'greedy' or 'sampled', got {kind!r}")

  def accuracy_by_level(
      self, kind: str = 'greedy', group: Optional[str] = None
  ) -> dict[str, float]:
    """Mean accuracy per level ("1".."8"): greedy = the greedy bit; sampled = the fraction
    of correct samples (= pass@1). ``group`` restricts to problems of that group."""
    return self._by_level(self._per_problem(kind), group)

  def interval_by_level(self, group: Optional[str] = None) -> dict[str, tuple[float, float]]:
    """95% Wilson interval of the greedy accuracy per level (``compfn.metrics``)."""
    from compfn.metrics import wilson_interval

    if self.greedy_acc is None:
      return {}
    m = self._mask(group)
    lv, acc = self.levels[m], self.greedy_acc[m]
    return {
        str(int(x)): wilson_interval(int(acc[lv == x].sum()), int((lv == x).sum()))
        for x in sorted(set(lv.tolist()))
    }

  def accuracy(self, kind: str = 'greedy', group: Optional[str] = None) -> float:
    m = self._mask(group)
    return float(np.mean(self._per_problem(kind)[m])) if m.any() else float('nan')

  def pass_at_k_by_level(self, group: Optional[str] = None) -> dict[str, dict[int, float]]:
    """Unbiased pass@k (compfn.metrics.pass_at_k, n = num_samples) averaged per level."""
    if self.sample_correct is None:
      return {}
    m = self._mask(group)
    out = {}
    for lv in sorted(set(self.levels[m].tolist())):
      sel = m & (self.levels == lv)
      out[_lvl(lv)] = metrics.mean_pass_at_k(
          self.sample_correct[sel].tolist(), self.num_samples, self.ks
      )
    return out

  def pass_at_k(self, group: Optional[str] = None) -> dict[int, float]:
    m = self._mask(group)
    if self.sample_correct is None or not m.any():
      return {}
    return metrics.mean_pass_at_k(self.sample_correct[m].tolist(), self.num_samples, self.ks)

  # -- summary ----------------------------------------------------------------------------
  def _summary_for(self, group: Optional[str]) -> dict:
    m = self._mask(group)
    out: dict[str, Any] = {
        'num_problems': int(m.sum()),
        'counts_by_level': self.counts_by_level(group),
    }
    kinds = []
    if self.greedy_acc is not None:
      kinds.append('greedy')
      out['greedy_accuracy_by_level'] = self.accuracy_by_level('greedy', group)
      out['greedy_accuracy'] = self.accuracy('greedy', group)
    if self.sample_correct is not None:
      kinds.append('sampled')
      out['sampled_accuracy_by_level'] = self.accuracy_by_level('sampled', group)
      out['sampled_accuracy'] = self.accuracy('sampled', group)
      out['pass_at_k_by_level'] = {
          lv: {str(k): v for k, v in d.items()} for lv, d in self.pass_at_k_by_level(group).items()
      }
      out['pass_at_k'] = {str(k): v for k, v in self.pass_at_k(group).items()}
    if kinds:
      out['accuracy_kind'] = kinds[0]
      out['accuracy_by_level'] = out[f'{kinds[0]}_accuracy_by_level']
      out['accuracy'] = out[f'{kinds[0]}_accuracy']
    return out

  def summary(self) -> dict:
    """JSON-able summary: ``accuracy_by_level`` (greedy if run, else sampled),
    ``greedy_/sampled_accuracy_by_level``, ``pass_at_k_by_level`` (k as strings), counts,
    ``groups`` (the same per non-empty group), response-length stats and truncation rates."""
    out = {'task': self.task, 'num_samples': self.num_samples, 'ks': list(self.ks)}
    out.update(self._summary_for(None))
    out['groups'] = {g: self._summary_for(g) for g in self.groups}
    lengths, trunc = {}, {}
    if self.greedy_length is not None:
      x = self.greedy_length.astype(np.float64)
      lengths['greedy'] = _stats(x)
      trunc['greedy'] = float(np.mean(self.greedy_truncated)) if x.size else 0.0
    if self.sample_length is not None:
      lengths['sampled'] = _stats(self.sample_length)
      trunc['sampled'] = float(np.sum(self.sample_truncated)) / max(
          1, self.sample_truncated.size * self.num_samples
      )
    out['response_length'] = lengths
    out['truncation_rate'] = trunc
    out['config'] = dict(self.config)
    return out

  # -- JSON -------------------------------------------------------------------------------
  def to_dict(self) -> dict:
    lst = lambda x: None if x is None else x.tolist()  # noqa: E731
    return {
        'problems': [dataclasses.asdict(p) for p in self.problems],
        'greedy_acc': lst(self.greedy_acc),
        'sample_correct': lst(self.sample_correct),
        'num_samples': self.num_samples,
        'ks': list(self.ks),
        'examples': list(self.examples),
        'task': self.task,
        'greedy_length': lst(self.greedy_length),
        'greedy_truncated': lst(self.greedy_truncated),
        'sample_length': lst(self.sample_length),
        'sample_truncated': lst(self.sample_truncated),
        'config': dict(self.config),
        'greedy_responses': self.greedy_responses,
        'sample_responses': self.sample_responses,
    }

  def to_json(self, indent: Optional[int] = None) -> str:
    return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

  @classmethod
  def from_json(cls, data) -> 'EvalResult':
    """From :meth:`to_json`'s text or :meth:`to_dict`'s dict."""
    if isinstance(data, (str, bytes)):
      data = json.loads(data)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _stats(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  if not x.size:
    return {'mean': 0.0, 'median': 0.0, 'max': 0.0}
  return {'mean': float(x.mean()), 'median': float(np.median(x)), 'max': float(x.max())}


# --------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------


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
    task: 'strings_json' | 'strings_trace' | 'countdown'.
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


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _all_levels(results: Mapping[str, EvalResult]) -> list[str]:
  lv = sorted({int(p.level) for r in results.values() for p in r.problems})
  return [str(x) for x in lv]


def _groups(r: EvalResult) -> list[Optional[str]]:
  return [None] + r.groups


def _fmt(x: Optional[float]) -> str:
  return '' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.3f}'


def _acc_rows(results: Mapping[str, EvalResult]):
  """(name, group label, metric, {level: value}, overall) for every accuracy row."""
  for name, r in results.items():
    for g in _groups(r):
      label = g if g is not None else 'all'
      if r.greedy_acc is not None:
        yield name, label, 'greedy', r.accuracy_by_level('greedy', g), r.accuracy('greedy', g)
      if r.sample_correct is not None:
        t = r.config.get('temperature')
        metric = f'sampled (T={t:g})' if isinstance(t, (int, float)) else 'sampled'
        yield name, label, metric, r.accuracy_by_level('sampled', g), r.accuracy('sampled', g)


def markdown_table(results: Mapping[str, EvalResult]) -> str:
  """Markdown: accuracy per level (rows: run x group x greedy/sampled; columns: levels and
  all), then pass@k per level for the runs that sampled."""
  levels = _all_levels(results)
  head = ['run', 'group', 'metric'] + [f'L{lv}' for lv in levels] + ['all', 'n']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, label, metric, by_level, overall in _acc_rows(results):
    r = results[name]
    n = int(r._mask(None if label == 'all' else label).sum())
    cells = [name, label, metric] + [_fmt(by_level.get(lv)) for lv in levels]
    lines.append('| ' + ' | '.join(cells + [_fmt(overall), str(n)]) + ' |')
  out = '\n'.join(lines)
  greedy = {k: r for k, r in results.items() if r.greedy_acc is not None}
  if greedy:
    head = ['run', 'group'] + [f'L{lv}' for lv in levels]
    lines = [
        '',
        '',
        '**greedy accuracy, 95% Wilson interval** (n problems per level in ' 'the table above)',
        '',
        '| ' + ' | '.join(head) + ' |',
        '|' + '---|' * len(head),
    ]
    for name, r in greedy.items():
      for g in _groups(r):
        iv = r.interval_by_level(g)
        cells = [name, g if g is not None else 'all']
        cells += [f'{iv[lv][0]:.3f}–{iv[lv][1]:.3f}' if lv in iv else '' for lv in levels]
        lines.append('| ' + ' | '.join(cells) + ' |')
    out += '\n'.join(lines)
  sampled = {k: r for k, r in results.items() if r.sample_correct is not None and r.ks}
  if sampled:
    ks = sorted({k for r in sampled.values() for k in r.ks})
    head = ['run', 'group', 'level'] + [f'pass@{k}' for k in ks]
    lines = [
        '',
        '',
        '**pass@k** (unbiased estimator, n = samples per problem)',
        '',
        '| ' + ' | '.join(head) + ' |',
        '|' + '---|' * len(head),
    ]
    for name, r in sampled.items():
      for g in _groups(r):
        table = r.pass_at_k_by_level(g)
        table['all'] = r.pass_at_k(g)
        for lv, d in table.items():
          cells = [name, g if g is not None else 'all', lv]
          cells += [_fmt(d.get(k)) for k in ks]
          lines.append('| ' + ' | '.join(cells) + ' |')
    out += '\n'.join(lines)
  return out + '\n'


def _csv_rows(results: Mapping[str, EvalResult]):
  for name, r in results.items():
    for g in _groups(r):
      label = g if g is not None else ''
      levels = list(r.counts_by_level(g).items()) + [('all', int(r._mask(g).sum()))]
      for lv, n in levels:
        yield [name, label, lv, 'count', '', n]
      for kind, metric in (('greedy', 'greedy_acc'), ('sampled', 'sampled_acc')):
        if (r.greedy_acc if kind == 'greedy' else r.sample_correct) is None:
          continue
        for lv, v in r.accuracy_by_level(kind, g).items():
          yield [name, label, lv, metric, '', v]
        yield [name, label, 'all', metric, '', r.accuracy(kind, g)]
      if r.sample_correct is not None:
        table = r.pass_at_k_by_level(g)
        table['all'] = r.pass_at_k(g)
        for lv, d in table.items():
          for k, v in d.items():
            yield [name, label, lv, 'pass_at_k', k, v]


def write_report(
    results: Mapping[str, EvalResult], outdir, title: str = 'compfn evaluation'
) -> dict[str, str]:
  """Write ``results.md``, ``results.csv`` (long format: name, group, level, metric, k,
  value; level 'all' = every level, group '' = every problem), ``accuracy_by_level.png`` and
  ``pass_at_k.png`` (skipped when no run sampled) into ``outdir``; returns {kind: path}."""
  from compfn import workdir

  outdir = workdir.makedirs(outdir)
  paths = {}
  md = workdir.join(outdir, 'results.md')
  f = io.StringIO()
  f.write(f'# {title}\n\n')
  f.write(markdown_table(results))
  ex = [(name, e) for name, r in results.items() for e in r.examples]
  if ex:
    f.write('\n## Examples\n\n')
    for name, e in ex:
      f.write(
          f"- **{name}** level {e['level']} {e['kind']} "
          f"(acc {e['acc']}): `{_md_code(e['response'])}` "
          f"(ref `{_md_code(e['ref'])}`)\n"
      )
  workdir.write_text(md, f.getvalue(), lead_only=False)
  paths['markdown'] = md
  path = workdir.join(outdir, 'results.csv')
  f = io.StringIO(newline='')
  w = csv.writer(f)
  w.writerow(['name', 'group', 'level', 'metric', 'k', 'value'])
  w.writerows(_csv_rows(results))
  workdir.write_text(path, f.getvalue(), lead_only=False)
  paths['csv'] = path
  paths.update(_plots(results, outdir, title))
  return paths


def _md_code(s: str, limit: int = 200) -> str:
  s = s.replace('`', "'").replace('\n', '\\n').replace('|', '\\|')
  return s if len(s) <= limit else s[:limit] + '...'


def _plots(results: Mapping[str, EvalResult], outdir: str, title: str) -> dict[str, str]:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from compfn import workdir

  paths = {}
  lines = []
  for name, r in results.items():
    kind = 'greedy' if r.greedy_acc is not None else 'sampled'
    for g in _groups(r):
      d = r.accuracy_by_level(kind, g)
      label = name + ('' if g is None else f' [{g}]')
      if kind == 'sampled':
        label += ' (sampled)'
      iv = r.interval_by_level(g) if kind == 'greedy' else {}
      lines.append((label, d, '-' if g is None else '--', iv))
  if any(d for _, d, _, _ in lines):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, d, style, iv in lines:
      lv = sorted(d, key=int)
      xs, ys = [int(x) for x in lv], [d[x] for x in lv]
      if iv:  # 95% Wilson intervals as error bars
        err = [
            [max(0.0, y - iv[x][0]) for x, y in zip(lv, ys)],
            [max(0.0, iv[x][1] - y) for x, y in zip(lv, ys)],
        ]
        ax.errorbar(xs, ys, yerr=err, fmt=style, marker='o', capsize=3, label=label)
      else:
        ax.plot(xs, ys, style, marker='o', label=label)
    ax.set_xlabel('level')
    ax.set_ylabel('accuracy')
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = workdir.join(outdir, 'accuracy_by_level.png')
    with workdir.local_file(path) as local:
      fig.savefig(local, dpi=120)
    plt.close(fig)
    paths['accuracy_plot'] = path
  sampled = {k: r for k, r in results.items() if r.sample_correct is not None and r.ks}
  levels = sorted({lv for r in sampled.values() for lv in r.pass_at_k_by_level()}, key=int)
  if levels:
    cols = min(4, len(levels))
    nrows = -(-len(levels) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False, sharey=True
    )
    for ax, lv in zip(axes.flat, levels):
      for name, r in sampled.items():
        d = r.pass_at_k_by_level().get(lv)
        if d:
          ks = sorted(d)
          ax.plot(ks, [d[k] for k in ks], marker='o', label=name)
      ax.set_xscale('log', base=2)
      ax.set_title(f'level {lv}')
      ax.set_xlabel('k')
      ax.set_ylim(-0.02, 1.02)
      ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(levels) :]:
      ax.axis('off')
    axes[0, 0].set_ylabel('pass@k')
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = workdir.join(outdir, 'pass_at_k.png')
    with workdir.local_file(path) as local:
      fig.savefig(local, dpi=120)
    plt.close(fig)
    paths['pass_at_k_plot'] = path
  return paths
