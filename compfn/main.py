"""``compfn-train``: the gin entry point (also ``python -m compfn.main``).

    compfn-train --gin_file=gin/data/paper_datasets.gin --workdir=runs/data [--gin_param=...]

Every run is a gin-configured *job* (``run.job = @build_datasets``) called with the workdir. The
operative gin config is written to ``WORKDIR/config.gin`` so a run can be repeated exactly.
Jobs: :func:`build_datasets` and :func:`compfn.experiment.pipeline` (the trainer's stages:
sft / rft / rl / eval / gate / branch).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import gin


@gin.configurable
def build_datasets(workdir: str, configs=('stage2_test_L1to8',), data_dir: str | None = None,
                   export_jsonl: bool = True, progress: bool = True) -> dict:
    """Build string-task datasets (TFDS array_record) and write their statistics.

    configs: names from ``compfn-data list`` (or canonical names such as
        ``stage2_test_L1to4_n1024_clean_seed7``; Countdown sets as ``countdown/L3``).
    data_dir: where the TFDS datasets go (default ``WORKDIR/data``).
    export_jsonl: also write ``WORKDIR/jsonl/<config>.jsonl``.
    Writes ``WORKDIR/datasets.json``: per config, its path, size and
    :func:`compfn.tasks.strings.stats.summarize` (trace and Countdown configs: counts per level).
    """
    from compfn.data import countdown_tfds as C, pipeline, strings_tfds as S
    from compfn.tasks.strings import generator, stats

    data_dir = data_dir or os.path.join(workdir, 'data')
    summary = {}
    for name in configs:
        t = time.perf_counter()
        countdown = name.startswith('countdown/')
        mod = C if countdown else S
        cname = name.split('/', 1)[1] if countdown else name
        builder = mod.prepare(cname, data_dir, progress=progress)
        config = mod.config_from_name(cname)
        split = next(iter(builder.info.splits))
        src = mod.data_source(cname, data_dir)
        records = [mod.decode_record(src[i]) for i in range(len(src))]
        entry = {'path': str(builder.data_dir), 'split': split, 'num': len(records),
                 'seconds': round(time.perf_counter() - t, 2)}
        if isinstance(config, S.StringTaskConfig):
            problems = [generator.Problem(**{k: (tuple(v) if k == 'functions' else v)
                                             for k, v in r.items() if k not in
                                             ('index', 'prompt_hidden')}) for r in records]
            entry['stats'] = stats.summarize(problems)
        else:
            entry['levels'] = {str(lv): sum(r['level'] == lv for r in records)
                               for lv in sorted({r['level'] for r in records})}
        if export_jsonl:
            path = pathlib.Path(workdir) / 'jsonl' / f'{name.replace("/", "_")}.jsonl'
            path.parent.mkdir(parents=True, exist_ok=True)
            pipeline.write_jsonl(records, path)
            entry['jsonl'] = str(path)
        summary[name] = entry
        print(f'{name}: {entry["num"]:,} examples -> {entry["path"]}', flush=True)
    out = pathlib.Path(workdir) / 'datasets.json'
    out.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(f'wrote {out}')
    return summary


@gin.configurable
def run(workdir: str, job=gin.REQUIRED):
    """Run the configured job in ``workdir``."""
    return job(workdir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='compfn-train', description=__doc__.split('\n\n')[0])
    ap.add_argument('--gin_file', action='append', default=[], required=True,
                    help='gin config file (repeatable)')
    ap.add_argument('--gin_param', action='append', default=[],
                    help='gin binding, e.g. build_datasets.configs=["stage2_test_L1to8"]')
    ap.add_argument('--workdir', default=None, help='output folder (default runs/<gin file stem>)')
    args = ap.parse_args(argv)
    for f in args.gin_file:
        if not os.path.exists(f):
            ap.error(f'--gin_file {f}: no such file')
    from compfn import experiment  # noqa: F401  (registers the stages, sources, configs)
    gin.clear_config()
    gin.parse_config_files_and_bindings(args.gin_file, args.gin_param)
    workdir = args.workdir or os.path.join('runs', pathlib.Path(args.gin_file[0]).stem)
    os.makedirs(workdir, exist_ok=True)
    pathlib.Path(workdir, 'config.gin').write_text(gin.config_str())
    run(workdir)
    return 0


if __name__ == '__main__':
    sys.exit(main())
