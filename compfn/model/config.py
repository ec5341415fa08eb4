"""Model configuration: one frozen dataclass for the Llama / Qwen2 / Gemma 2 decoder families.

``ModelConfig`` is hashable, so it can be a static argument of ``jax.jit``. It holds the
architecture (what an HF ``config.json`` says) and the runtime policy (dtypes, remat).

    >>> cfg = ModelConfig.from_hf(json.load(open("config.json")), dtype="bfloat16")
    >>> cfg = PRESETS["smollm2_135m_instruct"]
    >>> cfg = tiny("gemma2")                      # 2 layers, d_model 64, vocab 256: for tests
    >>> cfg = dataclasses.replace(cfg, remat="full")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

FAMILIES = ("llama", "qwen2", "gemma2")
# HF model_type -> family. SmolLM2 is model_type "llama".
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2"}
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16")
UNROLL_MAX_LAYERS = 8  # ModelConfig.scan_layers=None unrolls the layer stack up to this depth
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture + runtime policy of a decoder-only transformer.

  Family-specific behaviour (derived from ``family``, see the properties below):
    llama/qwen2: RMSNorm ``w * x_hat``, SwiGLU (silu), no embedding scaling, 1/sqrt(head_dim).
    gemma2: RMSNorm ``(1 + w) * x_hat``, GeGLU (gelu tanh), embeddings * sqrt(d_model),
      pre- and post- attention/ffw norms, ``query_pre_attn_scalar**-0.5`` scaling,
      attention and final logit soft-capping, sliding window on the layers whose
      ``layer_types`` entry is 'sliding_attention' (HF default: even layers).
  """

  family: str
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # RoPE scaling: 'default' (none), 'linear' (factor) or 'llama3' (Llama 3.1 frequency scaling).
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: True
  out_bias: bool = False  # Llama ``attention_bias=True`` biases q, k, v and o
  # Gemma 2.
  query_pre_attn_scalar: Optional[float] = None
  attn_logit_softcap: Optional[float] = None
  final_logit_softcap: Optional[float] = None
  sliding_window: Optional[int] = None
  layer_types: Optional[tuple[str, ...]] = None  # per layer SLIDING / FULL; None = all full
  # Special tokens (informational, for the sampler).
  bos_token_id: Optional[int] = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: Optional[int] = None
  # Runtime policy.
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype; logits are always returned in float32
  remat: str = "none"  # 'none' | 'full' | 'dots'
  # The layer stack runs under ``nn.scan`` (params stacked [L, ...] either way). True: one rolled
  # loop (compile time independent of L: deep models, TPU). False: the scan fully unrolled (no
  # while loop, no per-layer dynamic slicing and stacking of weights and saved activations; on
  # XLA:CPU a 2-layer GRPO train step is ~20% faster). None: unrolled for up to
  # ``UNROLL_MAX_LAYERS`` layers, scanned above.
  scan_layers: Optional[bool] = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"unknown model family {self.family!r}; supported: {FAMILIES}")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {self.remat!r}; supported: {REMAT_POLICIES}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; supported: {DTYPES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of " f"num_kv_heads={self.num_kv_heads}"
      )
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f"layer_types has {len(self.layer_types)} entries for " f"{self.num_layers} layers"
        )
      bad = set(self.layer_types) - {SLIDING, FULL}
      if bad:
        raise ValueError(f"unknown layer_types {sorted(bad)}; supported: {SLIDING}, {FULL}")
      if SLIDING in self.layer_types and not self.sliding_window:
        raise ValueError("layer_types has sliding layers but sliding_window is not set")

  @property
  def scan_unroll(self) -> int:
    """The ``unroll`` of the layer scan (``scan_layers``)."""
    scan = self.scan_layers
    if scan is None:
      scan = self.num_layers > UNROLL_MAX_LAYERS
    return 1 if scan else self.num_layers

  # Derived family behaviour.
  @property
  def norm_plus_one(self) -> bool:
    return self.family == "gemma2"

  @property
  def post_norms(self) -> bool:
    return self.family == "gemma2"

  @property
  def scale_embeddings(self) -> bool:
    return self.family == "gemma2"

  @property
  def activation(self) -> str:
    return "gelu_tanh" if self.family == "gemma2" else "silu"

  @property
  def attn_scale(self) -> float:
    if self.query_pre_attn_scalar is not None:
      return float(self.query_pre_attn_scalar) ** -0.5
    return float(self.head_dim) ** -0.5

  @property
  def sliding_layers(self) -> tuple[bool, ...]:
    """Per layer: does it use the sliding window?"""
    if self.layer_types is None:
      return (False,) * self.num_layers
    return tuple(t == SLIDING for t in self.layer_types)

  def num_params(self) -> int:
    d, h, k, hd, f = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim)
    per_layer = d * hd * (2 * h + 2 * k) + 3 * d * f + (4 if self.post_norms else 2) * d
    if self.qkv_bias or self.out_bias:
      per_layer += hd * (h + 2 * k)
    if self.out_bias:
      per_layer += d
    emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * per_layer + emb + d

  # HF conversion.
  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from an HF ``config.json`` dict (transformers v4 or v5 layout).

    ``overrides`` set runtime fields (``dtype``, ``param_dtype``, ``remat``) or any other
    field. ``param_dtype`` defaults to the checkpoint's ``torch_dtype``/``dtype`` when it is
    float32 or bfloat16 (else float32); ``dtype`` defaults to ``param_dtype``.
    """
    hf = dict(hf)
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(
          f"unknown model_type {model_type!r} (architectures {hf.get('architectures')}); "
          f"supported model_types: {sorted(MODEL_TYPES)}"
      )
    family = MODEL_TYPES[model_type]
    archs = hf.get("architectures") or [ARCHITECTURES[family]]
    if ARCHITECTURES[family] not in archs:
      raise ValueError(
          f"unsupported architectures {archs} for model_type {model_type!r}; "
          f"supported: {ARCHITECTURES[family]}"
      )

    def need(key):
      if hf.get(key) is None:
        raise ValueError(
            f"HF config (model_type {model_type!r}) is missing required " f"field {key!r}"
        )
      return hf[key]

    d_model = int(need("hidden_size"))
    num_heads = int(need("num_attention_heads"))
    num_layers = int(need("num_hidden_layers"))
    kw: dict[str, Any] = dict(
        family=family,
        vocab_size=int(need("vocab_size")),
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or d_model // num_heads),
        mlp_dim=int(need("intermediate_size")),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma2")),
        bos_token_id=hf.get("bos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    eos = hf.get("eos_token_id")
    kw["eos_token_ids"] = (
        tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    )

    # RoPE: v5 'rope_parameters' (includes rope_theta) or v4 'rope_theta' + 'rope_scaling'.
    rope = dict(hf.get("rope_parameters") or {})
    if hf.get("rope_scaling"):
      rope = {**dict(hf["rope_scaling"]), **rope}
    theta = rope.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
      raise ValueError(
          f"HF config (model_type {model_type!r}) is missing required field " f"'rope_theta'"
      )
    kw["rope_theta"] = float(theta)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {ROPE_TYPES}")
    kw["rope_type"] = rope_type
    if rope_type in ("linear", "llama3"):
      if rope.get("factor") is None:
        raise ValueError(f"rope scaling {rope_type!r} is missing required field 'factor'")
      kw["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
      for key, name in (
          ("low_freq_factor", "rope_low_freq_factor"),
          ("high_freq_factor", "rope_high_freq_factor"),
          ("original_max_position_embeddings", "rope_original_max_position_embeddings"),
      ):
        if rope.get(key) is None:
          raise ValueError(f"rope scaling 'llama3' is missing required field {key!r}")
        kw[name] = rope[key]
      kw["rope_low_freq_factor"] = float(kw["rope_low_freq_factor"])
      kw["rope_high_freq_factor"] = float(kw["rope_high_freq_factor"])
      kw["rope_original_max_position_embeddings"] = int(kw["rope_original_max_position_embeddings"])

    if family == "llama":
      if hf.get("mlp_bias"):
        raise ValueError("llama config with mlp_bias=True is not supported")
      kw["qkv_bias"] = kw["out_bias"] = bool(hf.get("attention_bias", False))
      if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama hidden_act {hf.get('hidden_act')!r} is not supported")
    elif family == "qwen2":
      kw["qkv_bias"] = True
      if hf.get("use_sliding_window"):
        raise ValueError("qwen2 config with use_sliding_window=True is not supported")
      if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"qwen2 hidden_act {hf.get('hidden_act')!r} is not supported")
    else:  # gemma2
      act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
      if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"gemma2 hidden_activation {act!r} is not supported")
      if hf.get("attention_bias"):
        raise ValueError("gemma2 config with attention_bias=True is not supported")
      kw["query_pre_attn_scalar"] = float(need("query_pre_attn_scalar"))
      for src, dst in (
          ("attn_logit_softcapping", "attn_logit_softcap"),
          ("final_logit_softcapping", "final_logit_softcap"),
      ):
        if hf.get(src) is not None:
          kw[dst] = float(hf[src])
      kw["sliding_window"] = int(need("sliding_window"))
      layer_types = hf.get("layer_types")
      if layer_types is None:  # transformers v4 Gemma2: even layers are sliding
        layer_types = [SLIDING if i % 2 == 0 else FULL for i in range(num_layers)]
      kw["layer_types"] = tuple(layer_types)

    file_dtype = hf.get("torch_dtype") or hf.get("dtype")
    kw["param_dtype"] = file_dtype if file_dtype in DTYPES else "float32"
    kw["dtype"] = kw["param_dtype"]
    kw.update(overrides)
    if "param_dtype" in overrides and "dtype" not in overrides:
      kw["dtype"] = overrides["param_dtype"]
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """HF ``config.json`` dict (transformers v4-style keys, which v5 also reads)."""
    hf: dict[str, Any] = dict(
        architectures=[ARCHITECTURES[self.family]],
        model_type=self.family,
        vocab_size=self.vocab_size,
        hidden_size=self.d_model,
        intermediate_size=self.mlp_dim,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        rms_norm_eps=self.rms_norm_eps,
        max_position_embeddings=self.max_position_embeddings,
        tie_word_embeddings=self.tie_word_embeddings,
        rope_theta=self.rope_theta,
        torch_dtype=self.param_dtype,
        bos_token_id=self.bos_token_id,
        pad_token_id=self.pad_token_id,
    )
    if self.eos_token_ids:
      hf["eos_token_id"] = (
          self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids)
      )
    if self.rope_type == "default":
      hf["rope_scaling"] = None
    else:
      hf["rope_scaling"] = {"rope_type": self.rope_type, "factor": self.rope_factor}
      if self.rope_type == "llama3":
        hf["rope_scaling"].update(
            low_freq_factor=self.rope_low_freq_factor,
            high_freq_factor=self.rope_high_freq_factor,
            original_max_position_embeddings=self.rope_original_max_position_embeddings,
        )
    if self.family == "llama":
      if self.qkv_bias != self.out_bias:
        raise ValueError("llama can only express qkv_bias == out_bias (attention_bias)")
      hf.update(hidden_act="silu", attention_bias=self.qkv_bias, mlp_bias=False)
    elif self.family == "qwen2":
      hf.update(hidden_act="silu", use_sliding_window=False)
    else:
      hf.update(
          hidden_activation="gelu_pytorch_tanh",
          query_pre_attn_scalar=(
              int(self.query_pre_attn_scalar)
              if float(self.query_pre_attn_scalar).is_integer()
              else self.query_pre_attn_scalar
          ),
          attn_logit_softcapping=self.attn_logit_softcap,
          final_logit_softcapping=self.final_logit_softcap,
          sliding_window=self.sliding_window,
          layer_types=list(self.layer_types) if self.layer_types else None,
      )
    return hf


# Named presets: values from the public config.json of each model.
PRESETS: dict[str, ModelConfig] = {
    "llama3_1_8b_instruct": ModelConfig(
        family="llama",
        vocab_size=128256,
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_type="llama3",
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
        param_dtype="bfloat16",
        dtype="bfloat16",
    ),
    "qwen2_5_7b_instruct": ModelConfig(
        family="qwen2",
        vocab_size=152064,
        d_model=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        mlp_dim=18944,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        qkv_bias=True,
        bos_token_id=151643,
        eos_token_ids=(151645,),
        param_dtype="bfloat16",
        dtype="bfloat16",
    ),
    "gemma2_2b_it": ModelConfig(
        family="gemma2",
        vocab_size=256000,
        d_model=2304,
        num_layers=26,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        mlp_dim=9216,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        query_pre_attn_scalar=256.0,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(26)),
        bos_token_id=2,
        eos_token_ids=(1, 107),
        pad_token_id=0,
        param_dtype="float32",
        dtype="float32",
    ),
    "smollm2_135m_instruct": ModelConfig(
        family="llama",
        vocab_size=49152,
        d_model=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        mlp_dim=1536,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_ids=(2,),
        pad_token_id=2,
        param_dtype="bfloat16",
        dtype="bfloat16",
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def tiny(family: str, **overrides) -> ModelConfig:
  """A 2-layer, d_model 64, vocab 256 model of ``family`` for tests.

  llama: Llama 3.1 rope scaling (with a small original context so it bites at short
  positions); qwen2: qkv bias; gemma2: soft-caps and sliding window 4 (< test lengths).
  """
  base = dict(
      family=family,
      vocab_size=256,
      d_model=64,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=128,
      rms_norm_eps=1e-6,
      max_position_embeddings=256,
      bos_token_id=1,
      eos_token_ids=(2,),
      pad_token_id=0,
  )
  if family == "llama":
    base.update(
        rope_theta=500000.0,
        rope_type="llama3",
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=32,
    )
  elif family == "qwen2":
    base.update(rope_theta=1000000.0, qkv_bias=True)
  elif family == "gemma2":
    base.update(
        tie_word_embeddings=True,
        query_pre_attn_scalar=16.0,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4,
        layer_types=(SLIDING, FULL),
    )
  else:
    raise ValueError(f"unknown model family {family!r}; supported: {FAMILIES}")
  base.update(overrides)
  return ModelConfig(**base)
