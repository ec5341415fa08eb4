"""TFDS builder for the Countdown task, written as array_record — no TensorFlow.

:class:`Countdown` (``countdown``) has one BuilderConfig per generated set, one TFDS split each:
the paper's sets (PAPER §2.4, seed 42) are ``L2`` (50,000 problems with 2 numbers, the Stage-1
atomic data, split ``train``) and ``L3``, ``L4``, ``L5`` (512 each, evaluation, split ``test``).
Any other set: ``Countdown.config_for(level, num, seed)``, canonically named
``L{level}[_n{num}][_seed{seed}]`` (e.g. ``L3_n128_seed7``), which :func:`config_from_name`
parses back. Problems are :func:`compfn.tasks.countdown.generate` (reasoning-gym-identical).

The builder reuses :mod:`compfn.data.strings_tfds`'s plumbing (``Builder``): array_record by
default, the deterministic example writer (byte-identical shards across builds), the
``code_path`` override (TFDS 4.9.10 would need ``importlib_resources``), generator order
(``disable_shuffling=True``, key = index, so ``src[i]`` is problem ``i``)::

    b = prepare('L3', data_dir=DIR)                      # or Countdown(config='L3', ...)
    src = data_source('L3', data_dir=DIR)       # = tfds.data_source('countdown/L3', ...)['test']
    decode_record(src[0])
    # {'prompt': 'Using the numbers [95, 14, 18], ...', 'numbers': [95, 14, 18], 'target': 99,
    #  'expression': '18 + 95 - 14', 'reference': '{"answer": 99, "numbers": [95, 14, 18]}',
    #  'level': 3, 'index': 0}

``tfds.load`` is never used (it needs TensorFlow).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from compfn.data import strings_tfds
from compfn.tasks.countdown import generator

VERSION = strings_tfds.VERSION
DEFAULT_SEED = generator.DEFAULT_SEED
#: Paper sizes per level (canonical names omit ``_n`` at these sizes).
DEFAULT_NUM = dict(generator.PAPER_SETS)
#: Levels of the named configs.
PAPER_LEVELS = (2, 3, 4, 5)


def problem_record(p: generator.Problem, index: int) -> dict:
  """The stored example of a problem (plain Python)."""
  return {
      'prompt': p.prompt,
      'numbers': [int(v) for v in p.numbers],
      'target': int(p.target),
      'expression': p.expression,
      'reference': p.reference,
      'level': int(p.level),
      'index': int(index),
  }


def decode_record(raw: dict) -> dict:
  """A record from ``tfds.data_source`` (bytes, numpy) → plain Python (str, int, list[int]);
  already-decoded records pass through."""
  out = strings_tfds.decode_record({k: v for k, v in raw.items() if k != 'numbers'})
  if 'numbers' in raw:
    out['numbers'] = [int(v) for v in np.asarray(raw['numbers']).tolist()]
  return out


@dataclasses.dataclass(eq=False)
class CountdownSetConfig(tfds.core.BuilderConfig):
  """``generate(level, num, seed)`` stored under the TFDS split ``split``."""

  level: int = 3
  num: int = 512
  seed: int = DEFAULT_SEED
  split: str = 'test'

  def generator_args(self) -> dict:
    return dict(level=self.level, num=self.num, seed=self.seed)


_NAME_RE = re.compile(r'^L(?P<level>\d+)(?:_n(?P<num>\d+))?(?:_seed(?P<seed>\d+))?$')


def _split_for(level: int) -> str:
  return 'train' if level == 2 else 'test'


def countdown_config(
    level: int, num: int | None = None, seed: int = DEFAULT_SEED
) -> CountdownSetConfig:
  """The config for ``generate(level, num, seed)``, canonically named. ``num`` defaults to the
  paper's size for the level (50,000 for 2, else 512). Split: ``train`` for level 2 (the
  paper's Stage-1 data), ``test`` otherwise."""
  for k, v in (('level', level), ('num', num), ('seed', seed)):
    if v is None and k == 'num':
      continue
    if not isinstance(v, int) or isinstance(v, bool):
      raise ValueError(f'{k} must be an integer, got {v!r}')
  if not 2 <= level <= 64:
    raise ValueError(f'level must be in 2..64, got {level}')
  default = DEFAULT_NUM.get(level, 512)
  num = default if num is None else num
  if num < 1:
    raise ValueError(f'num must be positive, got {num}')
  if seed < 0:
    raise ValueError(f'seed must be non-negative, got {seed}')
  name = (
      f'L{level}'
      + (f'_n{num}' if num != default else '')
      + (f'_seed{seed}' if seed != DEFAULT_SEED else '')
  )
  paper = ' (paper set)' if name in {f'L{lv}' for lv in PAPER_LEVELS} else ''
  return CountdownSetConfig(
      name=name,
      version=VERSION,
      description=(
          f'Countdown{paper}: generate(level={level}, num={num}, seed={seed}) — '
          f'{level} numbers in 1..100, targets 1..999, + - * /, as reasoning-gym'
      ),
      level=level,
      num=num,
      seed=seed,
      split=_split_for(level),
  )


def config_from_name(name: str) -> CountdownSetConfig:
  """Named or canonical config name → config (``ValueError`` otherwise)."""
  if name in Countdown.builder_configs:
    return Countdown.builder_configs[name]
  m = _NAME_RE.match(name)
  if not m:
    raise ValueError(
        f'unknown countdown config {name!r}: expected one of '
        f'{named_configs()} or a canonical name like L3_n128_seed7'
    )
  cfg = countdown_config(
      int(m['level']),
      int(m['num']) if m['num'] else None,
      int(m['seed']) if m['seed'] else DEFAULT_SEED,
  )
  if cfg.name != name:
    raise ValueError(f'config name {name!r} is not canonical; use {cfg.name!r}')
  return cfg


class Countdown(strings_tfds.Builder):
  """Countdown problems (the paper's prompt), one config per generated set."""

  BUILDER_CONFIGS = [countdown_config(level) for level in PAPER_LEVELS]
  DEFAULT_CONFIG_NAME = 'L3'
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: reasoning-gym-identical problems in generator '
      'order, array_record.'
  }

  def __init__(self, *, progress: bool = False, **kwargs):
    config = kwargs.get('config')
    if isinstance(config, str) and config not in self.builder_configs:
      kwargs['config'] = config_from_name(config)
    super().__init__(progress=progress, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  @classmethod
  def config_for(
      cls, level: int, num: int | None = None, seed: int = DEFAULT_SEED
  ) -> CountdownSetConfig:
    """A config from generator arguments (see :func:`countdown_config`)."""
    return countdown_config(level, num, seed)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                'prompt': text(),
                'expression': text(),
                'reference': text(),
                'numbers': tfds.features.Sequence(np.int32),
                'target': np.int32,
                'level': np.int32,
                'index': np.int64,
            }
        ),
        disable_shuffling=True,  # keep generator order: src[i] is the i-th problem
        homepage='https://github.com/compfn',
    )

  def _generate_examples(self) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    problems = generator.iter_generate(**cfg.generator_args())
    for i, p in enumerate(strings_tfds.progress_bar(problems, cfg.num, cfg.name, self._progress)):
      yield i, problem_record(p, i)


def named_configs() -> list[str]:
  return [c.name for c in Countdown.BUILDER_CONFIGS]


def get_builder(
    config: str | CountdownSetConfig, data_dir: str | None = None, progress: bool = False
) -> Countdown:
  """The builder for a config (object or name) under ``data_dir`` (default
  :func:`compfn.data.strings_tfds.default_data_dir`)."""
  if isinstance(config, str):
    config = config_from_name(config)
  return Countdown(
      config=config,
      data_dir=os.fspath(data_dir or strings_tfds.default_data_dir()),
      progress=progress,
  )


def prepare(config, data_dir: str | None = None, progress: bool = False) -> Countdown:
  """Generate and write a config's array_record files (no-op if already there)."""
  b = get_builder(config, data_dir, progress=progress)
  b.download_and_prepare()
  return b


def data_source(config, data_dir: str | None = None):
  """The random-access ``ArrayRecordDataSource`` of a prepared config's split (raw records;
  see :func:`decode_record`). Builds nothing."""
  return strings_tfds.prepared_source(get_builder(config, data_dir), cli_prefix='countdown/')


def generate_records(config) -> list[dict]:
  """The config's records straight from the generator (no TFDS), in stored order."""
  if isinstance(config, str):
    config = config_from_name(config)
  return [
      problem_record(p, i) for i, p in enumerate(generator.iter_generate(**config.generator_args()))
  ]


__all__ = [
    'Countdown',
    'CountdownSetConfig',
    'countdown_config',
    'config_from_name',
    'named_configs',
    'get_builder',
    'prepare',
    'data_source',
    'generate_records',
    'problem_record',
    'decode_record',
    'PAPER_LEVELS',
    'DEFAULT_NUM',
]
