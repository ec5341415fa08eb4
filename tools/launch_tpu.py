#!/usr/bin/env python
"""Launch compfn on a Cloud TPU VM slice (or print the equivalent xpk command for GKE).

    python tools/launch_tpu.py up   --name NAME --zone ZONE --accelerator_type v5p-128
        [--queued] [--spot] [--runtime_version V] [--project P] [--gcsfuse] [--dry_run]
    python tools/launch_tpu.py run  --name NAME --zone ZONE --accelerator_type v5p-128
        --gin_file F [--gin_file F ...] [--gin_param B ...] --workdir gs://BUCKET/PATH
        [--gcsfuse] [--log_file compfn-train.log] [--dry_run]
    python tools/launch_tpu.py logs --name NAME --zone ZONE [--worker 0|N|all] [--dry_run]
    python tools/launch_tpu.py down --name NAME --zone ZONE [--queued] [--dry_run]
    python tools/launch_tpu.py xpk  --name NAME --zone ZONE --accelerator_type v5p-128
        --cluster CLUSTER --gin_file F ... --workdir gs://BUCKET/PATH [--docker_image IMAGE]

Verbs:

* ``up``: create the slice (``gcloud compute tpus tpu-vm create``) or, with ``--queued``, a
  queued resource (``gcloud compute tpus queued-resources create ... --node-id NAME``) and wait
  until it is ACTIVE; an existing one is reused (a ``describe`` runs first). Then ship the
  repository's HEAD commit (``git archive``) to every worker, create a Python 3.11 virtualenv
  ``~/compfn-venv`` there and ``pip install -e .[tpu] jax[tpu]==0.10.2`` in it. ``--gcsfuse``
  also installs Cloud Storage FUSE on every worker.
* ``run``: start ``compfn-train`` on all workers at once (``--worker=all``), detached with
  ``nohup``, output to ``~/compfn-train.log`` on each worker. On a multi-host slice every host
  runs the same command; compfn calls ``jax.distributed.initialize()`` with no arguments, and
  the launcher sets ``COMPFN_MULTIHOST=1`` so that it does so even where the TPU VM does not
  export ``TPU_WORKER_HOSTNAMES`` (jax then reads the workers from the VM metadata).
* ``logs``: ``tail -F`` the log of worker 0 (``--worker=N`` or ``all``).
* ``down``: delete the VM (``--queued``: the queued resource and its node), ``--quiet``.
* ``xpk``: the same training command as an ``xpk workload create`` for a GKE cluster with TPU
  node pools (``--cluster``); printed with ``--dry_run``, run otherwise. ``--gcsfuse`` there only
  rewrites the paths: mounting the bucket at ``/mnt/gcs/BUCKET`` in the pods (e.g. with the
  Cloud Storage FUSE CSI driver) is up to the cluster.

``--dry_run`` prints every command, one per line, in order, shell-quoted, and runs nothing;
without it each command is echoed to stderr (``+ ...``) and run with ``subprocess`` (its output
streams through; the first failure stops the launcher with its exit status).

Workdirs: a multi-host slice needs a workdir that every host sees, so ``run``/``xpk`` require
``--workdir gs://BUCKET/...`` there. compfn writes its outputs with local-file APIs (``os``,
``pathlib``, orbax on an absolute path), so today a ``gs://`` workdir is NOT written to GCS by
compfn itself; ``--gcsfuse`` mounts the bucket at ``/mnt/gcs/BUCKET`` on every worker and passes
that path instead (``gs://BUCKET/`` in ``--gin_param`` values is rewritten the same way).

Accelerator types (``ACCELERATORS``): ``v4-N`` and ``v5p-N`` count TensorCores (N = 2 x chips,
4 chips per host: v4-8 / v5p-8 are one host, v5p-128 is 16); ``v5litepod-N`` (alias ``v5e-N``)
and ``v6e-N`` count chips (1, 4 or 8 chips: one host; 16 and more: N / 4 TPU VMs of 4 chips). A
slice is multi-host when it has more than one TPU VM (worker). Sizes outside the documented
shapes are refused here; gcloud has the final word on availability in a zone.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
JAX_VERSION = '0.10.2'  # = setup.py's jax pin (tests/test_launch_tpu.py checks it)
VENV = 'compfn-venv'  # on each worker, in the home directory
REMOTE_DIR = 'compfn'  # the repository on each worker, in the home directory
GCS_MOUNT_ROOT = '/mnt/gcs'  # --gcsfuse mounts gs://BUCKET at /mnt/gcs/BUCKET
DEFAULT_LOG = 'compfn-train.log'
VERBS = ('up', 'run', 'logs', 'down', 'xpk')

# ------------------------------------------------------------------------ accelerator table


@dataclasses.dataclass(frozen=True)
class Family:
  """One TPU generation: how its accelerator-type suffix counts and how hosts are laid out."""

  name: str  # 'v4', 'v5p', 'v5e', 'v6e'
  gcloud_prefix: str  # accelerator-type prefix gcloud and xpk expect
  counts_cores: bool  # suffix = TensorCores (2 per chip) instead of chips
  default_runtime: str  # --version for `tpu-vm create` / --runtime-version


FAMILIES = {
    'v4': Family('v4', 'v4', True, 'tpu-ubuntu2204-base'),
    'v5p': Family('v5p', 'v5p', True, 'v2-alpha-tpuv5'),
    'v5e': Family('v5e', 'v5litepod', False, 'v2-alpha-tpuv5-lite'),
    'v6e': Family('v6e', 'v6e', False, 'v2-alpha-tpuv6e'),
}
# Accepted spellings of the prefix -> family.
PREFIXES = {'v4': 'v4', 'v5p': 'v5p', 'v5e': 'v5e', 'v5litepod': 'v5e', 'v6e': 'v6e'}
# v5e / v6e: the 2D slice shapes of the Cloud TPU docs, in chips.
_LITE_CHIPS = (1, 4, 8, 16, 32, 64, 128, 256)
# v4 / v5p: sub-cube shapes (2x2x1, 2x2x2, 2x2x4, 2x4x4) or whole 4x4x4 cubes of 64 chips, up
# to the largest single slice (v4: 4,096 chips; v5p: 16x16x24 = 6,144 chips).
_SUBCUBE_CHIPS = (4, 8, 16, 32)
_MAX_CHIPS = {'v4': 4096, 'v5p': 6144}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A parsed accelerator type."""

  family: Family
  suffix: int  # the N of the type (cores for v4/v5p, chips for v5e/v6e)
  chips: int
  hosts: int  # TPU VMs (workers) = JAX processes

  @property
  def gcloud_type(self) -> str:
    return f'{self.family.gcloud_prefix}-{self.suffix}'

  @property
  def multi_host(self) -> bool:
    return self.hosts > 1

  def describe(self) -> str:
    return (
        f'{self.gcloud_type}: {self.chips} chips, {self.hosts} host'
        f'{"s" if self.hosts > 1 else ""} ({"multi" if self.multi_host else "single"}-host)'
    )


def valid_suffixes(family: str) -> list[int]:
  """Every accepted N of ``<family>-N``."""
  if family in ('v5e', 'v6e'):
    return list(_LITE_CHIPS)
  chips = list(_SUBCUBE_CHIPS) + list(range(64, _MAX_CHIPS[family] + 1, 64))
  return [2 * c for c in chips]


def parse_accelerator(text: str) -> Accelerator:
  """``'v5p-128'`` -> Accelerator(v5p, 64 chips, 16 hosts); ValueError naming what is wrong."""
  m = re.fullmatch(r'(v[0-9a-z]+)-([0-9]+)', text.strip().lower())
  if not m or m.group(1) not in PREFIXES:
    raise ValueError(
        f'unknown accelerator type {text!r}: expected v4-N, v5p-N, v5litepod-N '
        f'(or v5e-N) or v6e-N'
    )
  fam = FAMILIES[PREFIXES[m.group(1)]]
  n = int(m.group(2))
  ok = valid_suffixes(fam.name)
  if n not in ok:
    unit = 'TensorCores (2 per chip)' if fam.counts_cores else 'chips'
    shown = ', '.join(map(str, ok[:8])) + (', ...' if len(ok) > 8 else '')
    step = '; above 64 a multiple of 128 (whole 64-chip cubes)' if fam.counts_cores else ''
    raise ValueError(
        f'unknown accelerator type {text!r}: {fam.gcloud_prefix}-N counts {unit}; '
        f'valid N are {shown}{step}, at most {ok[-1]}'
    )
  chips = n // 2 if fam.counts_cores else n
  if fam.counts_cores:
    hosts = max(1, chips // 4)  # 4 chips per v4 / v5p host
  else:
    hosts = 1 if chips <= 8 else chips // 4  # 1-8 chips: one VM; larger: 4-chip VMs
  return Accelerator(fam, n, chips, hosts)


# ------------------------------------------------------------------------------- commands


class Command(list):
  """One command (an argv list). ``probe``: run quietly, its success decides whether the next
  ``skip_if_found`` command runs (reuse an existing VM); ``wait_for``: rerun until its stdout
  equals this value (a queued resource becoming ACTIVE)."""

  def __init__(
      self,
      argv: Sequence[str],
      probe: bool = False,
      skip_if_found: bool = False,
      wait_for: Optional[str] = None,
  ):
    super().__init__(str(a) for a in argv)
    self.probe = probe
    self.skip_if_found = skip_if_found
    self.wait_for = wait_for


def _where(args) -> list[str]:
  out = ['--zone', args.zone]
  if args.project:
    out += ['--project', args.project]
  return out


def _ssh(args, worker: str, remote: str) -> Command:
  return Command(
      [
          'gcloud',
          'compute',
          'tpus',
          'tpu-vm',
          'ssh',
          args.name,
          *_where(args),
          f'--worker={worker}',
          f'--command={remote}',
      ]
  )


def tarball_path(args) -> str:
  return f'/tmp/compfn-{args.name}.tar.gz'


def install_command(args) -> str:
  """The shell command each worker runs in ``up``: Python, the code, the virtualenv, pip."""
  py = args.python
  steps = [
      f'(command -v {py} >/dev/null || (sudo apt-get update -qq && '
      f'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {py} {py}-venv))',
      f'rm -rf {REMOTE_DIR}',
      f'tar -xzf {REMOTE_DIR}.tar.gz',
      f'{py} -m venv {VENV}',
      f'{VENV}/bin/pip install -q --upgrade pip',
      f'cd {REMOTE_DIR}',
      shlex.join([f'../{VENV}/bin/pip', 'install', '-e', '.[tpu]', f'jax[tpu]=={JAX_VERSION}']),
  ]
  return ' && '.join(steps)


GCSFUSE_INSTALL = ' && '.join(
    [
        'export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s)',
        'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
        'https://packages.cloud.google.com/apt $GCSFUSE_REPO main" '
        '| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null',
        'curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg '
        '| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null',
        'sudo apt-get update -qq',
        'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse gcsfuse',
    ]
)


def plan_up(args) -> list[Command]:
  """describe (probe) -> create (skipped if found) [-> wait ACTIVE] -> archive -> scp -> install
  [-> gcsfuse]."""
  acc = args.accelerator
  version = args.runtime_version or acc.family.default_runtime
  spot = ['--spot'] if args.spot else []
  if args.queued:
    base = ['gcloud', 'compute', 'tpus', 'queued-resources']
    cmds = [
        Command(base + ['describe', args.name, *_where(args)], probe=True),
        Command(
            base
            + [
                'create',
                args.name,
                f'--node-id={args.name}',
                *_where(args),
                f'--accelerator-type={acc.gcloud_type}',
                f'--runtime-version={version}',
                *spot,
            ],
            skip_if_found=True,
        ),
        Command(
            base + ['describe', args.name, *_where(args), '--format=value(state.state)'],
            wait_for='ACTIVE',
        ),
    ]
  else:
    base = ['gcloud', 'compute', 'tpus', 'tpu-vm']
    cmds = [
        Command(base + ['describe', args.name, *_where(args)], probe=True),
        Command(
            base
            + [
                'create',
                args.name,
                *_where(args),
                f'--accelerator-type={acc.gcloud_type}',
                f'--version={version}',
                *spot,
            ],
            skip_if_found=True,
        ),
    ]
  tar = tarball_path(args)
  cmds += [
      Command(
          [
              'git',
              '-C',
              str(REPO),
              'archive',
              '--format=tar.gz',
              f'--prefix={REMOTE_DIR}/',
              '-o',
              tar,
              'HEAD',
          ]
      ),
      Command(
          [
              'gcloud',
              'compute',
              'tpus',
              'tpu-vm',
              'scp',
              tar,
              f'{args.name}:{REMOTE_DIR}.tar.gz',
              *_where(args),
              '--worker=all',
          ]
      ),
      _ssh(args, 'all', install_command(args)),
  ]
  if args.gcsfuse:
    cmds.append(_ssh(args, 'all', GCSFUSE_INSTALL))
  return cmds


def _bucket(workdir: str) -> str:
  return workdir[len('gs://') :].split('/', 1)[0]


def _mounted(text: str, bucket: str) -> str:
  """``gs://BUCKET/x`` -> ``/mnt/gcs/BUCKET/x`` (the --gcsfuse mount) inside ``text``."""
  return re.sub(rf'gs://{re.escape(bucket)}(?=/|$|[\'"\s])', f'{GCS_MOUNT_ROOT}/{bucket}', text)


def _q(word: str) -> str:
  """Shell-quote ``word`` readably: bare when safe, "..." when it only holds single quotes and
  other characters that are literal inside double quotes, else shlex.quote."""
  if shlex.quote(word) == word:
    return word
  m = re.fullmatch(r'(--[A-Za-z0-9_-]+=)(.*)', word, re.S)
  if m:  # --flag="value": quote the value only
    return m.group(1) + _q(m.group(2))
  if not set(word) & set('$`"\\!'):
    return f'"{word}"'
  return shlex.quote(word)


def _join(argv: Sequence[str]) -> str:
  return ' '.join(_q(a) for a in argv)


def train_argv(args) -> list[str]:
  """``compfn-train --gin_file=... --gin_param=... --workdir=...`` as it runs on a worker."""
  workdir, params = args.workdir, list(args.gin_param)
  if args.gcsfuse:
    bucket = _bucket(workdir)
    workdir = _mounted(workdir, bucket)
    params = [_mounted(p, bucket) for p in params]
  argv = ['compfn-train'] + [f'--gin_file={f}' for f in args.gin_file]
  argv += [f'--gin_param={p}' for p in params]
  if workdir:
    argv.append(f'--workdir={workdir}')
  return argv


def _env(args) -> str:
  return 'COMPFN_MULTIHOST=1 ' if args.accelerator.multi_host else ''


def mount_command(args) -> str:
  bucket = _bucket(args.workdir)
  mnt = f'{GCS_MOUNT_ROOT}/{bucket}'
  return (
      f'(mountpoint -q {mnt} || (sudo mkdir -p {mnt} && sudo chown "$(id -u):$(id -g)" '
      f'{mnt} && gcsfuse --implicit-dirs --rename-dir-limit=200000 {bucket} {mnt}))'
  )


def run_command(args) -> str:
  """The shell command every worker runs for ``run`` (detached; output to the log file)."""
  steps = [f'cd {REMOTE_DIR}', f'export PATH="$HOME/{VENV}/bin:$PATH"']
  if args.gcsfuse:
    steps.append(mount_command(args))
  log = '~/' + shlex.quote(args.log_file)
  steps.append(f'({_env(args)}nohup {_join(train_argv(args))} > {log} 2>&1 < /dev/null &)')
  steps.append(f'echo "$(hostname): compfn-train started, log {log}"')
  return ' && '.join(steps)


def plan_run(args) -> list[Command]:
  return [_ssh(args, 'all', run_command(args))]


def plan_logs(args) -> list[Command]:
  log = '~/' + shlex.quote(args.log_file)
  return [_ssh(args, args.worker, f'tail -n +1 -F {log}')]


def plan_down(args) -> list[Command]:
  if args.queued:
    return [
        Command(
            [
                'gcloud',
                'compute',
                'tpus',
                'queued-resources',
                'delete',
                args.name,
                *_where(args),
                '--force',
                '--quiet',
            ]
        )
    ]
  return [
      Command(
          ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', args.name, *_where(args), '--quiet']
      )
  ]


def xpk_command(args) -> str:
  """The command each GKE pod runs: install (unless a ready image is given), then train."""
  train = _env(args) + _join(train_argv(args))
  if args.docker_image:
    return train
  install = shlex.join(['pip', 'install', '-e', '.[tpu]', f'jax[tpu]=={JAX_VERSION}'])
  return f'{install} && {train}'


def plan_xpk(args) -> list[Command]:
  argv = [
      'xpk',
      'workload',
      'create',
      '--cluster',
      args.cluster,
      '--workload',
      args.name,
      '--tpu-type',
      args.accelerator.gcloud_type,
      '--num-slices',
      '1',
      *_where(args),
  ]
  if args.docker_image:
    argv += ['--docker-image', args.docker_image]
  else:  # xpk layers --script-dir onto the base image and runs the command inside it
    argv += ['--base-docker-image', 'python:3.11', '--script-dir', str(REPO)]
  argv += ['--command', xpk_command(args)]
  return [Command(argv)]


PLANS = {'up': plan_up, 'run': plan_run, 'logs': plan_logs, 'down': plan_down, 'xpk': plan_xpk}

# ----------------------------------------------------------------------------- arguments


def _accelerator_arg(text: str) -> Accelerator:
  try:
    return parse_accelerator(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog='launch_tpu.py',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="See docs/tpu_pod.md for the paper's runs end to end.",
  )
  ap.add_argument('verb', choices=VERBS, help='what to do')
  ap.add_argument('--name', required=True, help='TPU VM / queued resource / workload name')
  ap.add_argument('--zone', required=True, help='e.g. us-east5-a')
  ap.add_argument('--project', default=None, help='GCP project (default: gcloud config)')
  ap.add_argument(
      '--accelerator_type',
      type=_accelerator_arg,
      default=None,
      dest='accelerator',
      metavar='TYPE',
      help='v4-N, v5p-N, v5litepod-N / v5e-N, v6e-N ' '(needed by up, run, xpk)',
  )
  ap.add_argument(
      '--runtime_version',
      default=None,
      help='TPU VM image (default per family, e.g. v2-alpha-tpuv5 for v5p)',
  )
  ap.add_argument(
      '--queued',
      action='store_true',
      help='up/down: a queued resource instead of a plain TPU VM create/delete',
  )
  ap.add_argument('--spot', action='store_true', help='up: Spot capacity')
  ap.add_argument(
      '--python',
      default='python3.11',
      help="up: interpreter for the workers' virtualenv (compfn needs 3.11)",
  )
  ap.add_argument(
      '--gin_file',
      action='append',
      default=[],
      help='run/xpk: gin file relative to the repository root (repeatable)',
  )
  ap.add_argument(
      '--gin_param', action='append', default=[], help='run/xpk: gin binding (repeatable)'
  )
  ap.add_argument(
      '--workdir',
      default=None,
      help='run/xpk: output folder; gs://BUCKET/... (required on multi-host slices)',
  )
  ap.add_argument(
      '--gcsfuse',
      action='store_true',
      help="up: install Cloud Storage FUSE; run: mount the workdir's bucket at "
      f'{GCS_MOUNT_ROOT}/BUCKET on every worker and pass that path to compfn-train; '
      'xpk: rewrite the paths only (the pods must mount the bucket there)',
  )
  ap.add_argument(
      '--log_file', default=DEFAULT_LOG, help="run/logs: log file in each worker's home directory"
  )
  ap.add_argument('--worker', default='0', help='logs: worker index or "all" (default 0)')
  ap.add_argument('--cluster', default=None, help='xpk: the GKE cluster')
  ap.add_argument(
      '--docker_image',
      default=None,
      help='xpk: an image with compfn installed (default: python:3.11 + this repo, '
      'installed at start)',
  )
  ap.add_argument(
      '--dry_run',
      action='store_true',
      help='print the commands (one per line, shell-quoted) and run nothing',
  )
  return ap


_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')
_ZONE = re.compile(r'[a-z]+-[a-z]+[0-9]+-[a-z]')


def validate(ap: argparse.ArgumentParser, args) -> None:
  """argparse errors (exit 2, one line) for everything a command would get wrong."""
  if not _NAME.fullmatch(args.name):
    ap.error(
        f'--name {args.name!r}: use lowercase letters, digits and hyphens, starting with a '
        f'letter (at most 63 characters)'
    )
  if not _ZONE.fullmatch(args.zone):
    ap.error(f'--zone {args.zone!r} is not a zone name (e.g. us-east5-a)')
  verb = args.verb
  if verb in ('up', 'run', 'xpk') and args.accelerator is None:
    ap.error(f'{verb} needs --accelerator_type (e.g. v5p-128)')
  if verb in ('run', 'xpk'):
    if not args.gin_file:
      ap.error(f'{verb} needs at least one --gin_file (e.g. gin/experiments/stage1_rft.gin)')
    for f in args.gin_file:
      if os.path.isabs(f) or not (REPO / f).is_file():
        ap.error(
            f'--gin_file {f}: no such file in the repository (paths are relative to '
            f'{REPO}, which is what runs on the workers)'
        )
    multi = args.accelerator.multi_host
    if args.workdir is None and (multi or verb == 'xpk'):
      ap.error(
          f'--workdir gs://BUCKET/... is required: {args.accelerator.describe()} needs a '
          f'workdir every host shares'
      )
    if (
        args.workdir is not None
        and not args.workdir.startswith('gs://')
        and (multi or verb == 'xpk')
    ):
      ap.error(
          f'--workdir {args.workdir}: {args.accelerator.describe()} needs a workdir every '
          f'host shares; use gs://BUCKET/...'
      )
    if args.gcsfuse and not (args.workdir or '').startswith('gs://'):
      ap.error('--gcsfuse needs --workdir gs://BUCKET/...')
    if args.workdir and args.workdir.startswith('gs://') and not _bucket(args.workdir):
      ap.error(f'--workdir {args.workdir}: no bucket name')
  if verb == 'xpk':
    if not args.cluster:
      ap.error('xpk needs --cluster (the GKE cluster with the TPU node pool)')
  if verb == 'logs' and args.worker != 'all':
    if not args.worker.isdigit():
      ap.error(f'--worker {args.worker!r}: a worker index or "all"')
    if args.accelerator is not None and int(args.worker) >= args.accelerator.hosts:
      ap.error(
          f'--worker {args.worker}: {args.accelerator.describe()} has workers 0..'
          f'{args.accelerator.hosts - 1}'
      )
  if args.queued and verb not in ('up', 'down'):
    ap.error('--queued applies to up and down')


# ------------------------------------------------------------------------------ execution


def execute(cmds: Sequence[Command], dry_run: bool, out=sys.stdout) -> int:
  """Print (dry run) or run ``cmds`` in order; returns 0 or raises SystemExit(status)."""
  if dry_run:
    for c in cmds:
      print(shlex.join(c), file=out, flush=True)
    return 0
  found = False
  for c in cmds:
    print('+ ' + shlex.join(c), file=sys.stderr, flush=True)
    if c.skip_if_found and found:
      print('  (exists: reused)', file=sys.stderr, flush=True)
      continue
    try:
      if c.probe:
        found = (
            subprocess.run(
                c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            ).returncode
            == 0
        )
      elif c.wait_for is not None:
        while True:
          state = subprocess.run(c, capture_output=True, text=True, check=True).stdout.strip()
          if state == c.wait_for:
            break
          if state in ('FAILED', 'SUSPENDED'):
            raise SystemExit(
                f'launch_tpu.py: queued resource is {state}; see '
                f'`gcloud compute tpus queued-resources describe`'
            )
          print(f'  state {state or "?"}; waiting for {c.wait_for}', file=sys.stderr, flush=True)
          time.sleep(30)
      else:
        subprocess.run(c, check=True)
    except FileNotFoundError:
      raise SystemExit(f'launch_tpu.py: {c[0]}: command not found') from None
    except subprocess.CalledProcessError as e:
      raise SystemExit(e.returncode or 1) from None
  return 0


def _warn_dirty() -> None:
  try:
    dirty = subprocess.run(
        ['git', '-C', str(REPO), 'status', '--porcelain', '--untracked-files=no'],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
  except FileNotFoundError:
    return
  if dirty:
    print(
        'launch_tpu.py: note: uncommitted changes are not shipped (git archive HEAD)',
        file=sys.stderr,
    )


def main(argv=None) -> int:
  ap = build_parser()
  args = ap.parse_args(argv)
  validate(ap, args)
  cmds = PLANS[args.verb](args)
  if args.accelerator is not None:
    print(f'# {args.accelerator.describe()}', file=sys.stderr, flush=True)
  if args.verb == 'up' and not args.dry_run:
    _warn_dirty()
  return execute(cmds, args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
