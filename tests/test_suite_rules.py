"""The test suite's own rules (issue #12, tests that cannot hide), read from the code:

* ``pytest.importorskip`` only inside a test or fixture, never at module level (it would skip
  every test of the file, not just the ones that need the library), never for a first-party
  module (a broken import must fail, not skip) and never for an install requirement;
* CI (``.ci/run``) checks the code style with pyink, runs pytest with ``-rs``, and fails on any
  skip that ``.ci/allowed_skips.txt`` does not list (``.ci/check_skips.sh``, run here on made-up
  logs)."""

import ast
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Distribution name (setup.py) -> the module it installs, where they differ.
_MODULE_OF = {
    'orbax-checkpoint': 'orbax',
    'tensorflow-datasets': 'tensorflow_datasets',
    'array-record': 'array_record',
    'protobuf': 'google',
    'gin-config': 'gin',
    'tensorboardX': 'tensorboardX',
}


def _install_requires() -> set:
  tree = ast.parse((ROOT / 'setup.py').read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'INSTALL_REQUIRES':
      names = [re.split(r'[=<>\[]', ast.literal_eval(e))[0] for e in node.value.elts]
      return {_MODULE_OF.get(n, n.replace('-', '_')) for n in names}
  raise AssertionError('setup.py has no INSTALL_REQUIRES')


def _importorskips(tree):
  """(call, module name, at module level?) for every ``pytest.importorskip('name')``."""
  in_function = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      in_function.update(id(n) for n in ast.walk(node))
  for node in ast.walk(tree):
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == 'importorskip'
    ):
      arg = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else '?'
      yield node, arg, id(node) not in in_function


def _violations(path, tree, required) -> list:
  bad = []
  for node, module, top in _importorskips(tree):
    where = f'{path.name}:{node.lineno} importorskip({module!r})'
    if top:
      bad.append(f'{where} at module level')
    if module.split('.')[0] == 'compfn':
      bad.append(f'{where} of a first-party module')
    if module.split('.')[0] in required:
      bad.append(f'{where} of an install requirement')
  return bad


def test_importorskip_only_where_a_reference_library_is_needed():
  required = _install_requires()
  assert {'jax', 'flax', 'gin', 'sentencepiece', 'tokenizers', 'jinja2'} <= required
  bad = []
  for path in sorted((ROOT / 'tests').rglob('*.py')):
    bad += _violations(path, ast.parse(path.read_text(), str(path)), required)
  assert not bad, bad


def test_the_importorskip_rule_finds_each_case(tmp_path):
  code = (
      'import pytest\n'
      "torch = pytest.importorskip('torch')\n"  # module level
      'def test_a():\n'
      "  pytest.importorskip('compfn.rl')\n"  # first party
      "  pytest.importorskip('jinja2')\n"  # an install requirement
      "  pytest.importorskip('transformers')\n"  # fine: a reference library, in a test
  )
  bad = _violations(tmp_path / 'x.py', ast.parse(code), {'jinja2'})
  assert len(bad) == 3, bad
  assert 'module level' in bad[0] and 'first-party' in bad[1] and 'install requirement' in bad[2]


def _check_skips(tmp_path, lines) -> subprocess.CompletedProcess:
  log = tmp_path / 'pytest.log'
  log.write_text('\n'.join(['.....s', *lines, '5 passed, 1 skipped in 1.00s', '']))
  return subprocess.run(
      [str(ROOT / '.ci' / 'check_skips.sh'), str(log)], capture_output=True, text=True, timeout=60
  )


def test_ci_fails_on_a_skip_outside_the_allow_list(tmp_path):
  allowed = 'SKIPPED [1] tests/test_compile_report.py:212: libtpu is not installed'
  assert _check_skips(tmp_path, [allowed]).returncode == 0
  assert _check_skips(tmp_path, []).returncode == 0
  unexpected = "SKIPPED [2] tests/test_model.py:120: could not import 'torch'"
  out = _check_skips(tmp_path, [allowed, unexpected])
  assert out.returncode == 1, out
  assert 'test_model.py:120' in out.stderr and 'libtpu' not in out.stderr


def test_ci_runs_the_style_check_and_pytest_with_skip_reasons():
  lines = [
      ln.strip()
      for ln in (ROOT / '.ci' / 'run').read_text().splitlines()
      if ln.strip() and not ln.lstrip().startswith('#')
  ]
  assert 'set -euo pipefail' in lines
  style = 'pyink --config .ci/pyink.toml --check compfn tests tools setup.py'
  tests = next(i for i, ln in enumerate(lines) if ln.startswith('python -m pytest'))
  assert lines.index(style) < tests  # the style check runs (and, with set -e, fails) first
  assert ' -rs ' in lines[tests] + ' ' and 'tee .ci-pytest.log' in lines[tests]
  assert lines.index('.ci/check_skips.sh .ci-pytest.log') > tests
  assert lines[-1] == 'exit "$rc"'
