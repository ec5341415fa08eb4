"""HF checkpoint import/export: safetensors folders (single file or sharded) <-> params.

    config, params = load("/ckpt/Llama-3.1-8B-Instruct")           # folder or .gguf file
    config, params = load(path, param_dtype="bfloat16", remat="full")  # ModelConfig overrides
    save_hf_folder("/out", config, params)                          # transformers can load it

Name/shape mapping (per layer i; ``L`` = stacked scan axis, H heads, K kv heads, Dh head dim):

    model.embed_tokens.weight                [V, D]      token_embed            [V, D]
    model.layers.i.self_attn.q_proj.weight   [H*Dh, D]   layers/attn/wq         [L, D, H, Dh]
    model.layers.i.self_attn.k_proj.weight   [K*Dh, D]   layers/attn/wk         [L, D, K, Dh]
    model.layers.i.self_attn.v_proj.weight   [K*Dh, D]   layers/attn/wv         [L, D, K, Dh]
    model.layers.i.self_attn.o_proj.weight   [D, H*Dh]   layers/attn/wo         [L, H, Dh, D]
    model.layers.i.self_attn.{q,k,v}_proj.bias           layers/attn/b{q,k,v}   [L, N, Dh]
    model.layers.i.self_attn.o_proj.bias     [D]         layers/attn/bo         [L, D]
    model.layers.i.mlp.{gate,up}_proj.weight [F, D]      layers/mlp/wi_{gate,up} [L, D, F]
    model.layers.i.mlp.down_proj.weight      [D, F]      layers/mlp/wo          [L, F, D]
    model.layers.i.input_layernorm.weight                layers/pre_attn_norm/scale
    model.layers.i.post_attention_layernorm.weight       llama/qwen2: layers/pre_mlp_norm/scale
                                                         gemma2: layers/post_attn_norm/scale
    model.layers.i.pre_feedforward_layernorm.weight      gemma2: layers/pre_mlp_norm/scale
    model.layers.i.post_feedforward_layernorm.weight     gemma2: layers/post_mlp_norm/scale
    model.norm.weight                                    final_norm/scale
    lm_head.weight                           [V, D]      lm_head [D, V] (absent when tied)

Every conversion is a transpose/reshape/stack, so import -> export is bitwise exact.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import jax
import ml_dtypes
import numpy as np

from compfn.model.config import ModelConfig

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
# Non-parameter tensors some checkpoints carry; ignored on import.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not match its config."""


def _np_dtype(name: str):
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _layer_map(config: ModelConfig):
  """[(hf suffix, (group, name), hf shape, to_ours, to_hf)] for one layer."""
  d, h, k, hd, f = (
      config.d_model,
      config.num_heads,
      config.num_kv_heads,
      config.head_dim,
      config.mlp_dim,
  )
  attn = "model.layers.{}.self_attn."
  mlp = "model.layers.{}.mlp."

  def proj_in(n):  # [N*Dh, D] <-> [D, N, Dh]
    return (lambda w: w.T.reshape(d, n, hd), lambda p: p.reshape(d, n * hd).T)

  def bias(n):
    return (lambda b: b.reshape(n, hd), lambda p: p.reshape(n * hd))

  ident = (lambda w: w, lambda p: p)
  trans = (lambda w: w.T, lambda p: p.T)
  rows = [
      (attn + "q_proj.weight", ("attn", "wq"), (h * hd, d)) + proj_in(h),
      (attn + "k_proj.weight", ("attn", "wk"), (k * hd, d)) + proj_in(k),
      (attn + "v_proj.weight", ("attn", "wv"), (k * hd, d)) + proj_in(k),
      (
          attn + "o_proj.weight",
          ("attn", "wo"),
          (d, h * hd),
          lambda w: w.T.reshape(h, hd, d),
          lambda p: p.reshape(h * hd, d).T,
      ),
      (mlp + "gate_proj.weight", ("mlp", "wi_gate"), (f, d)) + trans,
      (mlp + "up_proj.weight", ("mlp", "wi_up"), (f, d)) + trans,
      (mlp + "down_proj.weight", ("mlp", "wo"), (d, f)) + trans,
  ]
  if config.qkv_bias:
    rows += [
        (attn + "q_proj.bias", ("attn", "bq"), (h * hd,)) + bias(h),
        (attn + "k_proj.bias", ("attn", "bk"), (k * hd,)) + bias(k),
        (attn + "v_proj.bias", ("attn", "bv"), (k * hd,)) + bias(k),
    ]
  if config.out_bias:
    rows.append((attn + "o_proj.bias", ("attn", "bo"), (d,)) + ident)
  norm = "model.layers.{}."
  if config.post_norms:
    norms = [
        ("input_layernorm", "pre_attn_norm"),
        ("post_attention_layernorm", "post_attn_norm"),
        ("pre_feedforward_layernorm", "pre_mlp_norm"),
        ("post_feedforward_layernorm", "post_mlp_norm"),
    ]
  else:
    norms = [("input_layernorm", "pre_attn_norm"), ("post_attention_layernorm", "pre_mlp_norm")]
  rows += [(norm + hf + ".weight", (ours, "scale"), (d,)) + ident for hf, ours in norms]
  return rows


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF tensor name the config implies, with its HF shape."""
  shapes = {
      "model.embed_tokens.weight": (config.vocab_size, config.d_model),
      "model.norm.weight": (config.d_model,),
  }
  if not config.tie_word_embeddings:
    shapes["lm_head.weight"] = (config.vocab_size, config.d_model)
  for name, _, shape, _, _ in _layer_map(config):
    for i in range(config.num_layers):
      shapes[name.format(i)] = shape
  return shapes


def _names_msg(names, limit=8):
  names = sorted(names)
  more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def params_from_hf(config: ModelConfig, state_dict: Mapping[str, Any]) -> dict:
  """HF state dict (name -> array, HF shapes) -> params pytree of numpy arrays in
  ``config.param_dtype``. Raises ``CheckpointError`` on missing/unexpected names or shapes."""
  sd = {n: t for n, t in state_dict.items() if not n.endswith(_IGNORED_SUFFIXES)}
  if config.tie_word_embeddings:
    sd.pop("lm_head.weight", None)  # some tied checkpoints store the duplicate
  expected = hf_shapes(config)
  missing = set(expected) - set(sd)
  unexpected = set(sd) - set(expected)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing tensors: {_names_msg(missing)}")
    if unexpected:
      parts.append(f"unexpected tensors: {_names_msg(unexpected)}")
    raise CheckpointError(
        f"checkpoint does not match the {config.family} config "
        f"({config.num_layers} layers): " + "; ".join(parts)
    )
  for name, shape in expected.items():
    got = tuple(np.shape(sd[name]))
    if got != tuple(shape):
      raise CheckpointError(
          f"tensor {name!r} has shape {got}, expected {tuple(shape)} " f"for this config"
      )
  dtype = _np_dtype(config.param_dtype)

  def conv(x):
    return np.ascontiguousarray(np.asarray(x).astype(dtype, copy=False))

  layers: dict[str, dict[str, np.ndarray]] = {}
  for name, (group, leaf), _, to_ours, _ in _layer_map(config):
    stacked = np.stack([to_ours(np.asarray(sd[name.format(i)])) for i in range(config.num_layers)])
    layers.setdefault(group, {})[leaf] = conv(stacked)
  params = {
      "token_embed": conv(sd["model.embed_tokens.weight"]),
      "layers": layers,
      "final_norm": {"scale": conv(sd["model.norm.weight"])},
  }
  if not config.tie_word_embeddings:
    params["lm_head"] = conv(np.asarray(sd["lm_head.weight"]).T)
  return params


def params_to_hf(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
  """Params pytree -> HF state dict (numpy, HF names and shapes; dtype kept). Exact inverse
  of ``params_from_hf``."""
  p = jax.tree_util.tree_map(np.asarray, params)
  out = {
      "model.embed_tokens.weight": p["token_embed"],
      "model.norm.weight": p["final_norm"]["scale"],
  }
  if not config.tie_word_embeddings:
    out["lm_head.weight"] = p["lm_head"].T
  for name, (group, leaf), shape, _, to_hf in _layer_map(config):
    stacked = p["layers"][group][leaf]
    if stacked.shape[0] != config.num_layers:
      raise CheckpointError(
          f"params layers/{group}/{leaf} has {stacked.shape[0]} layers, "
          f"config has {config.num_layers}"
      )
    for i in range(config.num_layers):
      out[name.format(i)] = to_hf(stacked[i])
  out = {n: np.ascontiguousarray(t) for n, t in out.items()}
  for name, shape in hf_shapes(config).items():
    if out[name].shape != tuple(shape):
      raise CheckpointError(
          f"params give tensor {name!r} shape {out[name].shape}, expected "
          f"{tuple(shape)} for this config"
      )
  return out


# --------------------------------------------------------------------------------- files


def _read_safetensors(file: str, names: Optional[list[str]] = None) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  if not os.path.exists(file):
    raise CheckpointError(f"safetensors file not found: {file}")
  try:
    with safe_open(file, framework="np") as f:
      keys = list(f.keys())
      if names is not None:
        absent = set(names) - set(keys)
        if absent:
          raise CheckpointError(
              f"{file} lacks tensors its index assigns to it: " f"{_names_msg(absent)}"
          )
        keys = names
      return {k: f.get_tensor(k) for k in keys}
  except CheckpointError:
    raise
  except Exception as e:  # SafetensorError: bad header, truncated data, ...
    raise CheckpointError(
        f"cannot read safetensors file {file} (corrupt or truncated?): " f"{type(e).__name__}: {e}"
    ) from e


def read_hf_state_dict(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF folder: ``model.safetensors`` or the sharded index + shards."""
  index = os.path.join(path, INDEX_FILE)
  single = os.path.join(path, SINGLE_FILE)
  if os.path.exists(index):
    try:
      with open(index) as fh:
        weight_map = json.load(fh)["weight_map"]
    except (ValueError, KeyError) as e:
      raise CheckpointError(f"cannot parse {index}: {e}") from e
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
      shards.setdefault(shard, []).append(name)
    absent = [s for s in shards if not os.path.exists(os.path.join(path, s))]
    if absent:
      raise CheckpointError(f"missing shard(s) {absent} referenced by {index}")
    sd: dict[str, np.ndarray] = {}
    for shard, names in sorted(shards.items()):
      sd.update(_read_safetensors(os.path.join(path, shard), names))
    return sd
  if os.path.exists(single):
    return _read_safetensors(single)
  present = sorted(os.listdir(path)) if os.path.isdir(path) else []
  raise CheckpointError(
      f"no {SINGLE_FILE} or {INDEX_FILE} in {path} (found: {present}); "
      f"only safetensors HF checkpoints are supported"
  )


def read_hf_config(path: str) -> dict:
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise CheckpointError(f"no {CONFIG_FILE} in {path}")
  try:
    with open(file) as fh:
      return json.load(fh)
  except ValueError as e:
    raise CheckpointError(f"cannot parse {file}: {e}") from e


def load_hf_folder(path: str, **overrides) -> tuple[ModelConfig, dict]:
  """(config, numpy params) from an HF folder; ``overrides`` go to ``ModelConfig.from_hf``."""
  config = ModelConfig.from_hf(read_hf_config(path), **overrides)
  return config, params_from_hf(config, read_hf_state_dict(path))


def save_hf_folder(
    path: str, config: ModelConfig, params: Any, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[str]:
  """Writes ``config.json`` and ``model.safetensors`` (or, above ``max_shard_bytes``,
  ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``). Tensors keep the
  params' dtype. Returns the safetensors file names written."""
  from safetensors.numpy import save_file

  os.makedirs(path, exist_ok=True)
  sd = params_to_hf(config, params)
  hf = config.to_hf()
  dtypes = {str(t.dtype) for t in sd.values()}
  if len(dtypes) == 1:
    hf["torch_dtype"] = hf["dtype"] = dtypes.pop()
  with open(os.path.join(path, CONFIG_FILE), "w") as fh:
    json.dump(hf, fh, indent=2, sort_keys=True)
  for stale in os.listdir(path):  # a previous export's files must not mix with this one
    if stale in (SINGLE_FILE, INDEX_FILE) or re.fullmatch(r"model-\d+-of-\d+\.safetensors", stale):
      os.remove(os.path.join(path, stale))
  groups: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, t in sd.items():
    if groups[-1] and size + t.nbytes > max_shard_bytes:
      groups.append({})
      size = 0
    groups[-1][name] = t
    size += t.nbytes
  meta = {"format": "pt"}
  if len(groups) == 1:
    save_file(groups[0], os.path.join(path, SINGLE_FILE), metadata=meta)
    return [SINGLE_FILE]
  files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
  weight_map = {}
  for file, group in zip(files, groups):
    save_file(group, os.path.join(path, file), metadata=meta)
    weight_map.update({n: file for n in group})
  index = {
      "metadata": {"total_size": int(sum(t.nbytes for t in sd.values()))},
      "weight_map": weight_map,
  }
  with open(os.path.join(path, INDEX_FILE), "w") as fh:
    json.dump(index, fh, indent=2, sort_keys=True)
  return files


def load(path: str, *, device_put: bool = True, **overrides) -> tuple[ModelConfig, Any]:
  """``(config, params)`` from an HF safetensors folder or a ``.gguf`` file.

  ``overrides`` set ModelConfig fields (e.g. ``dtype='bfloat16'``, ``remat='full'``).
  ``device_put=False`` keeps the params as host numpy arrays (e.g. to shard them yourself).
  """
  path = os.fspath(path)
  if path.endswith(".gguf"):
    from compfn.model.gguf import gguf_to_hf  # lazy: only GGUF users need it

    hf_config, state_dict = gguf_to_hf(path)
    config = ModelConfig.from_hf(hf_config, **overrides)
    params = params_from_hf(config, state_dict)
  elif os.path.isdir(path):
    config, params = load_hf_folder(path, **overrides)
  else:
    raise CheckpointError(f"{path} is neither an HF checkpoint folder nor a .gguf file")
  if device_put:
    params = jax.device_put(params)
  return config, params
