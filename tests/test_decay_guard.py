"""The decay guard of :func:`optax_autolr.autowu` (``decay_guard``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_autolr as oa

T, SPE, BLOW_UP = 300, 10, 250  # The switch: the end of the maximal warmup.
SWITCH = 50  # The maximal warmup: 5 epochs (max_warmup_epochs), not 0.25 x T.
CHECK = 10  # test_every: the guard's copy cadence.


def _run(tx, spike, params=True):
  """Params and updates under ``tx`` for a falling loss that jumps to 200 at
  step ``BLOW_UP`` only (``spike``)."""

  @jax.jit
  def run():
    p = {'w': jnp.zeros(3)}

    def step(carry, t):
      p, state = carry
      loss = 10.0 - 1e-3 * t
      loss = jnp.where(spike & (t == BLOW_UP), 200.0, loss)
      updates, state = tx.update({'w': jnp.ones(3)}, state,
                                 p if params else None, value=loss)
      return (optax.apply_updates(p, updates), state), (p['w'], updates['w'])

    return jax.lax.scan(step, (p, tx.init(p if params else None)),
                        jnp.arange(T))

  return run()


def _chain(**kwargs):
  kwargs = dict(dict(rollback=False, test_every=CHECK), **kwargs)
  return optax.chain(optax.scale(-1.0), oa.autowu(T, SPE, **kwargs))


def test_the_default_guard_keeps_a_snapshot_the_authors_rule_none():
  assert oa.DEFAULTS['decay_guard'] == 2.0
  assert oa.AUTHORS['decay_guard'] == math.inf
  assert _chain().init({'w': jnp.zeros(3)})[1].snapshot is not None
  assert _chain(decay_guard=math.inf).init({'w': jnp.zeros(3)})[1].snapshot is None
  authors = oa.autowu(T, SPE, test_every=SPE, divergence_factor=None)
  assert authors.init({'w': jnp.zeros(3)}).snapshot is None


def test_without_a_blow_up_the_updates_are_the_unguarded_ones_bit_for_bit():
  (_, state), (params, updates) = _run(_chain(), spike=True)
  (_, _), (off_params, off_updates) = _run(_chain(decay_guard=math.inf),
                                           spike=False)
  assert int(state[1].switch_step) == SWITCH
  np.testing.assert_array_equal(updates[:BLOW_UP], off_updates[:BLOW_UP])
  np.testing.assert_array_equal(params[:BLOW_UP + 1],
                                off_params[:BLOW_UP + 1])
  (_, quiet), (_, quiet_updates) = _run(_chain(), spike=False)
  assert float(quiet[1].decay_scale) == 1.0
  assert np.isfinite(float(quiet[1].decay_low))  # It kept copies.
  np.testing.assert_array_equal(quiet_updates, off_updates)


def test_a_blow_up_goes_back_to_the_last_copy_and_halves_the_rest():
  (_, state), (params, updates) = _run(_chain(), spike=True)
  (_, _), (_, off_updates) = _run(_chain(decay_guard=math.inf), spike=False)
  aw = state[1]
  assert float(aw.decay_scale) == 0.5
  # The copy: the params at the last copy step ((t + 1) % 10 == 0) before it.
  np.testing.assert_array_equal(params[BLOW_UP + 1], params[BLOW_UP - 1])
  np.testing.assert_allclose(updates[BLOW_UP + 1:],
                             0.5 * off_updates[BLOW_UP + 1:], rtol=1e-6)


def test_without_params_a_blow_up_only_halves_the_lr():
  (_, state), (_, updates) = _run(_chain(), spike=True, params=False)
  (_, _), (_, off_updates) = _run(_chain(decay_guard=math.inf), spike=False,
                                  params=False)
  assert state[1].snapshot is None and float(state[1].decay_scale) == 0.5
  np.testing.assert_array_equal(updates[:BLOW_UP], off_updates[:BLOW_UP])
  np.testing.assert_allclose(updates[BLOW_UP:], 0.5 * off_updates[BLOW_UP:],
                             rtol=1e-6)  # From the blow-up's own update.


def test_no_firing_in_the_warmup():
  # Without the warmup's own guard, a blow-up in the warmup ends nothing.
  tx = _chain(divergence_factor=None, test_every=5, decay_guard=2.0)

  @jax.jit
  def run():
    p = {'w': jnp.zeros(3)}

    def step(carry, t):
      p, state = carry
      loss = jnp.where(t == 20, 100.0, 10.0 - 1e-3 * t)  # In the warmup.
      updates, state = tx.update({'w': jnp.ones(3)}, state, p, value=loss)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(step, (p, tx.init(p)), jnp.arange(40))[0][1]

  state = run()[1]
  assert int(state.phase) == oa.WARMUP
  assert float(state.decay_scale) == 1.0 and math.isinf(float(state.decay_low))


@pytest.mark.parametrize('value', [1.0, 0.5, -2.0, math.nan])
def test_bad_factor_raises(value):
  with pytest.raises(ValueError, match=r'`decay_guard` must be'):
    oa.autowu(T, SPE, decay_guard=value)
