#!/usr/bin/env python
"""The CPU reproduction (``gin/repro_cpu.gin``): run its arms x seeds, collect the artifacts,
and write the comparison the README quotes.

    python tools/repro.py run [--arms rl_L2,rl_L1,...] [--seeds 1,2,3] [--runs runs/repro_cpu]
    python tools/repro.py collect [--runs runs/repro_cpu] [--out results/repro_cpu]
    python tools/repro.py report [--out results/repro_cpu]

``run`` calls ``compfn-train --gin_file=gin/repro_cpu.gin --gin_param=ARM='<arm>'
--gin_param=SEED=<k> --workdir=<runs>/<arm>/seed<k>`` for every pair, one after another
(each is resumable: rerunning skips finished stages, so an interrupted ``run`` just continues).
``collect`` copies each finished run's ``results.json``, ``config.gin`` and per-stage
``metrics.jsonl`` to ``<out>/<arm>/seed<k>/`` (a few hundred KB: the committed artifacts).
``report`` reads only those artifacts and writes ``<out>/summary.md`` (per-arm accuracy by
level with seed means and 95% Wilson intervals, the per-seed L3 comparison the issue asks for,
pass@k at L3-L4, failure modes), ``<out>/summary.json`` and plots (``accuracy_by_level.png``,
``pass_at_k.png``, ``failure_modes.png``). The README's reproduction table is this file's
output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ARMS = ('base', 'rl_L2', 'rl_L1', 'rft_L2', 'sft', 'rl_L2_clean')
ARM_LABELS = {
    'base': 'stage-1 model (no stage 2)',
    'rl_L2': 'RL on L2 (paper split)',
    'rl_L1': 'RL on L1 (control)',
    'rft_L2': 'iterative RFT on L2 (next-token baseline)',
    'sft': 'continued stage-1 SFT (control)',
    'rl_L2_clean': 'RL on L2 (clean split: no train twin of a held-out function)',
}
GIN = 'gin/repro_cpu.gin'
EVAL = 'final'  # the eval stage every arm ends with
PASSK = 'final_passk'  # the pass@k evaluation at L3-L4


def _pairs(arms, seeds):
  return [(a, s) for s in seeds for a in arms]


def cmd_run(args) -> int:
  pairs = _pairs(args.arms, args.seeds)
  for i, (arm, seed) in enumerate(pairs, 1):
    wd = os.path.join(args.runs, arm, f'seed{seed}')
    cmd = [
        sys.executable,
        '-m',
        'compfn.main',
        f'--gin_file={args.gin}',
        f"--gin_param=ARM='{arm}'",
        f'--gin_param=SEED={seed}',
        f'--workdir={wd}',
    ] + [f'--gin_param={b}' for b in args.gin_param]
    print(f'[{i}/{len(pairs)}] {arm} seed {seed}: {" ".join(cmd[2:])}', flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd)
    print(
        f'[{i}/{len(pairs)}] {arm} seed {seed}: exit {rc} after {time.time() - t0:.0f} s',
        flush=True,
    )
    if rc != 0:
      return rc
  return 0


def cmd_collect(args) -> int:
  n = 0
  for arm in sorted(os.listdir(args.runs)):
    for sd in sorted(os.listdir(os.path.join(args.runs, arm))):
      src = os.path.join(args.runs, arm, sd)
      res = os.path.join(src, 'results.json')
      if not os.path.isfile(res):
        print(f'skip {src}: no results.json (not finished)')
        continue
      dst = os.path.join(args.out, arm, sd)
      os.makedirs(dst, exist_ok=True)
      shutil.copy(res, os.path.join(dst, 'results.json'))
      for name in ('config.gin', 'results.md'):
        if os.path.isfile(os.path.join(src, name)):
          shutil.copy(os.path.join(src, name), os.path.join(dst, name))
      for root, _, files in os.walk(src):
        if 'metrics.jsonl' in files and 'checkpoints' not in root:
          rel = os.path.relpath(root, src).replace(os.sep, '__')
          shutil.copy(
              os.path.join(root, 'metrics.jsonl'), os.path.join(dst, f'{rel}_metrics.jsonl')
          )
      n += 1
  print(f'collected {n} runs into {args.out}')
  return 0


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
  if n == 0:
    return (0.0, 1.0)
  p = k / n
  d = 1 + z * z / n
  c = (p + z * z / (2 * n)) / d
  h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return (max(0.0, c - h), min(1.0, c + h))


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple:
  """95% interval of p1 - p2 for two independent proportions from the two Wilson intervals
  (Newcombe 1998, method 10). The arms are scored on the same problems, so the paired
  interval would be narrower: this one is conservative. Example: 56/70 vs 48/80 gives
  0.2 [0.0524, 0.3339], Newcombe's own worked example."""
  p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
  l1, u1 = wilson(k1, n1, z)
  l2, u2 = wilson(k2, n2, z)
  d = p1 - p2
  return (
      d,
      d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
      d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
  )


def load(out: str) -> dict:
  """{arm: {seed: results.json}} of the collected artifacts."""
  runs: dict = {}
  for arm in sorted(os.listdir(out)):
    d = os.path.join(out, arm)
    if not os.path.isdir(d):
      continue
    for sd in sorted(os.listdir(d)):
      p = os.path.join(d, sd, 'results.json')
      if os.path.isfile(p):
        with open(p) as f:
          runs.setdefault(arm, {})[int(sd.replace('seed', ''))] = json.load(f)
  return runs


def _eval(results: dict, name: str, group: str | None = None) -> dict | None:
  for key, s in results.get('stages', {}).items():
    if key == name or key.endswith('/' + name):
      return s['groups'].get(group, s) if group else s
  return None


def summarize(runs: dict, group: str = 'heldout') -> dict:
  out = {}
  for arm, seeds in runs.items():
    per_seed = {}
    for seed, r in seeds.items():
      ev = _eval(r, EVAL, group)
      if ev is None:
        continue
      pk = _eval(r, PASSK, group)
      per_seed[seed] = {
          'accuracy_by_level': ev['accuracy_by_level'],
          'counts_by_level': ev['counts_by_level'],
          'pass_at_k_by_level': (pk or {}).get('pass_at_k_by_level', {}),
      }
    out[arm] = per_seed
  return out


def _mean(xs):
  return sum(xs) / len(xs) if xs else float('nan')


def markdown(summary: dict, group: str) -> str:
  levels = sorted(
      {lv for s in summary.values() for r in s.values() for lv in r['accuracy_by_level']}, key=int
  )
  lines = [
      f'Held-out functions on held-out inputs (group `{group}`), greedy accuracy by level: mean over '
      'seeds, and each seed with its 95% Wilson interval.',
      '',
      '| arm | seeds | ' + ' | '.join(f'L{lv}' for lv in levels) + ' |',
      '|---|---|' + '---|' * len(levels),
  ]
  for arm in [a for a in ARMS if a in summary] + [a for a in summary if a not in ARMS]:
    s = summary[arm]
    if not s:
      continue
    cells = []
    for lv in levels:
      accs = [r['accuracy_by_level'].get(lv) for r in s.values() if lv in r['accuracy_by_level']]
      cells.append(f'{_mean(accs):.3f}' if accs else '')
    lines.append(f'| {arm} | {len(s)} | ' + ' | '.join(cells) + ' |')
  lines += [
      '',
      '| arm | seed | ' + ' | '.join(f'L{lv}' for lv in levels) + ' |',
      '|---|---|' + '---|' * len(levels),
  ]
  for arm in [a for a in ARMS if a in summary] + [a for a in summary if a not in ARMS]:
    for seed, r in sorted(summary[arm].items()):
      cells = []
      for lv in levels:
        a, n = r['accuracy_by_level'].get(lv), r['counts_by_level'].get(lv, 0)
        if a is None:
          cells.append('')
          continue
        lo, hi = wilson(round(a * n), n)
        cells.append(f'{a:.3f} [{lo:.2f}, {hi:.2f}]')
      lines.append(f'| {arm} | {seed} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def comparison(summary: dict, level: str = '3') -> dict:
  """Per seed: does RL on L2 beat RL on L1 and RFT on L2 at ``level``? Only the same seed's
  controls count; a missing control makes the answer False (never another seed's number).

  ``beats_rl_L1_and_rft_L2`` is the plain comparison (higher accuracy, however small the gap:
  one problem of 256 decides it). ``diff_vs[arm]`` is rl_L2 minus that arm with its 95%
  interval (``newcombe_diff``), and ``clearly_beats_rl_L1_and_rft_L2`` asks for both intervals
  to lie above 0."""
  out = {}
  for seed, r in sorted(summary.get('rl_L2', {}).items()):
    a = r['accuracy_by_level'].get(level)
    n = r['counts_by_level'].get(level, 0)
    row = {'rl_L2': a, 'diff_vs': {}}
    for other in ('rl_L1', 'rft_L2', 'sft', 'base'):
      o = summary.get(other, {}).get(seed)
      row[other] = None if o is None else o['accuracy_by_level'].get(level)
      if a is not None and row[other] is not None:
        no = o['counts_by_level'].get(level, 0)
        d, lo, hi = newcombe_diff(round(a * n), n, round(row[other] * no), no)
        row['diff_vs'][other] = {'diff': d, 'ci95': [lo, hi], 'above_zero': lo > 0}
    controls = ('rl_L1', 'rft_L2')
    row['beats_rl_L1_and_rft_L2'] = all(
        a is not None and row[o] is not None and a > row[o] for o in controls
    )
    row['clearly_beats_rl_L1_and_rft_L2'] = all(
        o in row['diff_vs'] and row['diff_vs'][o]['above_zero'] for o in controls
    )
    out[seed] = row
  return out


def _save(plt, fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plots(summary: dict, out: str, group: str) -> list[str]:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  paths = []
  levels = sorted(
      {lv for s in summary.values() for r in s.values() for lv in r['accuracy_by_level']}, key=int
  )
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for arm, s in summary.items():
    if not s:
      continue
    xs = [int(lv) for lv in levels]
    per = [[r['accuracy_by_level'].get(lv, float('nan')) for lv in levels] for r in s.values()]
    mean = [_mean([p[i] for p in per]) for i in range(len(levels))]
    lo = [min(p[i] for p in per) for i in range(len(levels))]
    hi = [max(p[i] for p in per) for i in range(len(levels))]
    ax.plot(xs, mean, marker='o', label=f'{arm} ({len(s)} seeds)')
    ax.fill_between(xs, lo, hi, alpha=0.15)
  ax.set_xlabel('level (number of composed held-out functions)')
  ax.set_ylabel('greedy accuracy (seed mean; band: min-max over seeds)')
  ax.set_title(f'compfn repro_cpu: held-out accuracy by level ({group})')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  paths.append(_save(plt, fig, os.path.join(out, f'accuracy_by_level_{group}.png')))
  # pass@k at the levels that have it
  pk_levels = sorted(
      {lv for s in summary.values() for r in s.values() for lv in r['pass_at_k_by_level']}, key=int
  )
  if pk_levels:
    fig, axes = plt.subplots(1, len(pk_levels), figsize=(5 * len(pk_levels), 4), squeeze=False)
    for ax, lv in zip(axes[0], pk_levels):
      for arm, s in summary.items():
        curves = [
            r['pass_at_k_by_level'].get(lv) for r in s.values() if r['pass_at_k_by_level'].get(lv)
        ]
        if not curves:
          continue
        ks = sorted({int(k) for c in curves for k in c})
        mean = [_mean([c[str(k)] for c in curves if str(k) in c]) for k in ks]
        ax.plot(ks, mean, marker='o', label=arm)
      ax.set_xscale('log', base=2)
      ax.set_xlabel('k')
      ax.set_ylabel('pass@k (seed mean)')
      ax.set_title(f'level {lv}')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    paths.append(_save(plt, fig, os.path.join(out, f'pass_at_k_{group}.png')))
  return paths


def cmd_report(args) -> int:
  runs = load(args.out)
  if not runs:
    print(f'no collected runs under {args.out} (run `python tools/repro.py collect` first)')
    return 2
  report = {'groups': {}}
  md = [
      '# compfn repro_cpu: results',
      '',
      f'Generated by `python tools/repro.py report --out {args.out}` from the artifacts in this folder.',
      '',
  ]
  for group in args.groups:
    s = summarize(runs, group)
    cmp_ = comparison(s, '3')
    report['groups'][group] = {'summary': s, 'l3_comparison': cmp_}
    md += [
        f'## {group}',
        '',
        markdown(s, group),
        '',
        '### Held-out L3, per seed: RL on L2 vs the controls',
        '',
    ]
    md += [
        '| seed | rl_L2 | rl_L1 | rft_L2 | sft | base | rl_L2 - rl_L1 [95%] | rl_L2 - rft_L2 [95%] '
        '| higher than both | interval above 0 for both |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for seed, row in cmp_.items():
      f = lambda k: '' if row.get(k) is None else f'{row[k]:.3f}'  # noqa: E731

      def dv(k, row=row):
        if k not in row['diff_vs']:
          return ''
        d = row['diff_vs'][k]
        return f'{d["diff"]:+.3f} [{d["ci95"][0]:+.3f}, {d["ci95"][1]:+.3f}]'

      md.append(
          f'| {seed} | {f("rl_L2")} | {f("rl_L1")} | {f("rft_L2")} | {f("sft")} | {f("base")} '
          f'| {dv("rl_L1")} | {dv("rft_L2")} | {row["beats_rl_L1_and_rft_L2"]} '
          f'| {row["clearly_beats_rl_L1_and_rft_L2"]} |'
      )
    md += [
        '',
        '"higher than both": rl_L2\'s L3 accuracy is above each control\'s, by any margin. '
        '"interval above 0": the 95% interval of the difference (Newcombe\'s, from the two Wilson '
        'intervals; conservative for arms scored on the same problems) excludes 0 for both.',
        '',
    ]
    for p in plots(s, args.out, group):
      md.append(f'![{os.path.basename(p)}]({os.path.basename(p)})')
    md.append('')
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(args.out, 'summary.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  print('\n'.join(md))
  return 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = ap.add_subparsers(dest='cmd', required=True)
  r = sub.add_parser('run', help='run every arm x seed (resumable)')
  r.add_argument('--arms', default=','.join(ARMS), type=lambda s: s.split(','))
  r.add_argument('--seeds', default='1,2,3', type=lambda s: [int(x) for x in s.split(',')])
  r.add_argument('--runs', default='runs/repro_cpu')
  r.add_argument('--gin', default=GIN)
  r.add_argument('--gin_param', action='append', default=[])
  c = sub.add_parser('collect', help='copy finished runs into the artifact folder')
  c.add_argument('--runs', default='runs/repro_cpu')
  c.add_argument('--out', default='results/repro_cpu')
  p = sub.add_parser('report', help='summary.md / .json and plots from the artifacts')
  p.add_argument('--out', default='results/repro_cpu')
  p.add_argument(
      '--groups', default='all,heldout_clean', type=lambda s: s.split(',')
  )  # 'all': the paper split; 'heldout_clean': problems without a train twin
  args = ap.parse_args(argv)
  return {'run': cmd_run, 'collect': cmd_collect, 'report': cmd_report}[args.cmd](args)


if __name__ == '__main__':
  sys.exit(main())
