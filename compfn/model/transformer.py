"""Decoder-only transformer (Llama 3.x, Qwen2.5, Gemma 2, SmolLM2) as a Flax linen module.

The module is applied as a pure function of a params pytree::

    logits, new_cache = apply(config, params, tokens, positions,
                              segment_ids=None, attn_mask=None, cache=None,
                              logits_index=None, return_hidden=False)

Params (``init_params``; the leading ``L`` is the scan axis, logical name 'layers')::

    {'token_embed': [V, D],
     'layers': {'pre_attn_norm': {'scale': [L, D]},
                'attn': {'wq': [L, D, H, Dh], 'wk'/'wv': [L, D, K, Dh], 'wo': [L, H, Dh, D],
                         'bq': [L, H, Dh], 'bk'/'bv': [L, K, Dh]   (qkv_bias), 'bo': [L, D]},
                'pre_mlp_norm': {'scale': [L, D]},
                'mlp': {'wi_gate': [L, D, F], 'wi_up': [L, D, F], 'wo': [L, F, D]},
                'post_attn_norm', 'post_mlp_norm'   (Gemma 2 only)},
     'final_norm': {'scale': [D]},
     'lm_head': [D, V]   (absent with tied embeddings)}

Masking is derived from positions, so one code path covers training, left/right padding,
packed sequences and cached decoding:

* ``positions[B, T]`` are the RoPE positions of the input tokens (any per-row offsets).
* ``segment_ids[B, T]`` (optional, int): 0 marks padding; without a cache, a query only sees
  keys of its own segment (sequence packing). With a cache it is only a validity mask.
* a query at position ``p`` sees a key at position ``p_k`` iff the key is valid and
  ``p_k <= p`` (and ``p - p_k < sliding_window`` on sliding layers); ``attn_mask[B, T, S]``
  (optional, bool) is AND-ed on top (S = T without a cache, ``max_len`` with one).

KV cache (``KVCache``, a ``flax.struct.dataclass``; donate it to ``jax.jit``)::

    k, v   [layers, B, max_len, kv_heads, head_dim]   compute dtype
    pos    [B, max_len] int32   position of the token held by each slot, -1 = empty
    index  [B] int32            next slot to write in each row

``apply`` with a cache writes the chunk's keys/values at slots ``index[b] .. index[b]+T-1`` of
each row, marks padding slots empty, attends over the whole cache, and advances ``index[b]``
past the last valid token of the row (so right padding is overwritten by the next write; left
padding keeps its empty slots). The caller sizes ``max_len`` >= the tokens a row will ever
write (like ``dynamic_update_slice``, a write that would run past the end starts earlier and
overwrites earlier slots). The whole ``[layers, ...]`` k/v buffers are the layer scan's carry:
each layer scatters only its T new keys/values into its slice (in place; inside a jitted
``while_loop`` with a donated cache a decode step never copies the cache) and reads that slice
back for attention.

``logits_index`` (int32[B] or int32[B, N], optional) computes the final norm and LM head only
at input positions ``logits_index[b]`` of each row: logits f32[B, 1, V] (a prefill's last
prompt token) or f32[B, N, V]. ``return_hidden=True`` returns the pre-final-norm hidden states
instead of logits (``[B, T, D]``, or ``[B, N, D]`` at ``logits_index``); ``lm_head(config,
params, hidden)`` maps them to logits, and ``compfn.rl.losses.token_logprobs_from_hidden``
to per-token log-probs in chunks (training never materialises ``[B, T, V]`` f32)::

    hidden, _ = apply(cfg, params, tokens, pos, segment_ids=seg, logits_index=src,
                      return_hidden=True)                       # [B, N, D]
    logits = lm_head(cfg, params, hidden)                       # f32[B, N, V]

Worked example: prefill two prompts of lengths 3 and 1 (right-padded to T=3), then greedy
decode inside a ``lax.while_loop``::

    cfg, params = compfn.model.load("/ckpt/smollm2")
    tokens = jnp.array([[5, 6, 7], [9, 0, 0]])
    seg = jnp.array([[1, 1, 1], [1, 0, 0]])                 # 0 = padding
    pos = jnp.broadcast_to(jnp.arange(3), (2, 3))
    cache = init_cache(cfg, batch=2, max_len=16)
    logits, cache = apply(cfg, params, tokens, pos, segment_ids=seg, cache=cache)
    # cache.index == [3, 1]; cache.pos[1] == [0, -1, -1, -1, ...]
    lengths = seg.sum(1)                                    # [3, 1]
    nxt = jnp.argmax(logits[jnp.arange(2), lengths - 1], -1)  # last valid logit of each row

    def body(state):
      i, tok, cache, out = state
      lg, cache = apply(cfg, params, tok[:, None], (lengths + i)[:, None], cache=cache)
      tok = jnp.argmax(lg[:, 0], -1)
      return i + 1, tok, cache, out.at[:, i].set(tok)
    # row 0 writes slots 3, 4, ... at positions 3, 4, ...; row 1 writes slots 1, 2, ...
    # (its padding slots are overwritten) at positions 1, 2, ...
    _, _, cache, out = jax.lax.while_loop(lambda s: s[0] < 8, body,
                                          (0, nxt, cache, jnp.zeros((2, 8), jnp.int32)))

Gemma 2's alternating local/global attention runs under ``nn.scan``: the per-layer
'is sliding' flag (and the layer index, which selects the cache slice) is a scanned input, so
all layers share one compiled body.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compfn.model.config import ModelConfig

Array = jax.Array
_NEG = -1e30  # finite: a fully masked (padding) query row gives a uniform softmax, not NaN


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def attention_softmax(x: Array, axis: int = -1) -> Array:
  """``jax.nn.softmax(x, axis)`` with the normaliser applied as ONE reciprocal per row and a
  multiply per element, instead of an element-wise divide, and the same custom JVP
  (``y * (dx - sum(y * dx))``). Values agree with ``jax.nn.softmax`` to ~1 ulp. XLA:CPU's
  vector divide is several times slower than a multiply: over the ``[B, heads, T, S]`` scores
  of a training step the change took the char model's SFT step from 0.58 to 0.48 s (batch
  128 x 128, ``python tools/benchmark.py train --models char``, 2 idle cores)."""
  m = jax.lax.stop_gradient(jnp.max(x, axis, keepdims=True))
  e = jnp.exp(x - m)
  return e * (1.0 / jnp.sum(e, axis, keepdims=True))


@attention_softmax.defjvp
def _attention_softmax_jvp(axis, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  y = attention_softmax(x, axis)
  return y, y * (x_dot - (y * x_dot).sum(axis, keepdims=True))


# Logical axis names.
BATCH, LENGTH, EMBED, VOCAB, MLP = "batch", "length", "embed", "vocab", "mlp"
HEADS, KV_HEADS, HEAD_DIM, LAYERS = "heads", "kv_heads", "head_dim", "layers"
CACHE_AXES = (LAYERS, BATCH, LENGTH, KV_HEADS, HEAD_DIM)


@flax.struct.dataclass
class KVCache:
  k: Array  # [layers, B, max_len, kv_heads, head_dim]
  v: Array  # [layers, B, max_len, kv_heads, head_dim]
  pos: Array  # [B, max_len] int32; -1 = empty slot
  index: Array  # [B] int32; next slot to write

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache (all slots empty, ``index`` 0)."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  return KVCache(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      pos=jnp.full((batch, max_len), -1, jnp.int32),
      index=jnp.zeros((batch,), jnp.int32),
  )


def extend_cache(cache: KVCache, extra: int) -> KVCache:
  """``cache`` with ``extra`` empty slots appended to its length axis (zeros, ``pos`` -1).

  A prefill needs only the prompt's slots: prefilling into a ``P``-slot cache and extending it
  by the ``N`` decode slots afterwards is the same cache as prefilling into ``P + N`` slots,
  without the prefill's attention and cache write spanning the ``N`` empty slots (an
  ``[B, K, G, P, P + N]`` score tensor and a scatter into the whole buffer).
  """
  if extra < 0:
    raise ValueError(f"extra must be >= 0, got {extra}")
  if extra == 0:
    return cache
  widen = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
  return cache.replace(
      k=jnp.pad(cache.k, widen),
      v=jnp.pad(cache.v, widen),
      pos=jnp.pad(cache.pos, ((0, 0), (0, extra)), constant_values=-1),
  )


# ----------------------------------------------------------------------------------- RoPE


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] f32, with 'linear' / Llama 3.1 ('llama3') scaling."""
  dim = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  inv = inv.astype(np.float32)
  if config.rope_type == "linear":
    inv = inv / np.float32(config.rope_factor)
  elif config.rope_type == "llama3":
    factor = config.rope_factor
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    old_len = config.rope_original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """Rotary embedding, HF 'rotate_half' layout. x: [B, T, N, Dh], positions: [B, T]."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# -------------------------------------------------------------------------------- modules


def _param(module: nn.Module, name: str, shape, axes, init=None):
  init = init or nn.initializers.normal(stddev=0.02)
  return module.param(
      name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(module.config.param_dtype)
  )


class RMSNorm(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    init = nn.initializers.zeros if c.norm_plus_one else nn.initializers.ones
    scale = _param(self, "scale", (c.d_model,), (EMBED,), init)
    return _rms_norm(c, scale, x)


def _rms_norm(c: ModelConfig, scale: Array, x: Array) -> Array:
  """RMSNorm of ``x[..., D]`` with weight ``scale[D]`` (the computation of :class:`RMSNorm`)."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + c.rms_norm_eps)
  if c.norm_plus_one:  # Gemma: (1 + w) in f32, then cast
    return (xf * (1.0 + scale.astype(jnp.float32))).astype(c.dtype)
  return scale.astype(c.dtype) * xf.astype(c.dtype)  # Llama: w * x_hat.to(dtype)


def _head_logits(c: ModelConfig, x: Array, head: Array) -> Array:
  """LM head: f32[B, T, V] logits of final-normed hidden states ``x[B, T, D]``; ``head`` is
  the embedding ``[V, D]`` with tied embeddings, else the LM head ``[D, V]``."""
  dt = jnp.dtype(c.dtype)
  if c.tie_word_embeddings:
    logits = jnp.einsum("btd,vd->btv", x, head.astype(dt), preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("btd,dv->btv", x, head.astype(dt), preferred_element_type=jnp.float32)
  logits = logits.astype(jnp.float32)
  if c.final_logit_softcap:
    logits = jnp.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
  return nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, layer=None, write_index=None):
    """``kv``: None, or the whole cache ``(k, v)`` [layers, B, S, kv_heads, head_dim]; this
    layer (``layer``, a scalar) writes its new keys/values into its slice and attends over it.
    Returns ``(y, kv)`` with the updated buffers (or None)."""
    c = self.config
    dt = jnp.dtype(c.dtype)
    d, h, kh, hd = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
    wq = _param(self, "wq", (d, h, hd), (EMBED, HEADS, HEAD_DIM))
    wk = _param(self, "wk", (d, kh, hd), (EMBED, KV_HEADS, HEAD_DIM))
    wv = _param(self, "wv", (d, kh, hd), (EMBED, KV_HEADS, HEAD_DIM))
    wo = _param(self, "wo", (h, hd, d), (HEADS, HEAD_DIM, EMBED))
    q = _dense(x, wq.astype(dt), (HEADS, HEAD_DIM))
    k = _dense(x, wk.astype(dt), (KV_HEADS, HEAD_DIM))
    v = _dense(x, wv.astype(dt), (KV_HEADS, HEAD_DIM))
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "bq", (h, hd), (HEADS, HEAD_DIM), zeros).astype(dt)
      k = k + _param(self, "bk", (kh, hd), (KV_HEADS, HEAD_DIM), zeros).astype(dt)
      v = v + _param(self, "bv", (kh, hd), (KV_HEADS, HEAD_DIM), zeros).astype(dt)
    q = nn.with_logical_constraint(q, (BATCH, LENGTH, HEADS, HEAD_DIM))
    k = nn.with_logical_constraint(k, (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    v = nn.with_logical_constraint(v, (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    inv_freq = rope_inv_freq(c)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    if kv is not None:
      # Write only the chunk: rows b, slots start[b] .. start[b]+T-1 of layer ``layer`` of the
      # whole [L, B, S, ...] buffer (a scatter XLA does in place on the scan carry / donated
      # cache), then read this layer's slice back to attend over it.
      k_all, v_all = kv
      b, t = k.shape[:2]
      # dynamic_update_slice's clamp: a chunk that would run past the end starts earlier.
      start = jnp.clip(write_index, 0, k_all.shape[2] - t)
      rows = jnp.arange(b, dtype=jnp.int32)[:, None]
      slots = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
      if t == k_all.shape[2]:
        # The chunk fills every slot (a prefill into a P-slot cache): the clip makes every
        # start 0, so the write is the whole layer, a dynamic_update_slice on the layer axis
        # that the SPMD partitioner keeps batch-sharded (it replicates the row scatter below).
        write = lambda buf, new: jax.lax.dynamic_update_index_in_dim(  # noqa: E731
            buf, new.astype(buf.dtype)[None], layer, 0
        )
      else:
        write = lambda buf, new: buf.at[layer, rows, slots].set(  # noqa: E731
            new.astype(buf.dtype),
            indices_are_sorted=True,
            unique_indices=True,
            mode="promise_in_bounds",
        )
      k_all = nn.with_logical_constraint(write(k_all, k), CACHE_AXES)
      v_all = nn.with_logical_constraint(write(v_all, v), CACHE_AXES)
      kv = (k_all, v_all)
      k = nn.with_logical_constraint(k_all[layer], CACHE_AXES[1:]).astype(dt)
      v = nn.with_logical_constraint(v_all[layer], CACHE_AXES[1:]).astype(dt)

    if h > kh:  # grouped queries (SmolLM2, Llama 3, Qwen2, Gemma 2)
      out = _grouped_attention(c, q, k, v, mask, dt)
    else:  # one query head per key head: the einsums, as measured in the train benchmarks
      b, t = q.shape[:2]
      qg = q.reshape(b, t, kh, h // kh, hd)
      scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
      scores = scores * c.attn_scale
      if c.attn_logit_softcap:
        scores = jnp.tanh(scores / c.attn_logit_softcap) * c.attn_logit_softcap
      scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
      probs = attention_softmax(scores, axis=-1).astype(dt)
      out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, hd)
    out = nn.with_logical_constraint(out, (BATCH, LENGTH, HEADS, HEAD_DIM))
    y = _dense(out, wo.astype(dt), (EMBED,), contract=2)
    if c.out_bias:
      y = y + _param(self, "bo", (d,), (EMBED,), nn.initializers.zeros).astype(dt)
    return y, kv


def _grouped_attention(c, q: Array, k: Array, v: Array, mask: Array, dt) -> Array:
  """Grouped-query attention: ``q`` ``[B, T, H, Dh]``, ``k``/``v`` ``[B, S, K, Dh]``, ``mask``
  ``[B, T, S]`` -> ``[B, T, H, Dh]``.

  Both dots are plain batched matmuls over ``(B, K)`` with the query group and time merged into
  one ``G * T`` row axis (``[B, K, G*T, Dh] x [B, K, S, Dh]^T``), so the scores come out with
  the key axis minor and the mask, the softmax and the value dot read them without a transposing
  copy. As einsums (``'btkgd,bskd->bkgts'``) XLA:CPU laid the scores out key-major and copied
  queries, probabilities and outputs around each dot: SmolLM2's attention at B=64, T=S=109,
  61.7 -> 32.4 ms per layer forward, 107 -> 79 ms forward + backward. Used when the heads form
  groups (H > K); with one query head per key head the einsums stay."""
  b, t, h, hd = q.shape
  kh = k.shape[2]
  g = h // kh
  s_len = k.shape[1]
  qg = jnp.transpose(q.reshape(b, t, kh, g, hd), (0, 2, 3, 1, 4)).reshape(b, kh, g * t, hd)
  kk = jnp.transpose(k, (0, 2, 1, 3))  # [B, K, S, Dh]
  vv = jnp.transpose(v, (0, 2, 1, 3))
  batch = ((0, 1), (0, 1))
  scores = jax.lax.dot_general(
      qg, kk, (((3,), (3,)), batch), preferred_element_type=jnp.float32
  ).reshape(b, kh, g, t, s_len)
  scores = scores * c.attn_scale
  if c.attn_logit_softcap:
    scores = jnp.tanh(scores / c.attn_logit_softcap) * c.attn_logit_softcap
  scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
  probs = attention_softmax(scores, axis=-1).astype(dt).reshape(b, kh, g * t, s_len)
  out = jax.lax.dot_general(probs, vv.astype(dt), (((3,), (2,)), batch))  # [B, K, G*T, Dh]
  return jnp.transpose(out.reshape(b, kh, g, t, hd), (0, 3, 1, 2, 4)).reshape(b, t, h, hd)


def _dense(x: Array, w: Array, out_axes: tuple, contract: int = 1) -> Array:
  """``x[..., *K] @ w[*K, *F]`` (``contract`` = len(K) trailing axes of ``x``) ->
  ``[..., *F]`` as ONE 2-D matmul ``[rows, prod(K)] x [prod(K), prod(F)]``.

  Same values as the einsum, but autodiff's weight gradient is then a dot with a single
  contracting axis (the rows): with two (``'btd,btf->df'``) XLA:CPU first copies the [B, T, F]
  cotangent into a transposed layout, fused with the elementwise backward (measured: the
  SwiGLU backward's transposing copies were ~23% of a train step). ``out_axes``: logical axes
  of the trailing ``F`` axes of the result (the rows keep the batch sharding)."""
  lead, k_shape = x.shape[: x.ndim - contract], x.shape[x.ndim - contract :]
  k = math.prod(k_shape)
  feat = w.shape[contract:]
  y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1))
  y = nn.with_logical_constraint(y, (BATCH, out_axes[0]))
  return y.reshape(lead + feat)


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dt = jnp.dtype(c.dtype)
    wg = _param(self, "wi_gate", (c.d_model, c.mlp_dim), (EMBED, MLP)).astype(dt)
    wu = _param(self, "wi_up", (c.d_model, c.mlp_dim), (EMBED, MLP)).astype(dt)
    wo = _param(self, "wo", (c.mlp_dim, c.d_model), (MLP, EMBED)).astype(dt)
    gate = _dense(x, wg, (MLP,))
    up = _dense(x, wu, (MLP,))
    if c.activation == "silu":
      act = jax.nn.silu(gate)
    else:
      act = jax.nn.gelu(gate, approximate=True)
    hid = nn.with_logical_constraint(act * up, (BATCH, LENGTH, MLP))
    return _dense(hid, wo, (EMBED,))


class Block(nn.Module):
  """One decoder layer; ``nn.scan``-compatible: (carry, scanned, broadcast) -> (carry, ys).

  The carry is ``(x, kv)``: the residual stream and the whole KV cache ``(k, v)`` (or None), so
  a cached step updates the cache in place instead of slicing it in and stacking it out."""

  config: ModelConfig

  @nn.compact
  def __call__(self, carry, layer_in, shared):
    c = self.config
    x, kv = carry
    sliding, layer = layer_in
    positions, mask, dist, write_index = shared
    if c.sliding_window:
      mask = mask & (jnp.logical_not(sliding) | (dist < c.sliding_window))
    h = RMSNorm(c, name="pre_attn_norm")(x)
    h, kv = Attention(c, name="attn")(h, positions, mask, kv, layer, write_index)
    if c.post_norms:
      h = RMSNorm(c, name="post_attn_norm")(h)
    x = x + h
    h = RMSNorm(c, name="pre_mlp_norm")(x)
    h = Mlp(c, name="mlp")(h)
    if c.post_norms:
      h = RMSNorm(c, name="post_mlp_norm")(h)
    x = nn.with_logical_constraint(x + h, (BATCH, LENGTH, EMBED))
    return (x, kv), None


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
  """``__call__(tokens, positions, segment_ids, attn_mask, cache, logits_index,
  return_hidden) -> (logits f32 | pre-norm hidden states, cache)``."""

  config: ModelConfig

  @nn.compact
  def __call__(
      self,
      tokens: Array,
      positions: Array,
      segment_ids: Optional[Array] = None,
      attn_mask: Optional[Array] = None,
      cache: Optional[KVCache] = None,
      logits_index: Optional[Array] = None,
      return_hidden: bool = False,
  ):
    c = self.config
    dt = jnp.dtype(c.dtype)
    tokens = jnp.asarray(tokens, jnp.int32)
    positions = jnp.asarray(positions, jnp.int32)
    valid = jnp.ones(tokens.shape, bool) if segment_ids is None else jnp.asarray(segment_ids) > 0
    q_pos = positions
    new_pos = jnp.where(valid, positions, -1)

    if cache is None:
      key_pos = new_pos
      write_index = None
      mask = key_pos[:, None, :] >= 0
      if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    else:
      write_index = cache.index
      key_pos = jax.vmap(lambda p, n, i: jax.lax.dynamic_update_slice(p, n, (i,)))(
          cache.pos, new_pos, write_index
      )
      mask = key_pos[:, None, :] >= 0
    dist = q_pos[:, :, None] - key_pos[:, None, :]
    mask &= dist >= 0
    if attn_mask is not None:
      mask &= attn_mask.astype(bool)

    embedding = _param(self, "token_embed", (c.vocab_size, c.d_model), (VOCAB, EMBED))
    x = jnp.take(embedding, tokens, axis=0).astype(dt)
    if c.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(c.d_model), dt)
    x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))

    block = Block
    if c.remat != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
    scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast),
        length=c.num_layers,
        unroll=c.scan_unroll,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )
    sliding = jnp.asarray(c.sliding_layers, bool)
    layer_in = (sliding, jnp.arange(c.num_layers, dtype=jnp.int32))
    kv = None if cache is None else (cache.k, cache.v)
    (x, kv), _ = scanned(c, name="layers")((x, kv), layer_in, (positions, mask, dist, write_index))

    if logits_index is not None:  # final norm + head only at the given positions of each row
      index = jnp.asarray(logits_index, jnp.int32)
      index = index.reshape(index.shape[0], -1)  # [B] -> [B, 1]; [B, N]
      x = jnp.take_along_axis(x, index[:, :, None], axis=1)
      x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
    if return_hidden:
      out = x  # pre-final-norm residual stream; ``lm_head`` maps it to logits
    else:
      x = RMSNorm(c, name="final_norm")(x)
      head = (
          embedding
          if c.tie_word_embeddings
          else _param(self, "lm_head", (c.d_model, c.vocab_size), (EMBED, VOCAB))
      )
      out = _head_logits(c, x, head)

    new_cache = None
    if cache is not None:
      t = tokens.shape[1]
      advance = jnp.max(jnp.where(valid, jnp.arange(1, t + 1), 0), axis=1)
      new_cache = KVCache(
          k=kv[0], v=kv[1], pos=key_pos, index=cache.index + advance.astype(jnp.int32)
      )
    return out, new_cache


# ------------------------------------------------------------------------- functional API


def _dummy_inputs(batch=1, length=1):
  return jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch, length), jnp.int32)


def init_params(config: ModelConfig, rng: Array, boxed: bool = False) -> Any:
  """Random params (normal(0.02) kernels). ``boxed=True`` keeps ``nn.LogicallyPartitioned``."""
  variables = Transformer(config).init(rng, *_dummy_inputs())
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)


def param_logical_axes(config: ModelConfig) -> Any:
  """Pytree (like params) of ``PartitionSpec`` over logical axis names, e.g.
  ``layers/attn/wq -> PartitionSpec('layers', 'embed', 'heads', 'head_dim')``."""
  boxed = jax.eval_shape(
      lambda: Transformer(config).init(jax.random.PRNGKey(0), *_dummy_inputs())["params"]
  )
  return nn.get_partition_spec(boxed)


def apply(
    config: ModelConfig,
    params: Any,
    tokens: Array,
    positions: Optional[Array] = None,
    *,
    segment_ids: Optional[Array] = None,
    attn_mask: Optional[Array] = None,
    cache: Optional[KVCache] = None,
    logits_index: Optional[Array] = None,
    return_hidden: bool = False,
) -> tuple[Array, Optional[KVCache]]:
  """Forward pass: ``(logits f32[B, T, V], new_cache or None)``. Not jitted (jit the caller).

  ``positions`` defaults to 0..T-1 in every row. See the module docstring for masking and
  the cache protocol. ``logits_index`` (int32[B] or int32[B, N], optional): compute the final
  norm and LM head only at input positions ``logits_index[b]`` of each row -> logits
  f32[B, 1, V] (int32[B]: e.g. a prefill that only needs each prompt's last position; the cache
  is written as usual) or f32[B, N, V] (e.g. the response positions of teacher forcing).
  ``return_hidden=True`` returns the pre-final-norm hidden states ``[B, T, D]`` (or
  ``[B, N, D]`` at ``logits_index``) in the compute dtype instead of logits: map them to logits
  with :func:`lm_head`, or to per-token log-probs chunk by chunk with
  ``compfn.rl.losses.token_logprobs_from_hidden`` (no ``[B, T, V]`` tensor at once).
  """
  tokens = jnp.asarray(tokens)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  return Transformer(config).apply(
      {"params": params},
      tokens,
      positions,
      segment_ids,
      attn_mask,
      cache,
      logits_index,
      return_hidden,
  )


def lm_head(config: ModelConfig, params: Any, hidden: Array) -> Array:
  """Final norm + LM head (+ final soft-cap) of pre-norm ``hidden[B, T, D]`` (from
  ``apply(..., return_hidden=True)``): logits f32[B, T, V], exactly ``apply``'s logits at those
  positions. Uses only ``params['final_norm']`` and the head (``lm_head``, or ``token_embed``
  with tied embeddings)."""
  x = _rms_norm(config, params["final_norm"]["scale"], hidden)
  head = params["token_embed"] if config.tie_word_embeddings else params["lm_head"]
  return _head_logits(config, x, head)


# ------------------------------------------------- grouped responses: one prompt, G responses


def response_hidden(
    config: ModelConfig,
    params: Any,
    prompts: Array,
    prompt_lens: Array,
    responses: Array,
    response_mask: Array,
    num_samples: int,
) -> Array:
  """Pre-final-norm hidden states f32[P*G, N, D] at the positions that predict each response
  token (the prompt's last token for token 0, response token j-1 for token j), for G =
  ``num_samples`` responses per prompt, with each prompt's forward pass computed ONCE.

  ``prompts[P, Lp]`` right-padded with ``prompt_lens[P]``; ``responses[P*G, N]`` (row i
  continues prompt i // G at position ``prompt_len + j``), ``response_mask[P*G, N]`` its real
  tokens. The same values as ``apply`` on the ``[prompt | response]`` rows of
  ``compfn.sampling.full_sequences`` with ``logits_index`` at those positions and
  ``return_hidden=True`` (up to float summation order), but the prompt's tokens run through
  the layers once per group instead of G times, and a response attends to its prompt's keys
  without the [rows, Lp + N, Lp + N] score tensor: per layer the prompt attends to itself
  ([P, Lp, Lp]), and the responses' queries to the prompt's keys ([P, G*N, Lp]) and to their
  own row's keys ([P*G, N, N]), with one softmax over both key sets. GRPO's train half runs
  on this (G = 8: 29% fewer positions and a third fewer attention scores at the CPU demo's
  shapes)."""
  c = config
  dt = jnp.dtype(c.dtype)
  p, lp = prompts.shape
  r, n = responses.shape
  g = num_samples
  if r != p * g:
    raise ValueError(f"{r} responses for {p} prompts x {g} samples")
  h, kh, hd = c.num_heads, c.num_kv_heads, c.head_dim
  grp = h // kh
  n1 = n - 1  # the last response token predicts nothing: it is not an input
  prompts = jnp.asarray(prompts, jnp.int32)
  prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
  ar_p = jnp.arange(lp, dtype=jnp.int32)
  ar_s = jnp.arange(n1, dtype=jnp.int32)
  p_valid = ar_p[None, :] < prompt_lens[:, None]  # [P, Lp]
  p_pos = jnp.broadcast_to(ar_p, (p, lp))
  s_tok = jnp.asarray(responses, jnp.int32)[:, :n1]
  s_valid = jnp.asarray(response_mask).astype(bool)[:, :n1]
  s_pos = jnp.repeat(prompt_lens, g)[:, None] + ar_s[None, :]  # [R, N1]
  # Masks: prompt causal over its valid keys; response -> prompt: every valid prompt key (all
  # precede it); response -> response: causal over the row's valid keys.
  pp_mask = p_valid[:, None, :] & (ar_p[:, None] >= ar_p[None, :])[None]  # [P, Lq, Lk]
  ss_mask = s_valid.reshape(p, g, 1, n1) & (ar_s[:, None] >= ar_s[None, :])  # [P, G, Nq, Nk]
  sp_mask = p_valid  # [P, Lk]
  if c.sliding_window:
    pp_dist = ar_p[:, None] - ar_p[None, :]  # [Lq, Lk]
    sp_dist = s_pos.reshape(p, g, n1)[..., None] - p_pos[:, None, None, :]  # [P, G, Nq, Lk]
    ss_dist = ar_s[:, None] - ar_s[None, :]
  inv_freq = rope_inv_freq(c)
  embedding = params["token_embed"]
  xp = jnp.take(embedding, prompts, axis=0).astype(dt)
  xs = jnp.take(embedding, s_tok, axis=0).astype(dt)
  if c.scale_embeddings:
    xp, xs = (x * jnp.asarray(math.sqrt(c.d_model), dt) for x in (xp, xs))
  seq_axes = (BATCH, LENGTH, EMBED)
  xp, xs = nn.with_logical_constraint(xp, seq_axes), nn.with_logical_constraint(xs, seq_axes)

  def proj(a, x, pos):
    q = _dense(x, a["wq"].astype(dt), (HEADS, HEAD_DIM))
    k = _dense(x, a["wk"].astype(dt), (KV_HEADS, HEAD_DIM))
    v = _dense(x, a["wv"].astype(dt), (KV_HEADS, HEAD_DIM))
    if c.qkv_bias:
      q, k, v = q + a["bq"].astype(dt), k + a["bk"].astype(dt), v + a["bv"].astype(dt)
    return apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq), v

  def scores(eq, a, b, mask):
    sc = jnp.einsum(eq, a, b, preferred_element_type=jnp.float32) * c.attn_scale
    if c.attn_logit_softcap:
      sc = jnp.tanh(sc / c.attn_logit_softcap) * c.attn_logit_softcap
    return jnp.where(mask, sc, _NEG)

  def layer(carry, xs_in):
    xp, xs = carry
    lyr, sliding = xs_in
    a = lyr["attn"]
    hp = _rms_norm(c, lyr["pre_attn_norm"]["scale"], xp)
    hs = _rms_norm(c, lyr["pre_attn_norm"]["scale"], xs)
    qp, kp, vp = proj(a, hp, p_pos)
    qs, ks, vs = proj(a, hs, s_pos)
    m_pp, m_sp, m_ss = pp_mask, sp_mask[:, None, None, :], ss_mask
    if c.sliding_window:
      win = lambda d: jnp.logical_not(sliding) | (d < c.sliding_window)  # noqa: E731
      m_pp, m_sp, m_ss = (
          m_pp & win(pp_dist)[None],
          m_sp & win(sp_dist),
          m_ss & win(ss_dist)[None, None],
      )
    # The prompt attends to itself (as ``Attention``).
    sc = scores("btkgd,bskd->bkgts", qp.reshape(p, lp, kh, grp, hd), kp, m_pp[:, None, None])
    probs = attention_softmax(sc, axis=-1).astype(dt)
    out_p = jnp.einsum("bkgts,bskd->btkgd", probs, vp).reshape(p, lp, h, hd)
    # Responses: queries [P, G, N1, K, grp, Dh] over the prompt's keys and their own.
    q6 = qs.reshape(p, g, n1, kh, grp, hd)
    sc_p = scores("pjqkgd,pskd->pkgjqs", q6, kp, m_sp[:, None, None])  # [P,K,grp,G,N1,Lp]
    sc_s = scores(
        "pjqkgd,pjskd->pkgjqs", q6, ks.reshape(p, g, n1, kh, hd), m_ss[:, None, None]
    )  # [P, K, grp, G, N1, N1]
    mx = jnp.maximum(sc_p.max(-1, keepdims=True), sc_s.max(-1, keepdims=True))
    e_p, e_s = jnp.exp(sc_p - mx), jnp.exp(sc_s - mx)
    den = e_p.sum(-1) + e_s.sum(-1)  # [P, K, grp, G, N1]
    o = jnp.einsum("pkgjqs,pskd->pjqkgd", e_p.astype(dt), vp) + jnp.einsum(
        "pkgjqs,pjskd->pjqkgd", e_s.astype(dt), vs.reshape(p, g, n1, kh, hd)
    )
    o = o / jnp.transpose(den, (0, 3, 4, 1, 2))[..., None].astype(dt)
    out_s = o.reshape(r, n1, h, hd)
    new = []
    for x, out in ((xp, out_p), (xs, out_s)):
      y = _dense(out, a["wo"].astype(dt), (EMBED,), contract=2)
      if c.out_bias:
        y = y + a["bo"].astype(dt)
      if c.post_norms:
        y = _rms_norm(c, lyr["post_attn_norm"]["scale"], y)
      x = x + y
      hn = _rms_norm(c, lyr["pre_mlp_norm"]["scale"], x)
      mp = lyr["mlp"]
      gate = _dense(hn, mp["wi_gate"].astype(dt), (MLP,))
      up = _dense(hn, mp["wi_up"].astype(dt), (MLP,))
      act = jax.nn.silu(gate) if c.activation == "silu" else jax.nn.gelu(gate, approximate=True)
      y = _dense(act * up, mp["wo"].astype(dt), (EMBED,))
      if c.post_norms:
        y = _rms_norm(c, lyr["post_mlp_norm"]["scale"], y)
      new.append(nn.with_logical_constraint(x + y, seq_axes))
    return tuple(new), None

  if c.remat != "none":
    layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
  sliding = jnp.asarray(c.sliding_layers, bool)
  (xp, xs), _ = jax.lax.scan(layer, (xp, xs), (params["layers"], sliding), unroll=c.scan_unroll)
  first = jnp.take_along_axis(xp, jnp.clip(prompt_lens - 1, 0, lp - 1)[:, None, None], axis=1)
  first = jnp.repeat(first, g, axis=0)  # [R, 1, D]: predicts response token 0
  return nn.with_logical_constraint(jnp.concatenate([first, xs], axis=1), seq_axes)


@functools.partial(jax.jit, static_argnums=0)
def _logits(config, params, tokens):
  return apply(config, params, tokens)[0]


def logits(config: ModelConfig, params: Any, tokens: Array) -> Array:
  """Causal logits f32[B, T, vocab] for unpadded ``tokens[B, T]`` at positions 0..T-1."""
  return _logits(config, params, jnp.asarray(tokens, jnp.int32))


# ------------------------------------------------------------ one-token decode (sampler loop)
#
# ``apply`` with a cache is general (any T, padding, packing) and runs the layers under
# ``nn.scan``. Inside a decode ``while_loop`` that costs, every step and every layer, a copy of
# the layer's weights out of the stacked ``[L, ...]`` params (the scan's dynamic slice) and a
# transposed copy of the layer's whole cache slice into the layout of the attention dots. The
# functions below are the same computation for T = 1 with every token valid (what
# ``compfn.sampling`` decodes): layers unrolled over per-layer weights sliced ONCE outside the
# loop (``unstack_layers``), and a per-layer cache in the attention's own layout
# (``DecodeCache``: keys ``[B, kv_heads, head_dim, S]``, values ``[B, kv_heads, S, head_dim]``,
# so both attention dots read their operand as a plain batched [M, K] x [K, N] matmul).


@flax.struct.dataclass
class DecodeCache:
  """Per-layer KV cache in the decode layout (convert with ``to_decode_cache`` /
  ``from_decode_cache``): keys ``k[i]`` ``[B, kv_heads, head_dim, max_len]`` (transposed),
  values ``v[i]`` ``[B, kv_heads, max_len, head_dim]``; ``pos`` and ``index`` as in
  :class:`KVCache`. One row (B = 1) is stored without its batch axis (``k[i]`` ``[kv_heads,
  head_dim, max_len]``, ``v[i]`` ``[kv_heads, max_len, head_dim]``): with it, XLA:CPU drops
  the size-1 axis for the attention dot, fuses the cache write once per layout and copies the
  whole cache twice per layer and step to keep the two apart (measured: 240 copies per
  SmolLM2 decode step at B = 1, ~2 ms of ~31)."""

  k: tuple
  v: tuple
  pos: Array
  index: Array

  @property
  def one_row(self) -> bool:
    return self.k[0].ndim == 3


DECODE_K_AXES = (BATCH, KV_HEADS, HEAD_DIM, LENGTH)
DECODE_V_AXES = (BATCH, KV_HEADS, LENGTH, HEAD_DIM)
_K_PERM, _V_PERM = (0, 2, 3, 1), (0, 2, 1, 3)  # [B, S, K, Dh] -> decode layout
_K_INV, _V_INV = (0, 3, 1, 2), (0, 2, 1, 3)  # decode layout -> [B, S, K, Dh]


def to_decode_cache(cache: KVCache) -> DecodeCache:
  """``KVCache`` ``[L, B, S, K, Dh]`` -> the per-layer decode layout (one copy, outside the
  decode loop)."""
  split = lambda buf, perm, axes: tuple(  # noqa: E731
      nn.with_logical_constraint(jnp.transpose(buf[i], perm), axes) for i in range(buf.shape[0])
  )
  dc = DecodeCache(
      k=split(cache.k, _K_PERM, DECODE_K_AXES),
      v=split(cache.v, _V_PERM, DECODE_V_AXES),
      pos=cache.pos,
      index=cache.index,
  )
  if cache.k.shape[1] == 1:  # one row: no batch axis (see DecodeCache)
    dc = dc.replace(k=tuple(b[0] for b in dc.k), v=tuple(b[0] for b in dc.v))
  return dc


def from_decode_cache(dc: DecodeCache) -> KVCache:
  """Inverse of :func:`to_decode_cache`."""
  if dc.one_row:
    dc = dc.replace(k=tuple(b[None] for b in dc.k), v=tuple(b[None] for b in dc.v))
  stack = lambda bufs, perm: nn.with_logical_constraint(  # noqa: E731
      jnp.stack([jnp.transpose(b, perm) for b in bufs]), CACHE_AXES
  )
  return KVCache(k=stack(dc.k, _K_INV), v=stack(dc.v, _V_INV), pos=dc.pos, index=dc.index)


def unstack_layers(config: ModelConfig, params: Any, fuse_projections: bool = False) -> tuple:
  """Per-layer params (``params['layers']`` sliced along its leading axis), for
  :func:`decode_step`; call it outside the decode loop so the slices are made once.

  ``fuse_projections``: each layer's ``wq | wk | wv`` as one ``attn['wqkv']`` ``[D, (H + 2K)
  * Dh]`` and ``wi_gate | wi_up`` as one ``mlp['wi']`` ``[D, 2F]`` (the separate ones are
  left out), so a decode step runs 4 matmuls per layer instead of 7. The concatenation costs
  ~20 ms per decode call at SmolLM2's size (measured: 95 against 75 ms for a one-step call at
  B=1), against ~4 ms saved per step. For unsharded decoding: on a mesh that shards heads or the
  MLP, the concatenated weight mixes shards. SmolLM2-135M shapes on 2 CPU cores, 30 layers:
  one row 24.6 -> 21.2 ms per step (matrix-vector products); 4 and 16 rows the same within
  noise; 64 rows 73 -> 79 ms. ``compfn.sampling`` fuses for one unsharded row."""

  def layer(i):
    lp = jax.tree.map(lambda a: a[i], params["layers"])
    if not fuse_projections:
      return lp
    attn, mlp = dict(lp["attn"]), dict(lp["mlp"])
    d = attn["wq"].shape[0]
    attn["wqkv"] = jnp.concatenate([attn.pop(n).reshape(d, -1) for n in ("wq", "wk", "wv")], axis=1)
    mlp["wi"] = jnp.concatenate([mlp.pop("wi_gate"), mlp.pop("wi_up")], axis=1)
    return {**lp, "attn": attn, "mlp": mlp}

  return tuple(layer(i) for i in range(config.num_layers))


def _write_slot(buf: Array, new: Array, slot: Array, axis: int) -> Array:
  """``buf`` ``[B, ...]`` with row ``b``'s ``new[b]`` (``buf``'s shape without ``axis``)
  written at index ``slot[b]`` (in range) of ``axis``: one scatter, in place in a loop carry."""
  rows = jnp.arange(buf.shape[0], dtype=jnp.int32)
  index = (rows,) + (slice(None),) * (axis - 1) + (slot,)
  return buf.at[index].set(
      new.astype(buf.dtype),
      indices_are_sorted=True,
      unique_indices=True,
      mode="promise_in_bounds",
  )


def decode_step(
    config: ModelConfig,
    params: Any,
    layers: tuple,
    tokens: Array,
    positions: Array,
    cache: DecodeCache,
) -> tuple[Array, DecodeCache]:
  """One cached decode step for ``tokens[B]`` at ``positions[B]`` (every token valid):
  ``(logits f32[B, V], new cache)``, the same computation as ``apply(config, params,
  tokens[:, None], positions[:, None], cache=...)`` (logits ``[:, 0]``). ``layers`` is
  ``unstack_layers(config, params)``, with or without ``fuse_projections``."""
  c = config
  dt = jnp.dtype(c.dtype)
  b = tokens.shape[0]
  h, kh, hd = c.num_heads, c.num_kv_heads, c.head_dim
  s_len = cache.pos.shape[1]
  tokens = jnp.asarray(tokens, jnp.int32)
  positions = jnp.asarray(positions, jnp.int32)
  # The slot of the new token (``apply``'s dynamic_update_slice clamp for T = 1).
  slot = jnp.clip(cache.index, 0, s_len - 1)
  key_pos = _write_slot(cache.pos, positions, slot, axis=1)
  dist = positions[:, None] - key_pos  # [B, S]
  mask = (key_pos >= 0) & (dist >= 0)
  inv_freq = rope_inv_freq(c)
  row_axes = (BATCH, HEADS, HEAD_DIM)

  def rope(x):  # [B, N, Dh]
    return apply_rope(x[:, None], positions[:, None], inv_freq)[:, 0]

  embedding = params["token_embed"]
  x = jnp.take(embedding, tokens, axis=0).astype(dt)
  if c.scale_embeddings:
    x = x * jnp.asarray(math.sqrt(c.d_model), dt)
  x = nn.with_logical_constraint(x, (BATCH, EMBED))
  new_k, new_v = [], []
  for i, lp in enumerate(layers):
    a = lp["attn"]
    hn = _rms_norm(c, lp["pre_attn_norm"]["scale"], x)
    if "wqkv" in a:  # unstack_layers(fuse_projections=True)
      qkv = jnp.dot(hn, a["wqkv"].astype(dt))
      q = qkv[:, : h * hd].reshape(b, h, hd)
      k = qkv[:, h * hd : (h + kh) * hd].reshape(b, kh, hd)
      v = qkv[:, (h + kh) * hd :].reshape(b, kh, hd)
    else:
      q = _dense(hn, a["wq"].astype(dt), (HEADS, HEAD_DIM))
      k = _dense(hn, a["wk"].astype(dt), (KV_HEADS, HEAD_DIM))
      v = _dense(hn, a["wv"].astype(dt), (KV_HEADS, HEAD_DIM))
    if c.qkv_bias:
      q, k, v = q + a["bq"].astype(dt), k + a["bk"].astype(dt), v + a["bv"].astype(dt)
    q = rope(nn.with_logical_constraint(q, row_axes))
    k = rope(nn.with_logical_constraint(k, (BATCH, KV_HEADS, HEAD_DIM)))
    v = nn.with_logical_constraint(v, (BATCH, KV_HEADS, HEAD_DIM))
    # In place (the while_loop carry): keys at [b, :, :, slot[b]], values at [b, :, slot[b]].
    if cache.one_row:  # [K, Dh, S] / [K, S, Dh]: one dynamic_update_slice each
      kc = jax.lax.dynamic_update_slice(
          cache.k[i], k[0][:, :, None].astype(cache.k[i].dtype), (0, 0, slot[0])
      )
      vc = jax.lax.dynamic_update_slice(
          cache.v[i], v[0][:, None, :].astype(cache.v[i].dtype), (0, slot[0], 0)
      )
      new_k.append(kc)
      new_v.append(vc)
      kc, vc = kc[None], vc[None]
    else:
      kc = nn.with_logical_constraint(_write_slot(cache.k[i], k, slot, axis=3), DECODE_K_AXES)
      vc = nn.with_logical_constraint(_write_slot(cache.v[i], v, slot, axis=2), DECODE_V_AXES)
      new_k.append(kc)
      new_v.append(vc)
    qg = q.reshape(b, kh, h // kh, hd)
    scores = (
        jnp.einsum("bkgd,bkds->bkgs", qg, kc.astype(dt), preferred_element_type=jnp.float32)
        * c.attn_scale
    )
    if c.attn_logit_softcap:
      scores = jnp.tanh(scores / c.attn_logit_softcap) * c.attn_logit_softcap
    m = mask
    if c.sliding_window and c.sliding_layers[i]:
      m = m & (dist < c.sliding_window)
    scores = jnp.where(m[:, None, None, :], scores, _NEG)
    probs = attention_softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("bkgs,bksd->bkgd", probs, vc.astype(dt)).reshape(b, h, hd)
    out = nn.with_logical_constraint(out, row_axes)
    y = _dense(out, a["wo"].astype(dt), (EMBED,), contract=2)
    if c.out_bias:
      y = y + a["bo"].astype(dt)
    if c.post_norms:
      y = _rms_norm(c, lp["post_attn_norm"]["scale"], y)
    x = x + y
    hn = _rms_norm(c, lp["pre_mlp_norm"]["scale"], x)
    mp = lp["mlp"]
    if "wi" in mp:  # unstack_layers(fuse_projections=True)
      gate, up = jnp.split(jnp.dot(hn, mp["wi"].astype(dt)), 2, axis=1)
    else:
      gate = _dense(hn, mp["wi_gate"].astype(dt), (MLP,))
      up = _dense(hn, mp["wi_up"].astype(dt), (MLP,))
    act = jax.nn.silu(gate) if c.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    hid = nn.with_logical_constraint(act * up, (BATCH, MLP))
    y = _dense(hid, mp["wo"].astype(dt), (EMBED,))
    if c.post_norms:
      y = _rms_norm(c, lp["post_mlp_norm"]["scale"], y)
    x = nn.with_logical_constraint(x + y, (BATCH, EMBED))
  x = _rms_norm(c, params["final_norm"]["scale"], x)
  head = embedding if c.tie_word_embeddings else params["lm_head"]
  logits = _head_logits(c, x[:, None], head)[:, 0]
  new_cache = DecodeCache(k=tuple(new_k), v=tuple(new_v), pos=key_pos, index=cache.index + 1)
  return logits, new_cache
