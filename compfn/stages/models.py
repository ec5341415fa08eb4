"""The model a pipeline starts from: :func:`load_model` (an HF folder / .gguf checkpoint, or a
from-scratch config such as :func:`char_model`), where its parameters come from
(:func:`model_origin`, the root of :attr:`Run.lineage`) and its FLOPs per token (MFU)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from compfn.model.config import ModelConfig

__all__ = ['char_model', 'load_model', 'model_origin', 'flops_per_token']

gin.external_configurable(ModelConfig, module='compfn')


@gin.configurable
def char_model(
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int = 32,
    mlp_dim: int = 352,
    max_len: int = 512,
    rope_theta: float = 10000.0,
    chars: Optional[str] = None,
) -> ModelConfig:
  """A from-scratch Llama-style model over :class:`compfn.tokenizers.CharTokenizer`'s vocabulary
  (MINIATURE.md: L=2, d=128, 4 heads of 32, RoPE, tied embeddings, ~0.4M parameters)."""
  from compfn.tokenizers import CharTokenizer

  tok = CharTokenizer(chars) if chars else CharTokenizer()
  return ModelConfig(
      family='llama',
      vocab_size=tok.vocab_size,
      d_model=d_model,
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=num_heads,
      head_dim=head_dim,
      mlp_dim=mlp_dim,
      max_position_embeddings=max_len,
      rope_theta=rope_theta,
      tie_word_embeddings=True,
      eos_token_ids=(1,),
      pad_token_id=0,
  )


@gin.configurable
def load_model(
    checkpoint: Optional[str] = None,
    config: Optional[ModelConfig] = None,
    tokenizer: Optional[str] = None,
    chat_template: Optional[str] = None,
    seed: int = 0,
    overrides: Optional[dict] = None,
):
  """(model_config, params, tokenizer, encode).

  checkpoint: an HF folder or a .gguf file (``compfn.model.load``); its tokenizer comes with it.
  config: a from-scratch model (random init with ``seed``); ``tokenizer`` defaults to 'char'.
  chat_template: None = the tokenizer's own chat template when it has one (the paper sends the
  prompt as one user message), 'raw' = the prompt text as is (the char models), 'plain' or a
  template string (``Tokenizer.apply_chat_template``).
  overrides: ModelConfig fields to replace (e.g. ``{'remat': 'full', 'dtype': 'bfloat16'}``
  from a hardware gin file); a checkpoint's weights are cast to ``param_dtype``."""
  from compfn import model
  from compfn import tokenizers
  from compfn.model import transformer

  if checkpoint is not None:
    config_, params = model.load(checkpoint, device_put=False)  # host arrays: placed sharded
    tok = tokenizers.load_tokenizer(tokenizer or checkpoint)
  elif config is not None:
    config_ = config
    params = transformer.init_params(config, jax.random.PRNGKey(seed))
    tok = tokenizers.load_tokenizer(tokenizer or 'char')
  else:
    raise ValueError(
        'load_model: set load_model.checkpoint (HF folder / .gguf) or '
        'load_model.config (a from-scratch ModelConfig, e.g. @char_model())'
    )
  if overrides:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
      raise ValueError(f'load_model.overrides: {unknown} are not ModelConfig fields')
    config_ = dataclasses.replace(config_, **dict(overrides))
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(config_.param_dtype)), params)
  if tok.vocab_size > config_.vocab_size:
    raise ValueError(
        f'tokenizer has {tok.vocab_size} ids but the model only ' f'{config_.vocab_size} embeddings'
    )
  template = chat_template
  if template is None and getattr(tok, 'chat_template', None) is None:
    template = 'raw'

  def encode(text: str) -> list:
    if template == 'raw':
      return tok.encode(text)
    rendered = tok.apply_chat_template(
        [{'role': 'user', 'content': text}], add_generation_prompt=True, template=template
    )
    return tok.encode(rendered)

  return config_, params, tok, encode


def model_origin() -> str:
  """Where the initial parameters come from (the root of :attr:`Run.lineage`)."""
  ckpt = gin.query_parameter('load_model.checkpoint') if _bound('load_model.checkpoint') else None
  seed = gin.query_parameter('load_model.seed') if _bound('load_model.seed') else 0
  return f'checkpoint:{ckpt}' if ckpt else f'init:seed{seed}'


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


def flops_per_token(config: ModelConfig, num_params: int) -> float:
  """Forward FLOPs per token ~ 2 x (matmul parameters): the input embedding is a lookup."""
  emb = config.vocab_size * config.d_model
  matmul = num_params - (0 if config.tie_word_embeddings else emb)
  return 2.0 * matmul
