"""A run's reports: what a pipeline writes at its end, and ``tools/plot_results.py`` rewrites
from a workdir's files.

    print(markdown_table({'run name': res, ...}))            accuracy / Wilson / pass@k tables
    paths = write_report({'run name': res, ...}, outdir)     -> results.md / .csv / *.png
    path = plot_training_curves(workdir, ['sft', 'rl'])      -> training_curves.png
    paths = failure_report(summaries, workdir)               -> failure-mode tables and plots
    path = write_results(out, evals, summaries, workdir)     all of the above + results.json

``res`` is a :class:`compfn.eval_results.EvalResult`; ``summaries`` maps stage names to their
JSON summaries (:attr:`compfn.stages.base.Run.summaries`).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Mapping, Optional, Sequence

from compfn import workdir as workdir_lib
from compfn.eval_results import EvalResult

__all__ = [
    'markdown_table',
    'write_report',
    'plot_training_curves',
    'failure_report',
    'write_results',
]

# --------------------------------------------------------------------------------------------
# Evaluation tables and plots
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
    n = int(r.mask(None if label == 'all' else label).sum())
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
      levels = list(r.counts_by_level(g).items()) + [('all', int(r.mask(g).sum()))]
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


# --------------------------------------------------------------------------------------------
# Training curves, failure modes, results.json
# --------------------------------------------------------------------------------------------


_CURVE_KEYS = (
    ('loss', 'loss'),
    ('token_accuracy', 'token accuracy'),
    ('reward', 'reward'),
    ('accuracy', 'sample accuracy'),
    ('mixed_frac', 'mixed groups'),
    ('groups_trained', 'groups trained'),
    ('entropy', 'entropy'),
)


def plot_training_curves(
    workdir: str, stages: Sequence[str], out: Optional[str] = None
) -> Optional[str]:
  """``training_curves.png`` (in ``out``, default ``workdir``): one row per training stage, its
  logged scalars vs step."""
  from compfn.train import read_metrics

  data = [(s, read_metrics(workdir_lib.join(workdir, s))) for s in stages]
  data = [(s, rows) for s, rows in data if rows]
  if not data:
    return None
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  ncol = max(sum(any(k in r for r in rows) for k, _ in _CURVE_KEYS) for _, rows in data)
  fig, axes = plt.subplots(len(data), ncol, figsize=(3.2 * ncol, 2.6 * len(data)), squeeze=False)
  for i, (stage, rows) in enumerate(data):
    keys = [(k, t) for k, t in _CURVE_KEYS if any(k in r for r in rows)]
    for j in range(ncol):
      ax = axes[i][j]
      if j >= len(keys):
        ax.axis('off')
        continue
      k, title = keys[j]
      pts = [(r['step'], r[k]) for r in rows if k in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
      ax.set_title(f'{stage}: {title}', fontsize=8)
      ax.tick_params(labelsize=7)
      ax.set_xlabel('step', fontsize=7)
  fig.tight_layout()
  path = workdir_lib.join(out or workdir, 'training_curves.png')
  with workdir_lib.local_file(path) as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)
  return path


def failure_report(summaries: Mapping[str, dict], workdir: str) -> dict:
  """Append the failure-mode tables of every evaluation that classified its responses to
  results.md, and plot them as stacked bars (``failure_modes.png``; one panel per group)."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  by_group: dict = {}
  for name, summ in summaries.items():
    for group, d in (summ.get('failure_analysis') or {}).items():
      by_group.setdefault(group, {})[name] = d['failure_modes']
  if not by_group:
    return {}
  groups = [g for g in by_group if g != 'all'] or ['all']
  text = [
      '',
      '## Failure modes (greedy responses, classified against the reference trace)',
      '',
      'correct: right answer; ignores_composition: one step (or none) for a multi-call '
      'chain; incomplete_trace: fewer steps than calls; incorrect_composition: wrong calls, '
      'wrong order or a broken hand-over between steps; atomic_error: the right calls in the '
      'right order, a step computed wrong; format_error: unparsable or truncated.',
      '',
  ]
  paths = {}
  for g in groups:
    text.append(failure_modes_lib.markdown_table(by_group[g], title=f'group: {g}'))
    text.append('')
    path = workdir_lib.join(workdir, f'failure_modes_{g}.png')
    with workdir_lib.local_file(path) as f:
      if failure_modes_lib.plot_stacked(by_group[g], f, title=f'failure modes, {g} functions'):
        paths[f'failure_modes_{g}'] = path
  md = workdir_lib.join(workdir, 'results.md')
  workdir_lib.write_text(
      md, (workdir_lib.read_text(md) if workdir_lib.exists(md) else '') + '\n'.join(text) + '\n'
  )
  return paths


def write_results(
    out: dict,
    evals: Mapping[str, EvalResult],
    summaries: Mapping[str, dict],
    workdir: str,
    title: str = 'compfn',
) -> str:
  """The end of a pipeline (on the lead process): the reports of ``evals`` and the failure-mode
  tables, the training curves of the stages that trained (their summaries have ``steps``), all
  listed in ``out['reports']``, then ``out`` as ``results.json``; returns its path."""
  if evals:
    out['reports'] = write_report(evals, workdir, title=title)
    print(markdown_table(evals), flush=True)
    fm = failure_report(summaries, workdir)
    if fm:
      out['reports'].update(fm)
  curves = plot_training_curves(workdir, [k for k, v in summaries.items() if 'steps' in v])
  if curves:
    out.setdefault('reports', {})['training_curves'] = curves
  path = workdir_lib.join(workdir, 'results.json')
  workdir_lib.write_json(path, out, indent=1, default=float)
  return path
