"""Reading AutoWU's decision back: posterior, metrics, paths, restores."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_autolr as oa


def _u_losses(n=400, bottom=150, seed=0):
  t = np.arange(n)
  u = np.where(t < bottom, 2.0 - t / bottom,
               1.0 + 0.5 * ((t - bottom) / 50.0)**2)
  return jnp.asarray(
      u + 0.01 * np.random.default_rng(seed).standard_normal(n), jnp.float32)


def _run(tx, losses):
  state = tx.init({'w': jnp.zeros(2)})

  def step(state, loss):
    _, state = tx.update({'w': jnp.ones(2)}, state, {'w': jnp.zeros(2)},
                         value=loss)
    return state, None

  return jax.jit(lambda s: jax.lax.scan(step, s, losses)[0])(state)


@pytest.mark.parametrize('kwargs', [
    {}, {'noise_floor': 0.05, 'lengthscale': 0.3, 'grid_size': 64},
    {'min_descent': 3.0, 'valley_level': 0.05}])
def test_posterior_reproduces_the_switch_decision(kwargs):
  state = _run(oa.autowu(1000, 20, test_every=5, max_warmup_epochs=math.inf,
                        **kwargs), _u_losses())
  assert int(state.switch_reason) in (oa.CONFIDENT_MINIMUM, oa.KNEE_PASSED)
  steps, result = oa.loss_curve_posterior(state)
  # Same constants as the transformation, read from the state: same numbers.
  np.testing.assert_allclose(result.probability, state.probability,
                             rtol=1e-6)
  np.testing.assert_allclose(result.argmin, state.argmin, rtol=1e-6)
  assert steps.shape == (kwargs.get('grid_size', 256),)
  assert float(steps[-1]) == pytest.approx(float(state.switch_step))


def test_posterior_under_jit_needs_explicit_constants():
  state = oa.autowu(100, 10).init({'w': jnp.zeros(2)})
  with pytest.raises(TypeError, match='lengthscale'):
    jax.jit(lambda s: oa.loss_curve_posterior(s)[1].argmin)(state)
  out = jax.jit(lambda s: oa.loss_curve_posterior(
      s, lengthscale=0.2, grid_size=32, noise_floor=1e-4, min_descent=0.0,
      valley_level=0.0, knee_slope=0.0, minimum_after=1.0,
      gp_fit_steps=0)[1].argmin)(state)
  assert np.isfinite(out)


def test_metrics_for_logging():
  state = _run(oa.autowu(1000, 20, test_every=5, max_warmup_epochs=math.inf),
               _u_losses())
  m = oa.get_metrics(optax.chain(optax.identity()).init(None) + (state,))
  assert m['phase'] == 'decay'
  assert m['switch_reason'] == 'confident minimum'
  assert m['step'] == 400 and isinstance(m['step'], int)
  # The positive tests that ended warmup (patience), frozen at the switch.
  assert m['positives'] == 3 and isinstance(m['positives'], int)
  assert m['restart_lr'] == pytest.approx(float(state.restart_lr))
  assert set(m) == {'step', 'lr', 'phase', 'probability', 'positives',
                    'switch_step', 'restart_lr', 'switch_reason',
                    'gradient_coherence', 'snapshot_step', 'decay_scale'}
  assert math.isnan(m['gradient_coherence'])  # No `gradients=` given.
  # A snapshot before the switch, or -1 where no rollback took place.
  assert isinstance(m['snapshot_step'], int)
  assert -1 <= m['snapshot_step'] < m['switch_step']
  # The U-shaped stream keeps rising after the switch: the decay guard fired.
  assert m['decay_scale'] == float(state.decay_scale) < 1.0


def test_repr_shows_named_values():
  state = _run(oa.autowu(1000, 20, test_every=5, max_warmup_epochs=math.inf),
               _u_losses())
  text = repr(state)
  assert text.startswith('AutoWUState(count=400, phase=\'decay\'')
  assert "switch_reason='confident minimum'" in text
  assert 'losses in' in text and 'Array' not in text
  # Stacked (scan) states fall back to the arrays.
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  assert 'Array' in repr(stacked)


def test_two_autowu_states_need_a_path():
  tx = optax.multi_transform(
      {'enc': optax.chain(optax.lamb(1.0), oa.autowu(100, 10)),
       'dec': optax.chain(optax.adam(1.0), oa.autowu(200, 10, min_lr=1e-4, max_lr=0.5))},
      {'x': 'enc', 'y': 'dec'})
  state = tx.init({'x': jnp.ones(2), 'y': jnp.ones(2)})
  found = oa.find_autowu_states(state)
  assert len(found) == 2
  with pytest.raises(ValueError, match=r"pass `path=`.*") as e:
    oa.get_lr(state)
  assert "['enc']" in str(e.value) and "['dec']" in str(e.value)
  assert float(oa.get_lr(state, path="['dec']")) == pytest.approx(1e-4)
  assert float(oa.get_lr(state, path="['enc']")) == pytest.approx(
      oa.DEFAULTS['min_lr'])
  assert oa.get_metrics(state, path='dec')['lr'] == pytest.approx(1e-4)
  with pytest.raises(ValueError, match="no AutoWUState at a path"):
    oa.get_lr(state, path='nothing')


def test_restoring_into_another_budget_warns():
  params = {'w': jnp.zeros(2)}
  # 10 and 20 epochs: maximal warmups of 250 and 500 steps (5 epochs).
  old = optax.chain(optax.lamb(1.0), oa.autowu(1000, 100)).init(params)
  same = optax.chain(optax.lamb(1.0), oa.autowu(1000, 100)).init(params)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert oa.check_restored(old, same) == []
  new_tx = optax.chain(optax.lamb(1.0), oa.autowu(2000, 100))
  with pytest.warns(UserWarning, match='total_steps: state 1000'):
    diffs = oa.check_restored(old, new_tx.init(params))
  assert any('warmup_steps' in d for d in diffs)
  # An eager update with the mismatched state warns too.
  with pytest.warns(UserWarning, match='another configuration'):
    new_tx.update(params, old, params, value=1.0)


def test_a_dict_state_of_an_older_version_is_found_and_named():
  """An Orbax restore without a target, saved before ``minimum_after`` existed
  (one leaf per constant, before they were packed)."""
  fresh = oa.autowu(1000, 10).init(None)
  old = {k: v for k, v in fresh._asdict().items()
         if k not in ('int_constants', 'float_constants')}
  old.update({n: getattr(fresh, n) for n in oa.INT_CONSTANTS
              + oa.FLOAT_CONSTANTS if n != 'minimum_after'})
  with pytest.warns(UserWarning, match=r"minimum_after: state missing \(an older"):
    diffs = oa.check_restored({'opt': old}, fresh)
  assert len(diffs) == 1, diffs


def test_a_dict_state_with_packed_constants_is_read():
  """An Orbax restore without a target of the current state."""
  old = oa.autowu(1000, 100).init(None)._asdict()
  fresh = oa.autowu(2000, 100).init(None)
  with pytest.warns(UserWarning, match='total_steps: state 1000, transformation 2000'):
    diffs = oa.check_restored({'opt': old}, fresh)
  assert len(diffs) == 2, diffs  # total_steps and warmup_steps.


def test_a_linear_warmup_state_matches_its_transformation():
  tx = oa.autowu(100, 10, warmup='linear')  # minimum_after: 3, unused.
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  assert float(state.minimum_after) == 1.0
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tx.update(params, state, params, value=1.0)
    assert oa.check_restored(state, tx.init(params)) == []


def test_repr_and_metrics_of_an_nnx_optimizer_state():
  from flax import nnx  # noqa: PLC0415
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, oa.autowu_lamb(100, 10), wrt=nnx.Param)
  state = oa.find_autowu_state(opt.opt_state)  # nnx.Variable leaves.
  assert repr(state).startswith("AutoWUState(count=0, phase='warmup'")
  assert oa.get_metrics(opt.opt_state)['switch_reason'] == 'not switched'


def test_readback_on_nnx_states_and_abstract_or_stacked_states():
  from flax import nnx  # noqa: PLC0415
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, oa.autowu_lamb(100, 10), wrt=nnx.Param)
  assert isinstance(oa.get_lr(opt.opt_state), jax.Array)
  steps, _ = oa.loss_curve_posterior(opt.opt_state)  # Variable leaves.
  assert steps.shape == (256,)
  # A split nnx.State (dict form, other paths) against a fresh state.
  other = optax.chain(optax.lamb(1.0), oa.autowu(200, 10)).init(
      nnx.state(model, nnx.Param))
  with pytest.warns(UserWarning, match='total_steps: state 100'):
    assert oa.check_restored(nnx.split(opt)[1], other)
  # Stacked and abstract states: no crash.
  state = oa.autowu(100, 10).init(None)
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  fresh = oa.autowu(100, 10).init(None)
  assert oa.check_restored(stacked, fresh) == []
  with pytest.raises(ValueError, match='stacked'):
    oa.get_metrics(stacked)
  assert repr(jax.eval_shape(lambda: state)).startswith('AutoWUState(count=')


def test_numpy_array_arguments_are_plain_numbers():
  tx = oa.autowu(100, 10, confidence=np.array(0.9), min_lr=np.float32(1e-4))
  _, state = jax.jit(tx.update)({}, tx.init(None), value=1.0)
  assert float(state.lr) == pytest.approx(1e-4)


def test_spike_caps_the_restart_at_max_warmup_too():
  total = 200  # Maximal warmup: 50 steps; a falling loss, one spike.
  tx = oa.autowu(total, 10)
  state = tx.init(None)
  for t in range(60):
    loss = 2.0 - 0.01 * t + (3.0 if t == 30 else 0.0)
    _, state = tx.update({}, state, value=loss)
  assert int(state.switch_reason) == oa.MAX_WARMUP
  assert float(state.restart_lr) == pytest.approx(float(state.spike_lr))
  assert float(state.spike_lr) < 0.1
