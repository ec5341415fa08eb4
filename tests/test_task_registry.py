"""One Task interface (issue #12): the registry, its device scorers and RL on Countdown.

* every registered task has a callable device scorer with the string scorers' signature, and
  ``compfn.rl.rollout.TASKS`` is a view of them;
* the registry is filled in one direction: no import cycle between compfn.tasks modules (an AST
  scan of every import under compfn/tasks, plus importing each module first in a fresh process);
* Countdown on device (the problem read from the reference's JSON bytes inside the jit) equals
  the Python scorer on generated problems with correct, wrong and malformed answers;
* one GRPO step on Countdown through the public API: finite loss, rewards equal to the Python
  scorer on the decoded responses.
"""

import ast
import functools
import inspect
import json
import os
import pathlib
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import train
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import grpo
from compfn.rl import rollout
from compfn.tasks import registry
from compfn.tasks.countdown import generator
from compfn.tasks.countdown import scoring
from compfn.tasks.countdown import verifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / 'compfn' / 'tasks'
BUILTIN = (
    'strings_json',
    'strings_trace',
    'strings_trace_steps',
    'strings_trace_shape',
    'countdown',
)
SIGNATURE = ['resp', 'resp_len', 'ref', 'ref_len', 'overlong']


# ------------------------------------------------------------------------------ the registry


def _resolve(fn):
  return fn.resolve() if isinstance(fn, registry.Lazy) else fn


def test_every_task_has_a_callable_device_scorer():
  assert set(BUILTIN) <= set(registry.tasks())
  for name in registry.names():
    task = registry.get(name)
    assert callable(task.device_score) and callable(task.score), name
    fn = _resolve(task.device_score)
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:5]] == SIGNATURE, (name, fn)
    assert all(p.default is not inspect.Parameter.empty for p in params[5:]), (name, fn)
    assert task.reference == registry.STORED or callable(task.reference)
    assert set(task.metrics) <= set(registry.METRICS)
  # rollout's TASKS is a live view of the device scorers (no aliases).
  assert sorted(rollout.TASKS) == sorted(registry.tasks())
  for name, task in registry.tasks().items():
    assert rollout.TASKS[name] is task.device_score
  assert 'strings/paper' not in rollout.TASKS and 'nope' not in rollout.TASKS
  assert registry.get('strings/paper') is registry.get('strings_json')
  assert registry.get('strings/trace') is registry.get('strings_trace')


def test_task_validation_and_live_view():
  ok = dict(
      name='t', generate=list, prompt=str, reference=registry.STORED, score=max, device_score=min
  )
  with pytest.raises(TypeError, match='device_score must be callable'):
    registry.Task(**{**ok, 'device_score': 'compfn.tasks.countdown.verifier:score'})
  with pytest.raises(TypeError, match='reference must be callable'):
    registry.Task(**{**ok, 'reference': 'given'})
  with pytest.raises(ValueError, match='unknown metrics'):
    registry.Task(**{**ok, 'metrics': ('bleu',)})
  with pytest.raises(ValueError, match="'module:attr'"):
    registry.Lazy('no_colon')
  task = registry.Task(**{**ok, 'name': '_test_registry_tmp'})
  assert task.reference_of({'ref': 'x'}) == 'x'
  try:
    registry.register(task)
    assert rollout.TASKS['_test_registry_tmp'] is min
  finally:
    registry._REGISTRY.pop('_test_registry_tmp', None)
  assert '_test_registry_tmp' not in rollout.TASKS


def test_reference_of_records_and_problems():
  """The stages read every reference through ``Task.reference_of``: a record's
  ``record_reference`` item ('target' for the whole-trace tasks), a problem's ``reference``."""
  from compfn.data import sources
  from compfn.tasks import strings

  (rec,) = sources.trace_records('train', 2, 2, 1, seed=0)
  assert rec['ref'] != rec['target']
  for name in ('strings_json', 'strings_trace', 'countdown'):
    assert registry.get(name).reference_of(rec) == rec['ref'], name
  for name in ('strings_trace_steps', 'strings_trace_shape'):
    assert registry.get(name).reference_of(rec) == rec['target'], name
  with pytest.raises(KeyError, match="'target', which this record lacks"):
    registry.get('strings_trace_shape').reference_of({'prompt': 'p', 'ref': 'r'})
  (problem,) = strings.generate(2, 'test', 1, 1, 1)
  assert registry.get('strings_json').reference_of(problem) == problem.output


def test_stages_name_no_task():
  """The stages and the pipeline treat every task alike, through the registry: no comparison
  of a task name with a string literal (``task == 'countdown'``, ``task in ('...',)``)."""

  def task_name(node):
    return (isinstance(node, ast.Name) and node.id == 'task') or (
        isinstance(node, ast.Attribute) and node.attr == 'task'
    )

  def literal(node):
    consts = [node] if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) else node.elts
    return consts and all(isinstance(c, ast.Constant) and isinstance(c.value, str) for c in consts)

  files = sorted((ROOT / 'compfn' / 'stages').glob('*.py'))
  files += [ROOT / 'compfn' / f for f in ('pipeline.py', 'evaluate.py', 'compile_report.py')]
  files += sorted((ROOT / 'compfn' / 'rl').glob('*.py'))
  bad = []
  for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if any(task_name(x) for x in sides) and any(literal(x) for x in sides):
          bad.append(f'{path.name}:{node.lineno} {ast.unparse(node)}')
  assert not bad, bad


# --------------------------------------------------------------------------- import graph


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict:
  return {_module_name(p): p for p in sorted(TASKS_DIR.rglob('*.py'))}


def _imports(name: str, path: pathlib.Path, known) -> set:
  """compfn.tasks modules that ``name`` imports explicitly (anywhere in the file, including
  function-level imports). ``from pkg import x`` counts as ``pkg.x`` when that is a module."""
  is_pkg = path.name == '__init__.py'
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        pkg = name.split('.') if is_pkg else name.split('.')[:-1]
        pkg = pkg[: len(pkg) - node.level + 1]
        base = '.'.join(pkg + ([base] if base else []))
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]
    else:
      continue
    out.update(t for t in targets if t in known)
  out.discard(name)
  return out


def test_no_import_cycle_between_task_modules():
  mods = _modules()
  graph = {m: _imports(m, p, mods) for m, p in mods.items()}
  # One direction: the task modules never import the registry or the package that fills it.
  for m, deps in graph.items():
    if m.startswith(('compfn.tasks.strings', 'compfn.tasks.countdown')):
      assert not deps & {'compfn.tasks', 'compfn.tasks.registry'}, (m, deps)
  assert graph['compfn.tasks.registry'] == set()
  assert {'compfn.tasks.registry', 'compfn.tasks.countdown'} <= graph['compfn.tasks']
  # No cycle at all (depth-first search over the explicit imports).
  state = {}

  def visit(m, stack):
    state[m] = 'open'
    for d in sorted(graph[m]):
      if state.get(d) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join(stack[stack.index(d) :] + [d]))
      if d not in state:
        visit(d, stack + [d])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_every_task_module_imports_first_and_fills_the_registry():
  """Each module under compfn/tasks imported first (fresh compfn.tasks state) works and the
  registry then holds the built-in tasks: no import-order dependence."""
  script = f"""
import importlib, sys
mods = {sorted(_modules())!r}
for m in mods:
    for k in [k for k in sys.modules if k == 'compfn.tasks' or k.startswith('compfn.tasks.')]:
        del sys.modules[k]
    importlib.import_module(m)
    from compfn.tasks import registry
    missing = set({BUILTIN!r}) - set(registry.tasks())
    assert not missing, (m, missing)
print('ok', len(mods))
"""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run(
      [sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split()[0] == 'ok'


# ------------------------------------------------------------------- Countdown: device == host


def _ref_forms(p, i):
  """The reference of problem p in one of four byte forms the device scorer must read."""
  nums, t = list(p.numbers), p.target
  return [
      p.reference,  # the paper's form
      scoring.reference_json(p.reference),  # the records' form
      json.dumps({'numbers': nums, 'target': t}, separators=(',', ':')),
      json.dumps({'target': t, 'numbers': nums}, indent=1),
  ][i % 4]


def _responses(p, rng):
  """(response str | bytes, overlong) cases for problem p: correct, wrong, malformed."""
  nums = [str(v) for v in p.numbers]
  shuffled = rng.sample(nums, len(nums))
  return [
      (f'<think>easy</think><answer>{p.expression}</answer>', False),  # correct
      (f'<answer> {p.expression} </answer>', True),  # correct, overlong
      (f'<answer>{" * ".join(shuffled)}</answer>', False),  # all numbers
      (f'<answer>{" - ".join(shuffled)}</answer>', False),
      (f'<answer>{" + ".join(nums[:-1])}</answer>', False),  # a number missing
      (f'<answer>{p.expression} + {nums[0]}</answer>', False),  # one used twice
      (f'<answer>{p.expression} = {p.target}</answer>', False),  # '='
      (f'<answer>({p.expression}</answer>', False),  # unbalanced
      (f'<answer>{p.expression}', False),  # unclosed
      (p.expression, False),  # no tags
      ('<answer></answer>', False),  # empty
      (f'<answer>{nums[0]} / ({nums[0]} - {nums[0]})</answer>', False),  # division by zero
      (f'<answer>x</answer><answer>{p.expression}</answer>', False),  # last tag counts
      (f'<answer>{p.expression}</answer><answer>1</answer>', False),
      (f'<answer>{p.expression.replace(" ", chr(0xa0))}</answer>', False),  # non-ASCII space
      (b'<answer>' + p.expression.encode() + b'\xff</answer>', False),  # invalid UTF-8
  ]


def _rows(items, width):
  arr = np.zeros((len(items), width), np.int32)
  lens = np.zeros(len(items), np.int32)
  for i, b in enumerate(items):
    assert len(b) <= width, b
    arr[i, : len(b)] = np.frombuffer(b, np.uint8)
    lens[i] = len(b)
  return arr, lens


def _as_bytes(x):
  return x if isinstance(x, bytes) else x.encode('utf-8')


def test_countdown_device_scorer_equals_python_scorer():
  rng = random.Random(0)
  problems = (
      generator.generate(level=3, num=100, seed=1)
      + generator.generate(level=4, num=60, seed=2)
      + generator.generate(level=2, num=30, seed=3)
      + generator.generate(level=5, num=30, seed=4)
      + generator.generate(level=8, num=8, seed=5)
      + generator.generate(level=8, num=4, seed=5, max_value=9999, max_target=9999)
  )
  assert len(problems) >= 200
  resps, refs, overlong = [], [], []
  for i, p in enumerate(problems):
    ref = _ref_forms(p, i)
    for text, ol in _responses(p, rng):
      resps.append(text)
      refs.append(ref)
      overlong.append(ol)
  task = registry.get('countdown')
  want = [
      task.score(r.decode('utf-8', errors='replace') if isinstance(r, bytes) else r, ref, ol)
      for r, ref, ol in zip(resps, refs, overlong)
  ]
  resp, resp_len = _rows([_as_bytes(r) for r in resps], 256)
  ref, ref_len = _rows([_as_bytes(r) for r in refs], 256)
  args = (resp, resp_len, ref, ref_len, np.asarray(overlong))
  assert 'callback' not in str(jax.make_jaxpr(task.device_score)(*args))  # pure device code
  s, a = jax.jit(task.device_score)(*args)
  got = list(zip(np.asarray(s).tolist(), np.asarray(a).tolist()))
  bad = [
      (resps[i], refs[i], overlong[i], got[i], want[i])
      for i in range(len(want))
      if got[i] != tuple(want[i])
  ]
  assert not bad, bad[:5]
  # The cases cover every outcome.
  reasons = {
      scoring.score_answer(
          r.decode('utf-8', errors='replace') if isinstance(r, bytes) else r,
          *scoring.parse_reference(ref),
          overlong=ol,
      ).reason
      for r, ref, ol in zip(resps, refs, overlong)
  }
  assert {
      'correct',
      'wrong_numbers',
      'wrong_value',
      'overlong',
      'no_answer_tag',
      'unclosed_answer_tag',
      'invalid_character',
      'empty_answer',
      'unbalanced_parentheses',
      'division_by_zero',
  } <= reasons
  assert 0 < sum(w[1] for w in want) < len(want)
  # The reference parser reads exactly the problem the Python side reads.
  nums, nlen, tgt, ok = jax.jit(verifier.parse_references)(ref, ref_len)
  assert bool(np.all(ok))
  for i in range(0, len(refs), 16):
    n, t = scoring.parse_reference(refs[i])
    assert np.asarray(nums)[i, : int(nlen[i])].tolist() == list(n) and int(tgt[i]) == t


def test_countdown_bad_references_score_invalid_on_device():
  good = b'{"numbers": [95, 14, 18], "target": 99}'
  bad = [
      b'',
      b'{"numbers": [], "target": 99}',
      b'{"numbers": [95 14, 18], "target": 99}',
      b'{"numbers": [95, 14, 18,], "target": 99}',
      b'{"numbers": [95, 14, 18]}',
      b'{"target": 99}',
      b'{"numbers": [95, 14, 18], "target": 99.5}',
      b'{"numbers": [95, 14, 18], "target": 1e2}',
      b'{"numbers": [95, 14, 18], "target": x}',
      b'{"numbers": [12345, 1], "target": 2}',
      b'{"numbers": [1,2,3,4,5,6,7,8,9], "target": 2}',
      b'{"numbers": [-1, 2], "target": 2}',
      b'{"numbers" [95, 14, 18], "target": 99}',
      b'{"numbers": [95, 14, 18], "target": 99999}',
  ]
  for b in bad[1:]:
    with pytest.raises(ValueError):
      scoring.reference_json(b.decode())
  refs = [good] + bad
  resp, resp_len = _rows([b'<answer>95 + 18 - 14</answer>'] * len(refs), 64)
  ref, ref_len = _rows(refs, 64)
  s, a = jax.jit(verifier.score_refs)(resp, resp_len, ref, ref_len, np.zeros(len(refs), bool))
  assert np.asarray(s).tolist() == [1] + [0] * len(bad)
  ok = np.asarray(jax.jit(verifier.parse_references)(ref, ref_len)[3])
  assert ok.tolist() == [True] + [False] * len(bad)
  # Both key names parse; the canonical form is the records' one.
  assert scoring.reference_json('{"answer": 99, "numbers": [95, 14, 18]}') == good.decode()
  assert scoring.parse_reference({'numbers': [1, 2], 'target': 3}) == ((1, 2), 3)
  with pytest.raises(ValueError, match='!='):
    scoring.parse_reference({'numbers': [1, 2], 'target': 3, 'answer': 4})


# --------------------------------------------------------------------- GRPO on Countdown

# A made-up vocabulary whose tokens are whole answers, so a random tiny model samples correct,
# wrong and malformed Countdown responses (two tokens: an answer, then one of 7 stop tokens).
PIECES = [
    '',
    '',
    '',
    '',
    '',
    '',
    '',
    '',  # 0 pad, 1..7 stop
    '<answer>1+2</answer>',
    '<answer>2-1</answer>',
    '<answer>1+2+3</answer>',
    '<answer>(1+2)*3</answer>',
    '<answer>(1+2</answer>',
    '<answer>2/(1-1)</answer>',
    'no tags',
    '<answer>3</answer>',
]
STOP_IDS = tuple(range(1, 8))
REFS = [
    '{"answer": 3, "numbers": [1, 2]}',  # the paper's form
    scoring.reference_json({'numbers': [2, 1], 'target': 1}),
    '{"numbers":[1,2,3],"target":9}',
    '{"target": 6, "numbers": [3, 2, 1]}',
]


def _detok():
  width = max(len(p) for p in PIECES)
  table = np.zeros((len(PIECES), width), np.uint8)
  for i, p in enumerate(PIECES):
    table[i, : len(p)] = np.frombuffer(p.encode(), np.uint8)
  return rollout.DetokTables(
      table=table,
      lengths=np.array([len(p) for p in PIECES], np.int32),
      first_skip=np.zeros(len(PIECES), np.int32),
  )


@functools.lru_cache(maxsize=None)
def _tiny_model():
  cfg = ModelConfig(
      family='llama',
      vocab_size=len(PIECES),
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      max_position_embeddings=32,
      tie_word_embeddings=True,
  )
  return cfg, transformer.init_params(cfg, jax.random.PRNGKey(0))


def test_grpo_step_on_countdown():
  cfg, params = _tiny_model()
  gcfg = grpo.GRPOConfig(
      num_generations=8,
      batch_prompts=4,
      dynamic_sampling=False,
      max_new_tokens=2,
      task='countdown',
      max_bytes=64,
  )
  scfg = gcfg.sampler_config(STOP_IDS, 0)
  detok = _detok()
  prompts = [[8, 9], [10, 11, 12], [13], [14, 15, 8, 9]]
  pool = grpo.pool_from_host(
      prompts,
      [registry.get('countdown').encode_reference(r) for r in REFS],
      gcfg,
      prompt_len=8,
      ref_len=64,
  )
  tx = train.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule='constant').make(4)
  state = train.TrainState.create(params, tx)

  new_state, m = jax.jit(grpo.make_step(cfg, tx, gcfg, scfg))(state, pool, detok)
  # The step's generation, replayed: grpo_step splits the state's key and generates with the
  # second half.
  _, gen_rng = jax.random.split(state.rng)
  buf, _ = jax.jit(lambda p, pl, r, d: grpo.generate(cfg, p, pl, r, gcfg, scfg, d))(
      params, pool, gen_rng, detok
  )

  tokens, mask = np.asarray(buf.tokens), np.asarray(buf.mask)
  host = np.zeros(mask.shape[:2], np.float32)
  for p in range(mask.shape[0]):
    for g in range(mask.shape[1]):
      toks = tokens[p, g][mask[p, g]].tolist()
      text = ''.join(PIECES[t] for t in toks)
      truncated = not any(t in STOP_IDS for t in toks)
      host[p, g] = registry.get('countdown').score(text, REFS[p], truncated)[0]
  np.testing.assert_array_equal(np.asarray(buf.reward), host)
  assert 0 < host.sum() < host.size  # correct and incorrect responses
  assert float(m['reward']) == pytest.approx(host.mean())
  assert float(m['accuracy']) == pytest.approx(host.mean())
  assert np.isfinite(float(m['loss'])) and np.isfinite(float(m['grad_norm']))
  assert float(m['skipped_update']) == 0.0 and float(m['groups_trained']) == 4
  moved = max(
      float(jnp.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params))
  )
  assert moved > 0
