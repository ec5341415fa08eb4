"""Supervised fine-tuning (the SFT half of RFT) as pure functions: batches and the train step.

An example is a prompt and a target (both token ids); the model is trained on
``prompt + target + EOS`` with the loss on the target tokens and the EOS only::

    >>> b = make_batch([([5, 6], [7, 8])], length=6, eos_id=1)
    >>> b.inputs        # [[5, 6, 7, 8, 0, 0]]     prompt + target (EOS is only ever a target)
    >>> b.targets       # [[6, 7, 8, 1, 0, 0]]     inputs shifted left, EOS after the target
    >>> b.loss_mask     # [[0, 1, 1, 1, 0, 0]]     predict 7, 8 and EOS
    >>> b.segment_ids   # [[1, 1, 1, 1, 0, 0]]     padding is segment 0 (never attended to)

:func:`pack_batch` packs the same examples several to a row (sequence packing): each example is
its own segment (ids 1, 2, ...; a query attends only within its segment) with positions that
restart at 0, so a packed batch has the same loss and gradients as the padded one (up to float
summation order; ``tests/test_packing.py``) while it computes on far fewer padding tokens::

    >>> b = pack_batch([([5, 6], [7]), ([5], [8])], length=6, eos_id=1)
    >>> b.inputs        # [[5, 6, 7, 5, 8, 0]]
    >>> b.segment_ids   # [[1, 1, 1, 2, 2, 0]]
    >>> b.positions     # [[0, 1, 2, 0, 1, 0]]

The loss is the token mean over the *global* batch: :func:`sft_step` counts the loss tokens of
the whole batch before it splits it into micro-batches for gradient accumulation, so the result
does not depend on the number of micro-batches or on the mesh (``tests/test_train.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import losses

Array = jax.Array

__all__ = [
    'SFTBatch',
    'make_batch',
    'pack_batch',
    'packed_rows',
    'sft_loss_fn',
    'sft_grads',
    'sft_step',
]


@flax.struct.dataclass
class SFTBatch:
  inputs: Array  # int32[B, T]
  targets: Array  # int32[B, T]
  loss_mask: Array  # f32[B, T]   1 where targets[t] is a response token or the EOS
  segment_ids: Array  # int32[B, T] 1 for real tokens, 0 for padding (packed: 1, 2, ... per row)
  positions: Any = None  # int32[B, T] per-segment positions (packed batches); None = 0..T-1


def make_batch(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    length: int,
    eos_id: int,
    pad_id: int = 0,
    truncate: bool = False,
) -> SFTBatch:
  """Pack (prompt_ids, target_ids) pairs into a right-padded :class:`SFTBatch` (numpy).

  ``length`` is the static sequence length. An example longer than ``length`` + 1 tokens
  (prompt + target + EOS) raises ValueError naming it, unless ``truncate`` (its end is cut:
  the model then never sees that example's EOS)."""
  b = len(examples)
  if b == 0:
    raise ValueError('make_batch: no examples')
  inputs = np.full((b, length), pad_id, np.int32)
  targets = np.full((b, length), pad_id, np.int32)
  mask = np.zeros((b, length), np.float32)
  seg = np.zeros((b, length), np.int32)
  for i, (prompt, target) in enumerate(examples):
    prompt, target = list(prompt), list(target)
    if not prompt:
      raise ValueError(f'make_batch: example {i} has an empty prompt')
    seq = prompt + target + [eos_id]
    if len(seq) - 1 > length and not truncate:
      raise ValueError(
          f'make_batch: example {i} has {len(seq)} tokens (prompt {len(prompt)} + '
          f'target {len(target)} + EOS) > length + 1 = {length + 1}; raise the '
          'sequence length or filter long examples'
      )
    seq = seq[: length + 1]
    n = len(seq) - 1
    inputs[i, :n] = seq[:-1]
    targets[i, :n] = seq[1:]
    mask[i, len(prompt) - 1 : n] = 1.0
    seg[i, :n] = 1
  return SFTBatch(inputs=inputs, targets=targets, loss_mask=mask, segment_ids=seg)


def _check(examples, length: int, truncate: bool):
  out = []
  for i, (prompt, target) in enumerate(examples):
    prompt, target = list(prompt), list(target)
    if not prompt:
      raise ValueError(f'example {i} has an empty prompt')
    n = len(prompt) + len(target)  # prompt + target + EOS, minus the unpredicted last one
    if n > length and not truncate:
      raise ValueError(
          f'example {i} has {n + 1} tokens (prompt {len(prompt)} + target '
          f'{len(target)} + EOS) > length + 1 = {length + 1}; raise the sequence '
          'length or filter long examples'
      )
    out.append((prompt, target))
  return out


def _first_fit(sizes: Sequence[int], length: int) -> list[list[int]]:
  """First-fit decreasing bin packing of example sizes into rows of ``length`` (deterministic:
  ties keep the given order). Returns the example indices of each row."""
  order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
  rows, free = [], []
  for i in order:
    for r, f in enumerate(free):
      if sizes[i] <= f:
        rows[r].append(i)
        free[r] -= sizes[i]
        break
    else:
      rows.append([i])
      free.append(length - sizes[i])
  return [sorted(r) for r in rows]


def packed_rows(examples, length: int) -> int:
  """Rows :func:`pack_batch` needs for these examples (first-fit decreasing)."""
  sizes = [min(len(p) + len(t), length) for p, t in examples]
  return len(_first_fit(sizes, length))


def pack_batch(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    length: int,
    eos_id: int,
    pad_id: int = 0,
    min_rows: int = 0,
    row_multiple: int = 8,
    truncate: bool = False,
) -> SFTBatch:
  """Pack (prompt_ids, target_ids) pairs several to a row (numpy :class:`SFTBatch` with
  ``positions``). Rows: first-fit decreasing, at least ``min_rows``, rounded up to a multiple of
  ``row_multiple`` (static shapes: a stage fixes ``min_rows`` from its data so almost every
  step has the same shape). Each example keeps its loss tokens exactly as in
  :func:`make_batch`."""
  if not examples:
    raise ValueError('pack_batch: no examples')
  ex = _check(examples, length, truncate)
  sizes = [min(len(p) + len(t), length) for p, t in ex]
  groups = _first_fit(sizes, length)
  n_rows = max(min_rows, len(groups))
  n_rows = -(-n_rows // row_multiple) * row_multiple
  inputs = np.full((n_rows, length), pad_id, np.int32)
  targets = np.full((n_rows, length), pad_id, np.int32)
  mask = np.zeros((n_rows, length), np.float32)
  seg = np.zeros((n_rows, length), np.int32)
  pos = np.zeros((n_rows, length), np.int32)
  for r, members in enumerate(groups):
    at = 0
    for s, i in enumerate(members, start=1):
      prompt, target = ex[i]
      seq = (prompt + target + [eos_id])[: length + 1]
      n = len(seq) - 1
      inputs[r, at : at + n] = seq[:-1]
      targets[r, at : at + n] = seq[1:]
      mask[r, at + len(prompt) - 1 : at + n] = 1.0
      seg[r, at : at + n] = s
      pos[r, at : at + n] = np.arange(n)
      at += n
  return SFTBatch(inputs=inputs, targets=targets, loss_mask=mask, segment_ids=seg, positions=pos)


def sft_loss_fn(model_config: ModelConfig, params: Any, batch: SFTBatch, num_tokens):
  """(loss, aux) of one (micro-)batch; ``num_tokens`` is the global loss-token count."""
  # The LM head runs in chunks of positions from the hidden states (no [B, T, V] logits tensor
  # is materialised at once; ``compfn.rl.losses.sft_loss_from_hidden``).
  hidden, _ = transformer.apply(
      model_config,
      params,
      batch.inputs,
      batch.positions,
      segment_ids=batch.segment_ids,
      return_hidden=True,
  )
  loss, correct = losses.sft_loss_from_hidden(
      model_config, params, hidden, batch.targets, batch.loss_mask, num_tokens=num_tokens
  )
  return loss, {'correct_tokens': correct, 'loss_tokens': batch.loss_mask.sum()}


def sft_grads(model_config: ModelConfig, params: Any, batch: SFTBatch, micro_batches: int = 1):
  """(grads, metrics) of the token-mean NLL over the whole batch, accumulated over
  ``micro_batches`` sequential micro-batches (``lax.scan``); pure, jittable."""
  from compfn.optim import accumulate

  num_tokens = jnp.maximum(batch.loss_mask.sum(), 1.0)
  fn = lambda p, mb: sft_loss_fn(model_config, p, mb, num_tokens)  # noqa: E731
  grads, loss, aux = accumulate(fn, params, batch, micro_batches)
  metrics = {
      'loss': loss,
      'token_accuracy': aux['correct_tokens'] / num_tokens,
      'loss_tokens': aux['loss_tokens'],
      'tokens': batch.segment_ids.sum().astype(jnp.float32),
      'sequences': batch.segment_ids.max(-1).sum().astype(jnp.float32),
  }
  return grads, metrics


def sft_step(model_config: ModelConfig, tx, state, batch: SFTBatch, micro_batches: int = 1):
  """One SFT update (pure; jit it with the state donated): (state, metrics)."""
  from compfn.optim import apply_gradients

  grads, metrics = sft_grads(model_config, state.params, batch, micro_batches)
  state, upd = apply_gradients(state, grads, tx, metrics['loss'])
  return state, {**metrics, **upd}
