"""Programs as data: parse printed code into an AST (never ``eval``), print it back, run it.

A program is the expression ``main_solution`` returns. The AST has five node types::

    Var()                      x
    Lit('abc')                 'abc'
    Call('rotate_str', (sub,), 2)        rotate_str(sub, 2)     -> printed func_8(sub, 2)
    Call('interlace_str', (a, b))        interlace_str(a, b)    -> printed func_7(a, b)
    Concat(a, b)               (a + b)
    Builtin('upper', sub)      (sub).upper()

Parsing goes through Python's :mod:`ast` (syntax only; nothing is executed) and accepts exactly
this subset; anything else raises :class:`ProgramError` naming what is wrong::

    >>> p = parse_code("def main_solution(x):\\n    return func_8((x + 'ab'), 2)")
    >>> to_text(p)
    "func_8((x + 'ab'), 2)"
    >>> run(p, 'xyz')
    'zabxy'
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Union

from compfn.tasks.strings import functions


class ProgramError(ValueError):
  """Printed code that is not a program of the string task (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Var:
  pass


@dataclasses.dataclass(frozen=True)
class Lit:
  value: str


@dataclasses.dataclass(frozen=True)
class Call:
  fn: str  # internal name, e.g. 'rotate_str'
  args: tuple  # (sub,) for unary functions, (left, right) for binary ones
  param: Union[int, str, None] = None


@dataclasses.dataclass(frozen=True)
class Concat:
  left: object
  right: object


@dataclasses.dataclass(frozen=True)
class Builtin:
  op: str  # upper | lower | capitalize | swapcase
  sub: object


Node = Union[Var, Lit, Call, Concat, Builtin]


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------


def _quote(s: str) -> str:
  if "'" in s or '\\' in s or '\n' in s:
    raise ProgramError(f'string literal {s!r} cannot be printed in the task syntax')
  return "'" + s + "'"


def to_text(node: Node, names: str = 'ids', registry=None) -> str:
  """Print an expression exactly as the paper's generator does.

  names='ids' prints ``func_k``; names='internal' prints internal names (the paper deduplicates
  on that text). registry: name -> FunctionSpec (default: the 25 functions)."""
  registry = functions.FUNCTIONS if registry is None else registry
  if isinstance(node, Var):
    return 'x'
  if isinstance(node, Lit):
    return _quote(node.value)
  if isinstance(node, Concat):
    return f'({to_text(node.left, names, registry)} + ' f'{to_text(node.right, names, registry)})'
  if isinstance(node, Builtin):
    return f'({to_text(node.sub, names, registry)}).{node.op}()'
  if isinstance(node, Call):
    name = registry[node.fn].fid if names == 'ids' else node.fn
    args = [to_text(a, names, registry) for a in node.args]
    if node.param is not None:
      args.append(_quote(node.param) if isinstance(node.param, str) else str(node.param))
    return f'{name}({", ".join(args)})'
  raise TypeError(f'not a program node: {node!r}')


def to_code(node: Node) -> str:
  """The stage-2 code block: ``def main_solution(x):\\n    return <expr>``."""
  return f'def main_solution(x):\n    return {to_text(node)}'


# ------------------------------------------------------------------------------------------------
# Parsing (Python's ast module: syntax only, nothing executed)
# ------------------------------------------------------------------------------------------------


def _resolve(name: str) -> functions.FunctionSpec:
  spec = functions.BY_ID.get(name) or functions.FUNCTIONS.get(name)
  if spec is None:
    raise ProgramError(
        f'unknown function {name!r} (expected func_0 .. func_{len(functions.BY_ID) - 1})'
    )
  return spec


def _convert(node: ast.AST) -> Node:
  if isinstance(node, ast.Name):
    if node.id != 'x':
      raise ProgramError(f'unknown variable {node.id!r} (the only variable is x)')
    return Var()
  if isinstance(node, ast.Constant):
    if isinstance(node.value, str):
      return Lit(node.value)
    raise ProgramError(f'unsupported constant {node.value!r}: only string literals are values')
  if isinstance(node, ast.BinOp):
    if not isinstance(node.op, ast.Add):
      raise ProgramError(f'unsupported operator {type(node.op).__name__}: only + is allowed')
    return Concat(_convert(node.left), _convert(node.right))
  if isinstance(node, ast.Call):
    if node.keywords:
      raise ProgramError('keyword arguments are not supported')
    if isinstance(node.func, ast.Attribute):
      if node.func.attr not in functions.BUILTINS:
        raise ProgramError(
            f'unsupported string method .{node.func.attr}() '
            f'(allowed: {", ".join(functions.BUILTINS)})'
        )
      if node.args:
        raise ProgramError(f'.{node.func.attr}() takes no arguments, got {len(node.args)}')
      return Builtin(node.func.attr, _convert(node.func.value))
    if not isinstance(node.func, ast.Name):
      raise ProgramError('only calls of func_k by name are supported')
    spec = _resolve(node.func.id)
    args = node.args
    want = 2
    if spec.kind == 'noparam':
      want = 1
    if len(args) != want:
      raise ProgramError(
          f'{spec.fid} takes {want} argument{"s" if want > 1 else ""}, ' f'got {len(args)}'
      )
    if spec.kind == 'param':
      p = args[1]
      if (
          isinstance(p, ast.UnaryOp)
          and isinstance(p.op, ast.USub)
          and isinstance(p.operand, ast.Constant)
          and type(p.operand.value) is int
      ):
        p = ast.Constant(-p.operand.value)  # negative int parameter
      ok = isinstance(p, ast.Constant) and (
          (spec.param == 'int' and type(p.value) is int)
          or (spec.param == 'str' and isinstance(p.value, str))
      )
      if not ok:
        raise ProgramError(
            f'{spec.fid}: its second argument must be a {spec.param} '
            f'literal, got {ast.unparse(p)}'
        )
      return Call(spec.name, (_convert(args[0]),), p.value)
    return Call(spec.name, tuple(_convert(a) for a in args))
  raise ProgramError(f'unsupported syntax {type(node).__name__}: {ast.unparse(node)!r}')


def parse_expr(text: str) -> Node:
  """Parse an expression such as ``func_8((x + 'ab'), 2)`` into the AST."""
  if not isinstance(text, str):
    raise ProgramError(f'code must be a str, got {type(text).__name__}')
  try:
    tree = ast.parse(text.strip(), mode='eval')
  except SyntaxError as e:
    raise ProgramError(f'unparsable expression {text!r}: {e.msg}') from None
  return _convert(tree.body)


def parse_code(code: str) -> Node:
  """Parse printed code: optional function definitions (stage 1) then
  ``def main_solution(x):\\n    return <expr>``. Only the returned expression is a program;
  the definitions are not executed (they are compfn's own functions, looked up by id)."""
  if not isinstance(code, str):
    raise ProgramError(f'code must be a str, got {type(code).__name__}')
  try:
    tree = ast.parse(code)
  except SyntaxError as e:
    raise ProgramError(f'unparsable code (line {e.lineno}): {e.msg}') from None
  mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'main_solution']
  if not mains:
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
      return _convert(tree.body[0].value)  # a bare expression is accepted too
    raise ProgramError('no `def main_solution(x):` in the code')
  fn = mains[-1]
  if [a.arg for a in fn.args.args] != ['x']:
    raise ProgramError('main_solution must take exactly one argument named x')
  if len(fn.body) != 1 or not isinstance(fn.body[0], ast.Return) or fn.body[0].value is None:
    raise ProgramError('main_solution must consist of a single `return <expression>`')
  return _convert(fn.body[0].value)


# ------------------------------------------------------------------------------------------------
# Running (Python reference)
# ------------------------------------------------------------------------------------------------


class PaperRecursionError(RuntimeError):
  """The paper's recursive implementations would have exceeded CPython's recursion limit."""


def run(node: Node, x: str, paper_recursion_limit: bool = False, registry=None) -> str:
  """Evaluate the program on input ``x`` with compfn's reference functions.

  paper_recursion_limit: raise :class:`PaperRecursionError` where the paper's recursive
  functions hit CPython's recursion limit (the paper's generator skipped those programs).
  registry: name -> FunctionSpec (default: the 25 functions; the generic family has its own)."""
  registry = functions.FUNCTIONS if registry is None else registry
  if not isinstance(x, str):
    raise TypeError(f'input must be a str, got {type(x).__name__}')

  def ev(n):
    if isinstance(n, Var):
      return x
    if isinstance(n, Lit):
      return n.value
    if isinstance(n, Concat):
      return ev(n.left) + ev(n.right)
    if isinstance(n, Builtin):
      return functions.BUILTINS[n.op](ev(n.sub))
    if isinstance(n, Call):
      args = [ev(a) for a in n.args]
      if paper_recursion_limit and n.fn in ('recursive_reverse', 'recursive_interlace'):
        if min(len(a) for a in args) >= functions.PAPER_RECURSION_LIMIT_LEN:
          raise PaperRecursionError(f'{n.fn} on {min(len(a) for a in args)} chars')
      if n.param is not None:
        args.append(n.param)
      return registry[n.fn].fn(*args)
    raise TypeError(f'not a program node: {n!r}')

  return ev(node)


def run_code(code: str, x: str) -> str:
  """Python reference execution of printed code (``def main_solution`` or a bare expression)."""
  return run(parse_code(code), x)


def used_functions(node: Node, registry=None) -> list[str]:
  """Internal names of the functions a program calls, in func_k order, without repeats."""
  registry = functions.FUNCTIONS if registry is None else registry
  found = set()

  def walk(n):
    if isinstance(n, Call):
      found.add(n.fn)
      for a in n.args:
        walk(a)
    elif isinstance(n, Concat):
      walk(n.left)
      walk(n.right)
    elif isinstance(n, Builtin):
      walk(n.sub)

  walk(node)
  return [name for name in registry if name in found]


def count_calls(node: Node) -> int:
  """Number of function calls (custom functions and builtins) in a program."""
  if isinstance(node, Call):
    return 1 + sum(count_calls(a) for a in node.args)
  if isinstance(node, Builtin):
    return 1 + count_calls(node.sub)
  if isinstance(node, Concat):
    return count_calls(node.left) + count_calls(node.right)
  return 0


def depends_on_input(node: Node) -> bool:
  """Whether the program reads x."""
  if isinstance(node, Var):
    return True
  if isinstance(node, Call):
    return any(depends_on_input(a) for a in node.args)
  if isinstance(node, Builtin):
    return depends_on_input(node.sub)
  if isinstance(node, Concat):
    return depends_on_input(node.left) or depends_on_input(node.right)
  return False
