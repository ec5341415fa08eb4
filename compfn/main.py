"""``compfn-train``: the gin entry point (also ``python -m compfn.main``).

    compfn-train --gin_file=gin/data/paper_datasets.gin --workdir=runs/data [--gin_param=...]

Every run is a gin-configured *job* (``run.job = @build_datasets``) called with the workdir. The
operative gin config is written to ``WORKDIR/config.gin`` so a run can be repeated exactly.
Jobs: :func:`build_datasets` and :func:`compfn.pipeline.pipeline` (the trainer's stages,
``compfn.stages``: sft / rft / rl / eval / gate / export, and branch).

Known failures print one line, ``compfn-train: error: <message>``, and exit with their code
(:mod:`compfn.errors`; ``--verbose`` adds the traceback): 2 configuration (gin binding / file /
flag), 3 gate not met, 4 non-finite loss, 5 checkpoint/config mismatch, 75 preempted (SIGTERM;
the step was saved, rerun to resume). Anything else is a bug: traceback, exit code 1.
``--compile_only [--topology=v5p:4x4x4]`` compiles every step program for the mesh instead of
running (no checkpoint, no data) and writes ``WORKDIR/compile_report.json``; exit 6 when one does
not fit the device memory (:mod:`compfn.compile_report`).
Multi-process: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every
process (:func:`compfn.parallel.initialize_distributed`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time
import tokenize
import traceback
from typing import Optional

import gin

from compfn.errors import CompfnError, ConfigError, NonFiniteLoss


@gin.configurable
def build_datasets(
    workdir: str,
    configs=('stage2_test_L1to8',),
    data_dir: str | None = None,
    export_jsonl: bool = True,
    progress: bool = True,
) -> dict:
  """Build string-task datasets (TFDS array_record) and write their statistics.

  configs: names from ``compfn-data list`` (or canonical names such as
      ``stage2_test_L1to4_n1024_clean_seed7``; Countdown sets as ``countdown/L3``).
  data_dir: where the TFDS datasets go (default ``WORKDIR/data``).
  export_jsonl: also write ``WORKDIR/jsonl/<config>.jsonl``.
  Writes ``WORKDIR/datasets.json``: per config, its path, size and
  :func:`compfn.tasks.strings.stats.summarize` (trace and Countdown configs: counts per level).
  """
  from compfn import workdir as workdir_lib
  from compfn.data import countdown_tfds, pipeline, strings_tfds
  from compfn.tasks.strings import generator, stats

  data_dir = data_dir or os.path.join(workdir, 'data')
  summary = {}
  for name in configs:
    t = time.perf_counter()
    countdown = name.startswith('countdown/')
    mod = countdown_tfds if countdown else strings_tfds
    cname = name.split('/', 1)[1] if countdown else name
    # The lead process builds; the others wait, then find it (shared data_dir) or build
    # the same deterministic data on their own disk.
    if workdir_lib.is_lead():
      builder = mod.prepare(cname, data_dir, progress=progress)
    workdir_lib.barrier(f'build_datasets:{name}')
    if not workdir_lib.is_lead():
      builder = mod.prepare(cname, data_dir, progress=False)
    config = mod.config_from_name(cname)
    split = next(iter(builder.info.splits))
    src = mod.data_source(cname, data_dir)
    records = [mod.decode_record(src[i]) for i in range(len(src))]
    entry = {
        'path': str(builder.data_dir),
        'split': split,
        'num': len(records),
        'seconds': round(time.perf_counter() - t, 2),
    }
    if isinstance(config, strings_tfds.StringTaskConfig):
      problems = [
          generator.Problem(
              **{
                  k: (tuple(v) if k == 'functions' else v)
                  for k, v in r.items()
                  if k not in ('index', 'prompt_hidden')
              }
          )
          for r in records
      ]
      entry['stats'] = stats.summarize(problems)
    else:
      entry['levels'] = {
          str(lv): sum(r['level'] == lv for r in records)
          for lv in sorted({r['level'] for r in records})
      }
    if export_jsonl:
      path = workdir_lib.join(workdir, 'jsonl', f'{name.replace("/", "_")}.jsonl')
      if workdir_lib.is_lead():
        pipeline.write_jsonl(records, path)
      entry['jsonl'] = str(path)
    summary[name] = entry
    print(f'{name}: {entry["num"]:,} examples -> {entry["path"]}', flush=True)
  out = workdir_lib.join(workdir, 'datasets.json')
  if workdir_lib.write_json(out, summary, indent=1, ensure_ascii=False):
    print(f'wrote {out}')
  return summary


@gin.configurable
def run(workdir: str, job=gin.REQUIRED):
  """Run the configured job in ``workdir``."""
  return job(workdir)


_EPILOG = """exit codes:
  0   done
  1   an unexpected error (a bug; the traceback is printed)
  2   configuration error: a gin binding, gin file or command-line flag (named)
  3   an enforced gate was not met (gate_stage.enforce)
  4   a step produced a non-finite loss or gradient (names the last good checkpoint)
  5   a checkpoint does not match the configuration (names the folder and what differs)
  6   --compile_only: a compiled program does not fit the device memory (names it)
  75  preempted (SIGTERM): the step was checkpointed; rerun the same command to resume"""


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog='compfn-train',
      description=__doc__.split('\n\n')[0],
      epilog=_EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument(
      '--gin_file', action='append', default=[], required=True, help='gin config file (repeatable)'
  )
  ap.add_argument(
      '--gin_param',
      action='append',
      default=[],
      help='gin binding, e.g. build_datasets.configs=["stage2_test_L1to8"]',
  )
  ap.add_argument('--workdir', default=None, help='output folder (default runs/<gin file stem>)')
  ap.add_argument(
      '--verbose',
      action='store_true',
      help='print the full traceback for the known failures too (exit codes 2-75)',
  )
  co = ap.add_argument_group(
      'compile only',
      'compile every step program of the pipeline ahead of time (no checkpoint,\n'
      'no data) and write WORKDIR/compile_report.json: per-device memory of each program;\n'
      'exit 6 if one does not fit (compfn.compile_report)',
  )
  co.add_argument(
      '--compile_only', action='store_true', help='compile, measure and report; train nothing'
  )
  co.add_argument(
      '--topology',
      default=None,
      metavar='NAME',
      help='compile for TPU devices of this topology, e.g. v5p:4x4x4, v5e:2x2 '
      "(needs libtpu: pip install 'jax[tpu]'; default: the local devices)",
  )
  co.add_argument(
      '--device_memory_bytes',
      type=int,
      default=None,
      metavar='N',
      help="memory per device to check against (default: the device's own, "
      'a table of TPU HBM sizes, or host RAM / devices on CPU)',
  )
  co.add_argument(
      '--model_preset',
      default=None,
      metavar='NAME',
      help='compile this compfn.model preset (e.g. llama3_1_8b_instruct) instead '
      "of load_model's checkpoint",
  )
  mp = ap.add_argument_group(
      'multi-process',
      'one process per host, each running the same command with its own\n'
      '--process_id; all three flags or none (a TPU VM then detects its slice)',
  )
  mp.add_argument(
      '--coordinator_address',
      default=None,
      metavar='HOST:PORT',
      help="process 0's address and a free port",
  )
  mp.add_argument('--num_processes', type=int, default=None, metavar='N')
  mp.add_argument('--process_id', type=int, default=None, metavar='I', help='in [0, N)')
  return ap


#: gin's call-time error for a missing ``gin.REQUIRED`` binding (a RuntimeError).
_GIN_REQUIRED = re.compile(r'Required bindings for `[^`]+` not provided in config')


def _one_line(text: str) -> str:
  return ' '.join(ln.strip() for ln in str(text).splitlines() if ln.strip())


def _gin_error(e: Exception, source: str) -> ConfigError:
  """gin's parse error as one line naming the binding and where it is: ``source`` is the gin
  file (or one it includes) or ``--gin_param``."""
  if isinstance(e, SyntaxError) and e.lineno:
    text = (e.text or '').strip()
    msg = f'{e.msg} ({e.filename or source}, line {e.lineno}{": " + text if text else ""})'
  elif isinstance(e, tokenize.TokenError):
    msg = f'{e.args[0]} in {source} (an unclosed bracket or string?)'
  else:
    # "No configurable matching 'x'.\n  In file "f.gin", line 3\n    x.y = 1\n    ^"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().strip('^')]
    msg = lines[0] if lines else type(e).__name__
    where = next((i for i, ln in enumerate(lines) if ln.startswith('In ')), None)
    if where is not None:
      code = lines[where + 1] if where + 1 < len(lines) else ''
      where = lines[where][3:].replace('bindings string', '--gin_param')
      msg += f' ({where}{": " + code if code else ""})'
    else:
      msg += f' (in {source})'
  return ConfigError(f'gin: {msg}')


def _parse_gin(files, bindings):
  """``gin.parse_config_files_and_bindings(files, bindings)``, one source at a time so that a
  parse error says which file or binding it is in (:class:`ConfigError`)."""
  gin_errors = (ValueError, SyntaxError, tokenize.TokenError, OSError, ImportError, NameError)
  for f in files:
    try:
      gin.parse_config_file(f)
    except gin_errors as e:
      raise _gin_error(e, f) from e
  try:
    gin.parse_config(bindings)
  except gin_errors as e:
    raise _gin_error(e, '--gin_param') from e
  gin.finalize()


def _known_failure(e: BaseException) -> Optional[tuple[int, str]]:
  """(exit code, one-line message) for the failures reported without a traceback, else None."""
  if isinstance(e, CompfnError):
    # e.message: gin's re-raised copy appends "In call to configurable ..." to str(e).
    return e.exit_code, _one_line(getattr(e, 'message', None) or str(e))
  ckpt = sys.modules.get('compfn.checkpoint')
  if ckpt is not None and isinstance(e, ckpt.NonFiniteError):  # Checkpointer.save refused
    return NonFiniteLoss.exit_code, _one_line(str(e).split('\n  In call to')[0])
  if isinstance(e, RuntimeError) and _GIN_REQUIRED.search(str(e)):
    return ConfigError.exit_code, 'gin: ' + _one_line(str(e).split('\n  In call to')[0])
  return None


def _run(args) -> int:
  from compfn import parallel
  # Before anything initialises a JAX backend (the pipeline's own call is then a no-op).
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  from compfn import pipeline  # noqa: F401  (registers the pipeline, stages, sources, configs)
  from compfn import compile_report  # noqa: F401  (registers compile_report)

  only = {
      '--topology': args.topology,
      '--device_memory_bytes': args.device_memory_bytes,
      '--model_preset': args.model_preset,
  }
  stray = [k for k, v in only.items() if v is not None]
  if stray and not args.compile_only:
    raise ConfigError(f'{", ".join(stray)} only apply with --compile_only')
  gin.clear_config()
  _parse_gin(args.gin_file, args.gin_param)
  workdir = args.workdir or os.path.join('runs', pathlib.Path(args.gin_file[0]).stem)
  from compfn import workdir as workdir_lib

  workdir_lib.makedirs(workdir)
  workdir_lib.write_text(
      workdir_lib.join(workdir, 'config.gin'), gin.config_str()
  )  # the lead process
  if args.compile_only:
    compile_report.compile_report(
        workdir,
        topology=args.topology,
        device_memory_bytes=args.device_memory_bytes,
        model_preset=args.model_preset,
    )
    return 0
  run(workdir)
  return 0


def main(argv=None, *, exit_codes: Optional[bool] = None) -> int:
  """Parse the command line, load the gin config and run the job; returns the exit code.

  The known failures (:mod:`compfn.errors`: a gin or flag error, a gate, a non-finite loss, a
  checkpoint mismatch, preemption) print one line, ``compfn-train: error: <message>``, to
  stderr and return their exit code (``--verbose``: with the traceback); anything else raises
  (a traceback, exit code 1). ``exit_codes`` defaults to on for the program (``argv`` None:
  ``compfn-train``, ``python -m compfn.main``) and off when called with ``argv`` (tests,
  notebooks), where every failure raises its exception."""
  ap = _parser()
  args = ap.parse_args(argv)
  for f in args.gin_file:
    if not os.path.exists(f):
      ap.exit(2, f'{ap.prog}: error: --gin_file {f}: no such file\n')
  if not (argv is None if exit_codes is None else exit_codes):
    return _run(args)
  try:
    return _run(args)
  except Exception as e:  # noqa: BLE001  (the error boundary; unknown errors re-raise)
    known = _known_failure(e)
    if known is None:
      raise
    if args.verbose:
      traceback.print_exc()
    sys.stdout.flush()
    print(f'{ap.prog}: error: {known[1]}', file=sys.stderr, flush=True)
    return known[0]


if __name__ == '__main__':
  sys.exit(main())
