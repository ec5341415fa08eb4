"""TFDS builders for the string-function task, written as array_record — no TensorFlow.

Two builders, each with one BuilderConfig per dataset (one TFDS split per config, named after
the generator's split):

* :class:`StringTask` (``string_task``): the paper-format problems of
  :func:`compfn.tasks.strings.generate`. Named configs are the paper's sets
  (``stage1_train_L1``, ``stage2_train_L1``, ``stage2_train_L2``, ``stage2_train_L1to2`` —
  50,000 each — and ``stage2_test_L1to8``, 2,048) in paper mode, and the same five with a
  ``_clean`` suffix in clean mode (default :class:`CleanOptions`). Any other set:
  ``StringTask.config_for(stage, split, min_level, max_level, num, mode, seed)``, whose
  canonical name (``stage2_test_L1to4_n1024_clean_seed7``) :func:`config_from_name` parses back.
* :class:`StringTrace` (``string_trace``): trace-format chains of
  :func:`compfn.tasks.strings.generate_trace` for small from-scratch models
  (spec/MINIATURE.md): ``trace_stage0_generic_L1to3``, ``trace_stage1_atomic_L1``,
  ``trace_stage2_train_L2``, ``trace_eval_heldout_L1to4``, ``trace_eval_train_L1to4``; any
  other set via ``StringTrace.config_for(functions, min_level, max_level, num, ...)``.

Building and reading (the TF-free path; verified with tensorflow-datasets 4.9.10)::

    b = StringTask(config='stage2_test_L1to8', data_dir=DIR, file_format='array_record')
    b.download_and_prepare()                      # or: compfn-data build --config ...
    src = tfds.data_source('string_task/stage2_test_L1to8', data_dir=DIR)['test']
    src[0]  # {'prompt': b'You are given a code: ...', 'level': 1, 'functions': [...], ...}

``tfds.load`` is never used (it needs TensorFlow). Examples are written in generator order
(``disable_shuffling=True``, key = ``index``), so ``src[i]`` is the generator's i-th problem and
the same config always produces byte-identical shard files. Text features come back as UTF-8
``bytes``; :func:`decode_record` turns a raw record into plain Python (what
:mod:`compfn.data.pipeline` yields and what the JSONL files hold).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import writer as tfds_writer
from tensorflow_datasets.proto import tf_example_pb2

from compfn.tasks.strings import functions as functions_lib
from compfn.tasks.strings import generator
from compfn.tasks.strings import generic as GEN

VERSION = tfds.core.Version('1.0.0')
FILE_FORMAT = 'array_record'

#: Default number of problems per split for canonical names without ``_n``.
DEFAULT_NUM = {'train': 50_000, 'test': 2_048}
DEFAULT_SEED = 42


# ------------------------------------------------------------------------------------------------
# Records (shared by the builders, the JSONL files and the pipeline)
# ------------------------------------------------------------------------------------------------


def problem_record(p: generator.Problem, index: int) -> dict:
  """The stored example of a :class:`Problem` (plain Python; the JSONL line, and what
  :func:`decode_record` returns for the array_record example)."""
  return {
      'prompt': p.prompt,
      'prompt_hidden': p.prompt_hidden,
      'code': p.code,
      'input': p.input,
      'output': p.output,
      'level': int(p.level),
      'split': p.split,
      'stage': int(p.stage),
      'functions': list(p.functions),
      'expr': p.expr,
      'depends_on_input': bool(p.depends_on_input),
      'index': int(index),
  }


def trace_record(t: generator.TraceProblem, index: int) -> dict:
  """The stored example of a :class:`TraceProblem`."""
  return {
      'prompt': t.prompt,
      'target': t.target,
      'answer': t.answer,
      'input': t.input,
      'level': int(t.level),
      'functions': list(t.functions),
      'family': t.family,
      'index': int(index),
  }


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, (bytes, np.bytes_)) else str(v)


def decode_record(raw: dict) -> dict:
  """A record as read from ``tfds.data_source`` (bytes, numpy scalars/arrays) → plain Python
  (str, int, bool, list[str]). Works for both builders; already-decoded records pass through."""
  out = {}
  for k, v in raw.items():
    if k == 'functions':
      out[k] = [_text(f) for f in v]
    elif k == 'depends_on_input':
      out[k] = bool(v)
    elif isinstance(v, (bytes, np.bytes_, str)):
      out[k] = _text(v)
    elif isinstance(v, (np.integer, int)):
      out[k] = int(v)
    elif isinstance(v, np.ndarray) and v.ndim == 0:
      out[k] = v.item()
    else:
      out[k] = v
  return out


def progress_bar(it: Iterable, total: int, desc: str, enabled: bool):
  """``it`` under a tqdm bar of ``total`` examples when ``enabled`` (else ``it`` itself)."""
  if not enabled:
    return it
  from tqdm.auto import tqdm

  return tqdm(it, total=total, desc=desc, unit='ex')


class _DeterministicWriter(tfds_writer.ExampleWriter):
  """TFDS's array_record writer with byte-identical output across runs.

  TFDS serializes each ``tf.Example`` with ``SerializeToString()``, whose ``features`` map
  order varies from process to process, so two builds of the same config give different
  shard bytes (same records). This writer re-serializes each example with
  ``deterministic=True`` (map keys sorted) before the stock array_record adapter writes it;
  the size of every record, hence ``dataset_info.json``, is unchanged."""

  def write(self, path, examples):
    parse = tf_example_pb2.Example.FromString
    canonical = ((key, parse(ex).SerializeToString(deterministic=True)) for key, ex in examples)
    return super().write(path, canonical)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder plumbing: array_record by default, configs by canonical name, an optional
  tqdm bar over generation.

  ``code_path`` is overridden because TFDS 4.9.10's default resolves a package module's path
  through ``importlib_resources``, which the library only declares for Python < 3.9 and is not
  installed here (``ModuleNotFoundError`` in ``download_and_prepare``). The path only locates
  an optional ``checksums.tsv`` next to the module; this builder downloads nothing."""

  VERSION = VERSION
  RELEASE_NOTES = {'1.0.0': 'Initial release: generator records in order, array_record.'}

  def __init__(self, *, progress: bool = False, **kwargs):
    kwargs.setdefault('file_format', FILE_FORMAT)
    config = kwargs.get('config')
    if isinstance(config, str) and config not in self.builder_configs:
      kwargs['config'] = config_from_name(config)
    self._progress = progress
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _example_writer(self) -> tfds_writer.ExampleWriter:
    if self.info.file_format != file_adapters.FileFormat.ARRAY_RECORD:
      return super()._example_writer()
    return _DeterministicWriter(file_format=self.info.file_format)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self.builder_config.split: self._generate_examples()}


# ------------------------------------------------------------------------------------------------
# StringTask: the paper-format problems
# ------------------------------------------------------------------------------------------------


def _levels(lo: int, hi: int) -> str:
  return f'L{lo}' if lo == hi else f'L{lo}to{hi}'


@dataclasses.dataclass(eq=False)
class StringTaskConfig(tfds.core.BuilderConfig):
  """One generated set: ``generate(stage, split, min_level, max_level, num, seed, mode)``
  (clean mode uses the default :class:`CleanOptions`)."""

  stage: int = 2
  split: str = 'test'
  min_level: int = 1
  max_level: int = 8
  num: int = 2048
  mode: str = 'paper'
  seed: int = DEFAULT_SEED

  def generator_args(self) -> dict:
    return dict(
        stage=self.stage,
        split=self.split,
        min_level=self.min_level,
        max_level=self.max_level,
        num=self.num,
        seed=self.seed,
        mode=self.mode,
    )


def _task_name(stage, split, min_level, max_level, num, mode, seed) -> str:
  name = f'stage{stage}_{split}_{_levels(min_level, max_level)}'
  if num != DEFAULT_NUM.get(split):
    name += f'_n{num}'
  if mode != 'paper':
    name += f'_{mode}'
  if seed != DEFAULT_SEED:
    name += f'_seed{seed}'
  return name


_TASK_NAME_RE = re.compile(
    r'^stage(?P<stage>\d+)_(?P<split>train|test)_L(?P<lo>\d+)(?:to(?P<hi>\d+))?'
    r'(?:_n(?P<num>\d+))?(?:_(?P<mode>paper|clean))?(?:_seed(?P<seed>\d+))?$'
)


def task_config(
    stage: int,
    split: str,
    min_level: int,
    max_level: int,
    num: int | None = None,
    mode: str = 'paper',
    seed: int = DEFAULT_SEED,
) -> StringTaskConfig:
  """The config for ``generate(stage, split, min_level, max_level, num, seed, mode)``, named
  canonically (the named paper configs come back under their own names). Validates the
  arguments with the generator's own checks."""
  if num is None:
    num = DEFAULT_NUM.get(split, 0)
  generator.check_args(stage, split, min_level, max_level, num, mode)  # raises ValueError
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
  name = _task_name(stage, split, min_level, max_level, num, mode, seed)
  return StringTaskConfig(
      name=name,
      version=VERSION,
      description=(
          f'generate(stage={stage}, split={split!r}, min_level={min_level}, '
          f'max_level={max_level}, num={num}, seed={seed}, mode={mode!r})'
      ),
      stage=stage,
      split=split,
      min_level=min_level,
      max_level=max_level,
      num=num,
      mode=mode,
      seed=seed,
  )


def _paper_configs() -> list[StringTaskConfig]:
  sets = [
      (1, 'train', 1, 1, 50_000),
      (2, 'train', 1, 1, 50_000),
      (2, 'train', 2, 2, 50_000),
      (2, 'train', 1, 2, 50_000),
      (2, 'test', 1, 8, 2_048),
  ]
  return [
      task_config(s, sp, lo, hi, n, mode)
      for mode in ('paper', 'clean')
      for s, sp, lo, hi, n in sets
  ]


class StringTask(Builder):
  """The string-function problems (paper prompt format), one config per generated set."""

  BUILDER_CONFIGS = _paper_configs()
  DEFAULT_CONFIG_NAME = 'stage2_test_L1to8'

  @classmethod
  def config_for(
      cls,
      stage: int,
      split: str,
      min_level: int,
      max_level: int,
      num: int | None = None,
      mode: str = 'paper',
      seed: int = DEFAULT_SEED,
  ) -> StringTaskConfig:
    """A config from generator arguments (see :func:`task_config`)."""
    return task_config(stage, split, min_level, max_level, num, mode, seed)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                'prompt': text(),
                'prompt_hidden': text(),
                'code': text(),
                'input': text(),
                'output': text(),
                'expr': text(),
                'split': text(),
                'level': np.int32,
                'stage': np.int32,
                'index': np.int64,
                'functions': tfds.features.Sequence(text()),
                'depends_on_input': np.bool_,
            }
        ),
        disable_shuffling=True,  # keep generator order: src[i] is the i-th problem
        homepage='https://github.com/compfn',
    )

  def _generate_examples(self) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    it = generator.iter_generate(**cfg.generator_args())
    for i, p in enumerate(progress_bar(it, cfg.num, cfg.name, self._progress)):
      yield i, problem_record(p, i)


# ------------------------------------------------------------------------------------------------
# StringTrace: trace-format chains (spec/MINIATURE.md)
# ------------------------------------------------------------------------------------------------

#: Function sets by name: 'generic' (the disjoint stage-0 family), 'all' (the 25), 'train' (the
#: 13 stage-2 train functions), 'heldout' (the 12 held-out ones).
FUNCTION_SETS = {
    'generic': ('generic', tuple(GEN.GENERIC_FUNCTIONS)),
    'all': ('paper', tuple(functions_lib.FUNCTIONS)),
    'train': ('paper', functions_lib.TRAIN_FUNCTIONS),
    'heldout': ('paper', functions_lib.TEST_FUNCTIONS),
}
TRACE_DEFAULT_INPUT_LEN = (3, 6)


@dataclasses.dataclass(eq=False)
class StringTraceConfig(tfds.core.BuilderConfig):
  """``generate_trace(FUNCTION_SETS[functions], min_level, max_level, num, seed, family,
  input_len, inputs, max_chars)``; stored under the TFDS split ``'train'`` (inputs 'train')
  or ``'test'`` (inputs 'heldout' or 'any')."""

  functions: str = 'all'
  min_level: int = 1
  max_level: int = 1
  num: int = 1024
  inputs: str = 'train'
  seed: int = 0
  max_chars: int | None = None
  input_len: tuple[int, int] = TRACE_DEFAULT_INPUT_LEN

  @property
  def family(self) -> str:
    return FUNCTION_SETS[self.functions][0]

  @property
  def split(self) -> str:
    return 'train' if self.inputs == 'train' else 'test'

  def generator_args(self) -> dict:
    family, fns = FUNCTION_SETS[self.functions]
    return dict(
        functions=fns,
        min_level=self.min_level,
        max_level=self.max_level,
        num=self.num,
        seed=self.seed,
        family=family,
        input_len=tuple(self.input_len),
        inputs=self.inputs,
        max_chars=self.max_chars,
    )


_TRACE_NAME_RE = re.compile(
    r'^trace_(?P<fns>generic|all|train|heldout)_L(?P<lo>\d+)(?:to(?P<hi>\d+))?_n(?P<num>\d+)'
    r'_(?P<inputs>train|heldout|any)_seed(?P<seed>\d+)(?:_max(?P<max>\d+))?'
    r'(?:_len(?P<a>\d+)to(?P<b>\d+))?$'
)


def _trace_canonical(
    functions, min_level, max_level, num, inputs, seed, max_chars, input_len
) -> str:
  name = f'trace_{functions}_{_levels(min_level, max_level)}_n{num}_{inputs}_seed{seed}'
  if max_chars is not None:
    name += f'_max{max_chars}'
  if tuple(input_len) != TRACE_DEFAULT_INPUT_LEN:
    name += f'_len{input_len[0]}to{input_len[1]}'
  return name


#: Named trace sets (name -> arguments of trace_config).
_TRACE_NAMED = {
    'trace_stage0_generic_L1to3': dict(functions='generic', min_level=1, max_level=3, num=60_000),
    'trace_stage1_atomic_L1': dict(functions='all', min_level=1, max_level=1, num=50_000),
    'trace_stage2_train_L2': dict(functions='train', min_level=2, max_level=2, num=50_000),
    'trace_eval_heldout_L1to4': dict(
        functions='heldout', min_level=1, max_level=4, num=1_024, inputs='heldout'
    ),
    'trace_eval_train_L1to4': dict(
        functions='train', min_level=1, max_level=4, num=1_024, inputs='heldout'
    ),
}
_TRACE_DESCRIPTIONS = {
    'trace_stage0_generic_L1to3': 'Stage 0 (generic call tracing): L1-3 chains of the disjoint '
    'generic family, training inputs.',
    'trace_stage1_atomic_L1': 'Stage 1: atomic traces of all 25 functions, training inputs.',
    'trace_stage2_train_L2': 'Stage 2 (RL prompts): level-2 chains of the 13 train functions.',
    'trace_eval_heldout_L1to4': 'Evaluation: L1-4 chains of the 12 held-out functions on '
    'held-out inputs, 256 per level.',
    'trace_eval_train_L1to4': 'Evaluation: L1-4 chains of the 13 train functions on held-out '
    'inputs, 256 per level.',
}


def trace_config(
    functions: str,
    min_level: int,
    max_level: int,
    num: int,
    inputs: str = 'train',
    seed: int = 0,
    max_chars: int | None = None,
    input_len: tuple[int, int] = TRACE_DEFAULT_INPUT_LEN,
    name: str | None = None,
) -> StringTraceConfig:
  """A trace config; ``functions`` names a set of :data:`FUNCTION_SETS`. Named sets come back
  under their own names, anything else under a canonical name :func:`config_from_name` parses."""
  if functions not in FUNCTION_SETS:
    raise ValueError(f'functions must be one of {sorted(FUNCTION_SETS)}, got {functions!r}')
  if inputs not in ('train', 'heldout', 'any'):
    raise ValueError(f"inputs must be 'train', 'heldout' or 'any', got {inputs!r}")
  for k, v in (('min_level', min_level), ('max_level', max_level), ('num', num), ('seed', seed)):
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == 'seed' else 1):
      raise ValueError(
          f'{k} must be a {"non-negative" if k == "seed" else "positive"} ' f'integer, got {v!r}'
      )
  if min_level > max_level:
    raise ValueError(f'min_level {min_level} > max_level {max_level}')
  if num % (max_level - min_level + 1):
    raise ValueError(
        f'num={num} must be a multiple of the number of levels ' f'({max_level - min_level + 1})'
    )
  input_len = tuple(int(v) for v in input_len)
  args = dict(
      functions=functions,
      min_level=min_level,
      max_level=max_level,
      num=num,
      inputs=inputs,
      seed=seed,
      max_chars=max_chars,
      input_len=input_len,
  )
  if name is None:
    for named, kw in _TRACE_NAMED.items():
      full = {
          'inputs': 'train',
          'seed': 0,
          'max_chars': None,
          'input_len': TRACE_DEFAULT_INPUT_LEN,
          **kw,
      }
      if full == args:
        name = named
        break
    else:
      name = _trace_canonical(**args)
  desc = _TRACE_DESCRIPTIONS.get(name, '') + (
      f' generate_trace({functions} functions, L{min_level}-{max_level}, num={num}, '
      f'inputs={inputs!r}, seed={seed}, max_chars={max_chars}, input_len={input_len})'
  )
  return StringTraceConfig(name=name, version=VERSION, description=desc.strip(), **args)


class StringTrace(Builder):
  """Trace-format chains for small from-scratch models, one config per generated set."""

  BUILDER_CONFIGS = [trace_config(name=n, **kw) for n, kw in _TRACE_NAMED.items()]
  DEFAULT_CONFIG_NAME = 'trace_stage1_atomic_L1'

  @classmethod
  def config_for(
      cls,
      functions: str,
      min_level: int,
      max_level: int,
      num: int,
      inputs: str = 'train',
      seed: int = 0,
      max_chars: int | None = None,
      input_len: tuple[int, int] = TRACE_DEFAULT_INPUT_LEN,
  ) -> StringTraceConfig:
    """A config from generator arguments (see :func:`trace_config`)."""
    return trace_config(functions, min_level, max_level, num, inputs, seed, max_chars, input_len)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                'prompt': text(),
                'target': text(),
                'answer': text(),
                'input': text(),
                'family': text(),
                'level': np.int32,
                'index': np.int64,
                'functions': tfds.features.Sequence(text()),
            }
        ),
        disable_shuffling=True,
        homepage='https://github.com/compfn',
    )

  def _generate_examples(self) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    problems = generator.generate_trace(**cfg.generator_args())
    if len(problems) != cfg.num:
      raise RuntimeError(
          f'{cfg.name}: generate_trace made {len(problems)} of {cfg.num} '
          f'problems (attempts ran out; lower num or raise max_chars)'
      )
    for i, t in enumerate(progress_bar(problems, cfg.num, cfg.name, self._progress)):
      yield i, trace_record(t, i)


# ------------------------------------------------------------------------------------------------
# Names → configs → builders
# ------------------------------------------------------------------------------------------------

BUILDERS = {'string_task': StringTask, 'string_trace': StringTrace}


def config_from_name(name: str) -> StringTaskConfig | StringTraceConfig:
  """Named config or canonical name → config. ``stage…`` names are :class:`StringTask`,
  ``trace_…`` names :class:`StringTrace`. Raises ``ValueError`` naming the known configs."""
  for cls in (StringTask, StringTrace):
    if name in cls.builder_configs:
      return cls.builder_configs[name]
  try:
    return _config_from_canonical_name(name)
  except ValueError as e:
    if str(e).startswith(('unknown config', 'config name')):
      raise
    raise ValueError(f'config {name!r}: {e}') from None


def _config_from_canonical_name(name: str) -> StringTaskConfig | StringTraceConfig:
  m = _TASK_NAME_RE.match(name)
  if m:
    split = m['split']
    lo = int(m['lo'])
    hi = int(m['hi']) if m['hi'] else lo
    cfg = task_config(
        int(m['stage']),
        split,
        lo,
        hi,
        int(m['num']) if m['num'] else DEFAULT_NUM[split],
        m['mode'] or 'paper',
        int(m['seed']) if m['seed'] else DEFAULT_SEED,
    )
    if cfg.name != name:  # e.g. an explicit default ('_paper', '_seed42', '_n50000')
      raise ValueError(f'config name {name!r} is not canonical; use {cfg.name!r}')
    return cfg
  m = _TRACE_NAME_RE.match(name)
  if m:
    lo = int(m['lo'])
    hi = int(m['hi']) if m['hi'] else lo
    cfg = trace_config(
        m['fns'],
        lo,
        hi,
        int(m['num']),
        m['inputs'],
        int(m['seed']),
        int(m['max']) if m['max'] else None,
        (int(m['a']), int(m['b'])) if m['a'] else TRACE_DEFAULT_INPUT_LEN,
    )
    if cfg.name != name:
      raise ValueError(f'config name {name!r} is not canonical; use {cfg.name!r}')
    return cfg
  raise ValueError(
      f'unknown config {name!r}: expected one of {named_configs()} or a '
      f'canonical name like stage2_test_L1to4_n1024_clean_seed7 or '
      f'trace_heldout_L1to3_n768_heldout_seed0'
  )


def named_configs() -> list[str]:
  return [c.name for cls in (StringTask, StringTrace) for c in cls.BUILDER_CONFIGS]


def builder_class(config: str | StringTaskConfig | StringTraceConfig):
  if isinstance(config, str):
    config = config_from_name(config)
  return StringTrace if isinstance(config, StringTraceConfig) else StringTask


def get_builder(
    config: str | StringTaskConfig | StringTraceConfig,
    data_dir: str | None = None,
    progress: bool = False,
) -> tfds.core.GeneratorBasedBuilder:
  """The builder for a config (object or name) under ``data_dir`` (default
  :func:`default_data_dir`)."""
  if isinstance(config, str):
    config = config_from_name(config)
  cls = builder_class(config)
  return cls(config=config, data_dir=os.fspath(data_dir or default_data_dir()), progress=progress)


def default_data_dir() -> str:
  """``$COMPFN_DATA_DIR`` or ``~/compfn_data``."""
  return os.environ.get('COMPFN_DATA_DIR') or os.path.expanduser('~/compfn_data')


def prepare(config, data_dir: str | None = None, progress: bool = False):
  """Generate and write a config's array_record files (no-op if already there); returns the
  builder (``builder.data_dir`` is where the files are)."""
  b = get_builder(config, data_dir, progress=progress)
  b.download_and_prepare()
  return b


def data_source(config, data_dir: str | None = None):
  """The ``ArrayRecordDataSource`` of a prepared config's split (random access, ``len``,
  raw records with bytes text fields; see :func:`decode_record`). Builds nothing."""
  return prepared_source(get_builder(config, data_dir))


def prepared_source(b, cli_prefix: str = ''):
  """The data source of a prepared builder's split, or a FileNotFoundError that gives the
  ``compfn-data build`` command to run (``cli_prefix``: e.g. ``'countdown/'``)."""
  if not b.is_prepared():
    raise FileNotFoundError(
        f'{b.name}/{b.builder_config.name} is not prepared under '
        f'{b._data_dir_root}; run: compfn-data build --config '
        f'{cli_prefix}{b.builder_config.name} --data_dir '
        f'{b._data_dir_root}'
    )
  return b.as_data_source(split=b.builder_config.split)


def generate_records(config) -> list[dict]:
  """The config's records straight from the generator (no TFDS), in stored order."""
  if isinstance(config, str):
    config = config_from_name(config)
  if isinstance(config, StringTraceConfig):
    return [
        trace_record(t, i)
        for i, t in enumerate(generator.generate_trace(**config.generator_args()))
    ]
  return [
      problem_record(p, i) for i, p in enumerate(generator.iter_generate(**config.generator_args()))
  ]


__all__ = [
    'StringTask',
    'StringTrace',
    'StringTaskConfig',
    'StringTraceConfig',
    'task_config',
    'trace_config',
    'config_from_name',
    'named_configs',
    'get_builder',
    'prepare',
    'data_source',
    'default_data_dir',
    'decode_record',
    'problem_record',
    'trace_record',
    'generate_records',
    'FUNCTION_SETS',
    'BUILDERS',
    'Builder',
    'progress_bar',
]
