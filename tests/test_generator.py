"""The task suite: paper-mode datasets record for record, clean mode's guarantees, prompts, the
trace format, and clear errors for bad input."""

import hashlib
import json
import pathlib
import random
import re

import pytest

from compfn.tasks.strings import (CleanOptions, ProgramError, generate, generate_trace, run_code)
from compfn.tasks.strings import functions
from compfn.tasks.strings import generic
from compfn.tasks.strings import program
from compfn.tasks.strings import prompts

FIXTURE = json.loads(
    (pathlib.Path(__file__).parent / 'fixtures' / 'paper_datasets.json').read_text(encoding='utf-8')
)


def _digest(problems, with_prompt):
  h = hashlib.sha256()
  for p in problems:
    rec = [p.level, p.code, p.input, p.output] + ([p.prompt] if with_prompt else [])
    h.update((json.dumps(rec, ensure_ascii=False) + '\n').encode())
  return h.hexdigest()


@pytest.mark.parametrize('name', sorted(FIXTURE['sets']))
def test_paper_mode_reproduces_reference_sets(name):
  ref = FIXTURE['sets'][name]
  a = ref['args']
  problems = generate(a['stage'], a['split'], a['min_level'], a['max_level'], a['num'])
  assert len(problems) == a['num']
  got_first = [[p.level, p.code, p.input, p.output] for p in problems[:3]]
  got_last = [[p.level, p.code, p.input, p.output] for p in problems[-2:]]
  assert got_first == ref['first'] and got_last == ref['last']
  assert _digest(problems, ref['with_prompt']) == ref['sha256']


def test_published_samples_are_reproduced():
  test = generate(2, 'test', 1, 8, 2048)
  # The sample a user quoted from the released HF test data (RL-Compositionality issue #4).
  hit = [p for p in test if p.input == 'pvausieyic']
  assert [(p.code.split('return ')[1], p.output) for p in hit] == [("(x + 'oss')", 'pvausieyicoss')]
  l2 = generate(2, 'train', 2, 2, 16)
  assert l2[0].code == "def main_solution(x):\n    return func_4((x + 'pac'))"
  assert l2[0].input == 'oss' and l2[0].output == 'osspac'
  assert l2[0].prompt == (
      "You are given a code:\n\ndef main_solution(x):\n    return func_4((x + 'pac'))\n\n"
      'Can you predict the output of `main_solution("oss")` without writing any code? Please '
      'reason and put your final answer in the following json format: {"output": <your '
      'output>}, where <your output> should be the final string.'
  )


def test_paper_sets_use_the_right_functions_and_levels():
  test = generate(2, 'test', 1, 8, 2048)
  assert [sum(p.level == lv for p in test) for lv in range(1, 9)] == [256] * 8
  held_out = {functions.FUNCTIONS[n].fid for n in functions.TEST_FUNCTIONS}
  train = {functions.FUNCTIONS[n].fid for n in functions.TRAIN_FUNCTIONS}
  assert set().union(*(p.functions for p in test)) <= held_out
  l2 = generate(2, 'train', 2, 2, 2000)
  assert set().union(*(p.functions for p in l2)) <= train
  for p in test[:300] + l2[:300]:
    assert run_code(p.code, p.input) == p.output
  # Stage 1 never uses recursive_interlace (interlace_str is active), as in the paper.
  s1 = generate(1, 'train', 1, 1, 5000)
  assert 'func_20' not in set().union(*(p.functions for p in s1))


def test_stage1_prompt_shows_renamed_definitions():
  s1 = generate(1, 'train', 1, 1, 200)
  p = next(p for p in s1 if len(p.functions) == 1 and p.functions[0] == 'func_17')
  assert p.prompt.startswith('You are given a code:\n\ndef func_17(s):\n')
  assert '\n\n\ndef main_solution(x):\n    return ' in p.prompt
  assert 'recursive_reverse' not in p.prompt and 'func_17(s[mid:])' in p.prompt
  assert p.prompt_hidden == prompts.forward_prompt(p.code, p.input)
  assert prompts.hide_definitions(p.prompt) == p.prompt_hidden
  for q in s1:
    assert not re.search(r'\b(' + '|'.join(functions.FUNCTIONS) + r')\b', q.prompt)


def test_recursion_limit_emulation():
  node = program.parse_expr('func_17(x)')
  program.run(node, 'a' * 995, paper_recursion_limit=True)
  with pytest.raises(program.PaperRecursionError):
    program.run(node, 'a' * 996, paper_recursion_limit=True)
  assert program.run(node, 'ab' * 1000) == 'ba' * 1000  # compfn's own version never fails
  both = program.parse_expr('func_20(x, func_1(x, 4))')
  program.run(both, 'a' * 995, paper_recursion_limit=True)
  with pytest.raises(program.PaperRecursionError):
    program.run(both, 'a' * 996, paper_recursion_limit=True)


def test_clean_mode_guarantees():
  opts = CleanOptions()
  train = generate(2, 'train', 1, 2, 4000, mode='clean')
  twins = {functions.FUNCTIONS[n].fid for n in functions.IDENTICAL_ACROSS_SPLIT.values()}
  assert not twins & set().union(*(p.functions for p in train))
  s1 = generate(1, 'train', 1, 1, 6000, mode='clean')
  test = generate(2, 'test', 1, 4, 2048, mode='clean')
  key = lambda p: (p.code, p.input if p.depends_on_input else None)  # noqa: E731
  assert not {key(p) for p in test} & {key(p) for p in s1 + train}
  for ds in (train, s1, test):
    assert all(p.functions for p in ds)  # a custom function each
    assert max(len(p.output) for p in ds) <= opts.max_output_len
    assert len({key(p) for p in ds}) == len(ds)  # dedup on (program, input)
    for lv in {p.level for p in ds}:
      rows = [p for p in ds if p.level == lv]
      assert sum(p.depends_on_input for p in rows) >= opts.min_input_dependent * len(rows)
  # The paper's sets violate what clean mode guarantees (so the checks above can fail).
  paper_s1 = generate(1, 'train', 1, 1, 50000)
  paper_test = generate(2, 'test', 1, 8, 2048)
  assert {key(p) for p in paper_test} & {key(p) for p in paper_s1}
  assert sum(p.depends_on_input for p in paper_s1) < 0.3 * len(paper_s1)


def test_clean_mode_options_switch_off():
  raw = CleanOptions(
      drop_twins=False,
      holdout_mod=0,
      min_input_dependent=0.0,
      max_output_len=None,
      dedup='expr',
      require_function=False,
  )
  ps = generate(2, 'train', 1, 1, 2000, mode='clean', clean=raw)
  assert any(not p.functions for p in ps)
  assert generate(2, 'train', 1, 1, 100, mode='clean') == generate(
      2, 'train', 1, 1, 100, mode='clean'
  )
  with pytest.raises(ValueError, match='dedup'):
    generate(2, 'train', 1, 1, 10, mode='clean', clean=CleanOptions(dedup='bogus'))


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(stage=3, split='train', min_level=1, max_level=1, num=10), 'stage'),
        (dict(stage=2, split='dev', min_level=1, max_level=1, num=10), 'split'),
        (dict(stage=2, split='test', min_level=0, max_level=1, num=10), 'min_level'),
        (dict(stage=2, split='test', min_level=1, max_level=99, num=99), 'max_level'),
        (dict(stage=2, split='test', min_level=3, max_level=2, num=10), 'min_level 3 > max_level'),
        (dict(stage=2, split='test', min_level=1, max_level=3, num=10), 'multiple'),
        (dict(stage=2, split='test', min_level=1, max_level=1, num=10, mode='fast'), 'mode'),
    ],
)
def test_generator_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    generate(**kwargs)


def test_levels_beyond_eight():
  ps = generate(2, 'test', 9, 10, 20)
  assert [p.level for p in ps] == [9] * 10 + [10] * 10
  assert all(run_code(p.code, p.input) == p.output for p in ps)


@pytest.mark.parametrize(
    'code, match',
    [
        ('def main_solution(x):\n    return func_3(x', 'unparsable'),
        ('def main_solution(x):\n    return func_99(x)', "unknown function 'func_99'"),
        ('def main_solution(x):\n    return func_3(x, 2)', 'func_3 takes 1 argument, got 2'),
        ('def main_solution(x):\n    return func_1(x)', 'func_1 takes 2 arguments, got 1'),
        ("def main_solution(x):\n    return func_1(x, 'a')", 'must be a int literal'),
        ('def main_solution(x):\n    return y', "unknown variable 'y'"),
        ('def main_solution(x):\n    return (x).title()', 'unsupported string method'),
        ('def main_solution(x):\n    return x * 2', 'only \\+ is allowed'),
        ('def main_solution(x):\n    return __import__("os")', "unknown function '__import__'"),
        ('import os', 'no `def main_solution'),
        ('def main_solution(x):\n    y = x\n    return y', 'single `return'),
    ],
)
def test_bad_code_gives_clear_errors(code, match):
  with pytest.raises(ProgramError, match=match):
    run_code(code, 'abc')


def test_non_string_input_is_rejected():
  with pytest.raises(TypeError, match='input must be a str, got int'):
    run_code('def main_solution(x):\n    return func_3(x)', 5)
  with pytest.raises(ProgramError, match='code must be a str'):
    run_code(None, 'abc')


def test_print_parse_round_trip():
  for p in generate(2, 'test', 1, 8, 400)[::7]:
    node = p.program
    assert program.to_code(node) == p.code
    assert program.to_text(node, names='internal') == p.expr


def test_function_docstring_examples():
  assert functions.deterministic_shuffle('abcde') == 'adbec'
  assert functions.rotate_str('abcde', 2) == 'cdeab'
  assert functions.interlace_str('abc', 'XY') == 'aXbYc'
  assert functions.backchain_palindrome('ab', 1) == 'abba'
  assert (
      functions.backchain_add_digit('abc', 2) == 'abc1'
      and functions.backchain_add_digit('abc', 0) == 'abc'
  )
  rng = random.Random(0)
  for _ in range(2000):
    a = ''.join(rng.choices('ab«»-cdE1', k=rng.randint(0, 12)))
    b = ''.join(rng.choices('xyz', k=rng.randint(0, 12)))
    assert functions.recursive_interlace(a, b) == functions.interlace_str(a, b)
    assert functions.recursive_reverse(a) == a[::-1]
    assert functions.while_rotate(a, 3) == functions.rotate_str(a, 3)


# ------------------------------------------------------------------------------------------------
# Trace format and the generic family
# ------------------------------------------------------------------------------------------------


def test_trace_format_matches_miniature_example():
  node = program.parse_expr("func_3(func_7('fgi', 'dnqjwha'))")
  steps = prompts.trace_steps(node, 'unused', program.run)
  assert prompts.trace_prompt(node, 'unused') == "func_3(func_7('fgi','dnqjwha'))="
  assert prompts.trace_target(steps, program.run(node, '')) == (
      ";func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw"
  )


def test_generate_trace_paper_and_generic():
  ps = generate_trace(functions.TRAIN_FUNCTIONS, 1, 2, 200, seed=1, inputs='heldout')
  assert [p.level for p in ps] == [1] * 100 + [2] * 100
  for p in ps:
    assert p.prompt.endswith('=') and p.target.startswith(';')
    assert p.target.rsplit(';', 1)[1] == p.answer
    assert p.target.count('=') == p.level  # one step per call
    assert not p.prompt.count("''")
  gs = generate_trace(generic.GENERIC_FUNCTIONS, 1, 3, 300, seed=0, family='generic', max_chars=160)
  assert all(len(p.prompt) + len(p.target) <= 160 for p in gs)
  assert all(f.startswith('gen_') for p in gs for f in p.functions)
  with pytest.raises(ValueError, match='unknown paper functions'):
    generate_trace(['take'], 1, 1, 10)


def test_generic_family_is_disjoint_from_the_25():
  rng = random.Random(0)
  inputs = [
      ''.join(rng.choices('abcdefghijklmnopqrstuvwxyz', k=rng.randint(3, 10))) for _ in range(300)
  ]

  def variants(spec, params):
    if spec.kind == 'binary':
      return [lambda s, f=spec.fn: f(s, 'xyz'), lambda s, f=spec.fn: f('xyz', s)]
    if spec.kind == 'param':
      return [lambda s, f=spec.fn, p=p: f(s, p) for p in params]
    return [spec.fn]

  paper = []
  for spec in functions.FUNCTIONS.values():
    params = list(range(0, 6)) if spec.param == 'int' else ['-', '_', '|', 'ab', 'xyz']
    paper += variants(spec, params)
  paper += list(functions.BUILTINS.values()) + [lambda s: s]
  for spec in generic.GENERIC_FUNCTIONS.values():
    kind = generic.GENERIC_PARAMS.get(spec.name, (None, 0, 0))
    params = range(kind[1], kind[2] + 1) if kind[0] == 'int' else list('abcdefgh')
    for g in variants(spec, params):
      for f in paper:
        assert any(g(x) != f(x) for x in inputs), spec.name
