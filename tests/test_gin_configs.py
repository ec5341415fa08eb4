"""Every gin config resolves: a dry run of each experiment with the model shrunk to a tiny char
model and the mesh to this machine's devices (``pipeline.dry_run=True``: every stage builds its
configuration — optimizers, GRPO config, records objects — and trains or generates nothing).

* experiments (``gin/experiments``, ``gin/*.gin``) are dry-run, paired with a model file;
* each model and hardware file is dry-run next to an experiment, so its bindings must name
  parameters that exist (gin raises on unknown ones);
* the paper's hyperparameters reach the stages that use them (scoping mistakes show here);
* a misspelled binding is an error naming the misspelling.
"""

import importlib
import math
import pathlib

import gin
import pytest

from compfn import main

importlib.import_module('compfn.pipeline')  # registers the pipeline, stages, sources, configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN = ROOT / 'gin'


def _rel(paths):
  return sorted(str(p.relative_to(ROOT)) for p in paths)


# Include-only fragments start with '_' (e.g. gin/experiments/_stage2_grpo.gin).
EXPERIMENTS = _rel(
    [p for p in GIN.glob('*.gin')]
    + [p for p in (GIN / 'experiments').glob('*.gin') if not p.name.startswith('_')]
)
FRAGMENTS = _rel((GIN / 'experiments').glob('_*.gin'))
MODELS = _rel((GIN / 'models').glob('*.gin'))
HARDWARE = _rel((GIN / 'hardware').glob('*.gin'))

DEFAULT_MODEL = 'gin/models/llama3_1_8b_instruct.gin'
DEFAULT_EXPERIMENT = 'gin/experiments/stage2_rl_L2.gin'

# The model shrunk to a tiny char model: the dry run loads (initialises) it for real.
SHRINK = [
    'load_model.checkpoint = None',
    'load_model.config = @char_model()',
    "load_model.tokenizer = 'char'",
    "load_model.chat_template = 'raw'",
    'load_model.overrides = None',
    'char_model.d_model = 16',
    'char_model.num_layers = 1',
    'char_model.num_heads = 2',
    'char_model.head_dim = 8',
    'char_model.mlp_dim = 32',
    'char_model.max_len = 64',
    'pipeline.dry_run = True',
]
ONE_HOST_MESH = ['pipeline.mesh_shape = (-1, 1, 1)']

# Devices each hardware file's mesh must cover and its per-device bf16 peak.
HARDWARE_SPEC = {
    'gin/hardware/cpu.gin': (None, 290e9),
    'gin/hardware/tpu_v4_8.gin': (4, 275e12),
    'gin/hardware/tpu_v5e_64.gin': (64, 197e12),
    'gin/hardware/tpu_v5p_128.gin': (64, 459e12),
    'gin/hardware/gpu_8xh100.gin': (8, 989e12),
}


_INIT_CACHE = {}


@pytest.fixture(autouse=True)
def _clean_gin(monkeypatch):
  monkeypatch.chdir(ROOT)  # include paths are relative to the repository root
  # Initialising even a 1-layer model takes seconds on CPU (an eager flax init of the layer
  # scan, compiled per call); every dry run here uses the same tiny config, so initialise once.
  from compfn.model import transformer

  init = transformer.init_params

  def cached_init(config, key, *args, **kwargs):
    k = (config, str(key), args, tuple(sorted(kwargs.items())))
    if k not in _INIT_CACHE:
      _INIT_CACHE[k] = init(config, key, *args, **kwargs)
    return _INIT_CACHE[k]

  monkeypatch.setattr(transformer, 'init_params', cached_init)
  gin.clear_config()
  yield
  gin.clear_config()


def dry_run(files, tmp_path, extra=()):
  gin.clear_config()
  gin.parse_config_files_and_bindings([str(ROOT / f) for f in files], SHRINK + list(extra))
  stages = gin.query_parameter('pipeline.stages')
  out = main.run(str(tmp_path))
  assert out['dry_run'] is True
  summaries = out['stages']
  # pipeline.stages is a list, or a reference (gin/repro_cpu.gin: @arm() picks one arm's list).
  expected = len(stages) if isinstance(stages, (list, tuple)) else 1
  assert len(summaries) >= expected, (files, sorted(summaries))
  not_dry = [k for k, v in summaries.items() if not v.get('dry_run')]
  assert not not_dry, f'{files}: stages that did not report dry_run: {not_dry}'
  return summaries


def _needs_model(path):
  return path.startswith('gin/experiments/')


@pytest.mark.parametrize('path', EXPERIMENTS)
def test_experiment_dry_runs(path, tmp_path):
  files = [path] + ([DEFAULT_MODEL] if _needs_model(path) else [])
  dry_run(files, tmp_path, ONE_HOST_MESH)


@pytest.mark.parametrize('arm', ['base', 'rl_L1', 'rft_L2', 'sft', 'rl_L2_clean'])
def test_every_repro_arm_dry_runs(arm, tmp_path):
  # gin/repro_cpu.gin's default arm (rl_L2) runs above; each other arm picks its own stages.
  summaries = dry_run(['gin/repro_cpu.gin'], tmp_path, ONE_HOST_MESH + [f"ARM = '{arm}'"])
  assert 'final' in summaries and 'final_passk' in summaries, sorted(summaries)
  assert (arm == 'base') == (len(summaries) == 2), sorted(summaries)


@pytest.mark.parametrize('model', MODELS)
def test_model_file_binds_existing_parameters(model, tmp_path):
  dry_run(['gin/experiments/stage1_rft.gin', model], tmp_path, ONE_HOST_MESH)
  dry_run([DEFAULT_EXPERIMENT, model], tmp_path / 'rl', ONE_HOST_MESH)


@pytest.mark.parametrize('hardware', HARDWARE)
def test_hardware_file_binds_existing_parameters(hardware, tmp_path):
  import jax

  devices, peak = HARDWARE_SPEC.get(hardware, (None, None))
  gin.parse_config_files_and_bindings([str(ROOT / hardware)], [])
  shape = tuple(gin.query_parameter('pipeline.mesh_shape'))
  assert len(shape) == 3
  if devices is not None:
    assert math.prod(shape) == devices, (hardware, shape)
  if peak is not None:
    assert gin.query_parameter('pipeline.peak_flops') == peak
  gin.clear_config()
  # The real mesh where this machine has its device count (8 fake CPUs: gpu_8xh100).
  fits = -1 in shape or math.prod(shape) == jax.device_count()
  extra = [] if fits else ONE_HOST_MESH
  dry_run([DEFAULT_EXPERIMENT, DEFAULT_MODEL, hardware], tmp_path, extra)
  dry_run(['gin/experiments/stage1_rft.gin', DEFAULT_MODEL, hardware], tmp_path / 's1', extra)


def test_fragments_are_included():
  """Include-only fragments are exercised through the experiments that include them."""
  texts = [(ROOT / p).read_text() for p in EXPERIMENTS]
  for frag in FRAGMENTS:
    assert any(f"include '{frag}'" in t for t in texts), f'{frag} is included by nothing'


# ---------------------------------------------------------- the paper's values reach the stages


def _has(summary, key, *parts):
  text = summary[key]
  missing = [p for p in parts if p not in text]
  assert not missing, f'{key}: {missing} not in {text}'


def test_stage1_rft_has_paper_hyperparameters(tmp_path):
  s = dry_run(['gin/experiments/stage1_rft.gin', DEFAULT_MODEL], tmp_path, ONE_HOST_MESH)
  assert set(s) == {'stage1_rft', 'stage1_rft/iter_0/sft', 'export', 'stage1_eval'}
  _has(s['stage1_rft'], 'num_samples', '10')
  sft = s['stage1_rft/iter_0/sft']
  assert sft['batch_size'] == '128' and sft['seq_len'] == '5120'
  _has(
      sft,
      'optimizer',
      'learning_rate=2e-05',
      "schedule='cosine'",
      'warmup_ratio=0.1',
      'b1=0.9',
      'b2=0.95',
      'weight_decay=0.01',
      'clip_norm=1.0',
  )
  _has(sft, 'records', 'stage1_train_L1')
  _has(s['stage1_eval'], 'records', 'stage2_test_L1to8')


RL_GRPO = (
    'num_generations=16',
    'batch_prompts=16',
    'gen_prompts=32',
    'max_rounds=10',
    'dynamic_sampling=True',
    'max_new_tokens=8192',
    'temperature=1.0',
    "task='strings_json'",
    'clip_low=0.2',
    'clip_high=0.2',
    "loss_agg='token-mean'",
    'kl_coef=0.0',
    'entropy_coef=0.0',
)
RL_OPT = (
    'learning_rate=1e-06',
    "schedule='constant'",
    'warmup_ratio=0.0',
    'b1=0.9',
    'b2=0.999',
    'weight_decay=0.01',
    'clip_norm=1.0',
)


@pytest.mark.parametrize(
    'level,config',
    [('L1', 'stage2_train_L1'), ('L2', 'stage2_train_L2'), ('L1to2', 'stage2_train_L1to2')],
)
def test_stage2_rl_has_paper_hyperparameters(level, config, tmp_path):
  s = dry_run([f'gin/experiments/stage2_rl_{level}.gin', DEFAULT_MODEL], tmp_path, ONE_HOST_MESH)
  rl = s[f'stage2_rl_{level}']
  _has(rl, 'grpo', *RL_GRPO)
  _has(rl, 'optimizer', *RL_OPT)
  _has(rl, 'records', f'tfds {config})')
  assert (
      'load_model.checkpoint = %STAGE1'
      in (ROOT / f'gin/experiments/stage2_rl_{level}.gin').read_text()
  )


def test_iterative_rft_has_paper_hyperparameters(tmp_path):
  s = dry_run(['gin/experiments/stage2_iterative_rft.gin', DEFAULT_MODEL], tmp_path, ONE_HOST_MESH)
  _has(s['stage2_rft'], 'num_samples', '2')
  sft = s['stage2_rft/iter_0/sft']
  assert sft['batch_size'] == '128'
  _has(sft, 'optimizer', 'learning_rate=2e-05', 'b2=0.95')
  assert gin.query_parameter('rft2/rft_stage.problems_per_iteration') == 8000
  assert gin.query_parameter('rft2/sft_stage.num_epochs') == 1


def test_countdown_multibase_stages(tmp_path):
  s = dry_run(['gin/experiments/countdown_multibase.gin', DEFAULT_MODEL], tmp_path, ONE_HOST_MESH)
  assert {
      'strings_rft',
      'countdown_rft',
      'multibase_sft',
      'export',
      'multibase_eval',
      'rl_L1/rl',
      'rl_L1/countdown_eval',
      'rl_L1to2/rl',
      'rl_L1to2/countdown_eval',
  } <= set(s)
  _has(s['countdown_rft'], 'records', 'countdown L2')
  _has(s['countdown_rft'], 'num_samples', '4')
  assert s['countdown_rft']['train'] == 'False' and s['strings_rft']['train'] == 'False'
  assert not any(k.startswith(('strings_rft/', 'countdown_rft/')) for k in s)  # no SFT
  _has(s['multibase_sft'], 'records', 'mix(jsonl ', 'rft_records.jsonl')
  _has(s['multibase_sft'], 'optimizer', 'learning_rate=2e-05')
  for arm, config in (('rl_L1', 'stage2_train_L1'), ('rl_L1to2', 'stage2_train_L1to2')):
    _has(s[f'{arm}/rl'], 'grpo', *RL_GRPO)
    _has(s[f'{arm}/rl'], 'optimizer', *RL_OPT)
    _has(s[f'{arm}/rl'], 'records', f'tfds {config})')
  for name in ('multibase_eval', 'rl_L1/countdown_eval', 'rl_L1to2/countdown_eval'):
    assert s[name]['task'] == "'countdown'" and s[name]['greedy'] == 'False'
    assert s[name]['num_samples'] == '32'
    _has(s[name], 'records', 'countdown L3', 'countdown L4', 'countdown L5')


def test_eval_files(tmp_path):
  s = dry_run(['gin/experiments/eval_levels.gin', DEFAULT_MODEL], tmp_path, ONE_HOST_MESH)
  assert s['greedy']['greedy'] == 'True' and s['temperature_1']['greedy'] == 'False'
  s = dry_run(['gin/experiments/pass_at_k.gin', DEFAULT_MODEL], tmp_path / 'k', ONE_HOST_MESH)
  assert s['pass_at_k']['num_samples'] == '1024'


# ---------------------------------------------------------------------------------- typos


def test_misspelled_binding_names_the_parameter(tmp_path):
  with pytest.raises(ValueError, match='batchsize'):
    gin.parse_config_files_and_bindings(
        [str(ROOT / 'gin/experiments/stage1_rft.gin'), str(ROOT / DEFAULT_MODEL)],
        SHRINK + ['stage1/sft_stage.batchsize = 1'],
    )
  gin.clear_config()
  with pytest.raises(ValueError, match='batchsize'):
    main.main(
        ['--gin_file=gin/demo.gin', '--gin_param=sft_stage.batchsize = 1', f'--workdir={tmp_path}']
    )
