"""tools/fuzz.py: a small slice of every target agrees with its reference, --replay reproduces a
case, and a mismatch is reported with a replayable seed and exit status 1.

The slice runs as a subprocess with JAX's persistent compilation cache in pytest's cache
directory (.pytest_cache/d/fuzz-xla): the first run compiles every fixed shape (about a minute
on two idle cores, most of it the JSON scorer's three lanes), later runs load them (~20 s).
The in-process tests use the trace scorer only (its shapes compile in about a second).
"""

import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'fuzz.py'
SLICE = 2000
CATEGORIES = {
    'interpreter': {'ok', 'overflow', 'error:ValueError', 'error:ProgramError'},
    'json_scorer': {'[1, 1]', '[0, 0]', '[-1, 0]'},
    'trace_scorer': {'[1, 1]', '[0, 0]', '[-1, 0]'},
    'countdown': {'correct', 'wrong', 'invalid'},
}


@pytest.fixture(scope='module')
def fuzz():
  spec = importlib.util.spec_from_file_location('compfn_tools_fuzz', TOOL)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  yield mod
  sys.modules.pop(spec.name, None)


@pytest.fixture(scope='module')
def xla_cache(request, tmp_path_factory):
  cache = getattr(request.config, 'cache', None)  # None under -p no:cacheprovider
  return str(cache.mkdir('fuzz-xla') if cache else tmp_path_factory.mktemp('fuzz-xla'))


def _cli_env():
  """The environment of a plain command-line run (no fake multi-device CPU from conftest)."""
  env = dict(os.environ)
  flags = [
      f
      for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count')
  ]
  env['XLA_FLAGS'] = ' '.join(flags)
  return env


def _run_cli(args, timeout=900):
  return subprocess.run(
      [sys.executable, str(TOOL), *args],
      cwd=ROOT,
      env=_cli_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def test_small_slice_of_every_target_agrees(tmp_path, fuzz, xla_cache):
  out = tmp_path / 'fuzz.json'
  proc = _run_cli(
      [
          '--targets',
          'all',
          '--cases',
          str(SLICE),
          '--seed',
          '1',
          '--out',
          str(out),
          '--no-progress',
          '--compile-cache',
          xla_cache,
      ]
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert 'MISMATCH' not in proc.stdout
  report = json.loads(out.read_text())
  assert report['mismatches'] == 0 and report['seed'] == 1
  assert set(report['targets']) == set(fuzz.TARGET_NAMES) == set(CATEGORIES)
  for name, r in report['targets'].items():
    assert r['target'] == name and r['cases'] == SLICE, name
    assert r['mismatches'] == 0 and r['mismatch_cases'] == [], name
    assert r['seconds'] > 0 and r['cases_per_s'] > 0, name
    assert r['machine']['cpu_count'] >= 1 and isinstance(r['machine']['processor'], str), name
    assert r['jax'] == jax.__version__, name
    assert r['batch'] == fuzz.TARGETS[name].batch and r['batches'] >= 1, name
    assert sum(r['outcomes'].values()) == SLICE, name
    assert set(r['outcomes']) == CATEGORIES[name], (name, r['outcomes'])  # not vacuous
    assert r['device_seconds'] > 0 and r['reference_seconds'] > 0, name
  assert report['machine']['jax'] == jax.__version__


def test_replay_reproduces_a_case(fuzz, capsys):
  target = fuzz.get_target('trace_scorer')
  case = target.case(fuzz.case_rng('trace_scorer', 3, 2, 17))
  assert case == target.case(fuzz.case_rng('trace_scorer', 3, 2, 17))  # deterministic
  # the same case comes back in its batch, whatever the batch size
  assert fuzz.make_batch(target, 3, 2, 20)[17] == case
  rc = fuzz.main(
      ['--targets', 'trace_scorer', '--seed', '3', '--replay', '2:17', '--compile-cache', 'none']
  )
  out = capsys.readouterr().out
  assert rc == 0, out
  assert 'case: 2:17' in out and out.rstrip().endswith('agree')
  assert f"input response: {case['response']!r}" in out  # in full
  assert f"input ref: {case['ref']!r}" in out
  assert f'reference: {target.reference(case)!r}' in out
  with pytest.raises(SystemExit):
    fuzz.main(['--targets', 'trace_scorer,countdown', '--replay', '0:0'])  # one target only


def test_replay_of_an_interpreter_case_from_the_command_line(fuzz, xla_cache):
  target = fuzz.get_target('interpreter')
  case = target.case(fuzz.case_rng('interpreter', 1, 0, 7))
  proc = _run_cli(
      ['--targets', 'interpreter', '--seed', '1', '--replay', '0:7', '--compile-cache', xla_cache]
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert f"input code: {case['code']!r}" in proc.stdout
  assert f"input input: {case['input']!r}" in proc.stdout
  assert f'reference: {target.reference(case)!r}' in proc.stdout


def test_a_wrong_reference_is_reported_with_a_replayable_seed(fuzz, monkeypatch, capsys, tmp_path):
  from compfn.tasks.strings import scoring

  real = scoring.score_trace

  def wrong(response, ref, overlong=False):  # wrong whenever the reference has 3 characters
    got = real(response, ref, overlong)
    return (9, 0) if len(ref) == 3 else got

  monkeypatch.setattr(scoring, 'score_trace', wrong)
  out = tmp_path / 'bad.json'
  rc = fuzz.main(
      [
          '--targets',
          'trace_scorer',
          '--cases',
          '300',
          '--seed',
          '2',
          '--batch',
          '128',
          '--out',
          str(out),
          '--no-progress',
          '--compile-cache',
          'none',
      ]
  )
  printed = capsys.readouterr().out
  assert rc == 1
  report = json.loads(out.read_text())
  r = report['targets']['trace_scorer']
  assert report['mismatches'] == r['mismatches'] == len(r['mismatch_cases']) > 0
  lines = [ln for ln in printed.splitlines() if ln.startswith('MISMATCH trace_scorer ')]
  assert len(lines) == r['mismatches']
  first = r['mismatch_cases'][0]
  cmd = (
      f'python tools/fuzz.py --targets trace_scorer --seed 2 '
      f"--replay {first['batch']}:{first['index']} --batch 128"
  )
  assert first['replay'] == cmd and cmd in lines[0]
  assert first['reference'] == [9, 0] and first['device'] != [9, 0]
  assert 'device=' in lines[0] and 'reference=[9, 0]' in lines[0] and 'response=' in lines[0]
  # the printed command reproduces it (while the reference is still wrong) ...
  argv = shlex.split(cmd)[2:] + ['--compile-cache', 'none']
  assert fuzz.main(argv) == 1
  replayed = capsys.readouterr().out
  assert 'reference: [9, 0]' in replayed and replayed.rstrip().endswith('MISMATCH')
  # ... and agrees once the reference is right again
  monkeypatch.undo()
  assert fuzz.main(argv) == 0
  assert capsys.readouterr().out.rstrip().endswith('agree')
