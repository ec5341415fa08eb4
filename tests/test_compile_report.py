"""``compfn-train --compile_only`` (compfn.compile_report): every step program of a tiny pipeline
(SFT step, the whole GRPO step with dynamic sampling, the evaluation rollout) compiles on the
8 fake CPU devices with a (2, 4, 1) mesh, without data or checkpoint, and the report lists each
program's per-device bytes; a device memory too small exits 6 naming the program and the
shortfall; a TPU topology (v5e:2x2) compiles on this CPU host when libtpu is installed."""

import importlib.util
import json
import pathlib

import gin
import pytest

from compfn import compile_report
from compfn import errors
from compfn import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

BASE = """
include '{root}/gin/models/char_tiny.gin'
include '{root}/gin/hardware/cpu.gin'
char_model.d_model = 16
char_model.num_layers = 1
char_model.num_heads = 2
char_model.head_dim = 8
char_model.mlp_dim = 32
char_model.max_len = 128
run.job = @pipeline
s/sft_stage.name = 'sft'
s/sft_stage.records = @s/trace_records()
s/sft_stage.seq_len = 32
s/sft_stage.batch_size = 8
s/sft_stage.micro_batches = 2
"""

PIPELINE = (
    BASE
    + """
pipeline.stages = [@s/sft_stage, @r/rl_stage, @e/eval_stage, @export_stage]
r/rl_stage.name = 'rl'
r/rl_stage.records = @r/trace_records()
r/rl_stage.grpo = @GRPOConfig()
r/rl_stage.prompt_len = 16
GRPOConfig.task = 'strings_trace'
GRPOConfig.num_generations = 4
GRPOConfig.batch_prompts = 2
GRPOConfig.gen_prompts = 2
GRPOConfig.max_rounds = 2
GRPOConfig.max_new_tokens = 8
e/eval_stage.name = 'eval'
e/eval_stage.records = @e/trace_records()
e/eval_stage.max_new_tokens = 8
e/eval_stage.batch_size = 8
"""
)

SFT_ONLY = (
    BASE
    + """
pipeline.stages = [@s/sft_stage]
"""
)


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _gin(tmp_path, body, name='tiny.gin'):
  p = tmp_path / name
  p.write_text(body.format(root=ROOT))
  return str(p)


def _main(*argv):
  return main.main(list(argv), exit_codes=True)


def test_tiny_pipeline_compiles_on_local_devices(tmp_path, capsys):
  gin_file = _gin(tmp_path, PIPELINE)
  work = tmp_path / 'out'
  code = _main(
      f'--gin_file={gin_file}',
      '--gin_param=pipeline.mesh_shape = (2, 4, 1)',
      '--compile_only',
      f'--workdir={work}',
  )
  out = capsys.readouterr().out
  assert code == 0, out
  report = json.loads((work / 'compile_report.json').read_text())
  assert report['fits'] is True
  assert report['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert report['num_devices'] == 8 and report['platform'] == 'cpu'
  progs = {(p['stage'], p['program']): p for p in report['programs']}
  assert set(progs) == {('sft', 'sft_step'), ('rl', 'grpo_step'), ('eval', 'rollout_greedy')}
  for p in progs.values():
    assert p['compiled'] and p['fits'], p
    for k in ('argument_bytes', 'output_bytes', 'temp_bytes', 'peak_bytes', 'required_bytes'):
      assert p[k] > 0, (p['program'], k)
    assert p['required_bytes'] <= p['device_memory_bytes']
    assert p['topology'] == 'local:cpux8'
  # The stage configurations were read from gin (scoped bindings), not guessed.
  assert progs[('sft', 'sft_step')]['shapes'] == {
      'batch': [8, 32],
      'micro_batches': 2,
      'packing': False,
  }
  g = progs[('rl', 'grpo_step')]['shapes']
  assert (
      g['pool'],
      g['rounds'],
      g['round_rows'],
      g['train_rows'],
      g['prompt_len'],
      g['max_new_tokens'],
  ) == (4, 2, 8, 8, 16, 8)
  assert progs[('eval', 'rollout_greedy')]['shapes']['prompts'] == 8
  assert report['no_program'] == [
      {'stage': 'export', 'kind': 'export_stage', 'note': 'no device program'}
  ]
  assert '| grpo_step' in out and 'wrote' in out


def test_shortfall_exits_6_naming_memory(tmp_path, capsys):
  gin_file = _gin(tmp_path, SFT_ONLY)
  work = tmp_path / 'out'
  code = _main(
      f'--gin_file={gin_file}',
      '--gin_param=pipeline.mesh_shape = (8, 1, 1)',
      '--compile_only',
      '--device_memory_bytes=1000',
      f'--workdir={work}',
  )
  err = capsys.readouterr().err
  assert code == compile_report.DoesNotFit.exit_code == 6
  line = err.strip().splitlines()[-1]
  assert line.startswith('compfn-train: error: does not fit device memory'), err
  assert '[sft] sft_step needs' in line and 'short by' in line and '1000 B' in line
  report = json.loads((work / 'compile_report.json').read_text())
  (p,) = report['programs']
  assert not p['fits'] and p['shortfall_bytes'] == p['required_bytes'] - 1000 > 0
  assert p['device_memory_source'] == '--device_memory_bytes'


def test_compile_only_flags_need_compile_only(tmp_path):
  gin_file = _gin(tmp_path, SFT_ONLY)
  with pytest.raises(errors.ConfigError, match='only apply with --compile_only'):
    main.main([f'--gin_file={gin_file}', '--topology=v5e:2x2', f'--workdir={tmp_path}'])


def test_mesh_that_does_not_cover_the_devices_is_a_config_error(tmp_path):
  gin_file = _gin(tmp_path, SFT_ONLY)
  with pytest.raises(errors.ConfigError, match=r'pipeline.mesh_shape=\(3, 1, 1\)'):
    main.main(
        [
            f'--gin_file={gin_file}',
            '--gin_param=pipeline.mesh_shape = (3, 1, 1)',
            '--compile_only',
            f'--workdir={tmp_path}',
        ]
    )


@pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason="libtpu is not installed (pip install 'jax[tpu]'): no TPU topology " 'to compile for',
)
def test_tiny_pipeline_compiles_for_a_tpu_topology(tmp_path):
  gin_file = _gin(tmp_path, PIPELINE)
  work = tmp_path / 'out'
  code = _main(
      f'--gin_file={gin_file}',
      '--gin_param=pipeline.mesh_shape = (2, 2, 1)',
      '--gin_param=s/sft_stage.batch_size = 4',
      '--compile_only',
      '--topology=v5e:2x2',
      f'--workdir={work}',
  )
  assert code == 0
  report = json.loads((work / 'compile_report.json').read_text())
  assert report['platform'] == 'tpu' and report['num_devices'] == 4
  assert report['device_kind'] == 'TPU v5 lite'
  assert report['device_memory_bytes'] == 16 * 2**30
  assert {p['program'] for p in report['programs']} == {'sft_step', 'grpo_step', 'rollout_greedy'}
  for p in report['programs']:
    assert p['fits'] and p['topology'] == 'v5e:2x2' and p['required_bytes'] > 0


def test_gin_reading_follows_scopes():
  """stage_bindings: the most specific scope wins, unbound parameters take the default, and
  references are evaluated in the stage's scope; records are never evaluated."""
  from compfn import stages

  gin.parse_config(
      """
    rl_stage.num_steps = 7
    a/rl_stage.num_steps = 9
    rl_stage.grpo = @GRPOConfig()
    a/GRPOConfig.num_generations = 2
    a/rl_stage.records = @a/tfds_records()
  """
  )
  b = compile_report.stage_bindings(
      'rl_stage', stages.rl_stage, ('a',), ['num_steps', 'grpo', 'seed'], raw=['records']
  )
  assert b['num_steps'] == 9 and b['seed'] == 0
  assert b['grpo'].num_generations == 2
  assert isinstance(b['records'], gin.config.ConfigurableReference)
  assert (
      compile_report.stage_bindings('rl_stage', stages.rl_stage, (), ['num_steps', 'grpo'])[
          'grpo'
      ].num_generations
      == 16
  )


def test_oom_message_numbers():
  assert compile_report._oom_numbers(
      'RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory '
      'required for HLO temporaries (64.00G) exceeds available HBM '
      '(15.75G).'
  ) == {'required_bytes': 64 * 2**30, 'available_bytes': int(15.75 * 2**30)}
  assert compile_report._oom_numbers(
      'Ran out of memory in memory space hbm. Used 120.50G of 95.74G hbm.'
  )['required_bytes'] == int(120.5 * 2**30)
