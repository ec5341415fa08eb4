"""compfn.profiling: op time attributed to jax.named_scope's, through one traced call."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from compfn import profiling


def _two_scopes(x, w):
  with jax.named_scope('heavy'):
    y = x
    for _ in range(6):
      y = jnp.tanh(y @ w)
  with jax.named_scope('light'):
    z = jnp.cumsum(x[0])
  return y, z


def test_instruction_op_names_sees_through_fusions():
  x = jnp.ones((64, 64))
  txt = jax.jit(_two_scopes).lower(x, x).compile().as_text()
  names = profiling.instruction_op_names(txt)
  heavy = [n for n, ops in names.items() if any('/heavy/' in o for o in ops)]
  light = [n for n, ops in names.items() if any('/light/' in o for o in ops)]
  assert heavy and light
  # Every fusion carries the op_names of the instructions fused into it, whatever its root.
  blocks = {}
  for block in txt.split('\n\n'):
    head = block.strip().splitlines()[0] if block.strip() else ''
    blocks[head.split(' ')[0].lstrip('%')] = block
  fusions = [ln for ln in txt.splitlines() if ' fusion(' in ln and 'calls=%' in ln]
  assert fusions
  for line in fusions:
    name = line.split(' = ')[0].strip().removeprefix('ROOT ').lstrip('%')
    callee = line.split('calls=%')[1].split(',')[0].split('}')[0].strip()
    inner_ops = set(re.findall(r'op_name="([^"]*)"', blocks[callee]))
    assert inner_ops <= names[name], (name, callee)
  # A made-up fusion: root op outside the scope, the fused op inside it.
  synthetic = """HloModule m, entry_computation_layout={(f32[2]{0})->f32[2]{0}}

%fused_computation.1 (param_0: f32[2]) -> f32[2] {
  %param_0 = f32[2]{0} parameter(0)
  %tanh.1 = f32[2]{0} tanh(%param_0), metadata={op_name="jit(f)/verifier/tanh" stack_frame_id=1}
  ROOT %add.1 = f32[2]{0} add(%tanh.1, %param_0), metadata={op_name="jit(f)/add" stack_frame_id=2}
}

ENTRY %main.3 (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0), metadata={op_name="a"}
  ROOT %add_tanh_fusion = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(f)/add" stack_frame_id=2}
}
"""
  names = profiling.instruction_op_names(synthetic)
  assert names['add_tanh_fusion'] == {'jit(f)/add', 'jit(f)/verifier/tanh'}
  total, matched, per, count = profiling.attribute(
      [
          dict(name='add_tanh_fusion', dur=30.0),
          dict(name='ThunkExecutor::Execute', dur=1000.0),  # host bookkeeping: nowhere
          dict(name='$api.py:1 block_until_ready', dur=1000.0),
          dict(name='not_in_this_program.7', dur=5.0),  # counted in total, not matched
      ],
      names,
      ('verifier', 'other'),
  )
  np.testing.assert_allclose(
      [total, matched, per['verifier'], per['other']], [35e-6, 30e-6, 30e-6, 0]
  )
  assert count == {'verifier': 1, 'other': 0}
  # A scope is a whole path component: 'verifier' is not inside 'verifier_tables'.
  assert not profiling._in_scope(frozenset({'jit(f)/verifier_tables/add'}), 'verifier')


def test_profile_scopes_puts_the_time_where_the_work_is():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(384, 384).astype(np.float32))
  w = jnp.asarray(rng.randn(384, 384).astype(np.float32) * 0.05)

  def looped(x, w):
    # The heavy part inside a while loop: its body's ops are traced once per iteration.
    def body(_, y):
      with jax.named_scope('heavy'):
        return jnp.tanh(y @ w)

    y = jax.lax.fori_loop(0, 8, body, x)
    with jax.named_scope('light'):
      z = jnp.sum(x * 2.0)
    return y.sum() + z

  for fn in (_two_scopes, looped):
    f = jax.jit(fn)
    jax.block_until_ready(f(x, w))
    p = profiling.profile_scopes(f, (x, w), ('heavy', 'light', 'absent'))
    assert p.wall_s > 0 and p.matched_op_s > 0
    # Nearly all attributed time is the matmuls; the light scope is a small fraction of it.
    assert p.scope_op_s['heavy'] > 0.7 * p.matched_op_s, p
    assert p.scope_op_s['light'] < 0.2 * p.scope_op_s['heavy'], p
    assert p.scope_op_s['absent'] == 0 and p.scope_events['absent'] == 0
    assert p.scope_events['heavy'] >= (8 if fn is looped else 1)
    assert 0 < p.share('heavy') < 2.0  # summed over threads: may exceed the wall time a little
