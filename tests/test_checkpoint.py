"""Checkpoints: exact round trip, keep-N, NaN guard, and a kill mid-save keeps the last good one."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn.checkpoint import Checkpointer, NonFiniteError


def _state(seed):
  k = jax.random.key(seed)
  return {
      'params': {'w': jax.random.normal(k, (4, 3)), 'b': jnp.arange(3.0)},
      'step': jnp.int32(seed),
      'rng': jax.random.key_data(k),
  }


def test_round_trip_keep_n_and_metadata(tmp_path):
  with Checkpointer(tmp_path / 'ck', keep=2) as ck:
    assert ck.restore_latest(_state(0)) is None
    for s in (1, 2, 3):
      ck.save(s, _state(s), {'data': {'next_index': 10 * s}})
    ck.wait()
    assert ck.all_steps() == [2, 3]
    step, state, meta = ck.restore_latest(_state(0))
  assert step == 3 and meta == {'data': {'next_index': 30}}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(3))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_state_is_refused(tmp_path):
  with Checkpointer(tmp_path / 'ck', async_save=False) as ck:
    ck.save(1, _state(1))
    bad = _state(2)
    bad['params']['w'] = bad['params']['w'].at[0, 0].set(jnp.nan)
    with pytest.raises(NonFiniteError, match=r"\['params'\]\['w'\].*last good checkpoint \(1\)"):
      ck.save(2, bad)
    assert ck.latest_step() == 1


def test_kill_during_save_keeps_last_good(tmp_path):
  """SIGKILL at the worst moment: step 2's files are written but not yet committed (the
  process dies inside orbax's atomic-rename finalisation). Step 1 must stay the latest."""
  d = tmp_path / 'ck'
  script = textwrap.dedent(
      f"""
        import os, signal, jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from compfn.checkpoint import Checkpointer
        ck = Checkpointer({str(d)!r}, async_save=True)
        ck.save(1, {{'w': jnp.ones((8, 8))}})
        ck.wait()
        print('saved', flush=True)
        def die(self):
            os.kill(os.getpid(), signal.SIGKILL)
        atomicity.AtomicRenameTemporaryPath.finalize = die
        ck.save(2, {{'w': jnp.full((8, 8), 2.0)}})
        ck.wait()
        print('not reached', flush=True)
    """
  )
  r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
  assert 'saved' in r.stdout and 'not reached' not in r.stdout, r.stderr[-2000:]
  assert r.returncode == -signal.SIGKILL
  assert any('2' in p.name for p in d.iterdir()), 'step 2 never reached the disk'
  with Checkpointer(d) as ck:
    assert ck.latest_step() == 1
    step, state, _ = ck.restore_latest({'w': jnp.zeros((8, 8))})
    assert step == 1 and float(state['w'].sum()) == 64
    ck.save(2, {'w': jnp.full((8, 8), 3.0)})  # the run can go on from there
    ck.wait()
    assert ck.latest_step() == 2
