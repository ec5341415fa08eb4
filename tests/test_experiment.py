"""The gin pipeline end to end through the CLI: kill -9 + resume = uninterrupted (an SFT stage,
and a GRPO stage), reruns of a finished run say so, results.json has the public shape."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

GIN = """
include '{root}/gin/models/char_tiny.gin'
include '{root}/gin/hardware/cpu.gin'
char_model.d_model = 32
char_model.head_dim = 8
char_model.mlp_dim = 64
char_model.max_len = 256
run.job = @pipeline
pipeline.stages = [@s/sft_stage, @export_stage, @e/eval_stage]
s/sft_stage.name = 'sft'
s/sft_stage.records = @s/trace_records()
s/trace_records.functions = 'all'
s/trace_records.num = 400
s/sft_stage.seq_len = 64
s/sft_stage.batch_size = 16
s/sft_stage.num_steps = {steps}
s/sft_stage.save_every = 2
s/sft_stage.log_every = 1
s/sft_stage.optimizer = @s/OptimizerConfig()
s/OptimizerConfig.learning_rate = 3e-3
e/eval_stage.name = 'eval'
e/eval_stage.records = @e/trace_records()
e/trace_records.functions = 'heldout'
e/trace_records.max_level = 2
e/trace_records.num = 8
e/trace_records.inputs = 'heldout'
e/eval_stage.max_new_tokens = 32
e/eval_stage.batch_size = 8
"""


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one CPU device, like the CLI on this machine
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _cmd(gin_file, workdir, *params):
  return [
      sys.executable,
      '-m',
      'compfn.main',
      f'--gin_file={gin_file}',
      f'--workdir={workdir}',
      *[f'--gin_param={p}' for p in params],
  ]


def _losses(workdir):
  rows = [json.loads(x) for x in open(os.path.join(workdir, 'sft', 'metrics.jsonl'))]
  return [(r['step'], r['loss']) for r in rows]


@pytest.fixture(scope='module')
def gin_file(tmp_path_factory):
  d = tmp_path_factory.mktemp('gin')
  p = d / 'tiny.gin'
  p.write_text(GIN.format(root=ROOT, steps=14))
  return p


def test_kill9_then_resume_equals_uninterrupted(gin_file, tmp_path):
  ref = tmp_path / 'ref'
  out = subprocess.run(
      _cmd(gin_file, ref), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((ref / 'results.json').read_text())
  assert set(results['accuracy_by_level']) == {'1', '2'}
  assert all(0.0 <= v <= 1.0 for v in results['accuracy_by_level'].values())

  run = tmp_path / 'killed'
  proc = subprocess.Popen(
      _cmd(gin_file, run),
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  metrics = run / 'sft' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:  # kill -9 once step 7 is logged (mid-run)
    if metrics.exists() and sum(1 for _ in open(metrics)) >= 7:
      break
    if proc.poll() is not None:
      pytest.fail('the run finished before it could be killed')
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (run / 'sft' / 'DONE').exists()
  out = subprocess.run(
      _cmd(gin_file, run), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  # Same data order: every step's loss equals the uninterrupted run's, bit for bit.
  assert _losses(run) == _losses(ref)
  # Same final parameters, bit for bit (the exported safetensors).
  from safetensors.numpy import load_file

  a = load_file(str(ref / 'export' / 'model.safetensors'))
  b = load_file(str(run / 'export' / 'model.safetensors'))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])

  # Rerunning the finished run reloads everything and says so (it does not silently no-op).
  out = subprocess.run(
      _cmd(gin_file, run), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  log = out.stdout + out.stderr
  assert '[sft] already finished at step 14' in log
  assert 'were already complete' in log and 'eval' in log
  again = json.loads((run / 'results.json').read_text())
  assert (
      again['accuracy_by_level']
      == json.loads((ref / 'results.json').read_text())['accuracy_by_level']
  )
  assert 'sft' in again['already_complete']

  # Extending a finished stage continues from its last step instead of starting over.
  out = subprocess.run(
      _cmd(gin_file, run, 's/sft_stage.num_steps = 16'),
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  steps = [s for s, _ in _losses(run)]
  assert steps == list(range(1, 17))


def test_bad_gin_binding_is_named(gin_file, tmp_path):
  out = subprocess.run(
      _cmd(gin_file, tmp_path / 'x', 's/sft_stage.batchsize = 4'),
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode != 0
  assert 'batchsize' in out.stderr


GIN_RL = """
include '{root}/gin/models/char_tiny.gin'
include '{root}/gin/hardware/cpu.gin'
char_model.d_model = 32
char_model.num_layers = 1
char_model.num_heads = 2
char_model.head_dim = 16
char_model.mlp_dim = 64
char_model.max_len = 96
run.job = @pipeline
pipeline.stages = [@rl/rl_stage, @export_stage]
rl/rl_stage.name = 'rl'
rl/rl_stage.records = @rl/trace_records()
rl/trace_records.functions = 'train'
rl/trace_records.min_level = 1
rl/trace_records.max_level = 1
rl/trace_records.num = 64
rl/trace_records.seed = 3
rl/rl_stage.num_steps = 10
rl/rl_stage.save_every = 2
rl/rl_stage.prompt_len = 48
rl/rl_stage.optimizer = @rl/OptimizerConfig()
rl/OptimizerConfig.learning_rate = 1e-3
rl/OptimizerConfig.schedule = 'constant'
rl/OptimizerConfig.warmup_ratio = 0.0
rl/rl_stage.grpo = @GRPOConfig()
GRPOConfig.task = 'strings_trace'
GRPOConfig.num_generations = 4
GRPOConfig.batch_prompts = 2
GRPOConfig.gen_prompts = 4
GRPOConfig.max_rounds = 2
GRPOConfig.max_new_tokens = 24
"""


def _rows(workdir, stage):
  timing = ('time/', 'tokens_per_s', 'mfu')
  rows = [json.loads(x) for x in open(os.path.join(workdir, stage, 'metrics.jsonl'))]
  return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]


def test_grpo_kill9_then_resume_equals_uninterrupted(tmp_path):
  """A GRPO stage (dynamic sampling, from a random char model) killed with SIGKILL mid-stage
  and rerun gives every step's metrics (rewards, kept groups, loss, ...) and the final weights
  bit for bit equal to an uninterrupted run: the checkpoint holds the RNG key and the data
  position, and the rows logged after the last checkpoint are rewritten, not duplicated."""
  gin_file = tmp_path / 'rl.gin'
  gin_file.write_text(GIN_RL.format(root=ROOT))
  ref = tmp_path / 'ref'
  out = subprocess.run(
      _cmd(gin_file, ref), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  want = _rows(ref, 'rl')
  assert [r['step'] for r in want] == list(range(1, 11))
  # The updates are real (a step without a mixed group would leave the weights alone).
  assert sum(r['groups_trained'] for r in want) > 0, want

  run = tmp_path / 'killed'
  proc = subprocess.Popen(
      _cmd(gin_file, run),
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  metrics = run / 'rl' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:  # kill -9 once step 5 is logged (checkpoints 2 and 4 exist)
    if metrics.exists() and sum(1 for _ in open(metrics)) >= 5:
      break
    if proc.poll() is not None:
      pytest.fail('the run finished before it could be killed')
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (run / 'rl' / 'DONE').exists()
  out = subprocess.run(
      _cmd(gin_file, run), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  resumed = json.loads((run / 'results.json').read_text())['stages']['rl']['resumed_from']
  assert 2 <= resumed < 10, resumed
  assert _rows(run, 'rl') == want
  from safetensors.numpy import load_file

  a = load_file(str(ref / 'export' / 'model.safetensors'))
  b = load_file(str(run / 'export' / 'model.safetensors'))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _in_process_run(tmp_path):
  """A stages.Run of a random char model on all (fake) devices."""
  import jax
  from compfn import parallel
  from compfn import stages
  from compfn.model import transformer
  from compfn.tokenizers import CharTokenizer

  tok = CharTokenizer()
  cfg = stages.char_model(d_model=32, head_dim=8, mlp_dim=64, max_len=128)
  return stages.Run(
      workdir=str(tmp_path),
      model_config=cfg,
      params=transformer.init_params(cfg, jax.random.PRNGKey(0)),
      tokenizer=tok,
      encode=tok.encode,
      mesh=parallel.make_mesh((-1, 1, 1)),
      rules=parallel.logical_rules(),
  )


def test_eval_stage_takes_the_reference_and_metrics_from_the_task(tmp_path):
  """eval_stage reads each record's reference through the task (the whole reference trace for
  strings_trace_shape, the answer for strings_trace) and offers failure modes only for the tasks
  whose Task.metrics list them."""
  from compfn import stages
  from compfn.data import sources

  run = _in_process_run(tmp_path)
  recs = sources.trace_records('train', 2, 2, 4, seed=0)
  common = dict(records=recs, max_new_tokens=8, batch_size=8)
  stages.eval_stage(run, name='shape', task='strings_trace_shape', **common)
  assert [p.ref for p in run.results['shape'].problems] == [r['target'] for r in recs]
  stages.eval_stage(run, name='answer', task='strings_trace', failure_modes=True, **common)
  assert [p.ref for p in run.results['answer'].problems] == [r['ref'] for r in recs]
  assert 'failure_analysis' in run.summaries['answer']
  with pytest.raises(ValueError, match='failure_modes needs greedy=True and a task'):
    stages.eval_stage(
        run, name='shape_fm', task='strings_trace_shape', failure_modes=True, **common
    )


def test_rft_stage_collects_writes_and_refuses_to_train_on_nothing(tmp_path):
  """The RFT stage glue in-process: collect-only writes the (empty) records and stats, and a
  training RFT stops with a message instead of fitting noise. Rigged so that nothing can be
  solved: every reference ends in a character the char model cannot emit (it is not in its
  vocabulary), so the empty branch runs whatever the random model samples."""
  from compfn import stages
  from compfn.data import sources

  run = _in_process_run(tmp_path)
  tok = run.tokenizer
  unsolvable = '\u2603'  # not in the CharTokenizer's vocabulary: no response contains it
  with pytest.raises(ValueError, match='not in the vocabulary'):
    tok.encode(unsolvable)
  recs = [
      dict(r, ref=r['ref'] + unsolvable) for r in sources.trace_records('train', 1, 1, 8, seed=0)
  ]
  stages.rft_stage(
      run,
      name='collect',
      records=recs,
      num_samples=2,
      max_new_tokens=16,
      sample_batch_size=8,
      train=False,
  )
  stats = json.loads((tmp_path / 'collect' / 'iter_0' / 'rft_stats.json').read_text())
  assert stats['problems'] == 8 and stats['samples'] == 16
  assert (tmp_path / 'collect' / 'iter_0' / 'rft_records.jsonl').exists()
  assert stats['kept_records'] == 0, stats
  with pytest.raises(ValueError, match='no correct responses to fine-tune on'):
    stages.rft_stage(
        run, name='train', records=recs, num_samples=2, max_new_tokens=16, sample_batch_size=8
    )
