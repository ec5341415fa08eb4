"""Sequence packing for SFT (issue #11): a packed batch has the padded batch's loss and
gradients, and the model attends only within each packed example."""

import jax
import numpy as np

from compfn.stages.models import char_model
from compfn.model import transformer
from compfn.rl import sft


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  return [
      (
          list(rng.integers(3, 70, rng.integers(2, 12))),
          list(rng.integers(3, 70, rng.integers(1, 20))),
      )
      for _ in range(n)
  ]


def test_pack_batch_layout():
  b = sft.pack_batch([([5, 6], [7]), ([5], [8])], length=6, eos_id=1, row_multiple=1)
  np.testing.assert_array_equal(b.inputs, [[5, 6, 7, 5, 8, 0]])
  np.testing.assert_array_equal(b.targets, [[6, 7, 1, 8, 1, 0]])
  np.testing.assert_array_equal(b.loss_mask, [[0, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(b.segment_ids, [[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(b.positions, [[0, 1, 2, 0, 1, 0]])
  assert sft.pack_batch(_examples(40), 64, 1, min_rows=24).inputs.shape == (24, 64)


def test_packed_loss_and_grads_equal_padded():
  cfg = char_model(d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64)
  params = transformer.init_params(cfg, jax.random.key(0))
  ex = _examples(48, seed=1)
  padded = sft.make_batch(ex, 32, eos_id=1)
  packed = sft.pack_batch(ex, 32, eos_id=1, row_multiple=1)
  assert packed.inputs.shape[0] < padded.inputs.shape[0] / 1.5  # it really packs
  assert packed.loss_mask.sum() == padded.loss_mask.sum()
  g1, m1 = jax.jit(lambda p, b: sft.sft_grads(cfg, p, b))(params, padded)
  g2, m2 = jax.jit(lambda p, b: sft.sft_grads(cfg, p, b))(params, packed)
  np.testing.assert_allclose(m1['loss'], m2['loss'], rtol=1e-5)
  assert m1['sequences'] == m2['sequences'] == 48
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
