"""``compfn-data``: build the string-task datasets as array_record, or export JSONL.

Usage::

    compfn-data list
    compfn-data build --config stage2_test_L1to8 [--config ...] [--data_dir DIR] [--export_jsonl FILE]
    compfn-data build --all [--data_dir DIR]
    compfn-data export --stage 2 --split test --min_level 1 --max_level 8 --num 2048 \\
        [--mode clean] [--seed 42] --out FILE.jsonl

``--data_dir`` defaults to ``$COMPFN_DATA_DIR`` or ``~/compfn_data``. Also runnable as
``python -m compfn.data.build``. Exit status: 0 on success, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from compfn.data import strings_tfds

COUNTDOWN_PREFIX = 'countdown/'
_DESCRIPTION = __doc__.split('\n\n')[0].replace('``', '')


def _level(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'invalid level {text!r}: expected an integer') from None
  if not 1 <= v <= 64:
    raise argparse.ArgumentTypeError(f'level {v} out of range: levels are 1..64')
  return v


def _positive(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'invalid count {text!r}: expected an integer') from None
  if v < 1:
    raise argparse.ArgumentTypeError(f'{v} must be a positive integer')
  return v


def _non_negative(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'invalid seed {text!r}: expected an integer') from None
  if v < 0:
    raise argparse.ArgumentTypeError(f'{v} must be a non-negative integer')
  return v


def _builder_for(name: str, data_dir: str, progress: bool):
  """``countdown/<config>`` names go to the Countdown builder, the rest to the string task."""
  if name.startswith(COUNTDOWN_PREFIX):
    from compfn.data import countdown_tfds

    return countdown_tfds.get_builder(name[len(COUNTDOWN_PREFIX) :], data_dir, progress=progress)
  return strings_tfds.get_builder(name, data_dir, progress=progress)


def _all_names() -> list[str]:
  from compfn.data import countdown_tfds

  return strings_tfds.named_configs() + [
      COUNTDOWN_PREFIX + n for n in countdown_tfds.named_configs()
  ]


def _config_name(text: str) -> str:
  if text.startswith(COUNTDOWN_PREFIX):
    from compfn.data import countdown_tfds

    try:
      countdown_tfds.config_from_name(text[len(COUNTDOWN_PREFIX) :])
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
    return text
  try:
    strings_tfds.config_from_name(text)
  except ValueError as e:
    msg = str(e)
    if msg.startswith('unknown config'):
      msg = (
          f'unknown config {text!r}: run `compfn-data list` for the named configs, or '
          f'give a canonical name such as stage2_test_L1to4_n1024_clean_seed7 or '
          f'trace_heldout_L1to3_n768_heldout_seed0'
      )
    raise argparse.ArgumentTypeError(msg) from None
  return text


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='compfn-data',
      description=_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='examples:\n'
      '  compfn-data build --config stage2_test_L1to8 --data_dir ~/compfn_data\n'
      '  compfn-data build --all\n'
      '  compfn-data export --stage 2 --split test --min_level 1 --max_level 8 '
      '--num 2048 --out test.jsonl',
  )
  sub = p.add_subparsers(dest='command', metavar='{build,export,list}')
  sub.required = True

  b = sub.add_parser(
      'build',
      help='generate configs and write them as TFDS array_record',
      description='Generate TFDS configs (StringTask / StringTrace) and write '
      'them as array_record under DATA_DIR/<builder>/<config>/1.0.0.',
  )
  what = b.add_mutually_exclusive_group(required=True)
  what.add_argument(
      '--config',
      action='append',
      type=_config_name,
      metavar='NAME',
      help='a named config (see `compfn-data list`) or canonical name such as '
      'stage2_test_L1to4_n1024_clean_seed7; repeatable',
  )
  what.add_argument('--all', action='store_true', help='every named config')
  b.add_argument(
      '--data_dir', default=None, help='output root (default: $COMPFN_DATA_DIR or ~/compfn_data)'
  )
  b.add_argument(
      '--export_jsonl',
      metavar='FILE',
      default=None,
      help='also write the built records to FILE (JSONL; .gz compresses); needs '
      'exactly one --config',
  )
  b.add_argument('--quiet', action='store_true', help='no progress bars')

  e = sub.add_parser(
      'export',
      help='generate a set and write JSONL (no TFDS)',
      description='Run compfn.tasks.strings.generate and write the records as '
      'JSONL (same fields as the TFDS examples).',
  )
  e.add_argument('--stage', type=int, choices=(1, 2), required=True)
  e.add_argument('--split', choices=('train', 'test'), required=True)
  e.add_argument('--min_level', type=_level, required=True)
  e.add_argument('--max_level', type=_level, required=True)
  e.add_argument(
      '--num',
      type=_positive,
      required=True,
      help='problems in total; a multiple of the number of levels',
  )
  e.add_argument('--mode', choices=('paper', 'clean'), default='paper')
  e.add_argument('--seed', type=_non_negative, default=strings_tfds.DEFAULT_SEED)
  e.add_argument('--out', required=True, metavar='FILE.jsonl')
  e.add_argument('--quiet', action='store_true', help='no progress bar')

  sub.add_parser('list', help='list the named configs')
  p.set_defaults(_sub={'build': b, 'export': e})
  return p


def _size(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def _build(args, parser) -> int:
  import tensorflow_datasets as tfds
  from compfn.data import pipeline

  names = _all_names() if args.all else args.config
  if args.export_jsonl and len(names) != 1:
    parser.error('argument --export_jsonl: needs exactly one --config')
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir or strings_tfds.default_data_dir()))
  tfds.disable_progress_bar()  # our own tqdm bar counts the generated problems
  for name in names:
    t0 = time.perf_counter()
    b = _builder_for(name, data_dir, progress=not args.quiet)
    existed = b.is_prepared()
    b.download_and_prepare()
    split = b.builder_config.split
    n = b.info.splits[split].num_examples
    verb = 'exists ' if existed else 'wrote  '
    print(
        f'{verb} {b.name}/{name}: {n:,} examples (split {split!r}, '
        f'{_size(b.data_dir) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s '
        f'-> {b.data_dir}',
        flush=True,
    )
    if args.export_jsonl:
      src = b.as_data_source(split=split)
      if name.startswith(COUNTDOWN_PREFIX):
        from compfn.data.countdown_tfds import decode_record
      else:
        decode_record = strings_tfds.decode_record
      count = pipeline.write_jsonl(
          (decode_record(src[i]) for i in range(len(src))), args.export_jsonl
      )
      print(f'wrote   {count:,} records -> {os.path.abspath(args.export_jsonl)}', flush=True)
  return 0


def _export(args, parser) -> int:
  from compfn.data import pipeline
  from compfn.tasks.strings import generator

  if args.min_level > args.max_level:
    parser.error(
        f'argument --max_level: {args.max_level} is below --min_level ' f'{args.min_level}'
    )
  levels = args.max_level - args.min_level + 1
  if args.num % levels:
    parser.error(
        f'argument --num: {args.num} is not a multiple of the number of levels '
        f'({levels}, --min_level {args.min_level} .. --max_level {args.max_level})'
    )
  t0 = time.perf_counter()
  it = generator.iter_generate(
      args.stage,
      args.split,
      args.min_level,
      args.max_level,
      args.num,
      seed=args.seed,
      mode=args.mode,
  )
  if not args.quiet:
    from tqdm.auto import tqdm

    it = tqdm(
        it,
        total=args.num,
        unit='problem',
        desc=f'stage {args.stage} {args.split} L{args.min_level}-{args.max_level}',
    )
  count = pipeline.write_jsonl(it, args.out)
  print(
      f'wrote   {count:,} problems (stage {args.stage} {args.split}, levels '
      f'{args.min_level}-{args.max_level}, {args.mode} mode, seed {args.seed}) in '
      f'{time.perf_counter() - t0:.1f}s -> {os.path.abspath(args.out)}',
      flush=True,
  )
  return 0


def _list() -> int:
  from compfn.data import countdown_tfds

  for cls, prefix in (
      (strings_tfds.StringTask, ''),
      (strings_tfds.StringTrace, ''),
      (countdown_tfds.Countdown, COUNTDOWN_PREFIX),
  ):
    print(f'{cls.name}:')
    for c in cls.BUILDER_CONFIGS:
      print(f'  {prefix + c.name:28s} {c.description}')
  return 0


def main(argv: list[str] | None = None) -> int:
  """CLI entry point (console script ``compfn-data``). Returns the exit status; argument
  errors exit with status 2 and a message naming the flag."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.command == 'build':
    return _build(args, args._sub['build'])
  if args.command == 'export':
    return _export(args, args._sub['export'])
  return _list()


if __name__ == '__main__':
  sys.exit(main())
