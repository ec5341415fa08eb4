"""compfn-train's error boundary (compfn.errors): each known failure prints one line and exits
with its code, --verbose adds the traceback; SIGTERM saves, exits 75 and the rerun resumes bit
for bit (every step's metrics and the final weights equal an uninterrupted run's); a
changed model exits 5; the multi-process flags are validated and initialise jax.distributed."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import gin
import pytest

from compfn import errors, parallel
from compfn import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

BASE = """
include '{root}/gin/models/char_tiny.gin'
include '{root}/gin/hardware/cpu.gin'
char_model.d_model = 16
char_model.num_heads = 2
char_model.head_dim = 8
char_model.mlp_dim = 32
char_model.max_len = 128
run.job = @pipeline
"""

SFT = """
pipeline.stages = [@s/sft_stage]
s/sft_stage.name = 'sft'
s/sft_stage.records = @s/trace_records()
s/trace_records.num = 32
s/sft_stage.seq_len = 64
s/sft_stage.batch_size = 4
s/sft_stage.num_steps = 4
s/sft_stage.save_every = 1
s/sft_stage.log_every = 1
s/sft_stage.optimizer = @s/OptimizerConfig()
s/OptimizerConfig.schedule = 'constant'
s/OptimizerConfig.warmup_ratio = 0.0
s/OptimizerConfig.learning_rate = 1e-3
"""

GATE = """
pipeline.stages = [@g/gate_stage]
g/gate_stage.name = 'gate'
g/gate_stage.records = @g/trace_records()
g/trace_records.num = 4
g/gate_stage.num_samples = 2
g/gate_stage.max_new_tokens = 8
g/gate_stage.batch_size = 8
g/gate_stage.enforce = True
g/gate_stage.min_pass_at_k = 1.1
"""


@pytest.fixture(scope='module')
def gins(tmp_path_factory):
  d = tmp_path_factory.mktemp('gin')
  out = {}
  for name, body in (('sft', SFT), ('gate', GATE)):
    out[name] = d / f'{name}.gin'
    out[name].write_text(BASE.format(root=ROOT) + body)
  return out


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  e = dict(os.environ)
  e.pop('XLA_FLAGS', None)  # one CPU device, like the CLI on this machine
  e['JAX_PLATFORMS'] = 'cpu'
  # The runs share their compiled programs (model init, the SFT step): seconds per run.
  e['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('jax_cache'))
  e['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  e['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return e


def _cmd(gin_file, workdir, *params, flags=()):
  return [
      sys.executable,
      '-m',
      'compfn.main',
      f'--gin_file={gin_file}',
      f'--workdir={workdir}',
      *[f'--gin_param={p}' for p in params],
      *flags,
  ]


def _run(cmd, env, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _error_line(stderr: str) -> str:
  """The boundary's one line (tqdm's progress bar shares stderr, with carriage returns)."""
  lines = [ln for ln in stderr.replace('\r', '\n').splitlines() if 'compfn-train: error:' in ln]
  assert len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith('compfn-train: error: '), lines
  return lines[0]


# --------------------------------------------------------------------------- exit code 2: config


def test_bad_gin_binding_is_one_line_exit_2(gins, env, tmp_path):
  out = _run(_cmd(gins['gate'], tmp_path, 'g/gate_stage.num_sample = 2'), env)
  assert out.returncode == errors.ConfigError.exit_code == 2, out.stderr[-3000:]
  line = _error_line(out.stderr)
  assert out.stderr.strip().splitlines() == [line]  # one line: no traceback, no noise
  assert "'num_sample'" in line and 'gate_stage' in line and '--gin_param line 1' in line


def test_verbose_shows_the_traceback(gins, env, tmp_path):
  out = _run(_cmd(gins['gate'], tmp_path, 'g/gate_stage.num_sample = 2', flags=['--verbose']), env)
  assert out.returncode == 2
  assert 'Traceback (most recent call last)' in out.stderr
  assert "'num_sample'" in _error_line(out.stderr)
  assert out.stderr.strip().splitlines()[-1].startswith('compfn-train: error: ')


@pytest.mark.parametrize(
    'text,params,want',
    [
        (
            'run.job = @build_datasets\nbuild_datasets.cnfigs = 3\n',
            [],
            ["'cnfigs'", 'bad.gin", line 2', 'build_datasets.cnfigs = 3'],
        ),
        ('run.job = @no_such_job\n', [], ["'@no_such_job'", 'bad.gin", line 1']),
        ('build_datasets.configs = = 3\n', [], ['Unable to parse value', 'bad.gin, line 1']),
        ("build_datasets.configs = ['a'\n", [], ['EOF in multi-line statement', 'bad.gin']),
        ('build_datasets.progress = False\n', [], ['Required bindings for `run`', "['job']"]),
        (
            'run.job = @build_datasets\n',
            ['build_datasets.progress = False', 'build_datasets.x = 1'],
            ["'build_datasets' doesn't have a parameter named 'x'", '--gin_param line 2'],
        ),
    ],
)
def test_gin_errors_name_the_binding(tmp_path, capsys, text, params, want):
  """In-process through the same boundary: gin's errors become one line naming the binding."""
  f = tmp_path / 'bad.gin'
  f.write_text(text)
  try:
    rc = main.main(
        [f'--gin_file={f}', f'--workdir={tmp_path / "w"}', *[f'--gin_param={p}' for p in params]],
        exit_codes=True,
    )
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err.count('\n') == 1 and 'Traceback' not in err
  for w in want:
    assert w in err, (w, err)


def test_called_with_argv_raises_config_error(tmp_path):
  """Programmatic calls (argv given) raise; ConfigError is also a ValueError, as gin's was."""
  f = tmp_path / 'bad.gin'
  f.write_text('run.job = @build_datasets\nbuild_datasets.cnfigs = 3\n')
  with pytest.raises(errors.ConfigError, match='cnfigs') as e:
    main.main([f'--gin_file={f}', f'--workdir={tmp_path / "w"}'])
  gin.clear_config()
  assert isinstance(e.value, ValueError) and e.value.exit_code == 2


def test_multihost_flags_are_validated(gins, env, tmp_path):
  out = _run(_cmd(gins['gate'], tmp_path, flags=['--num_processes=2']), env)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  line = _error_line(out.stderr)
  assert '--num_processes given without --coordinator_address, --process_id' in line
  for kw, msg in [
      (dict(process_id=2), r'--process_id=2 is not in \[0, 2\)'),
      (dict(process_id=-1), r'--process_id=-1 is not in \[0, 2\)'),
      (dict(coordinator_address='nohost'), 'is not HOST:PORT'),
      (
          dict(num_processes=None),
          '--coordinator_address, --process_id given without ' '--num_processes',
      ),
  ]:
    args = dict(coordinator_address='localhost:1234', num_processes=2, process_id=0)
    args.update(kw)
    with pytest.raises(errors.ConfigError, match=msg):
      parallel.initialize_distributed(**args)


_TWO_PROCESSES = """
import os, signal, sys, time
from compfn import parallel, train
import jax
pid, port = int(sys.argv[1]), sys.argv[2]
assert parallel.initialize_distributed(f'localhost:{port}', 2, pid)
assert parallel.initialize_distributed(f'localhost:{port}', 2, pid)     # a no-op the 2nd time
assert jax.process_count() == 2, jax.process_count()
watcher = train.PreemptionWatcher()
for step in range(1, 1000):
  time.sleep(0.02)
  if pid == 1 and step == 3:
    os.kill(os.getpid(), signal.SIGTERM)      # one host is preempted ...
  if watcher.reached(step):                   # ... and both stop at the same step
    print('REACHED', step, flush=True)
    break
"""


def test_two_processes_initialise_and_agree_on_the_preemption_step(env):
  """The flags' values reach jax.distributed (gloo on CPU); SIGTERM on one process stops both
  at one step through ``reached_preemption_sync_point``."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [
      subprocess.Popen(
          [sys.executable, '-c', _TWO_PROCESSES, str(i), str(port)],
          cwd=ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
  steps = [int(o.split('REACHED')[1].split()[0]) for o, _ in outs]
  assert steps[0] == steps[1] >= 3, outs


# ------------------------------------------------------------------- exit codes 3, 4: the run


def test_gate_not_met_exits_3(gins, env, tmp_path):
  out = _run(_cmd(gins['gate'], tmp_path), env)
  assert out.returncode == errors.GateNotMet.exit_code == 3, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  line = _error_line(out.stderr)
  assert '[gate] gate not met: pass@2=' in line and '(min 1.1)' in line


def test_nonfinite_loss_exits_4_naming_the_last_good_checkpoint(gins, env, tmp_path):
  out = _run(_cmd(gins['sft'], tmp_path, 's/OptimizerConfig.learning_rate = 1e30'), env)
  assert out.returncode == errors.NonFiniteLoss.exit_code == 4, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  line = _error_line(out.stderr)
  ckpts = tmp_path / 'sft' / 'checkpoints'
  assert 'step 2 produced a non-finite loss or gradient' in line
  assert f'the last good checkpoint is step 1 in {ckpts}' in line
  assert sorted(os.listdir(ckpts)) == ['1']  # committed before the process exited


# ------------------------------------------------------------------ exit code 75: preempted


def test_sigterm_saves_exits_75_and_the_rerun_resumes(gins, env, tmp_path):
  wd = tmp_path / 'run'
  err_path = tmp_path / 'stderr.txt'
  metrics = wd / 'sft' / 'metrics.jsonl'
  with open(err_path, 'w') as err:
    proc = subprocess.Popen(
        _cmd(gins['sft'], wd, 's/sft_stage.num_steps = 100000', 's/sft_stage.save_every = 100000'),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
      deadline = time.time() + 240
      while time.time() < deadline:  # SIGTERM once two steps are logged
        if metrics.exists() and sum(1 for _ in open(metrics)) >= 2:
          break
        if proc.poll() is not None:
          pytest.fail(f'the run ended before SIGTERM: {err_path.read_text()[-3000:]}')
        time.sleep(0.05)
      proc.send_signal(signal.SIGTERM)
      rc = proc.wait(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  stderr = err_path.read_text()
  assert rc == errors.Preempted.exit_code == 75, stderr[-3000:]
  assert 'Traceback' not in stderr
  line = _error_line(stderr)
  assert 'sft: SIGTERM received; saved step ' in line and 'rerun the same command' in line
  step = int(line.split('saved step ')[1].split()[0])
  assert step >= 2
  assert str(step) in os.listdir(wd / 'sft' / 'checkpoints')
  assert not (wd / 'sft' / 'DONE').exists()

  # The rerun (here told to stop two steps later) resumes from the saved step and finishes. The
  # schedule is constant, so num_steps changes no update: an uninterrupted run to the same step
  # must give every step's metrics and the final weights bit for bit.
  export = 'pipeline.stages = [@s/sft_stage, @export_stage]'
  out = _run(_cmd(gins['sft'], wd, f's/sft_stage.num_steps = {step + 2}', export), env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((wd / 'sft' / 'DONE').read_text())['step'] == step + 2
  assert json.loads((wd / 'results.json').read_text())['stages']['sft']['resumed_from'] == step
  assert [json.loads(r)['step'] for r in open(metrics)] == list(range(1, step + 3))

  ref = tmp_path / 'uninterrupted'
  out = _run(_cmd(gins['sft'], ref, f's/sft_stage.num_steps = {step + 2}', export), env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert _step_metrics(metrics) == _step_metrics(ref / 'sft' / 'metrics.jsonl')
  _assert_same_weights(ref / 'export', wd / 'export')


def _step_metrics(path) -> list:
  """Every row of a metrics.jsonl without its timings (which differ from run to run)."""
  timing = ('time/', 'tokens_per_s', 'mfu')
  rows = [json.loads(r) for r in open(path)]
  return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]


def _assert_same_weights(a, b):
  import numpy as np
  from safetensors.numpy import load_file

  wa, wb = load_file(str(a / 'model.safetensors')), load_file(str(b / 'model.safetensors'))
  assert wa.keys() == wb.keys()
  for k in wa:
    np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


# ---------------------------------------------------------- exit code 5: checkpoint mismatch


def _state(params, step=0):
  import jax.numpy as jnp
  import optax
  from compfn import train

  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  return train.TrainState.create(params, tx).replace(step=jnp.asarray(step, jnp.int32))


def test_checkpoint_mismatch_names_the_folder_and_what_differs(tmp_path):
  import jax.numpy as jnp
  from compfn import train

  trainer = train.Trainer(
      str(tmp_path / 'stage'), 3, async_save=False, progress=False, tensorboard=False, name='sft'
  )
  good = {'w': jnp.ones((4, 4)), 'b': jnp.zeros(3)}
  trainer.save(1, _state(good, step=1))
  restored, _ = trainer.restore(_state(good))
  assert int(restored.step) == 1  # a matching state restores
  ckpts = tmp_path / 'stage' / 'checkpoints'
  cases = [
      ({**good, 'w': jnp.ones((4, 5))}, 'params.w: checkpoint (4, 4), config (4, 5)'),
      ({**good, 'c': jnp.zeros(2)}, 'params.c: only in the config'),  # orbax's
      ({'w': jnp.ones((4, 4))}, 'params.b: only in the checkpoint'),
  ]  # errors
  for params, want in cases:
    with pytest.raises(errors.CheckpointMismatch) as e:
      trainer.restore(_state(params))
    msg = str(e.value)
    assert e.value.exit_code == 5
    assert msg.startswith(f'sft: checkpoint 1 in {ckpts} does not match the configured state: ')
    assert want in msg.split('; ')[0], msg  # the parameters come first
  trainer.close()


def test_boundary_maps_known_errors_and_keeps_the_rest():
  from compfn import checkpoint

  for cls, code in [
      (errors.ConfigError, 2),
      (errors.GateNotMet, 3),
      (errors.NonFiniteLoss, 4),
      (errors.CheckpointMismatch, 5),
      (errors.Preempted, 75),
  ]:
    assert main._known_failure(cls('a\nb')) == (code, 'a b') and errors.EXIT_CODES[code] is cls
  assert main._known_failure(checkpoint.NonFiniteError('refusing'))[0] == 4
  assert main._known_failure(RuntimeError('a bug')) is None
  assert main._known_failure(KeyError('x')) is None
  # gin re-raises errors from configurables as a proxy with "In call to configurable" appended.
  from gin import utils

  try:
    try:
      raise errors.GateNotMet('gate not met')
    except errors.GateNotMet as e:
      utils.augment_exception_message_and_reraise(e, "\n  In call to configurable 'pipeline'")
  except errors.GateNotMet as proxy:
    assert 'In call to' in str(proxy)
    assert main._known_failure(proxy) == (3, 'gate not met')
  from compfn import train
  from compfn.stages import gate

  assert issubclass(gate.GateError, errors.GateNotMet)
  assert issubclass(train.NonFiniteStepError, errors.NonFiniteLoss)
  assert issubclass(train.NonFiniteStepError, checkpoint.NonFiniteError)
  assert train.Preempted is errors.Preempted
