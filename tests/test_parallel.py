"""Meshes and logical rules: a model sharded on a (2,2,2) fake-device mesh gives the logits of
the unsharded model; bad meshes and rules give clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn import parallel
from compfn.model import config as config_lib
from compfn import model


def test_make_mesh_shapes_and_errors():
  assert jax.device_count() == 8
  m = parallel.make_mesh((2, -1, 2))
  assert dict(m.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
  with pytest.raises(ValueError, match='needs 12 devices'):
    parallel.make_mesh((2, 3, 2))
  with pytest.raises(ValueError, match='at most one'):
    parallel.make_mesh((-1, -1, 2))
  with pytest.raises(ValueError, match="'model' is not a mesh axis"):
    parallel.logical_rules((('heads', 'model'),))
  with pytest.raises(ValueError, match='more than once'):
    parallel.logical_rules((('heads', 'tensor'), ('heads', None)))


def test_sharded_logits_equal_unsharded():
  config = config_lib.tiny('llama')
  params = model.init_params(config, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, config.vocab_size)
  want = np.asarray(model.logits(config, params, tokens))
  mesh = parallel.make_mesh((2, 2, 2))
  shardings = parallel.param_shardings(config, mesh)
  sharded = jax.device_put(params, shardings)
  wq = jax.tree_util.tree_leaves_with_path(sharded)
  assert any(
      len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated for _, leaf in wq
  )
  toks = jax.device_put(tokens, parallel.batch_sharding(mesh))
  with parallel.use_mesh(mesh):
    got = jax.jit(lambda p, t: model.apply(config, p, t)[0])(sharded, toks)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_host_batch_slice_single_host():
  assert parallel.host_batch_slice(16) == slice(0, 16)
  assert parallel.initialize_distributed() is False
