"""``GRPOConfig.reference = 'execute'``: the GRPO step computes the references on device with the
JAX interpreter (``compfn.tasks.strings.device_reference``) and scores against them.

* On the paper's 2,048-problem test set the computed references, after the fallback of the
  flagged rows, are byte-for-byte the stored ones (and the flagged rows, recomputed with wider
  buffers, are too: every reference of the test set is computed by the interpreter), and the
  device scorer gives every response
  (the reference answers, corrupted answers, wrong formats) the same reward under both modes.
* Overflow (a value beyond the interpreter's capacity, an input beyond its buffer, a program
  beyond the static tables, an output beyond the reference width) is flagged per example and
  the example is scored as the Python reference (``program.run_code`` + ``scoring.score``) scores
  it.
* A whole GRPO step runs through the public API (``pool_from_host`` + ``make_step``) on a tiny
  model with ``reference='execute'`` and gives exactly the stored-reference step's result.
"""

import dataclasses
import functools
import json
import time

import gin
import jax
import numpy as np
import pytest

from compfn import tokenizers
from compfn.data import sources
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.optim import OptimizerConfig, TrainState
from compfn.rl import grpo
from compfn.rl.rollout import DetokTables, RolloutBatch
from compfn.tasks import registry
from compfn.tasks.strings import generate, program, scoring
from compfn.tasks.strings import device_reference
from compfn.tasks.strings.device_reference import ExecuteSpec

TOK = tokenizers.CharTokenizer()
DETOK = DetokTables.from_tokenizer(TOK)


@functools.lru_cache(maxsize=None)
def _test_set():
  return generate(2, 'test', 1, 8, 2048)  # the paper's stage-2 test set (paper mode)


def _answer(ref: str) -> str:
  return 'so ```json\n' + json.dumps({'output': ref}, ensure_ascii=False) + '\n```'


def _wrong(ref: str, k: int) -> str:
  """Corrupted answers (k = 0, 1, 2: score 0) and one without an answer (k = 3: score -1)."""
  if k == 0:
    return _answer(ref + 'x')
  if k == 1:
    return _answer(ref[:-1] if ref else 'y')
  if k == 2:
    return _answer(ref.swapcase() if ref.swapcase() != ref else ref + ref)
  return '{"output": ' + json.dumps(ref) + '} but {"answer": 1}'  # the last object has none


ROWS, WIDTH = 4096, 512  # one compiled scorer shape for every test here


@functools.lru_cache(maxsize=None)
def _scorer():
  return jax.jit(registry.get('strings_json').device_score)


def _score(texts, ref, ref_len):
  """Device scores of ``texts`` against per-row references (UTF-8 bytes int32[n, <= WIDTH]),
  padded into the one [ROWS, WIDTH] shape: (score int32[n], acc int32[n])."""
  n = len(texts)
  assert n <= ROWS
  resp = np.zeros((ROWS, WIDTH), np.int32)
  resp_len = np.zeros((ROWS,), np.int32)
  for i, t in enumerate(texts):
    b = t.encode('utf-8')
    assert len(b) <= WIDTH, (i, len(b))
    resp[i, : len(b)] = np.frombuffer(b, np.uint8)
    resp_len[i] = len(b)
  ref = np.asarray(ref)
  assert ref.shape[1] <= WIDTH and (np.asarray(ref_len) <= ref.shape[1]).all()
  refs = np.zeros((ROWS, WIDTH), np.int32)
  refs[:n, : ref.shape[1]] = ref
  lens = np.zeros((ROWS,), np.int32)
  lens[:n] = ref_len
  sc, acc = jax.device_get(_scorer()(resp, resp_len, refs, lens, np.zeros((ROWS,), bool)))
  return sc[:n], acc[:n]


def test_execute_equals_stored_on_the_paper_test_set():
  problems = _test_set()
  cfg = grpo.GRPOConfig(
      task='strings_json', reference='execute', dynamic_sampling=False, batch_prompts=len(problems)
  )
  refs = [p.output for p in problems]
  width = 4096  # every stored reference of the test set fits (the longest has 2,676 bytes)
  prompts = [[1]] * len(problems)
  stored = grpo.pool_from_host(
      prompts, refs, dataclasses.replace(cfg, reference='stored'), 8, width
  )
  pool = grpo.pool_from_host(prompts, refs, cfg, 8, width, programs=grpo.programs_of(cfg, problems))
  assert isinstance(pool, grpo.ExecutePool) and isinstance(stored, RolloutBatch)
  resolved, flagged = jax.device_get(jax.jit(lambda p: grpo.resolve_references(p, cfg))(pool))
  # Capacity 512 (the default): the few programs with a longer value are flagged (and fall back
  # to the stored reference); every other row's reference is the interpreter's output.
  assert 0 < flagged.sum() < 40, flagged.sum()
  assert all(len(refs[i]) > 256 for i in np.flatnonzero(flagged))
  # The flagged rows, rerun with buffers as wide as the test set needs (capacity 4,096 code
  # points): nothing is flagged and the interpreter gives their stored references too. So all
  # 2,048 references of the test set are computed on device, byte for byte.
  rows = np.flatnonzero(flagged)
  wide = ExecuteSpec(capacity=4096)
  pairs = [device_reference.code_and_input(problems[i]) for i in rows]
  ref, ref_len, wide_flagged = jax.device_get(
      jax.jit(lambda b: device_reference.reference_bytes(b, wide, width))(
          device_reference.encode_programs(pairs, wide)
      )
  )
  assert not wide_flagged.any()
  np.testing.assert_array_equal(ref, np.asarray(stored.ref)[rows])
  np.testing.assert_array_equal(ref_len, np.asarray(stored.ref_len)[rows])
  # Computed (and, on the flagged rows, fallen back): exactly the stored references, byte for byte.
  np.testing.assert_array_equal(resolved.ref, stored.ref)
  np.testing.assert_array_equal(resolved.ref_len, stored.ref_len)

  # Per-response rewards through the device scorer, stored vs computed references: for every
  # problem whose answer fits the response buffer, its reference answer and one wrong response.
  rows = [i for i, r in enumerate(refs) if len(_answer(r).encode()) <= WIDTH]
  assert len(rows) > 2000
  texts = [t for i in rows for t in (_answer(refs[i]), _wrong(refs[i], i % 4))]
  got = {}
  for mode, b in (('stored', stored), ('execute', resolved)):
    ref = np.repeat(np.asarray(b.ref)[rows, :WIDTH], 2, axis=0)
    got[mode] = _score(texts, ref, np.repeat(np.asarray(b.ref_len)[rows], 2))
  np.testing.assert_array_equal(got['stored'][0], got['execute'][0])
  np.testing.assert_array_equal(got['stored'][1], got['execute'][1])
  sc = got['execute'][0].reshape(-1, 2)
  assert (sc[:, 0] == 1).all()
  np.testing.assert_array_equal(sc[:, 1], [-1 if i % 4 == 3 else 0 for i in rows])


# ------------------------------------------------------------------------------------------------
# Overflow: flagged, and scored as the Python reference scores it
# ------------------------------------------------------------------------------------------------

SMALL = ExecuteSpec(
    capacity=16,
    stack_depth=4,
    max_instructions=8,
    max_literals=2,
    literal_capacity=4,
    input_width=8,
)
OVERFLOW_CASES = [
    # (code, input, flagged at SMALL / ref width 24)
    ('def main_solution(x):\n    return func_2(x)', 'abc', False),  # fits
    ('def main_solution(x):\n    return func_1(x, 9)', 'ab', True),  # 18 > capacity 16
    ('def main_solution(x):\n    return func_2(x)', 'abcdefghijk', True),  # input > its buffer
    ("def main_solution(x):\n    return func_5(x, 'tool')", 'abcdefgh', False),  # 12 fits
    ("def main_solution(x):\n    return func_5(x, 'toolong')", 'ab', True),  # literal > 4
    ("def main_solution(x):\n    return (x + ('a' + ('b' + 'c')))", 'x', True),  # 3 literals
    (
        'def main_solution(x):\n    return func_2(func_2(func_2(func_2(func_2(func_2(func_2(func_2('
        'func_2(x)))))))))',
        'ab',
        True,
    ),  # 10 instructions > 8
    ('def main_solution(x):\n    return func_2(x)', '€€€€€€€€', False),  # 24 bytes: fits exactly
    ('def main_solution(x):\n    return (x + x)', '€€€€€', True),  # 30 bytes > ref width 24
    ('def main_solution(x):\n    return func_2(x)', 'a\u00e9', True),  # é: outside the domain
    ('not a program', 'ab', True),
]


def test_overflow_is_flagged_and_scored_as_the_python_reference():
  codes = [c for c, _, _ in OVERFLOW_CASES]
  inputs = [x for _, x, _ in OVERFLOW_CASES]
  want_flag = np.array([f for _, _, f in OVERFLOW_CASES])
  batch = device_reference.encode_programs(list(zip(codes, inputs)), SMALL)
  ref, ref_len, flagged = jax.device_get(
      jax.jit(lambda b: device_reference.reference_bytes(b, SMALL, 24))(batch)
  )
  np.testing.assert_array_equal(flagged, want_flag)
  for i in np.flatnonzero(~flagged):  # unflagged: exactly the Python reference
    assert bytes(ref[i, : ref_len[i]].astype(np.uint8)).decode() == program.run_code(
        codes[i], inputs[i]
    )

  # Through the GRPO pool: flagged rows fall back to the stored (Python) reference, so each
  # response scores exactly as scoring.score against program.run_code.
  python_refs = []
  for c, x in zip(codes, inputs):
    try:
      python_refs.append(program.run_code(c, x))
    except program.ProgramError:
      python_refs.append('')  # no program: the stored reference is whatever the record holds
  n = len(codes)
  cfg = grpo.GRPOConfig(
      task='strings_json', reference='execute', dynamic_sampling=False, batch_prompts=n
  )
  cfg = dataclasses.replace(cfg, execute=SMALL)
  pool = grpo.pool_from_host([[1]] * n, python_refs, cfg, 8, 32, programs=list(zip(codes, inputs)))
  resolved, flagged2 = jax.device_get(jax.jit(lambda p: grpo.resolve_references(p, cfg))(pool))
  # width 32 here (the pool's ref width), so the 30-byte output is no longer flagged
  np.testing.assert_array_equal(flagged2, want_flag & (np.arange(n) != 8))
  texts = [t for r in python_refs for t in (_answer(r), _answer(r + 'q'), 'no json')]
  sc, acc = _score(
      texts, np.repeat(resolved.ref, 3, axis=0), np.repeat(resolved.ref_len, 3, axis=0)
  )
  want = [scoring.score(t, python_refs[i // 3]) for i, t in enumerate(texts)]
  assert [(int(s), int(a)) for s, a in zip(sc, acc)] == want


def test_utf8_bytes_matches_python():
  strings = ['', 'abc', '«x»', '€→…', 'a' * 7]
  codes = np.zeros((len(strings), 8), np.int32)
  for i, s in enumerate(strings):
    codes[i, : len(s)] = [ord(c) for c in s]
  lens = np.array([len(s) for s in strings], np.int32)
  out, n, bad = jax.device_get(device_reference.utf8_bytes(codes, lens, 8))
  for i, s in enumerate(strings):
    b = s.encode()
    assert n[i] == len(b) and not bad[i]
    assert bytes(out[i, : min(len(b), 8)].astype(np.uint8)) == b[:8]


# ------------------------------------------------------------------------------------------------
# The GRPO step end-to-end, through the public API
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _model():
  cfg = ModelConfig(
      family='llama',
      vocab_size=TOK.vocab_size,
      d_model=32,
      num_layers=1,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      max_position_embeddings=128,
      tie_word_embeddings=True,
  )
  return cfg, jax.jit(transformer.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))


def _step_inputs(reference):
  gcfg = grpo.GRPOConfig(
      task='strings_trace',
      reference=reference,
      num_generations=4,
      batch_prompts=2,
      gen_prompts=4,
      max_rounds=2,
      max_new_tokens=8,
      execute=ExecuteSpec(capacity=16),  # some values are longer: flagged, stored fallback
  )
  recs = sources.trace_records('train', 1, 3, gcfg.pool_size + 8, seed=0)[: gcfg.pool_size]
  kw = {'programs': grpo.programs_of(gcfg, recs)} if reference == 'execute' else {}
  prompts = [TOK.encode(r['prompt']) for r in recs]
  pool = grpo.pool_from_host(prompts, [r['ref'] for r in recs], gcfg, 64, 64, TOK.pad_id, **kw)
  return gcfg, pool


def test_grpo_step_with_execute_equals_stored_references():
  """One compiled execute-mode step (``make_step`` + ``pool_from_host``) run twice: on the real
  pool, where the interpreter computes the references (capacity 16: the chains with a longer
  value are flagged and fall back), and on the same pool with every program marked unencodable,
  i.e. scored against the stored references alone. Same rng: the same samples, so equal
  references give the same rewards, metrics and update, bit for bit."""
  cfg, params = _model()
  gcfg, pool = _step_inputs('execute')
  scfg = gcfg.sampler_config(TOK.stop_ids, TOK.pad_id)
  tx = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0).make(10)
  step = jax.jit(grpo.make_step(cfg, tx, gcfg, scfg))
  everything_stored = pool.replace(
      programs=pool.programs.replace(unencodable=np.ones(gcfg.pool_size, bool))
  )
  out = {}
  for name, p in (('execute', pool), ('stored', everything_stored)):
    state = TrainState.create(params, tx, seed=3)
    t0 = time.perf_counter()
    out[name] = jax.device_get(step(state, p, DETOK))
    print(f'{name}: {time.perf_counter() - t0:.2f} s')
  (s_exec, m_exec), (s_stored, m_stored) = out['execute'], out['stored']
  assert 0.0 < float(m_exec.pop('reference_overflow_frac')) < 1.0
  assert float(m_stored.pop('reference_overflow_frac')) == 1.0
  assert m_stored.keys() == m_exec.keys()
  for k in m_stored:
    np.testing.assert_array_equal(m_stored[k], m_exec[k], err_msg=k)
  for a, b in zip(jax.tree.leaves(s_stored), jax.tree.leaves(s_exec)):
    np.testing.assert_array_equal(a, b)
  assert float(m_exec['generated_samples']) >= 16


def test_trace_references_computed_on_device():
  """The trace task's computed references (the prompt is the program) are its answers."""
  gcfg = grpo.GRPOConfig(
      task='strings_trace', reference='execute', dynamic_sampling=False, batch_prompts=256
  )
  recs = sources.trace_records('all', 1, 8, 256, seed=1)[:256]
  assert len(recs) == 256
  pool = grpo.pool_from_host(
      [[1]] * 256, [r['ref'] for r in recs], gcfg, 8, 512, programs=grpo.programs_of(gcfg, recs)
  )
  ref, ref_len, flagged = jax.device_get(
      jax.jit(lambda b: device_reference.reference_bytes(b, gcfg.execute, 512))(pool.programs)
  )
  assert not flagged.any()
  np.testing.assert_array_equal(ref, pool.batch.ref)
  np.testing.assert_array_equal(ref_len, pool.batch.ref_len)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


def test_config_and_pool_errors():
  with pytest.raises(ValueError, match='reference'):
    grpo.GRPOConfig(reference='computed')
  with pytest.raises(ValueError, match='strings_json, strings_trace'):
    grpo.GRPOConfig(task='countdown', reference='execute')
  with pytest.raises(ValueError, match='capacity'):
    ExecuteSpec(capacity=0)
  gcfg, _ = _step_inputs('execute')
  prompts, refs = [[1]] * gcfg.pool_size, ['a'] * gcfg.pool_size
  with pytest.raises(ValueError, match='needs programs'):
    grpo.pool_from_host(prompts, refs, gcfg, 8, 8)
  stored = dataclasses.replace(gcfg, reference='stored')
  with pytest.raises(ValueError, match="reference='stored'"):
    grpo.pool_from_host(prompts, refs, stored, 8, 8, programs=[('x', 'a')] * gcfg.pool_size)
  with pytest.raises(TypeError, match='ExecutePool'):
    grpo.resolve_references(grpo.pool_from_host(prompts, refs, stored, 8, 8), gcfg)
  with pytest.raises(ValueError, match="'code' and 'input'"):
    grpo.programs_of(dataclasses.replace(gcfg, task='strings_json'), [{'prompt': 'p', 'ref': 'r'}])
  assert registry.get('strings_json').computed_reference is not None
  assert registry.get('strings_trace').computed_reference is not None
  assert registry.get('countdown').computed_reference is None
  with pytest.raises(ValueError, match='paper family'):
    grpo.programs_of(gcfg, [{'prompt': "func_1('ab')=", 'family': 'generic'}])


def test_gin_knob():
  gin.clear_config()
  try:
    gin.parse_config(
        """
        GRPOConfig.task = 'strings_json'
        GRPOConfig.reference = 'execute'
        GRPOConfig.execute = @ExecuteSpec()
        ExecuteSpec.capacity = 256
        """
    )
    cfg = grpo.GRPOConfig()
    assert cfg.reference == 'execute' and cfg.execute == ExecuteSpec(capacity=256)
  finally:
    gin.clear_config()
  assert grpo.GRPOConfig().reference == 'stored'


# ------------------------------------------------------------------------------------------------
# Through the pipeline: gin -> rl_stage -> the step (and the compile report)
# ------------------------------------------------------------------------------------------------

RL_ONLY = """
include '{root}/gin/models/char_tiny.gin'
include '{root}/gin/hardware/cpu.gin'
char_model.d_model = 16
char_model.num_layers = 1
char_model.num_heads = 2
char_model.head_dim = 8
char_model.mlp_dim = 32
char_model.max_len = 160
run.job = @pipeline
pipeline.mesh_shape = (4, 2, 1)
pipeline.stages = [@r/rl_stage]
r/rl_stage.name = 'rl'
r/rl_stage.records = @r/trace_records()
r/trace_records.functions = 'train'
r/trace_records.min_level = 1
r/trace_records.max_level = 2
r/trace_records.num = 32
r/rl_stage.grpo = @GRPOConfig()
r/rl_stage.num_steps = 2
r/rl_stage.prompt_len = 48
GRPOConfig.task = 'strings_trace'
GRPOConfig.reference = 'execute'
GRPOConfig.num_generations = 4
GRPOConfig.batch_prompts = 2
GRPOConfig.gen_prompts = 4
GRPOConfig.max_rounds = 1
GRPOConfig.max_new_tokens = 96
"""


@pytest.mark.parametrize('compile_only', [False, True])
def test_rl_stage_runs_with_computed_references(tmp_path, capsys, compile_only):
  import pathlib

  from compfn import main

  root = pathlib.Path(__file__).resolve().parents[1]
  gin_file = tmp_path / 'rl.gin'
  gin_file.write_text(RL_ONLY.format(root=root))
  gin.clear_config()
  try:
    argv = [f'--gin_file={gin_file}', f'--workdir={tmp_path / "out"}']
    code = main.main(argv + (['--compile_only'] if compile_only else []), exit_codes=True)
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert code == 0, out
  if compile_only:
    report = json.loads((tmp_path / 'out' / 'compile_report.json').read_text())
    (prog,) = report['programs']
    assert prog['program'] == 'grpo_step' and prog['compiled'] and prog['fits']
    assert prog['shapes']['reference'] == 'execute'
    return
  assert 'references computed on device' in out
  rows = [
      json.loads(l) for l in (tmp_path / 'out' / 'rl' / 'metrics.jsonl').read_text().splitlines()
  ]
  steps = [r for r in rows if 'reference_overflow_frac' in r]
  assert len(steps) == 2, rows
  # capacity 512: no level-1/2 chain of the train functions overflows the interpreter
  assert all(r['reference_overflow_frac'] == 0.0 for r in steps)
