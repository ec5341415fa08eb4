#!/usr/bin/env python
"""Throughput benchmarks. Each compares compfn with a peer measured in the same run, writes JSON
and says what machine it ran on.

    python tools/benchmark.py verifier [--batch 1024] [--repeats 5] [--out bench/verifier.json]
    python tools/benchmark.py train [--out bench/train.json]
    python tools/benchmark.py rl-step [--out bench/rl_step.json]
    python tools/benchmark.py demo [--out bench/demo_steps.json]
    python tools/benchmark.py memory [--out bench/memory.json]
    python tools/benchmark.py all --out bench/ [--tiny] [--only verifier,sampler,...]

all: every benchmark below in one run (the sampler through tools/benchmark_sampler.py, each
configuration and each peer in a fresh process), one JSON per benchmark in --out plus
summary.json: rows {name, metric, compfn, peer, peer_value, ratio} (ratio > 1: compfn is faster
or meets the target), the machine, the load at the start and the f32 matmul peak measured in the
run; summary.json is rewritten after each benchmark (``partial`` until the end). Peers:
transformers 5.24 / torch 2.13 (this interpreter) and Tunix 0.1.7 (``--tunix_python``, a venv
built by tools/peers/setup_tunix.sh; skipped with a note when missing).

verifier: programs/s of the JAX interpreter vs the Python reference (compfn's `program.run`, the
same work as the paper's eval'd lambdas) on the paper's level 1–8 test programs, and responses/s
of the on-device scorer vs the Python reference scorer (the paper's rule) on synthetic responses
built as in spec/BASELINES.md §4. Device figures are steady state (compiled, inputs on device,
`block_until_ready`); the end-to-end host wrappers (parse, encode, pad, transfer) are reported too.

train / rl-step: see ``bench_train`` / ``bench_rl_step`` (tokens/s, MFU against the f32 matmul
peak measured in the same run, and Tunix 0.1.7 measured in its own venv in the same run via
tools/peers/tunix_grpo.py, one fresh process per config; ``--tunix_python ''`` skips the peer).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import time

import numpy as np

# Benchmark this checkout's compfn (not whichever one is pip-installed): tools/ is sys.path[0].
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# Before any JAX computation, so XLA's worker threads share the heap (compfn/host_allocator.py).
import compfn  # noqa: E402


def machine_info() -> dict:
  import jax

  cpu = ''
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  except OSError:
    pass
  return {
      'cpu': cpu or platform.processor(),
      'cores': os.cpu_count(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'platform': platform.platform(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'host_allocator': compfn.host_allocator.status(),
  }


def timeit(fn, repeats: int) -> float:
  """Median wall time of fn() over `repeats` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# verifier
# ------------------------------------------------------------------------------------------------

_WORDS = (
    'the function then we apply result string so next call value output trace step first '
    'second input character returns gives'
).split()


def synthetic_responses(problems, seed=0):
  """Responses as in BASELINES.md §4: an opener, 200–600 chars of filler (30% of sentences
  mention the program's functions), then 50% correct JSON, 40% a one-character-perturbed
  answer, 10% no JSON; 30% of JSON endings inside a ```json fence."""
  rng = random.Random(seed)
  out = []
  for p in problems:
    text = f'Let\'s trace main_solution("{p.input}") step by step. '
    target = rng.randint(200, 600)
    while len(text) < target:
      if rng.random() < 0.3 and p.functions:
        text += f'Applying {rng.choice(p.functions)} gives "{p.output[:8]}". '
      else:
        text += ' '.join(rng.choices(_WORDS, k=rng.randint(4, 10))) + '. '
    r = rng.random()
    if r < 0.9:
      ans = p.output
      if r >= 0.5:
        i = rng.randrange(len(ans) + 1)
        ans = ans[:i] + rng.choice('xyz') + ans[i + 1 :]
      js = json.dumps({'output': ans}, ensure_ascii=False)
      text += f'\n```json\n{js}\n```' if rng.random() < 0.3 else f'\nSo the answer is {js}'
    else:
      text += '\nI am not sure.'
    out.append(text)
  return out


def bench_verifier(batch: int, repeats: int) -> dict:
  import jax
  from compfn.tasks.strings import generate, program, scoring
  from compfn.tasks.strings import device_scoring, interpreter

  test = generate(2, 'test', 1, 8, 2048)
  per_level = batch // 8
  probs = [p for lv in range(1, 9) for p in [q for q in test if q.level == lv][:per_level]]
  codes = [p.code for p in probs]
  inputs = [p.input for p in probs]
  refs = [p.output for p in probs]
  res: dict = {'batch': len(probs)}

  # Programs: Python reference.
  nodes = [program.parse_code(c) for c in codes]
  t_parse_run = timeit(
      lambda: [program.run(program.parse_code(c), x) for c, x in zip(codes, inputs)], repeats
  )
  t_run = timeit(lambda: [program.run(n, x) for n, x in zip(nodes, inputs)], repeats)
  # Programs: device, end to end (parse + encode + run + decode) and steady state.
  outs = interpreter.execute_batch(codes, inputs, capacity=4096)
  assert outs == refs, 'device interpreter disagrees with the reference'
  t_e2e = timeit(lambda: interpreter.execute_batch(codes, inputs, capacity=4096), repeats)
  steady = interpreter.benchmark_fn(codes, inputs, capacity=4096)
  t_dev = timeit(steady, repeats)
  res['programs'] = {
      'python_parse_and_run_per_s': len(probs) / t_parse_run,
      'python_run_only_per_s': len(probs) / t_run,
      'device_steady_per_s': len(probs) / t_dev,
      'device_end_to_end_per_s': len(probs) / t_e2e,
      'ratio_device_steady_vs_python_run': t_run / t_dev,
      'ratio_device_end_to_end_vs_python_parse_and_run': t_parse_run / t_e2e,
  }

  # Responses.
  responses = synthetic_responses(probs)
  want = [scoring.score(r, ref) for r, ref in zip(responses, refs)]
  t_py = timeit(lambda: [scoring.score(r, ref) for r, ref in zip(responses, refs)], repeats)
  s, a = device_scoring.score_batch(responses, refs)
  assert [tuple(map(int, x)) for x in zip(s, a)] == want, 'device scorer disagrees'
  t_e2e_s = timeit(lambda: device_scoring.score_batch(responses, refs), repeats)
  steady_s = device_scoring.benchmark_fn(responses, refs)
  t_dev_s = timeit(steady_s, repeats)
  res['responses'] = {
      'mean_chars': statistics.mean(len(r) for r in responses),
      'score_counts': {k: sum(w[0] == k for w in want) for k in (1, 0, -1)},
      'python_reference_per_s': len(probs) / t_py,
      'device_steady_per_s': len(probs) / t_dev_s,
      'device_end_to_end_per_s': len(probs) / t_e2e_s,
      'ratio_device_steady_vs_python': t_py / t_dev_s,
      'ratio_device_end_to_end_vs_python': t_py / t_e2e_s,
  }
  del jax
  return res


# ------------------------------------------------------------------------------------------------
# train / rl-step
# ------------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TUNIX = '/opt/tunix-venv/bin/python'
# name -> compfn.stages.models.char_model kwargs (Llama: RoPE, SwiGLU, RMSNorm, tied embeddings,
# CharTokenizer vocabulary of 76, heads = kv heads).
MODELS = {
    'char': dict(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=352),
    'L4d256': dict(d_model=256, num_layers=4, num_heads=4, head_dim=64, mlp_dim=1024),
    'tiny': dict(d_model=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64),
}
FLOPS_NOTE = (
    'model FLOPs: forward = 2 x matmul params per token (all params but the norms; '
    'the tied embedding counts once, as the LM-head matmul) + attention 4 x L x '
    'heads x head_dim x (attended positions) per token (QK^T and AV, full square for '
    'training, the cache length for decode); backward = 2 x forward, so train = 3 x '
    'forward. The same formula is applied to both systems (work done, not what each '
    'implementation spends). MFU = model FLOP/s / the f32 matmul peak measured here.'
)


def _load() -> dict:
  one, five, fifteen = os.getloadavg()
  return {'load1': one, 'load5': five, 'load15': fifteen}


def matmul_peak(n: int = 2048, calls: int = 20) -> dict:
  """f32 matmul FLOP/s: jax.jit(a @ b) at n^3, median and best of `calls` blocked calls."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  ts = []
  for _ in range(calls):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    ts.append(time.perf_counter() - t)
  fl = 2.0 * n**3
  return {
      'n': n,
      'calls': calls,
      'median_flops': fl / statistics.median(ts),
      'best_flops': fl / min(ts),
  }


def _model_config(name: str):
  from compfn.stages.models import char_model

  return char_model(**MODELS[name])


def _counts(cfg, params) -> dict:
  import jax

  total = sum(int(x.size) for x in jax.tree.leaves(params))
  norms = sum(int(x.size) for x in jax.tree.leaves(params) if x.ndim == 1)
  return {'params': total, 'matmul_params': total - norms}


def _attn_flops(cfg, positions: float) -> float:
  """Forward attention FLOPs for one query attending `positions` keys (QK^T + AV)."""
  return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * positions


def _tunix_model(cfg) -> dict:
  return dict(
      num_layers=cfg.num_layers,
      vocab_size=cfg.vocab_size,
      embed_dim=cfg.d_model,
      hidden_dim=cfg.mlp_dim,
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      num_kv_heads=cfg.num_kv_heads,
      rope_theta=cfg.rope_theta,
      norm_eps=cfg.rms_norm_eps,
      weight_tying=True,
  )


def _opt_dict(opt) -> dict:
  return {
      'learning_rate': opt.learning_rate,
      'b1': opt.b1,
      'b2': opt.b2,
      'eps': opt.eps,
      'weight_decay': opt.weight_decay,
      'clip_norm': opt.clip_norm,
  }


def run_tunix(python: str, spec: dict, timeout: int = 900) -> dict:
  """Runs tools/peers/tunix_grpo.py in the peer's venv (a fresh process per config)."""
  import subprocess
  import tempfile

  if not python or not os.path.exists(python):
    return {'skipped': f'no Tunix interpreter at {python!r}'}
  with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
    json.dump(spec, f)
  env = {k: v for k, v in os.environ.items() if not k.startswith(('XLA_', 'JAX_'))}
  env['JAX_PLATFORMS'] = 'cpu'
  try:
    p = subprocess.run(
        [python, str(ROOT / 'tools' / 'peers' / 'tunix_grpo.py'), f.name],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
  finally:
    os.unlink(f.name)
  for line in p.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[7:])
  return {'error': f'tunix peer exited {p.returncode}', 'stderr_tail': p.stderr[-3000:]}


def _steady(fn, warmup: int, steps: int) -> tuple[float, list]:
  """fn() must block; median over `steps` calls after `warmup` calls (which compile)."""
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts), ts


def _header(kind: str, tunix_python: str) -> dict:
  from importlib.metadata import version

  m = machine_info()
  m['load_at_start'] = _load()
  vers = {'compfn_jax': m['jax'], 'flax': version('flax'), 'optax': version('optax')}
  return {'benchmark': kind, 'machine': m, 'versions': vers, 'flops_formula': FLOPS_NOTE}


def bench_train(models, steps: int, warmup: int, tunix_python: str, tiny: bool = False) -> dict:
  """SFT train step: compfn ``sft_grads`` + ``apply_gradients`` (AdamW + clip), jitted with
  the state donated (``compfn.train.compile_step``), on random token batches [B, L] with
  every position in the loss; vs Tunix ``PeftTrainer`` (default NLL loss) on the same llama
  dims and batch shape."""
  import jax
  from compfn import train
  from compfn.model import transformer
  from compfn.rl import sft

  out = _header('train', tunix_python)
  B, L = (4, 16) if tiny else (128, 128)
  if tiny:
    steps, warmup = 1, 1
  peak = matmul_peak(256 if tiny else 2048, 2 if tiny else 20)
  out['matmul_peak'] = peak
  opt = train.OptimizerConfig(learning_rate=1e-4, schedule='constant', warmup_ratio=0.0, b2=0.999)
  out['config'] = {
      'batch': B,
      'seq': L,
      'timed_steps': steps,
      'warmup_steps': warmup,
      'optimizer': dict(_opt_dict(opt), schedule='constant'),
      'data': 'uniform random token ids in [2, vocab), every position in the '
      'loss (compfn: L targets per row; Tunix: L-1, its default loss '
      'drops the last position)',
  }
  out['notes'] = [
      'compfn: every step is blocked on (block_until_ready) before the next; Tunix '
      'PeftTrainer keeps up to 2 steps in flight (its throttler), step time = interval '
      'between consecutive step starts, median over the steps after the warm-up ones '
      '(the last interval, which drains the pipeline, left out); steady_mean_step_s is the '
      'mean over the whole steady window',
      'Tunix default loss: L-1 target positions per row; compfn: L (same matmul work up to ' '1/L)',
      'the 2 cores are shared with other jobs: see machine.load_at_start / load_at_end and '
      'matmul_peak (a contended run shows a low peak); MFU is relative to the peak measured '
      'in the same run',
  ]
  rows = []
  out['results'] = {}
  for name in models:
    cfg = _model_config(name)
    params = transformer.init_params(cfg, jax.random.PRNGKey(0))
    cnt = _counts(cfg, params)
    tx = opt.make(1000)

    def step(state, batch, cfg=cfg, tx=tx):
      return sft.sft_step(cfg, tx, state, batch)

    fn = train.compile_step(step)
    rng = np.random.default_rng(0)
    toks = rng.integers(2, cfg.vocab_size, (B, L + 1)).astype(np.int32)
    batch = jax.device_put(
        sft.SFTBatch(
            inputs=toks[:, :-1],
            targets=toks[:, 1:],
            loss_mask=np.ones((B, L), np.float32),
            segment_ids=np.ones((B, L), np.int32),
        )
    )
    holder = {'s': train.TrainState.create(params, tx)}

    def call():
      holder['s'], m = fn(holder['s'], batch)
      jax.block_until_ready(m['loss'])

    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
    med, ts = _steady(call, max(warmup - 1, 0), steps)
    tokens = B * L
    flops = 3 * tokens * (2.0 * cnt['matmul_params'] + _attn_flops(cfg, L))
    comp = {
        'step_s': med,
        'steps_s': ts,
        'first_step_s': first,
        'tokens_per_s': tokens / med,
        'model_flops_per_step': flops,
        'mfu': flops / med / peak['median_flops'],
    }
    spec = {
        'mode': 'sft',
        'model': _tunix_model(cfg),
        'batch': B,
        'seq': L,
        'steps': warmup + steps,
        'warmup_steps': warmup,
        'optimizer': _opt_dict(opt),
    }
    tun = run_tunix(tunix_python, spec)
    if 'steady_step_s' in tun:
      tun['tokens_per_s'] = tokens / tun['steady_step_s']
      tun['mfu'] = flops / tun['steady_step_s'] / peak['median_flops']
    ratio = tun['steady_step_s'] / med if 'steady_step_s' in tun else None
    out['results'][name] = {
        'model': MODELS[name],
        'vocab': cfg.vocab_size,
        **cnt,
        'tokens_per_step': tokens,
        'compfn': comp,
        'tunix': tun,
        'tunix_s_over_compfn_s': ratio,
    }
    rows.append((name, cnt['params'], comp, tun, ratio))
  out['machine']['load_at_end'] = _load()
  tab = [
      f'SFT train step, batch {B} x seq {L}, f32, AdamW; f32 matmul peak '
      f'{peak["median_flops"] / 1e9:.0f} GFLOP/s (median of {peak["calls"]} '
      f'{peak["n"]}^3 calls); load {out["machine"]["load_at_start"]["load1"]:.2f}',
      '',
      '| model | params | compfn s/step | compfn tok/s | compfn MFU | Tunix s/step | '
      'Tunix tok/s | Tunix MFU | Tunix / compfn |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for name, n, c, tu, r in rows:
    ts_ = (
        f'{tu["steady_step_s"]:.3f} | {tu["tokens_per_s"]:,.0f} | {100 * tu["mfu"]:.1f} %'
        if 'steady_step_s' in tu
        else 'n/a | n/a | n/a'
    )
    tab.append(
        f'| {name} | {n:,} | {c["step_s"]:.3f} | {c["tokens_per_s"]:,.0f} | '
        f'{100 * c["mfu"]:.1f} % | {ts_} | ' + (f'{r:.2f}x |' if r else 'n/a |')
    )
  out['table_markdown'] = '\n'.join(tab)
  out['_table'] = out['table_markdown']
  return out


RL_NOTES = [
    'rewards differ but compute does not: compfn scores a response that reaches '
    'max_new_tokens without a stop token as overlong (-1, the paper rule), so with no stop ids '
    "every compfn reward is -1 and all advantages 0; Tunix's host reward (the trace rule, "
    'copied in tools/peers/tunix_grpo.py) does not see truncation and gives 0/-1 (+1 by '
    'chance). Shapes, and so FLOPs, are the same whatever the rewards',
    'Tunix prefills each of the G copies of a prompt (P*G*Lp prompt positions); compfn '
    'prefills each prompt once and shares the cache across its G samples. The model-FLOPs '
    'formula counts one prefill per prompt for both (useful work)',
    'Tunix keeps the rollout and the update as separate jitted programs with host work '
    '(detokenise, Python reward, advantages, weight sync, metrics) in between; compfn runs '
    'the whole step as one XLA program. Tunix step time = interval between consecutive '
    'global-step starts (median after the warm-up steps; the last step ends when train() '
    'returns); compfn blocks on every step',
    'split_s: the pieces are separate jitted calls on the same inputs (generate = '
    'sampling.sample, verify = score_samples, train = policy_grads + apply_gradients); their '
    'sum is not the fused step (the fused program fuses and schedules them together, and the '
    'pieces are timed at other moments on a shared machine)',
    'the 2 cores are shared with other jobs: see machine.load_at_start / load_at_end and '
    'matmul_peak (a contended run shows a low peak); MFU is relative to the peak measured in '
    'the same run',
]


def bench_rl_step(models, steps: int, warmup: int, tunix_python: str, tiny: bool = False) -> dict:
  """The fused GRPO step (``compfn.rl.grpo.grpo_step``, one XLA program, state donated)
  without dynamic sampling, and its pieces as separate jitted calls on the same inputs
  (generate = ``sampling.sample``, verify = ``rollout.score_samples``, train =
  ``grpo.policy_grads`` + ``apply_gradients``); vs Tunix 0.1.7 ``GRPOLearner``."""
  import jax
  from compfn import sampling, tokenizers, train
  from compfn.data import sources
  from compfn.model import transformer
  from compfn.rl import grpo
  from compfn.rl.rollout import DetokTables, score_samples

  out = _header('rl-step', tunix_python)
  tok = tokenizers.CharTokenizer()
  P, G, N = (2, 2, 8) if tiny else (8, 8, 64)
  if tiny:
    steps, warmup = 1, 1
  peak = matmul_peak(256 if tiny else 2048, 2 if tiny else 20)
  out['matmul_peak'] = peak
  n_steps = warmup + steps
  recs = sources.trace_records('train', 2, 2, P * (n_steps + 1), seed=0)
  prompts = [r['prompt'] for r in recs]
  refs = [r['ref'] for r in recs]
  Lp = sampling.bucket_length(max(len(tok.encode(p)) for p in prompts))
  Lr = sampling.bucket_length(max(len(r.encode()) for r in refs))
  gcfg = grpo.GRPOConfig(
      num_generations=G,
      batch_prompts=P,
      gen_prompts=P,
      max_rounds=1,
      dynamic_sampling=False,
      max_new_tokens=N,
      task='strings_trace',
  )
  # No stop ids: every row generates exactly N tokens (random weights), as Tunix below.
  scfg = gcfg.sampler_config((), tok.pad_id)
  detok = DetokTables.from_tokenizer(tok)
  opt = train.OptimizerConfig(learning_rate=1e-4, schedule='constant', warmup_ratio=0.0, b2=0.999)
  out['config'] = {
      'prompts_per_step': P,
      'num_generations': G,
      'sequences_per_step': P * G,
      'max_new_tokens': N,
      'prompt_pad': Lp,
      'ref_pad': Lr,
      'task': 'strings_trace',
      'prompts': "compfn.data.sources.trace_records('train', 2, 2, n, seed=0); "
      'each step a new slice of P prompts (both systems, same order)',
      'tokenizer': 'CharTokenizer (no BOS)',
      'temperature': 1.0,
      'top_p': 1.0,
      'top_k': 0,
      'dynamic_sampling': False,
      'kl': 0.0,
      'loss_agg': 'token-mean',
      'on_policy': True,
      'optimizer': dict(_opt_dict(opt), schedule='constant'),
      'timed_steps': steps,
      'warmup_steps': warmup,
      'fixed_lengths': 'random weights; compfn samples with no stop ids and Tunix with an EOS '
      'id outside the vocabulary, so every row of both generates exactly '
      'max_new_tokens tokens (both still sample PAD=0 now and then: same '
      'compute, slightly fewer loss tokens in Tunix, which masks them)',
  }
  out['notes'] = RL_NOTES
  rows = []
  out['results'] = {}
  for name in models:
    cfg = _model_config(name)
    params = transformer.init_params(cfg, jax.random.PRNGKey(0))
    cnt = _counts(cfg, params)
    tx = opt.make(1000)
    pools = [
        jax.device_put(
            grpo.pool_from_host(
                [tok.encode(p) for p in prompts[i * P : (i + 1) * P]],
                refs[i * P : (i + 1) * P],
                gcfg,
                Lp,
                Lr,
                tok.pad_id,
            )
        )
        for i in range(n_steps + 1)
    ]
    fused = train.compile_step(
        lambda s, p, cfg=cfg, tx=tx: grpo.grpo_step(cfg, tx, gcfg, scfg, s, p, detok)
    )
    holder = {'s': train.TrainState.create(params, tx), 'i': 0}

    def call_fused():
      holder['s'], m = fused(holder['s'], pools[holder['i'] % len(pools)])
      holder['i'] += 1
      jax.block_until_ready(m['loss'])
      return m

    t = time.perf_counter()
    m0 = call_fused()
    first = time.perf_counter() - t
    med, ts = _steady(call_fused, max(warmup - 1, 0), steps)
    gen_tokens = float(m0['generated_tokens'])
    assert gen_tokens == P * G * N, (gen_tokens, P * G * N)
    # Pieces, on pool 0 with the current params.
    prm = holder['s'].params
    pool = pools[0]
    key = jax.random.PRNGKey(1)
    samples = sampling.sample(cfg, prm, pool.prompts, pool.prompt_lens, key, scfg)
    t_gen, _ = _steady(
        lambda: jax.block_until_ready(
            sampling.sample(cfg, prm, pool.prompts, pool.prompt_lens, key, scfg).tokens
        ),
        warmup,
        steps,
    )
    ver = jax.jit(lambda s, b: score_samples(s, b, detok, scfg, 'strings_trace'))
    t_ver, _ = _steady(lambda: jax.block_until_ready(ver(samples, pool).reward), warmup, steps)
    ro = ver(samples, pool)  # the kept-group buffer of these samples (no extra compile)
    grp = lambda x: x.reshape((P, G) + x.shape[1:])  # noqa: E731
    buf = grpo.Buffer(
        prompts=pool.prompts,
        prompt_lens=pool.prompt_lens,
        tokens=grp(ro.tokens),
        mask=grp(ro.mask),
        logprobs=grp(ro.logprobs),
        advantage=grp(ro.advantage),
        reward=grp(ro.reward),
        filled=jax.numpy.asarray(P, jax.numpy.int32),
    )

    def tstep(state, b, cfg=cfg, tx=tx):
      g, loss, aux = grpo.policy_grads(cfg, state.params, b, gcfg, scfg)
      state, u = train.apply_gradients(state, g, tx, loss)
      return state, loss

    tfn = train.compile_step(tstep)
    th = {'s': train.TrainState.create(prm, tx)}

    def call_train():
      th['s'], loss = tfn(th['s'], buf)
      jax.block_until_ready(loss)

    t_tr, _ = _steady(call_train, warmup, steps)
    seq = Lp + N
    rows_ = P * G
    f_gen = P * Lp * (2.0 * cnt['matmul_params'] + _attn_flops(cfg, Lp / 2)) + rows_ * N * (
        2.0 * cnt['matmul_params'] + _attn_flops(cfg, Lp + N / 2)
    )
    f_train = 3 * rows_ * seq * (2.0 * cnt['matmul_params'] + _attn_flops(cfg, seq))
    flops = f_gen + f_train
    pk = peak['median_flops']
    comp = {
        'step_s': med,
        'steps_s': ts,
        'first_step_s': first,
        'generated_tokens_per_s': rows_ * N / med,
        'trained_tokens_per_s': rows_ * N / med,
        'trained_positions_per_s': rows_ * seq / med,
        'mfu': flops / med / pk,
        'split_s': {
            'generate': t_gen,
            'verify': t_ver,
            'train': t_tr,
            'sum_of_pieces': t_gen + t_ver + t_tr,
            'fused_step': med,
        },
        'split_frac_of_pieces': {
            k: v / (t_gen + t_ver + t_tr)
            for k, v in (('generate', t_gen), ('verify', t_ver), ('train', t_tr))
        },
        'generate_mfu': f_gen / t_gen / pk,
        'train_mfu': f_train / t_tr / pk,
        'mean_reward_first_step': float(m0['reward']),
    }
    spec = {
        'mode': 'grpo',
        'chars': tok.chars,
        'model': _tunix_model(cfg),
        'prompts': prompts,
        'refs': refs,
        'batch_prompts': P,
        'num_generations': G,
        'max_new_tokens': N,
        'prompt_len': Lp,
        'steps': n_steps,
        'warmup_steps': warmup,
        'optimizer': _opt_dict(opt),
    }
    tun = run_tunix(tunix_python, spec)
    if 'steady_step_s' in tun:
      s_ = tun['steady_step_s']
      tun.update(
          generated_tokens_per_s=rows_ * N / s_,
          trained_positions_per_s=rows_ * seq / s_,
          mfu=flops / s_ / pk,
      )
    ratio = tun['steady_step_s'] / med if 'steady_step_s' in tun else None
    out['results'][name] = {
        'model': MODELS[name],
        'vocab': cfg.vocab_size,
        **cnt,
        'generated_tokens_per_step': rows_ * N,
        'trained_positions_per_step': rows_ * seq,
        'model_flops_per_step': {'generate': f_gen, 'train': f_train},
        'compfn': comp,
        'tunix': tun,
        'tunix_s_over_compfn_s': ratio,
    }
    rows.append((name, cnt['params'], comp, tun, ratio))
  out['machine']['load_at_end'] = _load()
  tab = [
      f'GRPO step, {P} prompts x G={G}, {N} new tokens (fixed), prompt pad {Lp}, f32; '
      f'f32 matmul peak {peak["median_flops"] / 1e9:.0f} GFLOP/s; load '
      f'{out["machine"]["load_at_start"]["load1"]:.2f}',
      '',
      '| model | params | compfn s/step | gen tok/s | MFU | generate / verify / train s '
      '(separate calls) | Tunix s/step | Tunix gen tok/s | Tunix rollout / update s | '
      'Tunix / compfn |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for name, n, c, tu, r in rows:
    sp = c['split_s']
    ts_ = (
        f'{tu["steady_step_s"]:.3f} | {tu["generated_tokens_per_s"]:,.0f} | '
        f'{tu.get("rollout_s") or float("nan"):.3f} / {tu.get("update_s") or float("nan"):.3f}'
        if 'steady_step_s' in tu
        else 'n/a | n/a | n/a'
    )
    tab.append(
        f'| {name} | {n:,} | {c["step_s"]:.3f} | {c["generated_tokens_per_s"]:,.0f} | '
        f'{100 * c["mfu"]:.1f} % | {sp["generate"]:.3f} / {sp["verify"]:.4f} / '
        f'{sp["train"]:.3f} | {ts_} | ' + (f'{r:.2f}x |' if r else 'n/a |')
    )
  out['table_markdown'] = '\n'.join(tab)
  out['_table'] = out['table_markdown']
  return out


# ------------------------------------------------------------------------------------------------
# demo: the char model's GRPO and packed SFT steps at the CPU demo's shapes (compfn only)
# ------------------------------------------------------------------------------------------------


def bench_demo(steps: int, warmup: int, tiny: bool = False) -> dict:
  """The steps the 15-minute CPU demo (gin/demo.gin) is bound by, at its shapes, random weights:
  the fused GRPO step (16 prompts x G=8, up to 2 dynamic-sampling rounds of 16 prompts, 128 new
  tokens, stop at EOS, trace-steps reward, L2 trace prompts) and the packed SFT step (128
  examples of L1-L2 trace records packed into rows of 112). No peer: this is compfn's own
  before/after yardstick (run it on two commits)."""
  import jax
  from compfn import sampling, tokenizers, train
  from compfn.data import sources
  from compfn.model import transformer
  from compfn.rl import grpo, sft
  from compfn.rl.rollout import DetokTables

  out = _header('demo', '')
  tok = tokenizers.CharTokenizer()
  cfg = _model_config('char')
  P, G, N, R = (2, 2, 8, 2) if tiny else (16, 8, 128, 2)
  micro = 1 if tiny else 4
  if tiny:
    steps, warmup = 1, 1
  recs = list(sources.trace_records('train', 2, 2, 400, seed=0, max_chars=200, drop_shortcuts=True))
  prompts = [tok.encode(r['prompt']) for r in recs]
  Lp = sampling.bucket_length(max(len(x) for x in prompts))
  Lr = sampling.bucket_length(max(len(r['target'].encode()) for r in recs))
  res = {}
  for mb in sorted({1, micro}):
    gcfg = grpo.GRPOConfig(
        num_generations=G,
        batch_prompts=P,
        gen_prompts=P,
        max_rounds=R,
        max_new_tokens=N,
        task='strings_trace_steps',
        micro_batches=mb,
    )
    scfg = gcfg.sampler_config(tok.stop_ids, tok.pad_id)
    detok = jax.device_put(DetokTables.from_tokenizer(tok))
    tx = train.OptimizerConfig(learning_rate=3e-5, schedule='constant', warmup_ratio=0.0).make(100)
    per = gcfg.pool_size
    pools = [
        jax.device_put(
            grpo.pool_from_host(
                prompts[i * per : (i + 1) * per],
                [r['target'] for r in recs[i * per : (i + 1) * per]],
                gcfg,
                Lp,
                Lr,
                tok.pad_id,
            )
        )
        for i in range(len(recs) // per)
    ]
    fn = train.compile_step(
        lambda s, p, d, cfg=cfg, tx=tx, gcfg=gcfg, scfg=scfg: grpo.grpo_step(
            cfg, tx, gcfg, scfg, s, p, d
        )
    )
    holder = {'s': train.TrainState.create(transformer.init_params(cfg, jax.random.PRNGKey(0)), tx)}
    holder['i'], metrics = 0, []

    def call():
      holder['s'], m = fn(holder['s'], pools[holder['i'] % len(pools)], detok)
      holder['i'] += 1
      m = jax.device_get(m)
      metrics.append({k: float(m[k]) for k in ('rounds_used', 'generated_tokens', 'filled')})

    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
    med, ts = _steady(call, max(warmup - 1, 0), steps)
    gen = statistics.mean(m['generated_tokens'] for m in metrics[warmup:])
    res[f'grpo_step_micro_batches_{mb}'] = {
        'step_s': med,
        'steps_s': ts,
        'first_step_s': first,
        'generated_tokens_per_s': gen / med,
        'mean_generated_tokens': gen,
        'mean_rounds': statistics.mean(m['rounds_used'] for m in metrics[warmup:]),
        'mean_filled': statistics.mean(m['filled'] for m in metrics[warmup:]),
    }
  # Packed SFT at the demo's stage-0 shape.
  B, L = (8, 112) if tiny else (128, 112)
  srecs = list(sources.trace_records('train', 1, 2, 4 * B, seed=1, max_chars=L))
  ex = [(tok.encode(r['prompt']), tok.encode(r['target'])) for r in srecs]
  ex = [e for e in ex if len(e[0]) + len(e[1]) <= L]
  batches = [sft.pack_batch(ex[i * B : (i + 1) * B], L, tok.eos_id, tok.pad_id) for i in range(2)]
  rows = max(b.inputs.shape[0] for b in batches)
  batches = [
      jax.device_put(sft.pack_batch(ex[i * B : (i + 1) * B], L, tok.eos_id, tok.pad_id, rows))
      for i in range(2)
  ]
  tx = train.OptimizerConfig(learning_rate=2e-3).make(1000)
  fn = train.compile_step(lambda s, b: sft.sft_step(cfg, tx, s, b))
  holder = {'s': train.TrainState.create(transformer.init_params(cfg, jax.random.PRNGKey(0)), tx)}
  holder['i'] = 0

  def call_sft():
    holder['s'], m = fn(holder['s'], batches[holder['i'] % 2])
    holder['i'] += 1
    jax.block_until_ready(m['loss'])

  call_sft()
  med, ts = _steady(call_sft, max(warmup - 1, 0), steps)
  real = float(np.mean([np.asarray(b.segment_ids > 0).sum() for b in batches]))
  cnt = _counts(cfg, holder['s'].params)
  flops = 3 * real * 2.0 * cnt['matmul_params'] + 3 * rows * L * _attn_flops(cfg, L)
  peak = matmul_peak(256 if tiny else 2048, 2 if tiny else 20)
  res['sft_step_packed'] = {
      'examples': B,
      'rows': rows,
      'seq': L,
      'real_tokens': real,
      'step_s': med,
      'steps_s': ts,
      'real_tokens_per_s': real / med,
      'model_flops_per_step': flops,
      'mfu': flops / med / peak['median_flops'],
  }
  out['matmul_peak'] = peak
  out['config'] = {
      'grpo': dict(
          prompts=P, G=G, new_tokens=N, rounds=R, prompt_pad=Lp, task='strings_trace_steps'
      ),
      'sft': dict(examples=B, seq=L),
  }
  out['results'] = res
  out['machine']['load_at_end'] = _load()
  return out


# ------------------------------------------------------------------------------------------------
# memory: the GRPO train half of Llama-3.1-8B at 8,192 new tokens, compiled (not run) on CPU
# ------------------------------------------------------------------------------------------------


def bench_memory(tiny: bool = False, rows: int = 2, prompt_len: int = 1024, new_tokens: int = 8192):
  """``compiled.memory_analysis()`` of ``grpo.policy_grads`` + AdamW for Llama-3.1-8B-Instruct
  (abstract params: nothing is allocated or run) on ``rows`` sequences of ``prompt_len`` +
  ``new_tokens`` tokens, and the largest f32 buffers of the compiled program: no buffer holds
  [rows, tokens, vocab] logits (the LM head runs in chunks of response positions)."""
  import re

  import jax
  import jax.numpy as jnp
  from compfn import model as model_lib
  from compfn import train
  from compfn.model import transformer
  from compfn.rl import grpo

  out = _header('memory', '')
  if tiny:
    cfg = model_lib.tiny('llama', vocab_size=4096)
    rows, prompt_len, new_tokens = 2, 16, 64
  else:
    cfg = model_lib.PRESETS['llama3_1_8b_instruct']
  cfg = dataclasses_replace(cfg, remat='full')
  gcfg = grpo.GRPOConfig(
      num_generations=rows,
      batch_prompts=1,
      gen_prompts=1,
      max_rounds=1,
      max_new_tokens=new_tokens,
      task='strings_json',
  )
  params = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.PRNGKey(0)))
  tx = train.OptimizerConfig(learning_rate=1e-6, schedule='constant', warmup_ratio=0.0).make(10)
  state = jax.eval_shape(lambda p: train.TrainState.create(p, tx), params)
  sds = jax.ShapeDtypeStruct
  buf = grpo.Buffer(
      prompts=sds((1, prompt_len), jnp.int32),
      prompt_lens=sds((1,), jnp.int32),
      tokens=sds((1, rows, new_tokens), jnp.int32),
      mask=sds((1, rows, new_tokens), jnp.bool_),
      logprobs=sds((1, rows, new_tokens), jnp.float32),
      advantage=sds((1, rows), jnp.float32),
      reward=sds((1, rows), jnp.float32),
      filled=sds((), jnp.int32),
  )

  def step(state, buf):
    g, loss, aux = grpo.policy_grads(cfg, state.params, buf, gcfg)
    return train.apply_gradients(state, g, tx, loss)

  t = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, buf).compile()
  secs = time.perf_counter() - t
  ma = compiled.memory_analysis()
  txt = compiled.as_text()
  tokens = prompt_len + new_tokens
  sizes = []
  for m in re.finditer(r'f32\[([\d,]+)\]', txt):
    dims = [int(x) for x in m.group(1).split(',')]
    sizes.append((int(np.prod(dims)) * 4, dims))
  sizes = sorted({(b, tuple(d)) for b, d in sizes}, reverse=True)[:8]
  full_logits = [
      list(d) for _, d in sizes if cfg.vocab_size in d and any(x >= new_tokens for x in d)
  ]
  logits_bytes = rows * tokens * cfg.vocab_size * 4
  out['config'] = {
      'model': 'tiny llama (smoke)' if tiny else 'llama3_1_8b_instruct (f32 params, remat full)',
      'vocab': cfg.vocab_size,
      'rows': rows,
      'prompt_len': prompt_len,
      'new_tokens': new_tokens,
      'program': 'grpo.policy_grads + AdamW (the train half of grpo_step), one CPU device',
  }
  out['results'] = {
      'compile_s': secs,
      'temp_bytes': ma.temp_size_in_bytes,
      'argument_bytes': ma.argument_size_in_bytes,
      'output_bytes': ma.output_size_in_bytes,
      'alias_bytes': ma.alias_size_in_bytes,
      'full_logits_tensor_bytes': logits_bytes,
      'largest_f32_buffers': [{'bytes': b, 'shape': list(d)} for b, d in sizes],
      'buffers_with_tokens_x_vocab': full_logits,
      'no_rows_T_V_logits': not full_logits,
  }
  return out


def dataclasses_replace(obj, **kw):
  import dataclasses

  return dataclasses.replace(obj, **kw)


# ------------------------------------------------------------------------------------------------
# all: every benchmark in one run, one JSON each plus bench/summary.json
# ------------------------------------------------------------------------------------------------

SUMMARY_KEYS = ('name', 'metric', 'compfn', 'peer', 'peer_value', 'ratio', 'target', 'meets_target')
# Issue 11's bounds, as bounds on ``ratio``: compfn at least 1.3x its peer (decode on SmolLM2-135M,
# the SFT and GRPO steps vs Tunix), MFU at least 40% of the measured peak on the 4.2M model,
# the verifier at most 2% of the rollout (ratio = 0.02 / share >= 1). Rows with no target
# (the tiny sampler model, the verifier vs Python, the char model's MFU, the demo's steps) are
# reported, not judged: target and meets_target are None.
SPEED_TARGET = 1.3


def _row(name, metric, compfn, peer, peer_value, ratio, target=None, meets=None):
  """One summary row; ``meets_target`` is ``ratio >= target`` unless given (a bound that is
  not a ratio, e.g. the memory benchmark's "no [rows, T, V] buffer")."""
  if meets is None and target is not None and ratio is not None:
    meets = bool(ratio >= target)
  return dict(zip(SUMMARY_KEYS, (name, metric, compfn, peer, peer_value, ratio, target, meets)))


def summary_rows(kind: str, res: dict) -> list:
  """Rows of bench/summary.json for one benchmark's JSON (ratio > 1: compfn is faster, or meets
  the target)."""
  rows = []
  if 'error' in res:
    return [_row(kind, 'error', None, None, None, None)]
  if kind == 'verifier':
    r = res['result']
    rows.append(
        _row(
            'verifier programs (run only)',
            'programs/s',
            r['programs']['device_steady_per_s'],
            'python reference',
            r['programs']['python_run_only_per_s'],
            r['programs']['ratio_device_steady_vs_python_run'],
        )
    )
    rows.append(
        _row(
            'verifier responses (reward rule)',
            'responses/s',
            r['responses']['device_steady_per_s'],
            'python reference',
            r['responses']['python_reference_per_s'],
            r['responses']['ratio_device_steady_vs_python'],
        )
    )
  elif kind == 'sampler':
    for c in res.get('configs', []):
      comp = c['results'].get('compfn') or {}
      for peer in ('transformers', 'tunix'):
        pr = c['results'].get(peer) or {}
        for metric, key in (('decode tok/s', 'decode_tok_s'), ('end-to-end tok/s', 'e2e_tok_s')):
          if key in comp and key in pr:
            rows.append(
                _row(
                    f'sampler {c["model"]} B={c["batch"]}',
                    metric,
                    comp[key],
                    peer,
                    pr[key],
                    comp[key] / pr[key],
                    SPEED_TARGET if c['model'] == 'smollm2' else None,
                )
            )
    v = res.get('verifier_share') or {}
    if 'verifier_share_profiled' in v or 'verifier_share_fused' in v:
      # The verifier's ops inside the traced fused program, or the verifier jitted alone,
      # whichever is larger. The fused-minus-sample difference of two whole calls is in the
      # JSON with the calls' spread; it is noise at this size (benchmark_sampler._verifier_worker).
      # A JSON from before the profiled measure judges the difference, as it was measured.
      profiled = 'verifier_share_profiled' in v
      inside = v['verifier_share_profiled' if profiled else 'verifier_share_fused']
      share = max(inside, v['verifier_share_separate'])
      rows.append(
          _row(
              f'verifier share of the fused rollout ({v["model"]} B={v["batch"]})',
              'fraction (max of '
              + ('profiled verifier ops in the fused call' if profiled else 'fused difference')
              + ', separate timing)',
              share,
              'target (at most)',
              0.02,
              0.02 / max(share, 1e-9),
              1.0,
          )
      )
  elif kind in ('train', 'rl_step'):
    for name, r in res.get('results', {}).items():
      comp, tun = r['compfn'], r['tunix']
      what = 'SFT step' if kind == 'train' else 'GRPO step'
      if 'steady_step_s' in tun:
        rows.append(
            _row(
                f'{what} {name} ({r["params"]:,} params)',
                's/step',
                comp['step_s'],
                'tunix',
                tun['steady_step_s'],
                tun['steady_step_s'] / comp['step_s'],
                SPEED_TARGET,
            )
        )
      if kind == 'train':
        judged = name == 'L4d256'  # the MFU bound is on the 4.2M model
        rows.append(
            _row(
                f'SFT step MFU {name}',
                'fraction of the measured f32 peak',
                comp['mfu'],
                'target (at least)' if judged else 'reported (no target)',
                0.40 if judged else None,
                comp['mfu'] / 0.40 if judged else None,
                1.0 if judged else None,
            )
        )
      else:
        sp = comp['split_s']
        share = sp['verify'] / (sp['generate'] + sp['verify'])
        rows.append(
            _row(
                f'verifier share of the rollout, GRPO step {name}',
                'fraction (verify / (generate + verify), separate calls)',
                share,
                'target (at most)',
                0.02,
                0.02 / max(share, 1e-9),
                1.0,
            )
        )
  elif kind == 'demo':
    for name, r in res.get('results', {}).items():
      rows.append(_row(f'demo {name}', 's/step', r['step_s'], None, None, None))
  elif kind == 'memory':
    r = res['results']
    rows.append(
        _row(
            f'GRPO train half, {res["config"]["model"]}, {res["config"]["new_tokens"]:,} new '
            'tokens: compiled temp memory',
            'bytes (no [rows, T, V] logits buffer: '
            + ('true' if r['no_rows_T_V_logits'] else 'FALSE')
            + ')',
            r['temp_bytes'],
            'one [rows, T, V] f32 logits tensor',
            r['full_logits_tensor_bytes'],
            None,
            None,
            bool(r['no_rows_T_V_logits']),
        )
    )
  return rows


def bench_all(
    out_dir: str, tunix_python: str, tiny: bool = False, only=None, cache_dir: str = ''
) -> dict:
  """Every benchmark, one after the other, each JSON written as soon as it is done and
  ``summary.json`` rewritten after each (``partial`` until the end)."""
  import subprocess

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  summary = {
      'benchmark': 'all',
      'machine': machine_info(),
      'load_at_start': _load(),
      'tiny': tiny,
      'command': 'python tools/benchmark.py all --out '
      + str(out_dir)
      + (' --tiny' if tiny else ''),
      'rows': [],
      'benchmarks': {},
      'partial': True,
  }
  summary['matmul_peak'] = matmul_peak(256 if tiny else 2048, 2 if tiny else 20)
  tunix_ok = bool(tunix_python) and os.path.exists(tunix_python)
  sampler_args = [
      '--tunix_python',
      tunix_python if tunix_ok else '/nonexistent',
      '--systems',
      'compfn,transformers' + (',tunix' if tunix_ok else ''),
  ]
  if cache_dir:
    sampler_args += ['--cache_dir', cache_dir]
  if tiny:  # the tiny model, B=2, 8 new tokens, compfn + transformers (+ tunix when present)
    sampler_args += ['--quick', '--batches', '2', '--greedy_tokens', '0', '--verifier_batch', '2']
  else:
    sampler_args += ['--models', 'smollm2,tiny', '--batches', '1,16,64']

  def sampler():
    cmd = [
        sys.executable,
        str(ROOT / 'tools' / 'benchmark_sampler.py'),
        '--out',
        str(out / 'sampler.json'),
    ]
    p = subprocess.run(cmd + sampler_args, cwd=str(ROOT))
    if p.returncode:
      return {'error': f'benchmark_sampler.py exited {p.returncode}'}
    return json.loads((out / 'sampler.json').read_text())

  models = ['tiny'] if tiny else ['char', 'L4d256']
  steps = [
      (
          'verifier',
          lambda: {
              'benchmark': 'verifier',
              'machine': machine_info(),
              'result': bench_verifier(64 if tiny else 1024, 1 if tiny else 5),
          },
      ),
      ('train', lambda: bench_train(models, 10, 3, tunix_python, tiny)),
      ('rl_step', lambda: bench_rl_step(models, 8, 3, tunix_python, tiny)),
      ('demo', lambda: bench_demo(6, 2, tiny)),
      ('memory', lambda: bench_memory(tiny)),
      ('sampler', sampler),  # the longest (SmolLM2 at B=64 in three systems): last
  ]
  for name, fn in steps:
    if only and name not in only:
      continue
    t = time.perf_counter()
    print(
        f'[all {t - t0:7.1f}s] {name} ... (load {os.getloadavg()[0]:.2f})',
        file=sys.stderr,
        flush=True,
    )
    try:
      res = fn()
    except Exception as e:  # one failed benchmark must not lose the others
      import traceback

      res = {'error': repr(e), 'traceback': traceback.format_exc()[-3000:]}
    res.pop('_table', None)
    res['wall_s'] = time.perf_counter() - t
    if name != 'sampler' or 'error' in res:
      (out / f'{name}.json').write_text(json.dumps(res, indent=1))
    rows = summary_rows(name, res)
    summary['rows'] += rows
    summary['benchmarks'][name] = {
        'file': f'{name}.json',
        'wall_s': res['wall_s'],
        'load_at_start': (res.get('machine') or {}).get('load_at_start'),
        'error': res.get('error'),
    }
    summary['wall_s'] = time.perf_counter() - t0
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    for r in rows:
      rat = f'{r["ratio"]:.2f}x' if r['ratio'] else '-'
      print(
          f'  {r["name"]} | {r["metric"]} | compfn {r["compfn"]} | {r["peer"]} {r["peer_value"]} | {rat}',
          file=sys.stderr,
          flush=True,
      )
  summary['partial'] = False
  summary['load_at_end'] = _load()
  summary['wall_s'] = time.perf_counter() - t0
  _write_summary(out, summary)
  return summary


def summary_markdown(summary: dict) -> str:
  lines = [
      f'Machine: {summary["machine"]["cpu"]}, {summary["machine"]["cores"]} cores, jax '
      f'{summary["machine"]["jax"]}; load at start {summary["load_at_start"]["load1"]:.2f}; f32 '
      f'matmul peak {summary["matmul_peak"]["median_flops"] / 1e9:.0f} GFLOP/s; wall '
      f'{summary["wall_s"] / 60:.1f} min',
      '',
      '| name | metric | compfn | peer | peer value | ratio | target | met |',
      '|---|---|---|---|---|---|---|---|',
  ]
  f = lambda x: '-' if x is None else (f'{x:,.4g}' if isinstance(x, float) else str(x))  # noqa
  met = {True: 'yes', False: '**no**', None: '-'}
  for r in summary['rows']:
    lines.append(
        f'| {r["name"]} | {r["metric"]} | {f(r["compfn"])} | {r["peer"] or "-"} | '
        f'{f(r["peer_value"])} | {f(r["ratio"])} | {f(r.get("target"))} | '
        f'{met[r.get("meets_target")]} |'
    )
  judged = [r for r in summary['rows'] if r.get('meets_target') is not None]
  lines += [
      '',
      f'{sum(r["meets_target"] for r in judged)} of {len(judged)} judged rows meet their '
      'target (ratio > 1: compfn faster than the peer, or inside the bound).',
  ]
  return '\n'.join(lines)


def _write_summary(out: pathlib.Path, summary: dict) -> None:
  (out / 'summary.json').write_text(json.dumps(summary, indent=1))
  (out / 'summary.md').write_text(summary_markdown(summary) + '\n')


def rebuild_summary(out_dir: str) -> dict:
  """Re-derive the rows of ``out_dir/summary.json`` from the per-benchmark JSONs beside it
  (after a change to :func:`summary_rows`; the measurements are not touched) and write
  ``summary.json`` and ``summary.md``."""
  out = pathlib.Path(out_dir)
  path = out / 'summary.json'
  if not path.exists():
    raise SystemExit(f'{path} does not exist: run `python tools/benchmark.py all --out {out_dir}`')
  summary = json.loads(path.read_text())
  summary['rows'] = []
  for name, entry in summary.get('benchmarks', {}).items():  # in the run's order
    f = out / entry['file']
    if f.exists():
      summary['rows'] += summary_rows(name, json.loads(f.read_text()))
  _write_summary(out, summary)
  return summary


def main(argv=None):
  ap = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  sub = ap.add_subparsers(dest='what', required=True)
  v = sub.add_parser('verifier', help='on-device verifier vs the Python reference')
  v.add_argument('--batch', type=int, default=1024)
  v.add_argument('--repeats', type=int, default=5)
  v.add_argument('--out', default='bench/verifier.json')
  for name, default in (('train', 'bench/train.json'), ('rl-step', 'bench/rl_step.json')):
    t = sub.add_parser(name, help=f'{name}: tokens/s + MFU vs Tunix 0.1.7')
    t.add_argument('--out', default=default)
    t.add_argument(
        '--models', default='char,L4d256', help=f'comma-separated subset of {sorted(MODELS)}'
    )
    t.add_argument('--steps', type=int, default=None, help='timed steps (default 10 / 8)')
    t.add_argument('--warmup', type=int, default=3, help='untimed steps (compile) first')
    t.add_argument(
        '--tunix_python', default=DEFAULT_TUNIX, help="the peer's interpreter; '' skips the peer"
    )
    t.add_argument(
        '--tiny',
        action='store_true',
        help='a tiny smoke configuration (tests; no meaningful timing)',
    )
  a = sub.add_parser(
      'all',
      help='every benchmark (verifier, sampler, train, rl-step, demo, memory) vs its peers; '
      'one JSON each + summary.json',
  )
  a.add_argument('--out', default='bench/')
  a.add_argument('--tunix_python', default=DEFAULT_TUNIX, help="'' or missing: no Tunix peer")
  a.add_argument(
      '--tiny', action='store_true', help='smoke sizes (CI): seconds, no meaningful timing'
  )
  a.add_argument('--only', default='', help='comma-separated subset of the benchmarks')
  a.add_argument('--cache_dir', default='', help="the sampler's weights folder (default its own)")
  d = sub.add_parser('demo', help="the CPU demo's GRPO and packed SFT steps (compfn only)")
  d.add_argument('--out', default='bench/demo_steps.json')
  d.add_argument('--steps', type=int, default=6)
  d.add_argument('--warmup', type=int, default=2)
  d.add_argument('--tiny', action='store_true')
  r = sub.add_parser(
      'summary',
      help="rebuild summary.json's rows and summary.md from the JSONs of an `all` run",
  )
  r.add_argument('--out', default='bench/')
  m = sub.add_parser('memory', help='compiled memory of the GRPO train half, Llama-3.1-8B, 8k')
  m.add_argument('--out', default='bench/memory.json')
  m.add_argument('--tiny', action='store_true')
  args = ap.parse_args(argv)
  if args.what == 'summary':
    print(summary_markdown(rebuild_summary(args.out)))
    print(f'\nwrote {pathlib.Path(args.out) / "summary.json"} and summary.md')
    return
  if args.what == 'all':
    only = [x for x in args.only.split(',') if x]
    summary = bench_all(args.out, args.tunix_python, args.tiny, only, args.cache_dir)
    print(summary_markdown(summary))
    print(f'\nwrote {args.out}/summary.json')
    return
  if args.what in ('demo', 'memory'):
    result = (
        bench_demo(args.steps, args.warmup, args.tiny)
        if args.what == 'demo'
        else bench_memory(args.tiny)
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result['results'], indent=1))
    print(f'\nwrote {out}')
    return
  if args.what in ('train', 'rl-step'):
    models = [m for m in args.models.split(',') if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
      ap.error(f'unknown --models {bad}; choose from {sorted(MODELS)}')
    fn = bench_train if args.what == 'train' else bench_rl_step
    steps = args.steps or (10 if args.what == 'train' else 8)
    result = fn(models, steps, args.warmup, args.tunix_python, args.tiny)
    table = result.pop('_table')
  elif args.what == 'verifier':
    if args.batch % 8 or not 8 <= args.batch <= 2048:
      ap.error('--batch must be a multiple of 8 between 8 and 2048')
    result = {
        'benchmark': 'verifier',
        'machine': machine_info(),
        'result': bench_verifier(args.batch, args.repeats),
    }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  if args.what == 'verifier':
    json.dump(result['result'], sys.stdout, indent=1)
  else:
    print(table)
  print(f'\nwrote {out}')


if __name__ == '__main__':
  main()
