"""compfn.data: TFDS array_record builders (no TensorFlow), grain pipelines, JSONL, CLI.

Small sets only: the paper's 2,048-problem test set, a 256-problem stage-1 clean set and the
1,024-problem trace evaluation set, each built once per module into a tmp dir.
"""

import gzip
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from compfn.data import build, pipeline
from compfn.data import strings_tfds
from compfn.tasks.strings import generate, generate_trace

tfds.disable_progress_bar()

TEST_SET = 'stage2_test_L1to8'  # 2,048, paper mode
SMALL = strings_tfds.StringTask.config_for(1, 'train', 1, 2, 256, mode='clean', seed=3)
TRACE = 'trace_eval_heldout_L1to4'  # 1,024 trace problems


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('compfn_data')
  for cfg in (TEST_SET, SMALL, TRACE):
    strings_tfds.prepare(cfg, d)
  return str(d)


@pytest.fixture(scope='module')
def test_records():
  return [strings_tfds.problem_record(p, i) for i, p in enumerate(generate(2, 'test', 1, 8, 2048))]


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      p = os.path.join(dirpath, n)
      with open(p, 'rb') as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def _batch_eq(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], np.ndarray):
      assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    else:
      assert a[k] == b[k], k


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


def test_named_configs_and_canonical_names():
  names = strings_tfds.named_configs()
  for n in (
      'stage1_train_L1',
      'stage2_train_L1',
      'stage2_train_L2',
      'stage2_train_L1to2',
      'stage2_test_L1to8',
      'stage1_train_L1_clean',
      'stage2_test_L1to8_clean',
      'trace_stage0_generic_L1to3',
      'trace_stage1_atomic_L1',
      'trace_stage2_train_L2',
      'trace_eval_heldout_L1to4',
      'trace_eval_train_L1to4',
  ):
    assert n in names
  assert len(names) == len(set(names)) == 15
  c = strings_tfds.StringTask.config_for(2, 'test', 1, 8, 2048)
  assert c.name == 'stage2_test_L1to8' and c.num == 2048 and c.mode == 'paper'
  assert strings_tfds.StringTask.config_for(1, 'train', 1, 1, 50_000).name == 'stage1_train_L1'
  assert (
      strings_tfds.StringTask.config_for(2, 'train', 1, 2, mode='clean').name
      == 'stage2_train_L1to2_clean'
  )
  assert SMALL.name == 'stage1_train_L1to2_n256_clean_seed3'
  back = strings_tfds.config_from_name(SMALL.name)
  assert back.generator_args() == SMALL.generator_args()
  t = strings_tfds.StringTrace.config_for('heldout', 1, 4, 1024, inputs='heldout')
  assert t.name == TRACE and t.split == 'test'
  t = strings_tfds.StringTrace.config_for('generic', 1, 2, 100, inputs='any', seed=5, max_chars=80)
  assert t.name == 'trace_generic_L1to2_n100_any_seed5_max80'
  assert strings_tfds.config_from_name(t.name).generator_args() == t.generator_args()
  with pytest.raises(ValueError, match='multiple of the number of levels'):
    strings_tfds.StringTask.config_for(2, 'test', 1, 3, 100)
  with pytest.raises(ValueError, match='not canonical'):
    strings_tfds.config_from_name('stage2_test_L1to8_paper')
  with pytest.raises(ValueError, match='unknown config'):
    strings_tfds.config_from_name('stage9')


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv('COMPFN_DATA_DIR', '/somewhere/else')
  assert strings_tfds.default_data_dir() == '/somewhere/else'
  monkeypatch.delenv('COMPFN_DATA_DIR')
  assert strings_tfds.default_data_dir() == os.path.expanduser('~/compfn_data')


# ------------------------------------------------------------------------------------------------
# Builders: array_record written and read back with tfds.data_source, no TensorFlow
# ------------------------------------------------------------------------------------------------


def test_build_needs_no_tensorflow(data_dir):
  assert 'tensorflow' not in sys.modules
  root = os.path.join(data_dir, 'string_task', TEST_SET, '1.0.0')
  assert sorted(os.listdir(root)) == [
      'dataset_info.json',
      'features.json',
      'string_task-test.array_record-00000-of-00001',
  ]
  info = json.load(open(os.path.join(root, 'dataset_info.json')))
  assert info['fileFormat'] == 'array_record' and info['disableShuffling']


def test_test_set_fields_equal_generator(data_dir, test_records):
  src = tfds.data_source(f'string_task/{TEST_SET}', data_dir=data_dir)['test']
  assert len(src) == 2048
  got = [strings_tfds.decode_record(src[i]) for i in range(len(src))]
  assert got == test_records
  assert set(got[0]) == {
      'prompt',
      'prompt_hidden',
      'code',
      'input',
      'output',
      'level',
      'split',
      'stage',
      'functions',
      'expr',
      'depends_on_input',
      'index',
  }
  assert [r['level'] for r in got] == [lvl for lvl in range(1, 9) for _ in range(256)]


def test_small_stage1_clean_set_fields(data_dir):
  problems = generate(1, 'train', 1, 2, 256, seed=3, mode='clean')
  src = pipeline.string_source(SMALL.name, data_dir)
  assert len(src) == 256
  for i, p in enumerate(problems):
    r = strings_tfds.decode_record(src[i])
    assert (r['prompt'], r['prompt_hidden'], r['code'], r['input'], r['output'], r['expr']) == (
        p.prompt,
        p.prompt_hidden,
        p.code,
        p.input,
        p.output,
        p.expr,
    )
    assert (r['level'], r['stage'], r['split'], r['depends_on_input'], r['index']) == (
        p.level,
        1,
        'train',
        p.depends_on_input,
        i,
    )
    assert r['functions'] == list(p.functions)
  assert (
      strings_tfds.decode_record(src[0])['prompt']
      != strings_tfds.decode_record(src[0])['prompt_hidden']
  )


def test_trace_set_fields_equal_generator(data_dir):
  from compfn.tasks.strings import functions

  ref = generate_trace(functions.TEST_FUNCTIONS, 1, 4, 1024, seed=0, inputs='heldout')
  src = tfds.data_source(f'string_trace/{TRACE}', data_dir=data_dir)['test']
  got = [strings_tfds.decode_record(src[i]) for i in range(len(src))]
  assert got == [strings_tfds.trace_record(t, i) for i, t in enumerate(ref)]
  assert set(got[0]) == {
      'prompt',
      'target',
      'answer',
      'input',
      'level',
      'functions',
      'family',
      'index',
  }


def test_same_config_gives_identical_files(data_dir, tmp_path):
  strings_tfds.prepare(SMALL, tmp_path)
  sub = os.path.join('string_task', SMALL.name)
  a, b = _files(os.path.join(data_dir, sub)), _files(os.path.join(tmp_path, sub))
  assert a.keys() == b.keys() and len(a) == 3
  assert a == b


def test_unbuilt_config_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match='compfn-data build --config stage2_test_L1to8'):
    pipeline.string_source(TEST_SET, tmp_path)


# ------------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['x.jsonl', 'x.jsonl.gz'])
def test_jsonl_round_trip(tmp_path, data_dir, test_records, name):
  path = tmp_path / name
  assert pipeline.write_jsonl(generate(2, 'test', 1, 8, 2048), path) == 2048
  assert pipeline.read_jsonl(path) == test_records
  src = pipeline.string_source(TEST_SET, data_dir)  # raw TFDS records decode on write
  pipeline.write_jsonl((src[i] for i in range(len(src))), tmp_path / 'y.jsonl')
  assert pipeline.read_jsonl(tmp_path / 'y.jsonl') == test_records
  if name.endswith('.gz'):
    with gzip.open(path, 'rt', encoding='utf-8') as f:
      assert json.loads(f.readline()) == test_records[0]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
  p = tmp_path / 'bad.jsonl'
  p.write_text('{"a": 1}\n{oops\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2'):
    pipeline.read_jsonl(p)


# ------------------------------------------------------------------------------------------------
# grain pipelines
# ------------------------------------------------------------------------------------------------


def test_unshuffled_batches_are_generator_order(data_dir, test_records):
  src = pipeline.string_source(TEST_SET, data_dir)
  batches = list(pipeline.make_dataset(src, 500, shuffle=False, shard_index=0, shard_count=1))
  assert [len(b['prompt']) for b in batches] == [500, 500, 500, 500, 48]
  b = batches[1]
  assert b['level'].dtype == np.int32 and b['index'].dtype == np.int64
  assert b['depends_on_input'].dtype == np.bool_
  assert b['prompt'] == [r['prompt'] for r in test_records[500:1000]]
  assert b['functions'] == [r['functions'] for r in test_records[500:1000]]
  assert np.concatenate([b['index'] for b in batches]).tolist() == list(range(2048))


def test_shuffle_is_deterministic_and_reshuffles_each_epoch(data_dir):
  src = pipeline.string_source(SMALL.name, data_dir)
  kw = dict(batch_size=256, seed=7, num_epochs=2, shard_index=0, shard_count=1)
  e1, e2 = [b['index'].tolist() for b in pipeline.make_dataset(src, **kw)]
  assert sorted(e1) == sorted(e2) == list(range(256))
  assert e1 != e2 and e1 != list(range(256))
  assert [b['index'].tolist() for b in pipeline.make_dataset(src, **kw)] == [e1, e2]
  other = next(iter(pipeline.make_dataset(src, **{**kw, 'seed': 8})))['index'].tolist()
  assert other != e1


class _Counting:
  """A source that records which indices are read."""

  def __init__(self, src):
    self.src, self.read = src, []

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.src[i]


def test_iterator_state_resumes_exactly_without_replay(data_dir):
  src = pipeline.string_source(TEST_SET, data_dir)
  kw = dict(batch_size=64, seed=3, shuffle=True, num_epochs=None, shard_index=0, shard_count=1)
  it = iter(pipeline.make_dataset(src, **kw))
  first = [next(it) for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))  # JSON-able, checkpointable
  expected = [next(it) for _ in range(2)]

  counting = _Counting(src)
  it2 = iter(pipeline.make_dataset(counting, **kw))
  it2.set_state(state)
  got = [next(it2) for _ in range(2)]
  for a, b in zip(got, expected):
    _batch_eq(a, b)
  # Random access: none of the 3 consumed batches' records was read again.
  consumed = {i for b in first for i in b['index'].tolist()}
  assert counting.read and not consumed & {i % len(src) for i in counting.read}


def test_two_shards_cover_the_data_disjointly(data_dir):
  src = pipeline.string_source(TEST_SET, data_dir)
  shards = [
      np.concatenate(
          [
              b['index']
              for b in pipeline.make_dataset(src, 100, seed=1, shard_index=i, shard_count=2)
          ]
      ).tolist()
      for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 1024
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(2048))


def test_uneven_shards(test_records):
  recs = test_records[:11]  # plain-Python records are a valid source

  def run(i, equal):
    ds = pipeline.make_dataset(recs, 4, seed=0, shard_index=i, shard_count=2, equal_shards=equal)
    return [x for b in ds for x in b['index'].tolist()]

  eq = [run(i, True) for i in range(2)]
  assert len(eq[0]) == len(eq[1]) == 5 and not set(eq[0]) & set(eq[1])
  uneq = [run(i, False) for i in range(2)]
  assert sorted(uneq[0] + uneq[1]) == list(range(11))


def test_make_dataset_rejects_bad_arguments(test_records):
  with pytest.raises(ValueError, match='batch_size'):
    pipeline.make_dataset(test_records, 0, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match='shard_index and shard_count'):
    pipeline.make_dataset(test_records, 4, shard_index=0)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def test_cli_build_and_export(tmp_path, capsys, test_records):
  d = tmp_path / 'data'
  out = tmp_path / 'built.jsonl'
  assert (
      build.main(
          [
              'build',
              '--config',
              TEST_SET,
              '--data_dir',
              str(d),
              '--export_jsonl',
              str(out),
              '--quiet',
          ]
      )
      == 0
  )
  text = capsys.readouterr().out
  assert f'string_task/{TEST_SET}: 2,048 examples' in text and str(d) in text
  assert str(out) in text
  assert pipeline.read_jsonl(out) == test_records
  assert build.main(['build', '--config', TEST_SET, '--data_dir', str(d), '--quiet']) == 0
  assert 'exists' in capsys.readouterr().out

  jl = tmp_path / 'export.jsonl'
  assert (
      build.main(
          [
              'export',
              '--stage',
              '2',
              '--split',
              'test',
              '--min_level',
              '1',
              '--max_level',
              '8',
              '--num',
              '2048',
              '--out',
              str(jl),
          ]
      )
      == 0
  )
  captured = capsys.readouterr()
  assert 'wrote   2,048 problems' in captured.out and str(jl) in captured.out
  assert '2048/2048' in captured.err  # the tqdm bar
  assert pipeline.read_jsonl(jl) == test_records

  assert build.main(['list']) == 0
  assert 'stage2_test_L1to8_clean' in capsys.readouterr().out


def test_cli_export_clean_mode(tmp_path):
  jl = tmp_path / 'clean.jsonl'
  assert (
      build.main(
          [
              'export',
              '--stage',
              '2',
              '--split',
              'test',
              '--min_level',
              '1',
              '--max_level',
              '2',
              '--num',
              '64',
              '--mode',
              'clean',
              '--seed',
              '5',
              '--out',
              str(jl),
              '--quiet',
          ]
      )
      == 0
  )
  ref = generate(2, 'test', 1, 2, 64, seed=5, mode='clean')
  assert pipeline.read_jsonl(jl) == [strings_tfds.problem_record(p, i) for i, p in enumerate(ref)]


EXPORT = ['export', '--stage', '2', '--split', 'test', '--out', 'unused.jsonl']


@pytest.mark.parametrize(
    'argv, flag',
    [
        (['build', '--config', 'stage7_test_L1'], '--config'),
        (['build', '--config', 'nonsense'], '--config'),
        (['build', '--all', '--config', TEST_SET], '--config'),
        (['build'], '--config'),
        (
            ['build', '--config', TEST_SET, '--config', SMALL.name, '--export_jsonl', 'x'],
            '--export_jsonl',
        ),
        (['build', '--config', TEST_SET, '--bogus'], '--bogus'),
        (EXPORT + ['--min_level', '0', '--max_level', '8', '--num', '2048'], '--min_level'),
        (EXPORT + ['--min_level', '1', '--max_level', 'eight', '--num', '2048'], '--max_level'),
        (EXPORT + ['--min_level', '3', '--max_level', '2', '--num', '2048'], '--max_level'),
        (EXPORT + ['--min_level', '1', '--max_level', '8', '--num', '100'], '--num'),
        (
            EXPORT + ['--min_level', '1', '--max_level', '8', '--num', '2048', '--mode', 'x'],
            '--mode',
        ),
        (
            [
                'export',
                '--stage',
                '3',
                '--split',
                'test',
                '--min_level',
                '1',
                '--max_level',
                '1',
                '--num',
                '8',
                '--out',
                'x',
            ],
            '--stage',
        ),
    ],
)
def test_cli_bad_arguments_name_the_flag(argv, flag, capsys):
  with pytest.raises(SystemExit) as e:
    build.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err and 'error' in err
