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
  with parallel.use_mesh(mesh, parallel.logical_rules()):
    got = jax.jit(lambda p, t: model.apply(config, p, t)[0])(sharded, toks)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_host_batch_slice_single_host():
  assert parallel.host_batch_slice(16) == slice(0, 16)
  assert parallel.initialize_distributed() is False


def test_normalize_rules_is_the_one_normaliser():
  gin_style = [['batch', ['data', 'fsdp']], ['heads', 'tensor'], ['length', None]]
  rules = parallel.normalize_rules(gin_style)
  assert rules == (('batch', ('data', 'fsdp')), ('heads', 'tensor'), ('length', None))
  hash(rules)  # a static jit argument
  assert parallel.normalize_rules(None) is None
  assert parallel.logical_rules() == parallel.normalize_rules(parallel.DEFAULT_RULES)
  with pytest.raises(ValueError, match="'x' is not a mesh axis"):
    parallel.normalize_rules([('batch', 'x')])


def test_use_mesh_enters_what_is_given():
  import flax.linen as nn

  mesh = parallel.make_mesh((2, 2, 2))
  with parallel.use_mesh():  # nothing: no mesh, no rules
    assert nn.get_logical_axis_rules() == ()
  with parallel.use_mesh(mesh):  # the mesh only: activations unconstrained
    assert nn.get_logical_axis_rules() == ()
  with parallel.use_mesh(None, [['batch', ['data', 'fsdp']]]):
    assert nn.get_logical_axis_rules() == (('batch', ('data', 'fsdp')),)
  with parallel.use_mesh(mesh, parallel.logical_rules()):
    assert nn.get_logical_axis_rules() == parallel.DEFAULT_RULES
    x = jax.jit(lambda a: nn.with_logical_constraint(a * 2, ('batch', None)))(jnp.ones((8, 3)))
    assert x.sharding.spec[0] == ('data', 'fsdp') and not x.sharding.is_fully_replicated
  assert nn.get_logical_axis_rules() == ()


def test_shard_batch_and_batch_devices():
  mesh = parallel.make_mesh((2, 2, 2))
  assert parallel.batch_devices(None) == 1
  assert parallel.batch_devices(mesh) == 4  # batch over data x fsdp
  assert parallel.batch_devices(mesh, [('batch', 'data')]) == 2
  assert parallel.batch_devices(mesh, [('batch', None)]) == 1
  host = {'x': np.arange(24).reshape(8, 3), 'n': np.int32(5)}
  out = parallel.shard_batch(host, mesh)
  assert out['x'].sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp'), None)
  assert out['n'].sharding.is_fully_replicated  # a scalar is replicated
  np.testing.assert_array_equal(out['x'], host['x'])
  rep = parallel.shard_batch(host, mesh, replicate=True)
  assert rep['x'].sharding.is_fully_replicated
  np.testing.assert_array_equal(rep['x'], host['x'])
  by_data = parallel.shard_batch(host, mesh, [('batch', 'data')])
  assert by_data['x'].sharding.spec == jax.sharding.PartitionSpec('data', None)


def test_next_power_of_two():
  from compfn import buckets, sampling

  got = [buckets.next_power_of_two(n) for n in (-3, 0, 1, 2, 3, 4, 5, 1000, 1024, 1025)]
  assert got == [1, 1, 1, 2, 4, 4, 8, 1024, 1024, 2048]
  assert buckets.next_power_of_two(3, minimum=16) == 16
  assert buckets.next_power_of_two(17, minimum=16) == 32
  assert sampling.bucket_length(3) == 16 and sampling.bucket_length(100, 8) == 128
