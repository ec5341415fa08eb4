"""tools/launch_tpu.py: every verb's commands under --dry_run (run as a subprocess, as a user
would), the accelerator table, and each validation error. Nothing here calls gcloud or xpk."""

import importlib.util
import os
import pathlib
import re
import shlex
import stat
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'launch_tpu.py'
BASE = ['--name', 'compfn-pod', '--zone', 'us-east5-a']
V5P = BASE + ['--accelerator_type', 'v5p-128']
GIN = [
    '--gin_file',
    'gin/experiments/stage2_rl_L2.gin',
    '--gin_file',
    'gin/models/llama3_1_8b_instruct.gin',
    '--gin_file',
    'gin/hardware/tpu_v5p_128.gin',
]
WORKDIR = 'gs://my-bucket/runs/stage2_rl_L2'


def _tool():
  if 'launch_tpu' not in sys.modules:  # dataclasses need the module registered
    spec = importlib.util.spec_from_file_location('launch_tpu', TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules['launch_tpu'] = mod
    spec.loader.exec_module(mod)
  return sys.modules['launch_tpu']


def launch(*argv, ok=True):
  """Run the launcher; returns (commands as argv lists, stderr) or, with ok=False, the
  CompletedProcess of a run that must fail."""
  p = subprocess.run(
      [sys.executable, str(TOOL), *argv],
      capture_output=True,
      text=True,
      timeout=60,
      env={**os.environ, 'PATH': '/nonexistent'},
  )  # no gcloud
  if not ok:
    assert p.returncode != 0, p.stdout
    assert p.stdout == ''
    return p
  assert p.returncode == 0, p.stderr
  return [shlex.split(line) for line in p.stdout.splitlines()], p.stderr


def remote(cmd):
  """The --command=... of a gcloud ssh argv."""
  (c,) = [a for a in cmd if a.startswith('--command=')]
  return c[len('--command=') :]


def error_line(p):
  return p.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------- up / down


def test_up_creates_vm_then_installs_on_every_worker():
  cmds, err = launch('up', *V5P, '--dry_run')
  assert '16 hosts (multi-host)' in err
  assert [c[:6] for c in cmds[:2]] == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'compfn-pod'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'compfn-pod'],
  ]
  create = cmds[1]
  assert '--accelerator-type=v5p-128' in create and '--version=v2-alpha-tpuv5' in create
  assert create[create.index('--zone') + 1] == 'us-east5-a'
  archive, scp, install = cmds[2:]
  assert archive[:4] == ['git', '-C', str(ROOT), 'archive'] and archive[-1] == 'HEAD'
  tarball = archive[archive.index('-o') + 1]
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert tarball in scp and 'compfn-pod:compfn.tar.gz' in scp and '--worker=all' in scp
  assert install[4] == 'ssh' and '--worker=all' in install
  sh = remote(install)
  assert 'tar -xzf compfn.tar.gz' in sh and 'python3.11 -m venv compfn-venv' in sh
  assert '.[tpu]' in sh and 'jax[tpu]==0.10.2' in sh
  subprocess.run(['bash', '-n', '-c', sh], check=True)  # valid shell


def test_up_queued_resource_and_options():
  cmds, _ = launch(
      'up',
      *V5P,
      '--queued',
      '--spot',
      '--project',
      'my-proj',
      '--runtime_version',
      'v2-alpha-tpuv5-custom',
      '--gcsfuse',
      '--dry_run',
  )
  qr = ['gcloud', 'compute', 'tpus', 'queued-resources']
  assert cmds[0][:6] == qr + ['describe', 'compfn-pod']
  create = cmds[1]
  assert create[:6] == qr + ['create', 'compfn-pod']
  assert '--node-id=compfn-pod' in create and '--accelerator-type=v5p-128' in create
  assert '--runtime-version=v2-alpha-tpuv5-custom' in create and '--spot' in create
  assert cmds[2][:5] == qr + ['describe'] and '--format=value(state.state)' in cmds[2]
  for c in cmds:
    if c[0] == 'gcloud':
      assert c[c.index('--project') + 1] == 'my-proj'
  assert 'gcsfuse' in remote(cmds[-1]) and '--worker=all' in cmds[-1]


@pytest.mark.parametrize(
    'acc,gcloud_type,version',
    [
        ('v4-8', 'v4-8', 'tpu-ubuntu2204-base'),
        ('v5e-16', 'v5litepod-16', 'v2-alpha-tpuv5-lite'),
        ('v5litepod-64', 'v5litepod-64', 'v2-alpha-tpuv5-lite'),
        ('v6e-8', 'v6e-8', 'v2-alpha-tpuv6e'),
    ],
)
def test_up_other_families(acc, gcloud_type, version):
  cmds, _ = launch('up', *BASE, '--accelerator_type', acc, '--dry_run')
  assert f'--accelerator-type={gcloud_type}' in cmds[1] and f'--version={version}' in cmds[1]


def test_down_vm_and_queued():
  (cmd,), _ = launch('down', *BASE, '--dry_run')
  assert cmd == [
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'delete',
      'compfn-pod',
      '--zone',
      'us-east5-a',
      '--quiet',
  ]
  (cmd,), _ = launch('down', *BASE, '--queued', '--dry_run')
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'compfn-pod']
  assert '--quiet' in cmd and '--force' in cmd


# ------------------------------------------------------------------------------ run / logs


def test_run_on_all_workers_with_gin_files_and_gs_workdir():
  (cmd,), _ = launch(
      'run',
      *V5P,
      *GIN,
      '--gin_param',
      "STAGE1='gs://my-bucket/s1/export'",
      '--workdir',
      WORKDIR,
      '--dry_run',
  )
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'compfn-pod']
  assert '--worker=all' in cmd and cmd[cmd.index('--zone') + 1] == 'us-east5-a'
  sh = remote(cmd)
  assert sh.startswith('cd compfn && ')
  words = shlex.split(sh)
  train = words[words.index('compfn-train') :]
  assert train[1:6] == [
      '--gin_file=gin/experiments/stage2_rl_L2.gin',
      '--gin_file=gin/models/llama3_1_8b_instruct.gin',
      '--gin_file=gin/hardware/tpu_v5p_128.gin',
      "--gin_param=STAGE1='gs://my-bucket/s1/export'",
      f'--workdir={WORKDIR}',
  ]
  assert 'nohup' in words and 'COMPFN_MULTIHOST=1' in sh and '~/compfn-train.log' in words
  assert '--coordinator_address' not in sh  # jax.distributed.initialize() finds the workers
  subprocess.run(['bash', '-n', '-c', sh], check=True)


def test_run_gcsfuse_mounts_and_rewrites_paths():
  (cmd,), _ = launch(
      'run',
      *V5P,
      *GIN,
      '--gin_param',
      "STAGE1='gs://my-bucket/s1/export'",
      '--gin_param',
      "CHECKPOINT='gs://other-bucket/m'",
      '--workdir',
      WORKDIR,
      '--gcsfuse',
      '--dry_run',
  )
  sh = remote(cmd)
  assert 'gcsfuse --implicit-dirs' in sh and 'my-bucket /mnt/gcs/my-bucket' in sh
  words = shlex.split(sh)
  assert '--workdir=/mnt/gcs/my-bucket/runs/stage2_rl_L2' in words
  assert "--gin_param=STAGE1='/mnt/gcs/my-bucket/s1/export'" in words
  assert "--gin_param=CHECKPOINT='gs://other-bucket/m'" in words  # only the mounted bucket


def test_run_command_executes_as_written(tmp_path):
  """The remote command, run by bash in a fake home: the arguments reach compfn-train intact
  and the log lands where `logs` tails it."""
  home = tmp_path / 'home'
  (home / 'compfn').mkdir(parents=True)
  fake = home / 'compfn-venv' / 'bin' / 'compfn-train'
  fake.parent.mkdir(parents=True)
  fake.write_text(
      '#!/bin/sh\necho "multihost=$COMPFN_MULTIHOST cwd=$(basename "$PWD")"\n'
      'for a in "$@"; do echo "arg: $a"; done\n'
  )
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  param = "load_model.checkpoint='/ckpt/a b'"
  (cmd,), _ = launch('run', *V5P, *GIN, '--gin_param', param, '--workdir', WORKDIR, '--dry_run')
  p = subprocess.run(
      ['bash', '-c', remote(cmd)],
      cwd=home,
      capture_output=True,
      text=True,
      env={'HOME': str(home), 'PATH': '/usr/bin:/bin'},
      timeout=30,
  )
  assert p.returncode == 0, p.stderr
  assert 'compfn-train started' in p.stdout
  log = home / 'compfn-train.log'
  for _ in range(100):
    if log.exists() and f'arg: --workdir={WORKDIR}' in log.read_text():
      break
    time.sleep(0.05)
  text = log.read_text()
  assert 'multihost=1 cwd=compfn' in text
  assert f'arg: --gin_param={param}\n' in text
  assert 'arg: --gin_file=gin/hardware/tpu_v5p_128.gin' in text
  (cmd,), _ = launch('logs', *BASE, '--dry_run')
  assert remote(cmd).endswith('~/compfn-train.log')


def test_run_single_host_local_workdir_allowed():
  (cmd,), err = launch(
      'run',
      *BASE,
      '--accelerator_type',
      'v4-8',
      '--gin_file',
      'gin/experiments/eval_levels.gin',
      '--workdir',
      'runs/gemma_eval',
      '--dry_run',
  )
  assert '1 host (single-host)' in err
  sh = remote(cmd)
  assert '--workdir=runs/gemma_eval' in shlex.split(sh) and 'COMPFN_MULTIHOST' not in sh


def test_logs_worker_choice():
  (cmd,), _ = launch('logs', *BASE, '--dry_run')
  assert '--worker=0' in cmd and remote(cmd).startswith('tail -n +1 -F ')
  (cmd,), _ = launch('logs', *BASE, '--worker', 'all', '--log_file', 'x.log', '--dry_run')
  assert '--worker=all' in cmd and remote(cmd) == 'tail -n +1 -F ~/x.log'
  (cmd,), _ = launch('logs', *V5P, '--worker', '15', '--dry_run')
  assert '--worker=15' in cmd


# ------------------------------------------------------------------------------------- xpk


def test_xpk_workload():
  (cmd,), _ = launch('xpk', *V5P, *GIN, '--workdir', WORKDIR, '--cluster', 'my-gke', '--dry_run')
  assert cmd[:3] == ['xpk', 'workload', 'create']
  opt = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith('--')}
  assert opt['--cluster'] == 'my-gke' and opt['--workload'] == 'compfn-pod'
  assert opt['--tpu-type'] == 'v5p-128' and opt['--num-slices'] == '1'
  assert opt['--script-dir'] == str(ROOT)
  words = shlex.split(opt['--command'])
  assert words[:3] == ['pip', 'install', '-e'] and 'jax[tpu]==0.10.2' in words
  assert 'compfn-train' in words and f'--workdir={WORKDIR}' in words
  assert '--gin_file=gin/hardware/tpu_v5p_128.gin' in words
  (cmd,), _ = launch(
      'xpk',
      *BASE,
      '--accelerator_type',
      'v5e-16',
      *GIN[:2],
      '--workdir',
      WORKDIR,
      '--cluster',
      'c',
      '--docker_image',
      'gcr.io/p/compfn:1',
      '--dry_run',
  )
  assert cmd[cmd.index('--tpu-type') + 1] == 'v5litepod-16'
  assert cmd[cmd.index('--docker-image') + 1] == 'gcr.io/p/compfn:1'
  assert shlex.split(cmd[cmd.index('--command') + 1])[:2] == ['COMPFN_MULTIHOST=1', 'compfn-train']
  (cmd,), _ = launch(
      'xpk', *V5P, *GIN, '--workdir', WORKDIR, '--cluster', 'c', '--gcsfuse', '--dry_run'
  )
  words = shlex.split(cmd[cmd.index('--command') + 1])
  assert '--workdir=/mnt/gcs/my-bucket/runs/stage2_rl_L2' in words
  assert not any('gcsfuse' in w for w in words)  # no mount inside the pods


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    'argv,needle',
    [
        (['up', '--zone', 'us-east5-a', '--accelerator_type', 'v5p-128'], '--name'),
        (['up', '--name', 'compfn-pod', '--accelerator_type', 'v5p-128'], '--zone'),
        (['up', *BASE, '--accelerator_type', 'v5p-7'], "unknown accelerator type 'v5p-7'"),
        (['up', *BASE, '--accelerator_type', 'v5p-192'], "unknown accelerator type 'v5p-192'"),
        (['up', *BASE, '--accelerator_type', 'v4-4'], "unknown accelerator type 'v4-4'"),
        (['up', *BASE, '--accelerator_type', 'v6e-2'], "unknown accelerator type 'v6e-2'"),
        (['up', *BASE, '--accelerator_type', 'v5e-512'], "unknown accelerator type 'v5e-512'"),
        (['up', *BASE, '--accelerator_type', 'v3-8'], "unknown accelerator type 'v3-8'"),
        (['up', *BASE, '--accelerator_type', 'h100-8'], "unknown accelerator type 'h100-8'"),
        (['up', *BASE], 'needs --accelerator_type'),
        (['run', *V5P, '--workdir', WORKDIR], 'needs at least one --gin_file'),
        (
            ['run', *V5P, '--gin_file', 'gin/experiments/nope.gin', '--workdir', WORKDIR],
            '--gin_file gin/experiments/nope.gin: no such file',
        ),
        (['run', *V5P, *GIN, '--workdir', 'runs/stage2_rl_L2'], 'use gs://BUCKET'),
        (['run', *V5P, *GIN, '--workdir', '/mnt/shared/x'], 'needs a workdir every host shares'),
        (['run', *V5P, *GIN], '--workdir gs://BUCKET/... is required'),
        (['run', *BASE, '--accelerator_type', 'v4-8', *GIN, '--gcsfuse'], '--gcsfuse needs'),
        (['run', *V5P, *GIN, '--workdir', WORKDIR, '--queued'], '--queued applies to up and down'),
        (['xpk', *V5P, *GIN, '--workdir', WORKDIR], 'xpk needs --cluster'),
        (
            [
                'xpk',
                *BASE,
                '--accelerator_type',
                'v4-8',
                *GIN,
                '--cluster',
                'c',
                '--workdir',
                'runs/x',
            ],
            'use gs://BUCKET',
        ),
        (['logs', *V5P, '--worker', '16'], 'has workers 0..15'),
        (['logs', *BASE, '--worker', 'first'], "--worker 'first'"),
        (
            ['up', '--name', 'Compfn_Pod', '--zone', 'us-east5-a', '--accelerator_type', 'v4-8'],
            "--name 'Compfn_Pod'",
        ),
        (
            ['up', '--name', 'compfn-pod', '--zone', 'us-east5', '--accelerator_type', 'v4-8'],
            "--zone 'us-east5' is not a zone",
        ),
        (['reboot', *V5P], "invalid choice: 'reboot'"),
    ],
)
def test_validation_errors(argv, needle):
  p = launch(*argv, '--dry_run', ok=False)
  assert p.returncode == 2
  line = error_line(p)
  assert line.startswith('launch_tpu.py: error: ') and needle in line, p.stderr


def test_failed_command_stops_with_its_status(tmp_path):
  """Without --dry_run the commands run; a missing gcloud is a one-line SystemExit."""
  p = launch('down', *BASE, ok=False)
  assert 'gcloud: command not found' in error_line(p)


def _fake_tools(tmp_path, describe_rc):
  """A PATH holding only fake gcloud / git that log their argv (and a working sh)."""
  bin_ = tmp_path / 'bin'
  bin_.mkdir()
  log = tmp_path / 'calls.log'
  for tool, body in (
      (
          'gcloud',
          f'case "$*" in\n'
          f'  *--format=value*) echo ACTIVE ;;\n'
          f'  *" describe "*) exit {describe_rc} ;;\n'
          f'  *" delete "*) exit 3 ;;\n'
          f'esac\n',
      ),
      ('git', ''),
  ):
    f = bin_ / tool
    f.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{body}')
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
  return bin_, log


@pytest.mark.parametrize('exists', [True, False])
def test_up_runs_commands_and_reuses_an_existing_vm(tmp_path, exists):
  bin_, log = _fake_tools(tmp_path, describe_rc=0 if exists else 1)
  p = subprocess.run(
      [sys.executable, str(TOOL), 'up', *V5P, '--queued'],
      capture_output=True,
      text=True,
      timeout=60,
      env={**os.environ, 'PATH': f'{bin_}:/usr/bin:/bin'},
  )
  assert p.returncode == 0, p.stderr
  calls = log.read_text().splitlines()
  verbs = [
      c.split()[4] if c.startswith('gcloud') else c.split()[3]
      for c in calls
      if not c.startswith('git -C') or ' archive ' in c
  ]
  assert verbs == ['describe'] + ([] if exists else ['create']) + [
      'describe',
      'archive',
      'scp',
      'ssh',
  ], calls
  assert ('(exists: reused)' in p.stderr) == exists


def test_failing_gcloud_exit_status(tmp_path):
  bin_, _ = _fake_tools(tmp_path, describe_rc=0)
  p = subprocess.run(
      [sys.executable, str(TOOL), 'down', *BASE],
      capture_output=True,
      text=True,
      timeout=60,
      env={**os.environ, 'PATH': str(bin_)},
  )
  assert p.returncode == 3 and p.stdout == ''


# --------------------------------------------------------------------- the table, in-process


def test_accelerator_table():
  t = _tool()
  table = {
      name: (a.chips, a.hosts, a.multi_host)
      for name in (
          'v4-8',
          'v4-16',
          'v4-32',
          'v4-128',
          'v5p-8',
          'v5p-16',
          'v5p-128',
          'v5p-12288',
          'v5litepod-1',
          'v5litepod-4',
          'v5litepod-8',
          'v5litepod-16',
          'v5e-256',
          'v6e-8',
          'v6e-16',
          'v6e-256',
      )
      for a in [t.parse_accelerator(name)]
  }
  assert table == {
      'v4-8': (4, 1, False),
      'v4-16': (8, 2, True),
      'v4-32': (16, 4, True),
      'v4-128': (64, 16, True),
      'v5p-8': (4, 1, False),
      'v5p-16': (8, 2, True),
      'v5p-128': (64, 16, True),
      'v5p-12288': (6144, 1536, True),
      'v5litepod-1': (1, 1, False),
      'v5litepod-4': (4, 1, False),
      'v5litepod-8': (8, 1, False),
      'v5litepod-16': (16, 4, True),
      'v5e-256': (256, 64, True),
      'v6e-8': (8, 1, False),
      'v6e-16': (16, 4, True),
      'v6e-256': (256, 64, True),
  }
  assert t.parse_accelerator('v5e-64').gcloud_type == 'v5litepod-64'
  assert t.valid_suffixes('v5p')[:6] == [8, 16, 32, 64, 128, 256]
  assert t.valid_suffixes('v5p')[-1] == 12288 and t.valid_suffixes('v4')[-1] == 8192
  for bad in ('v5p-130', 'v5p-0', 'v4-12', 'v6e-512', 'v5p', 'tpu-8'):
    with pytest.raises(ValueError, match='unknown accelerator type'):
      t.parse_accelerator(bad)


def test_plans_are_pure_functions():
  t = _tool()
  ap = t.build_parser()
  args = ap.parse_args(['run', *V5P, *GIN, '--workdir', WORKDIR])
  t.validate(ap, args)
  plan = t.plan_run(args)
  assert plan == t.plan_run(args) and all(isinstance(c, list) for c in plan)
  assert t.train_argv(args)[0] == 'compfn-train'


def test_jax_pin_matches_setup_py():
  setup = (ROOT / 'setup.py').read_text()
  assert re.search(r'"jax==([0-9.]+)"', setup).group(1) == _tool().JAX_VERSION


def test_hardware_gin_files_name_known_types():
  """Every gin/hardware/tpu_*.gin header's --accelerator-type parses, and its mesh has one
  device per chip."""
  t = _tool()
  for f in sorted((ROOT / 'gin' / 'hardware').glob('tpu_*.gin')):
    text = f.read_text()
    (acc,) = set(re.findall(r'--accelerator-type=(\S+)', text))
    mesh = re.search(r'pipeline\.mesh_shape = \(([^)]*)\)', text).group(1)
    devices = 1
    for d in mesh.split(','):
      devices *= int(d)
    assert devices == t.parse_accelerator(acc).chips, f.name
