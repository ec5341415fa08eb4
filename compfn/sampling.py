"""On-device sampler: one jitted prefill plus ONE ``lax.while_loop`` decode over a donated state.

Public API (stable; ``tools/benchmark_sampler.py`` and ``compfn.rl.rollout`` build on it)::

    cfg = SamplerConfig(max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(),
                        num_samples=1, pad_id=0, logprobs="raw")      # frozen, hashable, static

    samples = sample(model_config, params, prompts, prompt_lens, rng, cfg,
                     *, mesh=None, rules=None) -> Samples
        prompts int32[B, P] (right-padded), prompt_lens int32[B] (>= 1), rng a PRNG key.
        Samples(tokens int32[B*G, N], lengths int32[B*G], logprobs f32[B*G, N],
                mask bool[B*G, N], truncated bool[B*G], group int32[B*G])   (G = num_samples,
                N = max_new_tokens; row i is sample i % G of prompt group[i] = i // G)

    state = prefill(model_config, params, prompts, prompt_lens, rng, cfg, *, mesh=None,
                    rules=None) -> DecodeState   (jit; the first token is already sampled)
    state = decode(model_config, state, params, cfg, *, mesh=None, rules=None)
        -> DecodeState   (jit, ``state`` donated; runs the while_loop to the end)
    DecodeState(step, tokens, logprobs, cache, last, positions, done, lengths, rng)
    prefill_program(mesh=None) -> the jitted prefill ``prefill`` runs on this backend (x86 CPU:
        compiled for oneDNN dots, see the cost notes), for ahead-of-time lowering
    samples = samples_from_state(state, cfg)
    sample_fn(model_config, params, prompts, prompt_lens, rng, cfg) -> Samples
        the same computation, not jitted: call it inside a larger jitted function (rollout).

    sampler = Sampler(model_config, params, tokenizer, cfg, *, min_bucket=16, mesh=None,
                      rules=None)
    out = sampler(["prompt text", ...] or [[token ids], ...], rng)   -> SamplerOutput
        (host convenience: encodes, buckets prompt length and batch size to powers of two,
        pads, runs ``sample``, strips the padding rows and decodes: .texts, .samples (numpy))

    teacher_forced_logprobs(model_config, params, prompts, prompt_lens, samples, cfg)
        -> f32[B*G, N]: the same log-probabilities recomputed by one full forward pass over
        [prompt | response] (what a GRPO loss computes); used to check the sampler.
    full_sequences(prompts, prompt_lens, samples, num_samples) -> (tokens int32[B*G, P+N],
        positions, segment_ids): [prompt | response] rows for a training forward pass
    bucket_length(n, min_bucket=16) -> int   (next power of two >= max(n, min_bucket))

Semantics
---------
* **Prompts**: right-padded ``prompts[B, P]`` with per-row ``prompt_lens``. The prefill runs on
  the B prompts only (per-row positions 0..len-1, padding marked invalid), then the KV cache is
  repeated G times along the batch (T5X ``num_decodes`` / Levanter ``clone_sequence``): G samples
  share one prefill. Every row continues at its own position ``len + t``, so ragged prompts share
  one program; the host buckets P (``bucket_length``) so lengths share compilations.
* **Sampling**: ``temperature == 0`` is greedy (argmax). Otherwise logits / temperature, then
  top-k (``top_k > 0``: keep the k largest; ``lax.top_k``), then top-p (``top_p < 1``: sort,
  softmax, cumsum; keep the smallest prefix whose mass reaches p; the most likely token is always
  kept), then one draw per row with ``fold_in(rng, step)``: an inverse-CDF draw from ONE
  uniform per row (exactly ``softmax`` of the kept logits; ``_choose``). Ties at a top-k / top-p
  threshold keep every tied token.
* **Logprobs** (``cfg.logprobs``): ``"raw"`` (default) = ``log_softmax(raw logits)[token]``, the
  policy's log-probability independent of the sampling knobs; ``"temperature"`` =
  ``log_softmax(logits / T)[token]``, the log-probability under the distribution actually
  sampled (verl's convention: its actor divides logits by the rollout temperature; this is what
  ``compfn.rl.grpo`` uses, and its trainer divides its logits by the same T). Neither includes
  the top-k/top-p truncation (which is why GRPO rejects top-k/top-p). Greedy falls back to raw
  in both modes (no division by T = 0).
* **Stops**: a row ends at its first token in ``stop_ids`` (the stop token is kept: it is part of
  ``lengths``/``mask`` and has a logprob). Positions after the end hold ``pad_id``, logprob 0,
  mask False. ``truncated[i]`` = the row produced ``max_new_tokens`` tokens without a stop token
  (the paper's "overlong"). The loop exits early once every row has stopped.
* **Sharding**: pass ``mesh`` and logical-axis ``rules`` (e.g.
  ``compfn.parallel.DEFAULT_RULES``); the call runs under ``jax.set_mesh(mesh)`` and
  ``nn.logical_axis_rules(rules)`` so the model's activation annotations (batch over
  ('data', 'fsdp'), heads / vocab over 'tensor') reach the compiled program. Shard the params
  with ``nn.logical_to_mesh_sharding(param_logical_axes(config), mesh, rules)``. Results are
  identical to the unsharded call (random draws in JAX do not depend on the sharding).

Worked example (ragged prompts, greedy, EOS id 2)::

    cfg = SamplerConfig(max_new_tokens=4, temperature=0.0, stop_ids=(2,), num_samples=2)
    prompts = jnp.array([[5, 6, 7], [9, 0, 0]]); lens = jnp.array([3, 1])
    s = sample(mcfg, params, prompts, lens, jax.random.key(0), cfg)
    # s.tokens.shape == (4, 4); rows 0, 1 continue [5, 6, 7], rows 2, 3 continue [9].
    # If row 2 samples [4, 2, ...] then s.tokens[2] == [4, 2, 0, 0], s.lengths[2] == 2,
    # s.mask[2] == [T, T, F, F], s.truncated[2] == False; a row without 2 has length 4 and
    # truncated True.

Cost notes: the decode body is one forward pass of a [B*G, 1] token batch over a cache of
``P + N`` slots; done rows still run (static shapes) but the loop stops when all are done.
The prefill computes logits only at each row's last prompt position (``model.apply``'s
``logits_index``), so the LM head never materialises [B, P, V] f32. The decode loop runs
``model.transformer.decode_step`` (the same computation as ``apply`` for one valid token per
row): layers unrolled over per-layer weights sliced once before the loop, and the cache held
per layer in the attention dots' layout (keys ``[B, K, Dh, S]``, values ``[B, K, S, Dh]``;
converted from / back to ``KVCache`` once per call). A step writes only the new token's
keys/values (in place in the while_loop carry): no per-step copy of weights or cache. On an
x86 CPU backend ``prefill``/``sample`` compile the prefill as its own program with oneDNN dots
(``CPU_PREFILL_COMPILER_OPTIONS``; opt out with ``COMPFN_CPU_PREFILL_DOTS=default``): XLA:CPU
picks one dot library per program, and the prefill's B*P-row matmuls and the decode's B*G-row
ones are fastest in different libraries.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from typing import Any, Sequence, Union

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compfn import buckets, parallel
from compfn.model import transformer
from compfn.model.config import ModelConfig

Array = jax.Array

__all__ = [
    "SamplerConfig",
    "Samples",
    "DecodeState",
    "sample",
    "sample_fn",
    "prefill",
    "prefill_fn",
    "prefill_program",
    "decode_fn",
    "decode",
    "samples_from_state",
    "Sampler",
    "SamplerOutput",
    "bucket_length",
    "teacher_forced_logprobs",
    "full_sequences",
    "response_logit_positions",
]

LOGPROB_MODES = ("raw", "temperature")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampling configuration (hashable: a static argument of ``jax.jit``)."""

  max_new_tokens: int
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  stop_ids: tuple[int, ...] = ()
  num_samples: int = 1  # G samples per prompt (share one prefill)
  pad_id: int = 0  # written after a row's end
  logprobs: str = "raw"  # 'raw' | 'temperature' (see the module docstring)

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
    if self.logprobs not in LOGPROB_MODES:
      raise ValueError(f"logprobs must be one of {LOGPROB_MODES}, got {self.logprobs!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


@flax.struct.dataclass
class Samples:
  tokens: Array  # int32[B*G, N]  generated tokens, pad_id after the end
  lengths: Array  # int32[B*G]     generated tokens including the stop token
  logprobs: Array  # f32[B*G, N]    log-prob of each generated token (0 after the end)
  mask: Array  # bool[B*G, N]   position < length
  truncated: Array  # bool[B*G]      N tokens without a stop token
  group: Array  # int32[B*G]     prompt index (row // G)


@flax.struct.dataclass
class DecodeState:
  """The while_loop carry; donated between ``prefill`` and ``decode``."""

  step: Array  # int32[]        tokens generated so far (all rows)
  tokens: Array  # int32[B*G, N]
  logprobs: Array  # f32[B*G, N]
  cache: transformer.KVCache  # batch B*G, max_len P + N
  last: Array  # int32[B*G]     the latest token (the next decode input)
  positions: Array  # int32[B*G]     RoPE position of ``last``
  done: Array  # bool[B*G]      a stop token was produced
  lengths: Array  # int32[B*G]
  rng: Array  # PRNG key


def bucket_length(n: int, min_bucket: int = 16) -> int:
  """Next power of two >= max(n, min_bucket) (the host pads prompts to it)."""
  return buckets.next_power_of_two(n, min_bucket)


# ------------------------------------------------------------------------------ the sampler


_ICDF_BLOCK = 256  # vocabulary positions per block of the two-level inverse-CDF search


def _first_argmax(x: Array) -> Array:
  """int32[R]: the first index of the maximum of ``x[R, V]`` (``jnp.argmax``'s result for
  finite inputs). Two plain reductions (max, then min over the matching indices), which XLA:CPU
  vectorises; ``jnp.argmax`` lowers to a variadic (value, index) reduce that it does not (10x
  slower over [64, 49152])."""
  v = x.shape[-1]
  m = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == m, iota, v), axis=-1)


def _last_positive(x: Array) -> Array:
  """int32[...]: the last index along the last axis where ``x > 0`` (0 if none)."""
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.max(jnp.where(x > 0, iota, 0), axis=-1)


def _inverse_cdf(p: Array, u: Array) -> Array:
  """int32[R]: index ``i`` of ``p[R, V]`` (unnormalised probabilities, >= 0, some > 0 per row)
  with ``P(i) = p_i / sum(p)``, from one uniform ``u[R]`` in [0, 1): the first ``i`` whose
  cumulative sum exceeds ``u * sum(p)``. Two levels (blocks of ``_ICDF_BLOCK`` positions, then
  inside the chosen block), so the work is O(V) elementwise and the cumulative sums are short.
  A zero-probability index is never returned (the cumulative sum does not grow across it, and
  the rounding corner ``u * sum >= sum`` is clamped to the last positive index)."""
  r, v = p.shape
  blk = min(_ICDF_BLOCK, v)
  nb = -(-v // blk)
  if nb * blk != v:
    p = jnp.pad(p, ((0, 0), (0, nb * blk - v)))
  pb = p.reshape(r, nb, blk)
  block_mass = pb.sum(-1)  # [R, nb]
  cum_blocks = jnp.cumsum(block_mass, axis=-1)
  target = u * cum_blocks[:, -1]
  j = jnp.sum(cum_blocks <= target[:, None], axis=-1, dtype=jnp.int32)
  j = jnp.minimum(j, _last_positive(block_mass))
  before = jnp.where(
      j > 0, jnp.take_along_axis(cum_blocks, jnp.maximum(j - 1, 0)[:, None], axis=-1)[:, 0], 0.0
  )
  inner = jnp.take_along_axis(pb, j[:, None, None], axis=1)[:, 0]  # [R, blk]
  cum_inner = before[:, None] + jnp.cumsum(inner, axis=-1)
  i = jnp.sum(cum_inner <= target[:, None], axis=-1, dtype=jnp.int32)
  i = jnp.minimum(i, _last_positive(inner))
  return j * blk + i


def _log_prob(x: Array, tok: Array) -> Array:
  """``log_softmax(x)[tok]`` f32[R] without the [R, V] table (same operations as
  ``jax.nn.log_softmax``: ``(x_t - max) - log(sum(exp(x - max)))``)."""
  m = jnp.max(x, axis=-1, keepdims=True)
  lse = jnp.log(jnp.sum(jnp.exp(x - m), axis=-1))
  xt = jnp.take_along_axis(x, tok[:, None], axis=-1)[:, 0]
  return (xt - m[:, 0]) - lse


def _choose(logits: Array, key: Array, cfg: SamplerConfig) -> tuple[Array, Array]:
  """(token int32[R], logprob f32[R]) from raw logits f32[R, V].

  Sampling is an inverse-CDF draw with ONE uniform per row (``jax.random.uniform(key, [R])``)
  over ``exp(scaled - max)``: exactly ``softmax(scaled)``, like the Gumbel-max trick of
  ``jax.random.categorical``, but without R x V random numbers (threefry over [64, 49152] cost
  ~20x the rest of the draw on CPU) or a variadic argmax."""
  logits = logits.astype(jnp.float32)
  if cfg.greedy:
    tok = _first_argmax(logits)
    return tok, _log_prob(logits, tok)
  scaled = logits / jnp.float32(cfg.temperature)
  m = jnp.max(scaled, axis=-1, keepdims=True)
  p_full = jnp.exp(scaled - m)  # softmax(scaled) up to its normaliser
  p = p_full
  if cfg.top_k and cfg.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(scaled, cfg.top_k)[0][:, -1:]
    p = jnp.where(scaled >= kth, p, 0.0)
  if cfg.top_p < 1.0:
    srt = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    keep = before < jnp.float32(cfg.top_p)
    keep = keep.at[:, 0].set(True)
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    p = jnp.where(scaled >= thresh, p, 0.0)
  u = jax.random.uniform(key, (logits.shape[0],), jnp.float32)
  tok = _inverse_cdf(p, u)
  if cfg.logprobs == "raw" and cfg.temperature != 1.0:
    return tok, _log_prob(logits, tok)
  # log_softmax(scaled)[tok] from the same exponentials (== raw logits when T == 1).
  st = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0]
  return tok, (st - m[:, 0]) - jnp.log(jnp.sum(p_full, axis=-1))


def _is_stop(tok: Array, cfg: SamplerConfig) -> Array:
  stop = jnp.zeros(tok.shape, bool)
  for s in cfg.stop_ids:
    stop = stop | (tok == s)
  return stop


def _constrain_rows(x: Array) -> Array:
  return nn.with_logical_constraint(x, (transformer.BATCH,) + (None,) * (x.ndim - 1))


def _repeat_rows(x: Array, axis: int, g: int) -> Array:
  """``jnp.repeat(x, g, axis)`` as broadcast + reshape: row ``i`` becomes rows ``i*g .. i*g+g-1``.

  The same values, but a batch axis sharded over the mesh stays sharded (each device repeats
  its own rows), where ``jnp.repeat``'s gather makes the SPMD partitioner assemble the whole
  batch on every device first (measured on a v5p-128 KV cache: a replicated copy per device).
  """
  shape = x.shape
  y = jnp.broadcast_to(jnp.expand_dims(x, axis + 1), shape[: axis + 1] + (g,) + shape[axis + 1 :])
  return y.reshape(shape[:axis] + (shape[axis] * g,) + shape[axis + 1 :])


def _record(state: DecodeState, tok: Array, lp: Array, cfg: SamplerConfig) -> DecodeState:
  """Write the token sampled at ``state.step`` for the rows still running."""
  live = ~state.done
  tok = jnp.where(live, tok, cfg.pad_id).astype(jnp.int32)
  lp = jnp.where(live, lp, 0.0)
  col = state.step
  tokens = jax.lax.dynamic_update_slice(state.tokens, tok[:, None], (0, col))
  logprobs = jax.lax.dynamic_update_slice(state.logprobs, lp[:, None], (0, col))
  done = state.done | (live & _is_stop(tok, cfg))
  return state.replace(
      step=state.step + 1,
      tokens=_constrain_rows(tokens),
      logprobs=_constrain_rows(logprobs),
      last=tok,
      done=done,
      lengths=state.lengths + live.astype(jnp.int32),
  )


def prefill_fn(
    model_config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    rng: Array,
    cfg: SamplerConfig,
) -> DecodeState:
  """Prefill B prompts, repeat the cache G times, sample the first token (not jitted)."""
  prompts = jnp.asarray(prompts, jnp.int32)
  prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
  b, p = prompts.shape
  g, n = cfg.num_samples, cfg.max_new_tokens
  valid = jnp.arange(p, dtype=jnp.int32)[None, :] < prompt_lens[:, None]
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  # The prefill cache holds the P prompt slots only; the N decode slots are appended after the
  # G-fold repeat (``transformer.extend_cache``): the prefill's attention spans P keys, not
  # P + N, and no full-length buffer exists before it is sharded over the G-fold batch.
  cache = transformer.init_cache(model_config, batch=b, max_len=p)
  cache = cache.replace(
      k=nn.with_logical_constraint(cache.k, transformer.CACHE_AXES),
      v=nn.with_logical_constraint(cache.v, transformer.CACHE_AXES),
  )
  last = jnp.clip(prompt_lens - 1, 0, p - 1)
  # Logits only at each row's last prompt position: [B, 1, V], never [B, P, V].
  logits, cache = transformer.apply(
      model_config,
      params,
      prompts,
      positions,
      segment_ids=valid.astype(jnp.int32),
      cache=cache,
      logits_index=last,
  )
  last_logits = logits[:, 0]
  if g > 1:  # one prefill, G decodes: repeat along the batch (sample-major within a prompt)
    rep = functools.partial(_repeat_rows, g=g)
    cache = transformer.KVCache(
        k=rep(cache.k, axis=1),
        v=rep(cache.v, axis=1),
        pos=rep(cache.pos, axis=0),
        index=rep(cache.index, axis=0),
    )
    last_logits = rep(last_logits, axis=0)
    prompt_lens = rep(prompt_lens, axis=0)
  cache = transformer.extend_cache(cache, n)
  cache = cache.replace(
      k=nn.with_logical_constraint(cache.k, transformer.CACHE_AXES),
      v=nn.with_logical_constraint(cache.v, transformer.CACHE_AXES),
      pos=_constrain_rows(cache.pos),
      index=_constrain_rows(cache.index),
  )
  rows = b * g
  state = DecodeState(
      step=jnp.int32(0),
      tokens=_constrain_rows(jnp.full((rows, n), cfg.pad_id, jnp.int32)),
      logprobs=_constrain_rows(jnp.zeros((rows, n), jnp.float32)),
      cache=cache,
      last=jnp.zeros((rows,), jnp.int32),
      positions=prompt_lens,
      done=jnp.zeros((rows,), bool),
      lengths=jnp.zeros((rows,), jnp.int32),
      rng=rng,
  )
  tok, lp = _choose(last_logits, jax.random.fold_in(rng, 0), cfg)
  return _record(state, tok, lp, cfg)


def decode_fn(
    model_config: ModelConfig, state: DecodeState, params: Any, cfg: SamplerConfig
) -> DecodeState:
  """Run the decode ``lax.while_loop`` to the end (not jitted)."""
  n = cfg.max_new_tokens
  # Per-layer weights sliced once here (loop invariants) and the cache in the attention's
  # layout for the whole loop (``T.decode_step``): no per-step copy of weights or cache.
  # One unsharded row: q|k|v and gate|up as one matrix-vector product each per layer (XLA:CPU
  # streams one [D, 2F] weight faster than two [D, F]; measured no gain from 4 rows up, and
  # -7% at 64 rows for gate|up; on a mesh the concatenation would mix shards).
  mesh = jax.sharding.get_abstract_mesh()
  layers = transformer.unstack_layers(
      model_config,
      params,
      fuse_projections=state.tokens.shape[0] == 1 and (mesh.empty or mesh.size == 1),
  )

  def cond(carry):
    s, _ = carry
    return (s.step < n) & ~jnp.all(s.done)

  def body(carry):
    s, dc = carry
    logits, dc = transformer.decode_step(model_config, params, layers, s.last, s.positions, dc)
    s = s.replace(positions=s.positions + 1)
    tok, lp = _choose(logits, jax.random.fold_in(s.rng, s.step), cfg)
    return _record(s, tok, lp, cfg), dc

  s, dc = jax.lax.while_loop(
      cond, body, (state.replace(cache=None), transformer.to_decode_cache(state.cache))
  )
  return s.replace(cache=transformer.from_decode_cache(dc))


def samples_from_state(state: DecodeState, cfg: SamplerConfig) -> Samples:
  rows, n = state.tokens.shape
  mask = jnp.arange(n, dtype=jnp.int32)[None, :] < state.lengths[:, None]
  return Samples(
      tokens=state.tokens,
      lengths=state.lengths,
      logprobs=state.logprobs,
      mask=mask,
      truncated=~state.done,
      group=jnp.arange(rows, dtype=jnp.int32) // cfg.num_samples,
  )


def sample_fn(
    model_config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    rng: Array,
    cfg: SamplerConfig,
) -> Samples:
  """Prefill + decode as one pure function (not jitted; embed it in a larger jit)."""
  state = prefill_fn(model_config, params, prompts, prompt_lens, rng, cfg)
  return samples_from_state(decode_fn(model_config, state, params, cfg), cfg)


# XLA:CPU picks one library for every dot of a program. The prefill's matmuls have B*P rows
# (1,744 for SmolLM2 at B=16): oneDNN runs them at ~270 GFLOP/s on the 2-core x86 machine, the
# default (YNNPACK) at ~230 (prefill at B=64: 6.6-6.9 s against 8.5-9.1 s, alternating in one
# process). The decode step's matmuls have B*G rows (1-64), where YNNPACK is the fastest of the
# three (12.4 GB/s of weights at 16 rows against 9.3-9.5 for oneDNN and Eigen; 198 GFLOP/s
# at 64 rows against 140-159). So on CPU the prefill is its own program compiled with these
# options, and the decode keeps the defaults.
CPU_PREFILL_COMPILER_OPTIONS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_cpu_experimental_ynn_fusion_type": "",
}
# Opt out (e.g. for an A/B): COMPFN_CPU_PREFILL_DOTS=default compiles the prefill like the rest.
_PREFILL_DOTS_ENV = "COMPFN_CPU_PREFILL_DOTS"


def _prefill_body(model_config, params, prompts, prompt_lens, rng, cfg, mesh=None, rules=None):
  del mesh, rules
  return prefill_fn(model_config, params, prompts, prompt_lens, rng, cfg)


# mesh / rules are static so that a sharded and an unsharded trace never share a cache entry.
_PREFILL_STATIC = ("model_config", "cfg", "mesh", "rules")
_prefill_jit = jax.jit(_prefill_body, static_argnames=_PREFILL_STATIC)
_prefill_jit_cpu = jax.jit(
    _prefill_body, static_argnames=_PREFILL_STATIC, compiler_options=CPU_PREFILL_COMPILER_OPTIONS
)


def _cpu_prefill_dots(mesh) -> bool:
  """Whether ``prefill``/``sample`` compile the prefill with CPU_PREFILL_COMPILER_OPTIONS: on an
  x86-64 CPU backend (oneDNN's), unless the environment opts out."""
  mode = os.environ.get(_PREFILL_DOTS_ENV, "onednn")
  if mode not in ("onednn", "default"):
    raise ValueError(f"{_PREFILL_DOTS_ENV}={mode!r}: expected 'onednn' or 'default'")
  if mode == "default" or platform.machine().lower() not in ("x86_64", "amd64"):
    return False
  if mesh is not None:
    return all(d.platform == "cpu" for d in np.asarray(mesh.devices).flat)
  return jax.default_backend() == "cpu"


def prefill_program(mesh=None):
  """The jitted prefill that ``prefill``/``sample`` run on this backend (for ahead-of-time
  ``.lower(...).compile()``, e.g. the sampler benchmark's compile time): on an x86 CPU the one
  compiled with CPU_PREFILL_COMPILER_OPTIONS, elsewhere the default."""
  return _prefill_jit_cpu if _cpu_prefill_dots(mesh) else _prefill_jit


@functools.partial(
    jax.jit, static_argnames=("model_config", "cfg", "mesh", "rules"), donate_argnames=("state",)
)
def _decode_jit(model_config, state, params, cfg, mesh=None, rules=None):
  del mesh, rules
  return decode_fn(model_config, state, params, cfg)


# The decode program returns the whole state so that its donated cache aliases an output (no
# copy into the loop); this small one then takes the samples out of it.
_samples_from_state_jit = jax.jit(
    lambda state, cfg: samples_from_state(state, cfg), static_argnums=1
)


@functools.partial(jax.jit, static_argnames=("model_config", "cfg", "mesh", "rules"))
def _sample_jit(model_config, params, prompts, prompt_lens, rng, cfg, mesh=None, rules=None):
  del mesh, rules
  return sample_fn(model_config, params, prompts, prompt_lens, rng, cfg)


def prefill(
    model_config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    rng: Array,
    cfg: SamplerConfig,
    *,
    mesh=None,
    rules=None,
) -> DecodeState:
  """Jitted prefill: the DecodeState after the first sampled token."""
  rules = parallel.normalize_rules(rules)
  with parallel.use_mesh(mesh, rules):
    return prefill_program(mesh)(
        model_config, params, prompts, prompt_lens, rng, cfg, mesh=mesh, rules=rules
    )


def decode(
    model_config: ModelConfig,
    state: DecodeState,
    params: Any,
    cfg: SamplerConfig,
    *,
    mesh=None,
    rules=None,
) -> DecodeState:
  """Jitted decode loop; ``state`` is donated (do not reuse it)."""
  rules = parallel.normalize_rules(rules)
  with parallel.use_mesh(mesh, rules):
    return _decode_jit(model_config, state, params, cfg, mesh=mesh, rules=rules)


def sample(
    model_config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    rng: Array,
    cfg: SamplerConfig,
    *,
    mesh=None,
    rules=None,
) -> Samples:
  """Sample ``cfg.num_samples`` continuations of each prompt (see the module docstring).

  One XLA program (prefill and the decode while_loop), except on an x86 CPU backend: there the
  prefill and the decode are two programs dispatched back to back, the state staying on device,
  because XLA:CPU chooses one dot library per program and the prefill's many-row matmuls are
  faster with oneDNN (CPU_PREFILL_COMPILER_OPTIONS), the decode's few-row ones with the
  default. ``sample_fn`` (what the fused rollout embeds) is the same computation either way."""
  rules = parallel.normalize_rules(rules)
  with parallel.use_mesh(mesh, rules):
    if not _cpu_prefill_dots(mesh):
      return _sample_jit(
          model_config, params, prompts, prompt_lens, rng, cfg, mesh=mesh, rules=rules
      )
    state = _prefill_jit_cpu(
        model_config, params, prompts, prompt_lens, rng, cfg, mesh=mesh, rules=rules
    )
    state = _decode_jit(model_config, state, params, cfg, mesh=mesh, rules=rules)
    return _samples_from_state_jit(state, cfg)


# --------------------------------------------------------------------- teacher forcing check


def full_sequences(
    prompts: Array, prompt_lens: Array, samples: Samples, num_samples: int
) -> tuple[Array, Array, Array]:
  """``[prompt | response]`` rows for one full forward pass: (tokens int32[B*G, P+N],
  positions, segment_ids). The prompt keeps its right padding (segment 0); the response
  continues at position ``prompt_len`` (positions define attention, so the gap is harmless)."""
  prompts = jnp.asarray(prompts, jnp.int32)
  prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
  b, p = prompts.shape
  n = samples.tokens.shape[1]
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731
  pr, pl = rep(prompts), rep(prompt_lens)
  tokens = jnp.concatenate([pr, samples.tokens], axis=1)
  ar_p = jnp.arange(p, dtype=jnp.int32)[None, :]
  ar_n = jnp.arange(n, dtype=jnp.int32)[None, :]
  positions = jnp.concatenate([jnp.broadcast_to(ar_p, pr.shape), pl[:, None] + ar_n], axis=1)
  seg = jnp.concatenate([ar_p < pl[:, None], samples.mask], axis=1).astype(jnp.int32)
  return tokens, positions, seg


def response_logit_positions(prompt_lens: Array, p: int, n: int) -> Array:
  """int32[rows, N]: in a ``full_sequences`` row (prompt padded to ``p``, then N response
  tokens), the position whose logits predict response token j — the prompt's last valid token
  for j = 0, response token j - 1 (at ``p + j - 1``) otherwise."""
  rows = prompt_lens.shape[0]
  return jnp.concatenate(
      [
          (prompt_lens - 1)[:, None],
          jnp.broadcast_to(p + jnp.arange(n - 1, dtype=jnp.int32), (rows, n - 1)),
      ],
      axis=1,
  )


def teacher_forced_logprobs(
    model_config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    samples: Samples,
    cfg: SamplerConfig,
) -> Array:
  """Log-probabilities of ``samples.tokens`` under one full causal forward pass
  (``log_softmax(raw logits)``, or of logits / T for ``cfg.logprobs == 'temperature'``);
  0 where ``mask`` is False. f32[B*G, N]."""
  tokens, positions, seg = full_sequences(prompts, prompt_lens, samples, cfg.num_samples)
  p = jnp.asarray(prompts).shape[1]
  n = samples.tokens.shape[1]
  logits, _ = transformer.apply(model_config, params, tokens, positions, segment_ids=seg)
  src = response_logit_positions(
      jnp.repeat(jnp.asarray(prompt_lens, jnp.int32), cfg.num_samples), p, n
  )
  lg = jnp.take_along_axis(logits, src[:, :, None], axis=1)
  if cfg.logprobs == "temperature" and not cfg.greedy:
    lg = lg / cfg.temperature
  lp = jax.nn.log_softmax(lg, axis=-1)
  lp = jnp.take_along_axis(lp, samples.tokens[:, :, None], axis=-1)[:, :, 0]
  return jnp.where(samples.mask, lp, 0.0)


# ------------------------------------------------------------------------ host convenience


@dataclasses.dataclass
class SamplerOutput:
  texts: list[str]  # decoded responses (special tokens dropped), row-major [B*G]
  samples: Samples  # numpy arrays, padding rows removed
  prompt_ids: list[list[int]]


class Sampler:
  """Host convenience: strings (or token lists) in, texts out.

      sampler = Sampler(mcfg, params, tok, SamplerConfig(64, temperature=0.0,
                                                         stop_ids=tok.stop_ids))
      out = sampler(["Hello"], jax.random.key(0))     # out.texts[0], out.samples.tokens[0]

  Prompt strings are encoded with ``tokenizer.encode`` as given (apply a chat template first
  if the model wants one). The prompt length is padded to ``bucket_length(max len,
  min_bucket)`` and the batch to a power of two (repeating the last prompt), so a stream of
  batches reuses a few compilations. Ids the tokenizer does not know (a model's padded
  vocabulary rows) are left out of ``texts`` (``samples.tokens`` keeps them).
  """

  def __init__(
      self,
      model_config: ModelConfig,
      params: Any,
      tokenizer,
      cfg: SamplerConfig,
      *,
      min_bucket: int = 16,
      mesh=None,
      rules=None,
  ):
    self.model_config, self.params, self.tokenizer, self.cfg = (
        model_config,
        params,
        tokenizer,
        cfg,
    )
    self.min_bucket, self.mesh, self.rules = min_bucket, mesh, rules

  def encode(self, prompts: Sequence[Union[str, Sequence[int]]]) -> list[list[int]]:
    ids = [self.tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    for i, x in enumerate(ids):
      if not x:
        raise ValueError(f"prompt {i} is empty")
    return ids

  def pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    b = len(ids)
    rows = buckets.next_power_of_two(b)
    p = bucket_length(max(len(x) for x in ids), self.min_bucket)
    pad_id = self.cfg.pad_id
    arr = np.full((rows, p), pad_id, np.int32)
    lens = np.zeros(rows, np.int32)
    for i in range(rows):
      x = ids[min(i, b - 1)]
      arr[i, : len(x)] = x
      lens[i] = len(x)
    return arr, lens

  def __call__(self, prompts: Sequence[Union[str, Sequence[int]]], rng) -> SamplerOutput:
    if isinstance(prompts, str):
      raise ValueError("prompts must be a list of strings or token lists, not a string")
    ids = self.encode(prompts)
    arr, lens = self.pad(ids)
    s = sample(
        self.model_config, self.params, arr, lens, rng, self.cfg, mesh=self.mesh, rules=self.rules
    )
    keep = len(ids) * self.cfg.num_samples
    s = jax.tree.map(lambda x: np.asarray(x)[:keep], s)
    v = self.tokenizer.vocab_size  # a model's padded vocab rows beyond it decode to nothing
    texts = [
        self.tokenizer.decode([t for t in s.tokens[i, : s.lengths[i]].tolist() if t < v])
        for i in range(keep)
    ]
    return SamplerOutput(texts=texts, samples=s, prompt_ids=ids)
