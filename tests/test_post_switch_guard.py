"""The experiments-side guard after AutoWU's switch (``experiments/post_switch_guard.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_autolr as oa
from experiments.post_switch_guard import post_switch_guard

T, SPE, BLOW_UP = 300, 10, 250  # The switch: the end of the maximal warmup, step 75.


def _run(tx, spike):
  """Params under ``tx`` for a falling loss that jumps to 200 at step ``BLOW_UP`` only."""

  @jax.jit
  def run():
    params = {'w': jnp.zeros(3)}

    def step(carry, t):
      params, state = carry
      loss = 10.0 - 1e-3 * t
      loss = jnp.where(spike & (t == BLOW_UP), 200.0, loss)
      updates, state = tx.update({'w': jnp.ones(3)}, state, params, value=loss)
      return (optax.apply_updates(params, updates), state), (params['w'], updates['w'])

    return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(T))

  return run()


def _chain():
  return optax.chain(optax.scale(-1.0), oa.autowu(T, SPE, rollback=False))


def test_without_a_blow_up_the_updates_are_the_chains_bit_for_bit():
  (_, state), (params, updates) = _run(post_switch_guard(_chain()), spike=True)
  (_, _), (plain_params, plain_updates) = _run(_chain(), spike=False)
  assert int(state.inner[1].switch_step) == 75
  np.testing.assert_array_equal(updates[:BLOW_UP], plain_updates[:BLOW_UP])
  np.testing.assert_array_equal(params[:BLOW_UP + 1], plain_params[:BLOW_UP + 1])
  (_, quiet), (_, quiet_updates) = _run(post_switch_guard(_chain()), spike=False)
  assert int(quiet.firings) == 0 and float(quiet.scale) == 1.0
  np.testing.assert_array_equal(quiet_updates, plain_updates)


def test_a_blow_up_after_the_switch_goes_back_to_the_lowest_check_and_halves():
  (_, state), (params, updates) = _run(post_switch_guard(_chain()), spike=True)
  (_, _), (_, plain_updates) = _run(_chain(), spike=False)
  assert int(state.firings) == 1 and float(state.scale) == 0.5
  # The copy is the params of the last check step (every 10) before the blow-up.
  np.testing.assert_array_equal(params[BLOW_UP + 1], params[240])
  np.testing.assert_allclose(updates[BLOW_UP + 1:], 0.5 * plain_updates[BLOW_UP + 1:],
                             rtol=1e-6)


def test_no_firing_before_the_switch():
  early = post_switch_guard(optax.chain(optax.scale(-1.0), oa.autowu(T, SPE)))

  @jax.jit
  def run():
    params = {'w': jnp.zeros(3)}

    def step(carry, t):
      params, state = carry
      loss = jnp.where(t == 40, 100.0, 10.0 - 1e-3 * t)  # In the warmup.
      updates, state = early.update({'w': jnp.ones(3)}, state, params, value=loss)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, early.init(params)), jnp.arange(60))[0][1]

  assert int(run().firings) == 0


@pytest.mark.parametrize('kwargs, match', [
    (dict(factor=1.0), 'factor'), (dict(cut=1.0), 'cut'), (dict(check_every=0), 'check_every')])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    post_switch_guard(_chain(), **kwargs)
