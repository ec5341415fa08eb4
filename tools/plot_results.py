#!/usr/bin/env python
"""Re-plot a finished (or running) pipeline's reports from its files, without JAX work:

    python tools/plot_results.py runs/demo [--out DIR] [--title TEXT]

Reads ``WORKDIR/results.json`` (which stages ran, which were gates), every evaluation's
``<stage>/eval.json`` and every training stage's ``<stage>/metrics.jsonl``, and writes
``results.md``, ``results.csv``, ``accuracy_by_level.png``, ``pass_at_k.png`` (when an
evaluation sampled) and ``training_curves.png`` to ``--out`` (default: the workdir itself), the
same files :func:`compfn.pipeline.pipeline` writes at the end of a run (``compfn.reports``).
Works on ``gs://`` workdirs too (:mod:`compfn.workdir`).
"""
from __future__ import annotations

import argparse
import sys


def replot(workdir: str, out: str | None = None, title: str | None = None) -> dict:
  """Rewrite the reports of ``workdir`` into ``out``; returns {kind: path}."""
  from compfn import eval_results
  from compfn import reports
  from compfn import workdir as workdir_lib

  out = out or workdir
  results_path = workdir_lib.join(workdir, 'results.json')
  if not workdir_lib.exists(results_path):
    raise FileNotFoundError(f'{results_path} does not exist: is {workdir} a pipeline workdir?')
  results = workdir_lib.read_json(results_path)
  stages = results.get('stages', {})
  evals = {}
  for name, summary in stages.items():
    path = workdir_lib.join(workdir, name, 'eval.json')
    if summary.get('passed') is None and workdir_lib.exists(path):  # gates carry 'passed'
      evals[name] = eval_results.EvalResult.from_json(workdir_lib.read_json(path)['result'])
  paths = {}
  if evals:
    paths.update(reports.write_report(evals, out, title=title or 'compfn'))
  trained = [name for name, summary in stages.items() if 'steps' in summary]
  curves = reports.plot_training_curves(workdir, trained, out=out)
  if curves:
    paths['training_curves'] = curves
  return paths


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('workdir', help='a pipeline workdir (holds results.json)')
  ap.add_argument('--out', default=None, help='where to write (default: the workdir)')
  ap.add_argument('--title', default=None, help="the reports' title")
  args = ap.parse_args(argv)
  try:
    paths = replot(args.workdir, args.out, args.title)
  except FileNotFoundError as e:
    ap.exit(2, f'{ap.prog}: error: {e}\n')
  for kind, path in paths.items():
    print(f'{kind}: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
