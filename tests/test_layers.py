"""The layering the README describes is what the imports show (issue #12): read from the code,
every import (module level or inside a function) between compfn's own modules.

* nothing under ``compfn/rl/`` imports the trainer loop, the evaluation, or the pipeline, its
  stages and reports;
* the task registry is filled one way: ``compfn/tasks/__init__.py`` imports the task modules,
  and no task module imports the registry's package back;
* no import cycle between compfn's modules."""

import ast
import pathlib

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
  # A module reached through a package: importing compfn.a.b also runs compfn.a's __init__.
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
  bad = {
      m: sorted(deps)
      for m, deps in g.items()
      if m.startswith('compfn.tasks.') and 'compfn.tasks' in deps
  }
  assert not bad, bad


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
