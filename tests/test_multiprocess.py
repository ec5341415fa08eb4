"""Multi-process runs (issue #9), for real: ``gin/tests/tiny_pipeline.gin`` (sft -> gate -> eval
-> rl -> eval -> export) as two processes x 4 fake CPU devices (gloo collectives, one shared
workdir) equals one process x 8 devices — the same results.json and the same per-step losses in
every training stage; a run checkpointed by two processes resumes with one; killing one process
of a pair makes the other exit non-zero within a minute.

Each run is a fresh ``python -m compfn.main`` subprocess (a JAX process cannot change its
device count or join a distributed job after start-up)."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN = 'gin/tests/tiny_pipeline.gin'
TRAIN_STAGES = ('sft', 'rl')
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONUNBUFFERED'] = '1'
  env.pop('COMPFN_MULTIHOST', None)
  return env


def _cmd(workdir, *extra):
  return [sys.executable, '-m', 'compfn.main', f'--gin_file={GIN}', f'--workdir={workdir}', *extra]


def _start(workdir, log, nproc: int, extra=()):
  """Start the pipeline as ``nproc`` processes (8 // nproc devices each); returns the Popens."""
  if nproc == 1:
    flags = [[]]
  else:
    port = _free_port()
    flags = [
        [f'--coordinator_address=localhost:{port}', f'--num_processes={nproc}', f'--process_id={i}']
        for i in range(nproc)
    ]
  procs = []
  for i, f in enumerate(flags):
    out = open(f'{log}.p{i}.log', 'w')
    procs.append(
        subprocess.Popen(
            _cmd(workdir, *f, *extra),
            cwd=ROOT,
            env=_env(8 // nproc),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
  return procs


def _wait(procs, log) -> list[int]:
  codes = []
  try:
    for p in procs:
      codes.append(p.wait(timeout=TIMEOUT_S))
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  return codes


def _tail(log, nproc: int) -> str:
  out = []
  for i in range(nproc):
    text = pathlib.Path(f'{log}.p{i}.log').read_text(errors='replace').replace('\r', '\n')
    lines = [ln for ln in text.splitlines() if ln.strip() and 'Involuntary' not in ln]
    out.append(f'--- process {i}:\n' + '\n'.join(lines[-25:]))
  return '\n'.join(out)


def _run(workdir, nproc: int, extra=(), expect=0):
  log = f'{workdir}.log'
  t0 = time.time()
  codes = _wait(_start(workdir, log, nproc, extra), log)
  assert codes == [expect] * nproc, f'exit codes {codes}\n{_tail(log, nproc)}'
  return time.time() - t0


def _losses(workdir, stage):
  rows = [
      json.loads(ln)
      for ln in (pathlib.Path(workdir) / stage / 'metrics.jsonl').read_text().splitlines()
      if ln.strip()
  ]
  return {r['step']: r for r in rows}


def _comparable(results: dict) -> dict:
  """results.json without what legitimately differs between runs (times, paths, devices)."""
  drop = {
      'seconds',
      'seconds_this_run',
      'machine',
      'reports',
      'path',
      'resumed_from',
      'already_complete',
  }

  def clean(x):
    if isinstance(x, dict):
      return {
          k: clean(v)
          for k, v in x.items()
          if k not in drop
          and not k.startswith('time/')
          and k not in ('tokens_per_s', 'mfu', 'last_metrics')
      }
    if isinstance(x, list):
      return [clean(v) for v in x]
    return x

  return clean(results)


def _assert_same_run(a, b):
  ra = json.loads((pathlib.Path(a) / 'results.json').read_text())
  rb = json.loads((pathlib.Path(b) / 'results.json').read_text())
  assert ra['accuracy_by_level'] == rb['accuracy_by_level']
  assert _comparable(ra) == _comparable(rb)
  for stage in TRAIN_STAGES:
    la, lb = _losses(a, stage), _losses(b, stage)
    assert sorted(la) == sorted(lb) and la, (stage, sorted(la), sorted(lb))
    for step in la:
      for key in ('loss', 'reward', 'accuracy', 'token_accuracy', 'groups_trained'):
        if key in la[step]:
          assert lb[step][key] == pytest.approx(la[step][key], rel=1e-5, abs=1e-6), (
              stage,
              step,
              key,
          )


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory):
  """The reference: one process, 8 devices."""
  work = tmp_path_factory.mktemp('mp') / 'one'
  seconds = _run(work, 1)
  print(f'1 process x 8 devices: {seconds:.0f} s')
  return work


def test_two_processes_equal_one_process(one_process_run, tmp_path):
  work = tmp_path / 'two'
  seconds = _run(work, 2)
  print(f'2 processes x 4 devices: {seconds:.0f} s')
  _assert_same_run(one_process_run, work)
  # Only the lead process wrote the shared files: one row per step, one DONE per stage.
  for stage in TRAIN_STAGES:
    steps = [
        json.loads(ln)['step'] for ln in (work / stage / 'metrics.jsonl').read_text().splitlines()
    ]
    assert steps == sorted(set(steps)), steps
    assert json.loads((work / stage / 'DONE').read_text())['fingerprint']
  assert (work / 'export' / 'config.json').exists()
  assert not list(work.rglob('*.tmp*'))


def test_checkpoint_of_two_processes_resumes_with_one(one_process_run, tmp_path):
  work = tmp_path / 'resume'
  # Two processes stop (as if preempted: exit 75) after the SFT checkpoint at step 3 ...
  _run(work, 2, extra=['--gin_param=planned_stop.step = 3'], expect=75)
  assert sorted(_losses(work, 'sft')) == [1, 2, 3]
  assert not (work / 'sft' / 'DONE').exists()
  # ... and one process with 8 devices continues the same run to the end.
  _run(work, 1)
  _assert_same_run(one_process_run, work)


def test_killed_peer_makes_the_other_exit(tmp_path):
  work = tmp_path / 'kill'
  log = f'{work}.log'
  procs = _start(work, log, 2)
  try:
    deadline = time.time() + TIMEOUT_S
    while not (work / 'sft' / 'stage_config.json').exists():  # both are in the SFT stage
      assert time.time() < deadline and all(p.poll() is None for p in procs), _tail(log, 2)
      time.sleep(0.2)
    os.killpg(procs[1].pid, signal.SIGKILL)
    t0 = time.time()
    code = procs[0].wait(timeout=120)
    waited = time.time() - t0
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  assert code != 0, _tail(log, 2)
  assert waited < 60, f'process 0 took {waited:.0f} s to notice its dead peer'
  print(f'process 0 exited {code} {waited:.1f} s after process 1 was killed')


def test_changed_stage_config_is_refused(one_process_run, tmp_path):
  """A finished stage rerun with a changed configuration exits 5 naming what changed, instead
  of reusing its old result."""
  work = tmp_path / 'changed'
  shutil.copytree(one_process_run, work)
  proc = subprocess.run(
      _cmd(work, '--gin_param=atomic/sft_stage.seq_len = 72'),
      cwd=ROOT,
      env=_env(8),
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
  )
  assert proc.returncode == 5, proc.stderr[-3000:]
  err = proc.stderr.strip().splitlines()[-1]
  assert 'stage configuration changed' in err and 'seq_len: 64 -> 72' in err, err


_BURNER = """
import multiprocessing as mp, time
def spin(_):
  t = time.time() + 600
  x = 0
  while time.time() < t:
    x += 1
if __name__ == '__main__':
  with mp.Pool(3) as p:
    p.map(spin, range(3))
"""


def test_same_run_bit_for_bit_under_load(one_process_run, tmp_path):
  """The same command on a machine whose cores are busy with other work gives the same
  results.json and bit-for-bit the same per-step metrics (issue #12, determinism under load)."""
  burner = subprocess.Popen([sys.executable, '-c', _BURNER], start_new_session=True)
  try:
    work = tmp_path / 'busy'
    _run(work, 1)
  finally:
    os.killpg(burner.pid, signal.SIGKILL)
  ra = json.loads((one_process_run / 'results.json').read_text())
  rb = json.loads((work / 'results.json').read_text())
  assert _comparable(ra) == _comparable(rb)
  timing = ('time/', 'tokens_per_s', 'mfu')
  for stage in TRAIN_STAGES:
    la, lb = _losses(one_process_run, stage), _losses(work, stage)
    assert sorted(la) == sorted(lb)
    for step in la:
      a = {k: v for k, v in la[step].items() if not k.startswith(timing)}
      b = {k: v for k, v in lb[step].items() if not k.startswith(timing)}
      assert a == b, (stage, step, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})


def test_grpo_stage_resumes_bit_for_bit(one_process_run, tmp_path):
  """RL kill-and-resume: the GRPO stage stopped after its step-2 checkpoint (``rl/planned_stop``:
  scoped to the RL stage, exit 75 as on preemption) and resumed by the same command gives every
  step's metrics and the exported weights bit for bit equal to an uninterrupted run."""
  work = tmp_path / 'rl_resume'
  _run(work, 1, extra=['--gin_param=rl/planned_stop.step = 2'], expect=75)
  assert sorted(_losses(work, 'rl')) == [1, 2] and (work / 'sft' / 'DONE').exists()
  _run(work, 1)
  timing = ('time/', 'tokens_per_s', 'mfu')
  la, lb = _losses(one_process_run, 'rl'), _losses(work, 'rl')
  assert sorted(la) == sorted(lb) == [1, 2, 3]
  for step in la:
    a = {k: v for k, v in la[step].items() if not k.startswith(timing)}
    b = {k: v for k, v in lb[step].items() if not k.startswith(timing)}
    assert a == b, (step, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
  from safetensors.numpy import load_file

  wa = load_file(str(one_process_run / 'export' / 'model.safetensors'))
  wb = load_file(str(work / 'export' / 'model.safetensors'))
  assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
