"""The layering the README describes is what the imports show (issue #12): read from the code,
every import (module level or inside a function) between compfn's own modules.

* nothing under ``compfn/rl/`` imports the trainer loop, the evaluation, or the pipeline, its
  stages and reports;
* the task registry is filled one way: ``compfn/tasks/__init__.py`` imports the task modules,
  and no task module imports the registry or the registry's package back;
* no import cycle between compfn's modules (importing ``compfn.a.b`` also runs ``compfn.a``'s
  ``__init__``: that edge counts too);
* no module reads another module's private names (``from m import _x``, ``m._x``);
* one helper each, in one place: the mesh context and the batch placement in
  ``compfn/parallel.py``, the power-of-two rounding in ``compfn/buckets.py``."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / 'compfn'


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict:
  return {_module_name(p): p for p in PKG.rglob('*.py')}


def _imports(path: pathlib.Path, name: str, known: set) -> set:
  """compfn modules that ``path`` imports (``from compfn import x`` counts x when x is a
  module, else compfn itself)."""
  tree = ast.parse(path.read_text(), str(path))
  is_pkg = path.name == '__init__.py'
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith('compfn'):
          out.add(a.name)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = name.split('.') if is_pkg else name.split('.')[:-1]
        base = base[: len(base) - node.level + 1]
        mod = '.'.join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ''
      if not mod.startswith('compfn'):
        continue
      for a in node.names:
        sub = f'{mod}.{a.name}'
        out.add(sub if sub in known else mod)
  # A module reached through a package: importing compfn.a.b also runs compfn.a's __init__
  # (unless the importer is inside compfn.a: the package is then already being imported).
  for m in list(out):
    parts = m.split('.')
    for i in range(2, len(parts)):
      pkg = '.'.join(parts[:i])
      if not (name == pkg or name.startswith(pkg + '.')):
        out.add(pkg)
  return {m for m in out if m in known and m != name}


def _graph() -> dict:
  mods = _modules()
  return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def test_rl_does_not_import_the_layers_above_it():
  above = (  # a package counts with its modules (compfn.stages.sft, ...)
      'compfn.train',
      'compfn.evaluate',
      'compfn.eval_results',
      'compfn.stages',
      'compfn.pipeline',
      'compfn.reports',
      'compfn.main',
      'compfn.compile_report',
  )
  bad = {
      m: sorted(d for d in deps if any(d == a or d.startswith(a + '.') for a in above))
      for m, deps in _graph().items()
      if m.startswith('compfn.rl')
  }
  assert not {m: d for m, d in bad.items() if d}, bad


def test_the_upper_layers_point_down():
  """The rows above rl/ (README "Layout"): the trainer loop and the evaluation below the stages
  and the reports, those below the pipeline, the entry points (main, compile_report) on top. A
  package counts with its modules."""
  top = ['compfn.pipeline', 'compfn.main', 'compfn.compile_report']
  forbidden = {
      'compfn.train': ['compfn.evaluate', 'compfn.eval_results', 'compfn.stages', 'compfn.reports']
      + top,
      'compfn.evaluate': ['compfn.stages', 'compfn.reports'] + top,
      'compfn.eval_results': ['compfn.evaluate', 'compfn.stages', 'compfn.reports'] + top,
      'compfn.reports': ['compfn.evaluate', 'compfn.stages'] + top,
      'compfn.stages': top,
      'compfn.pipeline': top[1:],
  }
  inside = lambda m, a: m == a or m.startswith(a + '.')  # noqa: E731
  bad = {}
  for m, deps in _graph().items():
    for low, high in forbidden.items():
      hit = sorted(d for d in deps if any(inside(d, h) for h in high))
      if inside(m, low) and hit:
        bad[m] = hit
  assert not bad, bad


def test_task_modules_do_not_import_the_task_package():
  g = _graph()
  back = {'compfn.tasks', 'compfn.tasks.registry'}
  bad = {
      m: sorted(deps & back)
      for m, deps in g.items()
      if m.startswith('compfn.tasks.') and m != 'compfn.tasks.registry' and deps & back
  }
  assert not bad, bad
  # The registry imports nothing of the tasks (it is filled by compfn/tasks/__init__.py).
  assert not g['compfn.tasks.registry'], g['compfn.tasks.registry']


def test_no_import_cycles():
  g = _graph()
  index, low, stack, on, sccs = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        sccs.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  assert not sccs, f'import cycles: {sccs}'


def test_the_graph_sees_function_level_and_package_imports(tmp_path, monkeypatch):
  """The checks above read imports inside functions too, and the package ``__init__`` that an
  import of a submodule runs: a cycle hidden that way is found."""
  pkg = tmp_path / 'compfn'
  (pkg / 'a').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'a' / '__init__.py').write_text('from compfn.a import low\n')
  (pkg / 'a' / 'low.py').write_text('def f():\n  from compfn import high\n')
  (pkg / 'high.py').write_text('from compfn.a.low import f\n')
  (pkg / 'b.py').write_text('def g():\n  import compfn.train\n')
  (pkg / 'train.py').write_text('')
  monkeypatch.setattr(__import__(__name__), 'ROOT', tmp_path)
  monkeypatch.setattr(__import__(__name__), 'PKG', pkg)
  g = _graph()
  assert 'compfn.train' in g['compfn.b']  # inside a function
  assert g['compfn.high'] == {'compfn.a', 'compfn.a.low'}  # the package's __init__ runs too
  assert 'compfn.a' not in g['compfn.a.low']  # ... but not for a module inside the package
  with pytest.raises(AssertionError, match='import cycles'):
    test_no_import_cycles()


def _first_party_sources():
  files = sorted(PKG.rglob('*.py')) + sorted((ROOT / 'tools').rglob('*.py'))
  return [(p, ast.parse(p.read_text(), str(p))) for p in files]


def _private(name: str) -> bool:
  return name.startswith('_') and not name.startswith('__')


def _private_uses(path, tree) -> list:
  """``from compfn.m import _x`` and ``m._x`` (``m`` a compfn module imported here)."""
  modules, bad = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith('compfn'):
          modules[a.asname or a.name.split('.')[0]] = a.name
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('compfn'):
      for a in node.names:
        if _private(a.name):
          bad.append(f'{path.name}:{node.lineno} from {node.module} import {a.name}')
        modules[a.asname or a.name] = f'{node.module}.{a.name}'
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _private(node.attr):
      base = node.value
      while isinstance(base, ast.Attribute):
        base = base.value
      if isinstance(base, ast.Name) and base.id in modules:
        bad.append(f'{path.name}:{node.lineno} {ast.unparse(node)} ({modules[base.id]})')
  return bad


def test_no_private_names_across_modules():
  bad = [b for path, tree in _first_party_sources() for b in _private_uses(path, tree)]
  assert not bad, bad


def test_private_use_check_finds_both_forms(tmp_path):
  path = tmp_path / 'x.py'
  code = 'from compfn.sampling import _MeshContext\nfrom compfn import parallel\nparallel._cpu_platform()\n'
  found = _private_uses(path, ast.parse(code))
  assert len(found) == 2 and '_MeshContext' in found[0] and '_cpu_platform' in found[1], found


def _calls(tree, attr: str):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      f = node.func
      name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ''
      if name == attr:
        yield node


def _pow2_roundings(tree):
  """``1 << (...).bit_length()``: rounding up to a power of two."""
  for node in ast.walk(tree):
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.LShift):
      if any(
          isinstance(c, ast.Call)
          and isinstance(c.func, ast.Attribute)
          and c.func.attr == 'bit_length'
          for c in ast.walk(node.right)
      ):
        yield node


def test_one_mesh_context_one_batch_placement_one_power_of_two():
  """``jax.set_mesh`` / ``nn.logical_axis_rules`` are entered only by ``parallel.use_mesh``,
  host batches are placed on a mesh only by ``parallel.shard_batch`` (through ``put_global``),
  and only ``buckets.next_power_of_two`` rounds up to a power of two."""
  owner = {
      'set_mesh': 'parallel.py',
      'logical_axis_rules': 'parallel.py',
      'put_global': 'parallel.py',
  }
  bad = []
  for path, tree in _first_party_sources():
    for attr, home in owner.items():
      bad += [f'{path.name}:{n.lineno} {attr}' for n in _calls(tree, attr) if path.name != home]
    if path.name != 'buckets.py':
      bad += [f'{path.name}:{n.lineno} {ast.unparse(n)}' for n in _pow2_roundings(tree)]
  assert not bad, bad


def test_module_aliases_are_descriptive():
  """No single-letter module alias (``import ... as S``): one letter meant different modules in
  different files. The conventional ``np``/``jnp``/``nn``/``plt`` are two letters or more."""
  files = sorted(PKG.rglob('*.py')) + sorted((ROOT / 'tools').rglob('*.py'))
  files += sorted((ROOT / 'tests').rglob('*.py')) + [ROOT / 'setup.py']
  bad = []
  for path in files:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for a in node.names:
          if a.asname and len(a.asname) == 1:
            bad.append(f'{path.relative_to(ROOT)}:{node.lineno} {a.name} as {a.asname}')
  assert not bad, bad
