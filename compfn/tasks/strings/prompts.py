"""Prompt text: the paper's template (byte for byte) and the trace format for small models.

Paper format (PAPER.md §1.1). Stage 2 (and the stage-1 *training* prompt) hides the definitions::

    You are given a code:

    def main_solution(x):
        return func_4((x + 'pac'))

    Can you predict the output of `main_solution("oss")` without writing any code? Please reason ...

Stage-1 *generation* prompts show compfn's own source of every function the program uses, in
func_k order, renamed to the ids, joined by blank lines, before ``main_solution``.

Trace format (spec/MINIATURE.md): the input is inlined as a literal, the prompt ends with ``=``
and the target lists the calls innermost-first, each ``CALL=VALUE;``, then the answer::

    prompt:  func_3(func_7('fgi','dnqjwha'))=
    target:  ;func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw

Chat formatting (the model's template) is applied later, by the tokenizer layer.
"""

from __future__ import annotations

import functools
import inspect
import re

from compfn.tasks.strings import functions
from compfn.tasks.strings import program

FORWARD_PROMPT = (
    'You are given a code:\n\n{code}\n\nCan you predict the output of `main_solution("{input}")` '
    'without writing any code? Please reason and put your final answer in the following json '
    'format: {{"output": <your output>}}, where <your output> should be the final string.'
)

#: Separator between trace steps; never produced by any function (``|`` can be).
TRACE_SEP = ';'


@functools.lru_cache(maxsize=None)
def _rename_pattern():
  names = sorted(functions.FUNCTIONS, key=len, reverse=True)
  return re.compile(r'\b(' + '|'.join(names) + r')\b')


def rename(text: str) -> str:
  """Replace every internal function name by its func_k id (whole words only)."""
  return _rename_pattern().sub(lambda m: functions.FUNCTIONS[m.group(1)].fid, text)


@functools.lru_cache(maxsize=None)
def function_source(name: str) -> str:
  """compfn's source of one function, renamed to ids (what stage-1 prompts show)."""
  return rename(inspect.getsource(functions.FUNCTIONS[name].fn))


def stage1_code(node: program.Node) -> str:
  """Definitions of the used functions (func_k order) + ``main_solution``, as the paper joins
  them: sources separated by ``\\n\\n``, then ``\\n\\ndef main_solution(x):...``."""
  parts = '\n\n'.join(function_source(n) for n in program.used_functions(node))
  return parts + '\n\n' + program.to_code(node)


def forward_prompt(code: str, x: str) -> str:
  """The paper's prompt for a code block and an input, byte for byte."""
  return FORWARD_PROMPT.format(code=code, input=x)


def hide_definitions(prompt: str) -> str:
  """The paper's stage-1 SFT rewrite: keep the header and everything from main_solution on."""
  k = prompt.find('def main_solution(x):')
  if k < 0:
    raise ValueError('prompt has no `def main_solution(x):`')
  return 'You are given a code:\n\n' + prompt[k:]


# ------------------------------------------------------------------------------------------------
# Trace format
# ------------------------------------------------------------------------------------------------


def _trace_lit(s: str) -> str:
  if "'" in s or TRACE_SEP in s or '=' in s:
    raise ValueError(f'string {s!r} cannot appear in the trace format')
  return "'" + s + "'"


def _call_text(node, args_text: list[str], names) -> str:
  if isinstance(node, program.Concat):
    return f'({args_text[0]}+{args_text[1]})'
  if isinstance(node, program.Builtin):
    return f'({args_text[0]}).{node.op}()'
  spec = names(node.fn)
  if node.param is not None:
    args_text = args_text + [
        _trace_lit(node.param) if isinstance(node.param, str) else str(node.param)
    ]
  return f'{spec}({",".join(args_text)})'


def _default_names(fn: str) -> str:
  return functions.FUNCTIONS[fn].fid


def trace_prompt(node, x: str, names=_default_names) -> str:
  """``func_3(func_7('abc','de'))=`` — the program with the input inlined, then ``=``."""

  def text(n):
    if isinstance(n, program.Var):
      return _trace_lit(x)
    if isinstance(n, program.Lit):
      return _trace_lit(n.value)
    kids = (
        [n.left, n.right]
        if isinstance(n, program.Concat)
        else ([n.sub] if isinstance(n, program.Builtin) else list(n.args))
    )
    return _call_text(n, [text(k) for k in kids], names)

  return text(node) + '='


def trace_steps(node, x: str, run_fn, names=_default_names) -> list[tuple[str, str]]:
  """The calls of a program innermost-first (post-order), each with its arguments replaced by
  their values: ``[("func_7('fgi','dnqjwha')", 'fdgniqjwha'), ...]``.

  run_fn(node, x) evaluates a sub-program (the caller passes the family's evaluator)."""
  steps = []

  def walk(n):
    if isinstance(n, program.Var):
      return x
    if isinstance(n, program.Lit):
      return n.value
    kids = (
        [n.left, n.right]
        if isinstance(n, program.Concat)
        else ([n.sub] if isinstance(n, program.Builtin) else list(n.args))
    )
    vals = [walk(k) for k in kids]
    out = run_fn(n, x)
    steps.append((_call_text(n, [_trace_lit(v) for v in vals], names), out))
    return out

  walk(node)
  return steps


def trace_target(steps: list[tuple[str, str]], answer: str) -> str:
  """``;step=value;step=value;answer`` (the EOS token is appended by the tokenizer layer)."""
  return TRACE_SEP + ''.join(f'{c}={v}{TRACE_SEP}' for c, v in steps) + answer
