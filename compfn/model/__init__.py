"""compfn.model: Llama 3.x / Qwen2.5 / Gemma 2 / SmolLM2 decoder in Flax linen + checkpoint I/O.

Public contract (DESIGN §4)::

    config, params = compfn.model.load(path)         # HF safetensors folder or .gguf file
    logits = compfn.model.logits(config, params, tokens)   # f32[B, T, vocab], causal

Lower level: ``apply`` (positions, segment ids, masks, KV cache; see
``compfn.model.transformer``), ``init_cache``, ``init_params``, ``param_logical_axes``,
``params_from_hf`` / ``params_to_hf``, ``save_hf_folder``, ``ModelConfig`` / ``PRESETS`` /
``tiny``.
"""

from compfn.model.config import PRESETS, ModelConfig, preset, tiny
from compfn.model.hf_io import (
    CheckpointError,
    load,
    load_hf_folder,
    params_from_hf,
    params_to_hf,
    save_hf_folder,
)
from compfn.model.transformer import (
    CACHE_AXES,
    KVCache,
    Transformer,
    apply,
    init_cache,
    init_params,
    logits,
    param_logical_axes,
)

__all__ = [
    "PRESETS",
    "ModelConfig",
    "preset",
    "tiny",
    "CheckpointError",
    "load",
    "load_hf_folder",
    "params_from_hf",
    "params_to_hf",
    "save_hf_folder",
    "CACHE_AXES",
    "KVCache",
    "Transformer",
    "apply",
    "init_cache",
    "init_params",
    "logits",
    "param_logical_axes",
]
