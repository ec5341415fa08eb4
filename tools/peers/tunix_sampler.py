#!/usr/bin/env python
"""Tunix 0.1.7 vanilla sampler peer for tools/benchmark_sampler.py (spec/BASELINES.md §2).

Runs in its own venv (no torch; transformers 5.12.1 only for the tokenizer)::

    python3 -m venv /opt/tunix-venv
    /opt/tunix-venv/bin/pip install google-tunix==0.1.7
    /opt/tunix-venv/bin/python tools/peers/tunix_sampler.py SPEC.json

SPEC: {"model_dir", "prompt_ids", "batch", "new_tokens", "repeats", "eos_id", "pad_id",
       "tunix_config": llama3.ModelConfig kwargs, "has_tokenizer": bool}

Prints one line ``RESULT {json}``. As in BASELINES §2: tunix llama3 f32 loaded from the same
safetensors with ``rope_theta`` patched in (tunix 0.1.7 ignores the config's and uses 1e6);
pad token set to ``<|endoftext|>`` (id 0) because the default pad ``<|im_end|>`` is EOS and
occurs inside the chat prompt; cache = P + N; ``max_prompt_length = P`` (no padding);
T=1.0, top_p=1.0, top_k=None (pure temperature path); ``forbidden_tokens=[eos]`` so every row
decodes N tokens; timing wrappers (``block_until_ready`` on the token buffer) around
``_compiled_prefill_fn`` / ``_compiled_decode_fn``; 1 warm-up call (compiles), then ``repeats``
timed calls, median. The decode ``while_loop`` runs N forward steps (ms/step divides by N).

The tiny model has no tokenizer: a stand-in whose ``encode`` parses space-separated ids feeds
the same prompt ids (the sampler API takes strings).
"""
import json
import os
import resource
import statistics
import sys
import time


class _IdTokenizer:
  """encode('5 6 7') -> [5, 6, 7]; no BOS (bos_id 0 is falsy, so tunix prepends none)."""

  def __init__(self, eos, pad):
    self._eos, self._pad = eos, pad

  def encode(self, text, **kw):
    return [int(t) for t in text.split()]

  def decode(self, ids, **kw):
    return ' '.join(str(int(i)) for i in ids)

  def bos_id(self):
    return 0

  def eos_id(self):
    return self._eos

  def pad_id(self):
    return self._pad


def main(spec):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tunix.generate.sampler import CacheConfig, Sampler
  from tunix.models.llama3 import model as llama3_model
  from tunix.models.llama3 import params as llama3_params
  from importlib.metadata import version

  tc = dict(spec['tunix_config'])
  theta = tc['rope_theta']
  _orig = llama3_model.apply_rope
  llama3_model.apply_rope = lambda inputs, positions, head_dim, rope_theta=None: _orig(
      inputs, positions, head_dim, rope_theta=theta
  )
  cfg = llama3_model.ModelConfig(**tc)
  t = time.perf_counter()
  model = llama3_params.create_model_from_safe_tensors(spec['model_dir'], cfg, dtype=jnp.float32)
  load_s = time.perf_counter() - t
  ids = [int(i) for i in spec['prompt_ids']]
  B, N, P = int(spec['batch']), int(spec['new_tokens']), len(ids)
  eos = int(spec['eos_id'])

  if spec.get('has_tokenizer'):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec['model_dir'])
    tok.pad_token = '<|endoftext|>'  # BASELINES §2 pitfall: default pad is EOS
    assert tok.pad_token_id == int(spec['pad_id']) == 0
    prompt = tok.decode(ids, skip_special_tokens=False)
  else:
    tok = _IdTokenizer(eos, int(spec['pad_id']))
    prompt = ' '.join(map(str, ids))

  smp = Sampler(
      model,
      tok,
      CacheConfig(
          cache_size=P + N,
          num_layers=tc['num_layers'],
          num_kv_heads=tc['num_kv_heads'],
          head_dim=tc['head_dim'],
      ),
  )
  got = [int(i) for i in smp.tokenize(prompt)]
  assert got == ids, ('tunix tokenisation differs from the prompt ids', got[:8], ids[:8])

  T = {}
  for name in ('_compiled_prefill_fn', '_compiled_decode_fn'):
    f = getattr(smp, name)

    def g(*a, _f=f, _n=name, **k):
      t0 = time.perf_counter()
      out = _f(*a, **k)
      jax.block_until_ready(out.token_buffer)
      T[_n] = time.perf_counter() - t0
      return out

    setattr(smp, name, g)

  def call(seed):
    t0 = time.perf_counter()
    out = smp(
        [prompt] * B,
        max_generation_steps=N,
        max_prompt_length=P,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        eos_tokens=[eos],
        forbidden_tokens=[eos],
        seed=seed,
    )
    total = time.perf_counter() - t0
    assert len(out.tokens) == B and all(len(x) == N for x in out.tokens), [
        len(x) for x in out.tokens
    ]
    assert not any(int(v) == eos for x in out.tokens for v in np.asarray(x))
    return dict(prefill=T['_compiled_prefill_fn'], decode=T['_compiled_decode_fn'], total=total)

  warm = call(0)
  runs = [call(seed) for seed in range(1, int(spec['repeats']) + 1)]
  med = {k: statistics.median(r[k] for r in runs) for k in ('prefill', 'decode', 'total')}
  res = dict(
      system='tunix',
      tunix=version('google-tunix'),
      jax=jax.__version__,
      flax=version('flax'),
      transformers=version('transformers'),
      batch=B,
      prompt_len=P,
      new_tokens=N,
      cache_size=P + N,
      load_s=load_s,
      prefill_s=med['prefill'],
      decode_s=med['decode'],
      total_s=med['total'],
      decode_forward_steps=N,
      ms_per_step=1e3 * med['decode'] / N,
      decode_tok_s=B * N / med['decode'],
      prefill_tok_s=B * P / med['prefill'],
      e2e_tok_s=B * N / med['total'],
      first_call_s=warm['total'],
      first_call_extra_s=warm['total'] - med['total'],
      compile_s=(warm['prefill'] - med['prefill']) + (warm['decode'] - med['decode']),
      runs=runs,
  )
  res['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print('RESULT ' + json.dumps(res), flush=True)


if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    main(json.load(f))
