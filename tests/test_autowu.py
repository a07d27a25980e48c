"""Tests for the AutoWU transformation: decisions, schedule, Optax conformance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_autolr as oa

T, SPE = 2000, 100
# The synthetic curves below are laid out for the paper's warmup (1e-5 over
# half the budget); the library's other defaults (valley restart, descent
# gate, spike cap) stay on.
PAPER = dict(min_lr=1e-5, max_warmup_fraction=0.5, max_warmup_epochs=math.inf)
WARMUP_STEPS = T // 2
MIN_LR = oa.DEFAULTS['min_lr']


def _u_curve_run(tx, num_steps):
  """Feeds a loss that is a U-shaped function of the LR in use."""

  @jax.jit
  def run(log10_opt, noise, key):
    params = {'w': jnp.zeros(3)}
    state = tx.init(params)

    def step(state, key):
      lr = jnp.where(state.count == 0, 1e-5, state.lr)
      loss = 1.0 + 0.5 * (jnp.log10(lr) - log10_opt)**2
      loss = loss + noise * jax.random.normal(key)
      _, state = tx.update({'w': jnp.ones(3)}, state, params, value=loss)
      return state, state.lr

    return jax.lax.scan(step, state, jax.random.split(key, num_steps))

  return run


@pytest.fixture(scope='module')
def u_runner():
  return _u_curve_run(oa.autowu(T, SPE, **PAPER), T)


@pytest.mark.parametrize('noise', [0.01, 0.1, 0.3])
@pytest.mark.parametrize('log10_opt', [-3.0, -2.0, -1.0])
def test_switch_after_optimum_and_restart_near_it(u_runner, noise, log10_opt):
  state, lrs = u_runner(log10_opt, noise, jax.random.key(int(noise * 100)))
  switch = int(state.switch_step)
  opt = 10.0**log10_opt
  # On a U in log LR the knee (the log loss falling by 0.3 per decade) lies
  # 0.3 decades below the optimum and is passed first.
  assert int(state.switch_reason) in (oa.CONFIDENT_MINIMUM, oa.KNEE_PASSED)
  assert 0 < switch < WARMUP_STEPS
  # The warmup LR had reached the optimum before the switch (the knee rule
  # ends warmup at twice the knee's LR: about the optimum on this U) ...
  assert float(lrs[switch - 1]) > 0.9 * opt
  # ... and the restart LR lands within [0.3, 2] of the true optimum: at most
  # the knee (0.32 decades below the optimum here: ratio 0.48), which the GP
  # estimates from a window that ends about at the optimum.
  ratio = float(state.restart_lr) / opt
  print(f'noise={noise} optimum={opt:g} switch_step={switch} '
        f'restart_lr={float(state.restart_lr):.4g} ratio={ratio:.2f}')
  assert 0.3 <= ratio <= 2.0, ratio
  assert float(lrs[switch]) == pytest.approx(float(state.restart_lr))


@pytest.mark.parametrize('noise', [0.0, 0.05, 0.2])
def test_monotone_curve_never_switches_before_max_warmup(noise):
  tx = oa.autowu(T, SPE, **PAPER)

  @jax.jit
  def run(key):
    state = tx.init(None)

    def step(state, key):
      loss = 2.0 - jnp.log10(state.lr) / 10 + noise * jax.random.normal(key)
      _, state = tx.update({}, state, value=loss)
      return state, None

    return jax.lax.scan(step, state, jax.random.split(key, T))[0]

  state = run(jax.random.key(3))
  assert int(state.switch_reason) == oa.MAX_WARMUP
  assert int(state.switch_step) == WARMUP_STEPS
  np.testing.assert_allclose(state.restart_lr, 1.0, rtol=1e-5)


def _lr_trajectory(tx, num_steps, loss_fn=lambda t: 10.0 - 1e-3 * t):
  @jax.jit
  def run():
    state = tx.init(None)

    def step(state, t):
      _, state = tx.update({}, state, value=loss_fn(t))
      return state, (state.lr, state.phase)

    return jax.lax.scan(step, state, jnp.arange(num_steps))

  return run()


@pytest.mark.parametrize('warmup, decay', [
    ('exp', None), ('linear', None), ('exp', 'cosine'), ('linear', 'linear')])
def test_warmup_and_decay_values_are_exact(warmup, decay):
  total, tw = 400, 200
  tx = oa.autowu(total, 20, warmup=warmup, min_lr=1e-4, max_lr=0.5,
                 max_warmup_fraction=0.5, max_warmup_epochs=10, decay=decay)
  state, (lrs, phases) = _lr_trajectory(tx, total + 10)
  t = np.arange(tw)
  if warmup == 'exp':
    expected = 1e-4 * (0.5 / 1e-4)**(t / tw)
  else:
    expected = 1e-4 + (0.5 - 1e-4) * t / tw
  np.testing.assert_allclose(lrs[:tw], expected, rtol=2e-5)
  frac = (np.arange(tw, total) - tw) / (total - tw)
  shape = (0.5 * (1 + np.cos(np.pi * frac)) if decay == 'cosine'
           else 1.0 - frac)  # The default (None) is linear.
  assert oa.DEFAULTS['decay'] == 'linear'
  np.testing.assert_allclose(lrs[tw:total], 0.5 * shape, rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(lrs[total:], 0.0)
  np.testing.assert_array_equal(phases, (np.arange(total + 10) >= tw))
  assert int(state.switch_reason) == oa.MAX_WARMUP


def test_constant_cosine_values_are_exact():
  total, tw = 400, 100
  tx = oa.autowu(total, 20, max_warmup_fraction=0.25,
                 decay='constant_cosine', cooldown_fraction=0.2, max_lr=0.3)
  _, (lrs, _) = _lr_trajectory(tx, total)
  start = int(0.8 * total)
  np.testing.assert_allclose(lrs[tw:start], 0.3, rtol=2e-5)
  t = np.arange(start, total)
  np.testing.assert_allclose(
      lrs[start:], 0.3 * 0.5 * (1 + np.cos(np.pi * (t - start) /
                                            (total - start))),
      rtol=2e-5, atol=1e-7)
  assert 0.0 < float(lrs[-1]) < 2e-4


def test_divergence_guard_and_non_finite_end_warmup():
  def blow_up(at, value):
    return lambda t: jnp.where(t < at, 3.0 - 1e-3 * t, value)

  _, (lrs, phases) = _lr_trajectory(oa.autowu(T, SPE), 400,
                                    blow_up(300, 50.0))
  assert int(np.argmax(np.asarray(phases))) in range(300, 303)
  state, _ = _lr_trajectory(oa.autowu(T, SPE), 400, blow_up(300, jnp.nan))
  assert int(state.switch_step) == 300
  assert int(state.switch_reason) == oa.NON_FINITE
  assert 0 < float(state.restart_lr) < float(lrs[299])
  # The authors' rule: the guard is off, non-finite losses are skipped.
  state, _ = _lr_trajectory(
      oa.autowu(T, SPE, test_every=SPE, divergence_factor=None), 400,
      blow_up(300, jnp.nan))
  assert int(state.phase) == oa.WARMUP
  assert int(oa.window.window_num_losses(state.window)) == 300


def test_authors_rule_tests_once_an_epoch():
  tx = oa.autowu(T, SPE, test_every=SPE, divergence_factor=None, patience=3)
  # A curve with a clear minimum: with the authors' rule the switch lands on
  # an epoch boundary, 3 tests after the first positive one.
  state, _ = _lr_trajectory(
      tx, T, lambda t: 1.0 + ((t - 300.0) / 200.0)**2)
  assert (int(state.switch_step) + 1) % SPE == 0
  assert int(state.switch_reason) == oa.CONFIDENT_MINIMUM


@pytest.mark.parametrize('kwargs, match', [
    (dict(total_steps=1), 'total_steps'),
    (dict(steps_per_epoch=1001), 'steps_per_epoch'),
    (dict(test_every=501), 'test_every'),
    (dict(steps_per_epoch=0), 'steps_per_epoch'),
    (dict(min_lr=0.0), 'min_lr'),
    (dict(min_lr=-1.0), 'min_lr'),
    (dict(max_lr=1e-6), 'max_lr'),
    (dict(max_lr=float('nan')), 'max_lr'),
    (dict(max_warmup_fraction=0.0), 'max_warmup_fraction'),
    (dict(max_warmup_fraction=1.0), 'max_warmup_fraction'),
    (dict(max_warmup_fraction=1e-5, min_warmup_epochs=0.0),
     'max_warmup_fraction'),
    (dict(min_warmup_epochs=float('nan')), 'min_warmup_epochs'),
    (dict(warmup='cosine'), 'warmup'),
    (dict(decay='step'), 'decay'),
    (dict(cooldown_fraction=0.0), 'cooldown_fraction'),
    (dict(confidence=0.5), 'confidence'),
    (dict(confidence=1.0), 'confidence'),
    (dict(patience=0), 'patience'),
    (dict(test_every=0), 'test_every'),
    (dict(divergence_factor=1.0), 'divergence_factor'),
    (dict(window_size=7), 'window_size'),
    (dict(window_size=4), 'window_size'),
    (dict(grid_size=2), 'grid_size'),
    (dict(lengthscale=0.0), 'lengthscale'),
    (dict(noise_floor=0.0), 'noise_floor'),
])
def test_bad_arguments_raise_at_construction(kwargs, match):
  args = dict(total_steps=1000, steps_per_epoch=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    oa.autowu(**args)


@pytest.mark.parametrize('kwargs, match', [
    (dict(min_lr='small'), 'min_lr'),
    (dict(total_steps=10.5), 'total_steps'),
    (dict(patience=True), 'patience'),
    (dict(confidence='0.9'), 'confidence'),
    (dict(max_lr=jnp.float32(1.0)), 'max_lr'),
])
def test_bad_argument_type(kwargs, match):
  args = dict(total_steps=1000, steps_per_epoch=10)
  args.update(kwargs)
  with pytest.raises(TypeError, match=match):
    oa.autowu(**args)


def test_numpy_scalars_are_accepted():
  tx = oa.autowu(np.int64(1000), np.int32(10), min_lr=np.float32(1e-5),
                 test_every=np.int64(5), confidence=np.float64(0.9))
  state = tx.init({'w': jnp.zeros(2)})
  assert int(state.total_steps) == 1000
  _, state = tx.update({'w': jnp.ones(2)}, state, {'w': jnp.zeros(2)},
                       value=jnp.float32(1.0))
  assert float(state.lr) == pytest.approx(1e-5)


def test_messages_name_the_argument_and_the_range():
  with pytest.raises(ValueError) as e:
    oa.autowu(100, 200)
  assert str(e.value) == (
      '`steps_per_epoch` must be an integer in [1, 100], got 200.')
  with pytest.raises(ValueError) as e:
    oa.autowu(1000, 10, test_every=600)  # Maximal warmup: 5 epochs, 50 steps.
  assert str(e.value) == '`test_every` must be an integer in [1, 50], got 600.'
  with pytest.raises(ValueError, match=r'in \(0.0, 1.0\), got 1.5'):
    oa.autowu(1000, 10, max_warmup_fraction=1.5)
  with pytest.raises(ValueError, match=r'`max_warmup_epochs` must be in'):
    oa.autowu(1000, 10, max_warmup_epochs=0.0)
  # The cap is never below 40 steps (one test a step): full-batch training.
  assert oa.autowu(10000, 1).init(None).warmup_steps == 40
  assert oa.autowu(10000, 1, max_warmup_epochs=0.05).init(None).warmup_steps == 40
  assert oa.autowu(100, 1).init(None).warmup_steps == 25  # 0.25 x T.
  assert oa.default_test_every(10000, 1) == 1


def test_short_budgets_warm_up_for_at_least_half_an_epoch():
  """``min_warmup_epochs``: a budget under two epochs gets a slower ramp."""
  warmup = lambda *a, **k: int(oa.autowu(*a, **k).init(None).warmup_steps)
  assert oa.DEFAULTS['min_warmup_epochs'] == 0.5
  assert warmup(140, 140) == 70  # One epoch: half the budget, not a quarter.
  assert warmup(140, 140, min_warmup_epochs=0.0) == 35
  assert warmup(300, 200) == 100  # 1.5 epochs: half an epoch > 0.25 x T.
  assert warmup(1000, 250) == 250  # Four epochs: 0.25 x T, unchanged.
  assert warmup(140, 140, min_warmup_epochs=2.0) == 70  # At most T / 2.
  assert warmup(10000, 100, min_warmup_epochs=5.0) == 500  # At most the cap.
  assert oa.default_test_every(1100, 1100) == 550 // 40
  assert oa.default_test_every(1100, 1100, min_warmup_epochs=0.0) == 275 // 40
  # The authors' preset: half the budget, with or without the floor.
  assert oa.AUTHORS['min_warmup_epochs'] == 0.0
  assert warmup(1000, 100, test_every=100, divergence_factor=None) == 500
  with pytest.raises(ValueError, match=r'`min_warmup_epochs` must be in \[0.0, inf\)'):
    oa.autowu(1000, 10, min_warmup_epochs=-0.5)


def test_warmup_too_short_for_any_test_warns():
  with pytest.warns(UserWarning, match='shorter than the 8 losses'):
    oa.autowu(28, 14)  # 2 epochs of 14 steps: a 7-step maximal warmup.


def test_tests_too_rare_for_patience_warn():
  with pytest.warns(UserWarning, match='never by a confident minimum'):
    oa.autowu(100, 20, test_every=20)  # 3 tests need 60 > 50 warmup steps.


def test_missing_or_non_scalar_value():
  tx = oa.autowu(100, 10)
  state = tx.init({'w': jnp.zeros(2)})
  with pytest.raises(ValueError, match='value=loss'):
    tx.update({'w': jnp.zeros(2)}, state)
  with pytest.raises(ValueError, match='scalar'):
    tx.update({'w': jnp.zeros(2)}, state, value=jnp.ones(4))


def _quadratic():
  target = jnp.array([1.0, -2.0, 3.0, 0.5])
  loss_fn = lambda p: jnp.sum((p['w'] - target)**2)
  return loss_fn, {'w': jnp.zeros(4)}


def test_converges_inside_scan(scan_train):
  loss_fn, params = _quadratic()
  tx = optax.chain(optax.adam(1.0), oa.autowu(400, 20))
  params, state, losses = scan_train(tx, loss_fn, params, 400)
  assert float(losses[0]) > 10.0
  assert float(loss_fn(params)) < 1e-3 * float(losses[0])
  assert int(oa.get_phase(state)) == oa.DECAY


def test_nnx_optimizer_update_with_value():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, oa.autowu_lamb(100, 10, weight_decay=1e-4),
                            wrt=nnx.Param)
  x = jnp.ones((8, 3))

  @nnx.jit
  def train_step(model, optimizer):
    loss_fn = lambda m: jnp.mean((m(x) - 1.0)**2)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(30)]
  assert all(math.isfinite(l) for l in losses)
  assert float(oa.get_lr(optimizer.opt_state)) > MIN_LR
  assert int(optimizer.step[...]) == 30


def test_helpers_find_state_in_nested_chains():
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.chain(optax.lamb(1.0), oa.autowu(100, 10)))
  state = tx.init({'w': jnp.zeros(2)})
  assert float(oa.get_lr(state)) == pytest.approx(MIN_LR)
  assert int(oa.get_phase(state)) == oa.WARMUP
  assert float(oa.get_probability(state)) == 0.0
  step, lr, reason = oa.get_switch(state)
  assert int(step) == -1 and int(reason) == oa.NOT_SWITCHED
  with pytest.raises(ValueError, match='no AutoWUState'):
    oa.get_lr(optax.lamb(1.0).init({'w': jnp.zeros(2)}))


def test_updates_keep_dtype():
  tx = oa.autowu(100, 10)
  params = {'a': jnp.ones(3, jnp.bfloat16), 'b': jnp.ones(2, jnp.float32)}
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params, value=1.0)
  assert updates['a'].dtype == jnp.bfloat16
  assert updates['b'].dtype == jnp.float32
  np.testing.assert_allclose(updates['b'], MIN_LR, rtol=1e-6)


def test_loss_curve_posterior_after_switch(u_runner):
  state, _ = u_runner(-2.0, 0.05, jax.random.key(0))
  steps, result = oa.loss_curve_posterior(state)
  assert steps[-1] == pytest.approx(float(state.switch_step))
  restart_from_posterior = 1e-5 * (1e5)**(
      float(result.argmin) * float(state.switch_step) / WARMUP_STEPS)
  np.testing.assert_allclose(restart_from_posterior, state.restart_lr,
                             rtol=1e-3)
  assert np.all(np.isfinite(result.posterior.mean))


@pytest.mark.parametrize('make', [oa.autowu_lamb, oa.autowu_adamp,
                                  oa.autowu_adamw])
def test_convenience_chains_train_a_small_model(make):
  model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 1, rngs=nnx.Rngs(1)))
  tx = make(300, 10, weight_decay=1e-4)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(0), (64, 4))
  y = jnp.sin(x.sum(axis=1, keepdims=True))

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y)**2))(model)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(301)]
  assert losses[-1] < 0.5 * losses[0]
  # The update at step t = total_steps uses LR 0.
  assert float(oa.get_lr(optimizer.opt_state)) == 0.0


FIELDS = ('count', 'phase', 'lr', 'probability', 'switch_step', 'restart_lr',
          'switch_reason')
SCALAR_FIELDS = (FIELDS + oa.STATS + oa.INT_CONSTANTS + oa.FLOAT_CONSTANTS)


def test_state_is_flat_named_scalars_and_the_window():
  tx = oa.autowu(200, 10, window_size=16)
  state = tx.init({'w': jnp.zeros(2)})
  assert state._fields == FIELDS + ('stats', 'window', 'int_constants',
                                    'float_constants', 'grad_sample',
                                    'snapshot', 'gp_adam')
  assert oa.STATS == ('positives', 'argmin', 'loss_ema', 'ema_min',
                      'spike_lr', 'last_loss', 'diff_ema', 'coherence_sum',
                      'coherence_count', 'restart_estimate', 'snapshot_step',
                      'decay_ema', 'decay_low', 'decay_scale')
  assert oa.INT_CONSTANTS + oa.FLOAT_CONSTANTS == (
      'total_steps', 'warmup_steps', 'grid_size', 'gp_fit_steps',
      'lengthscale', 'noise_floor', 'min_descent', 'valley_level',
      'knee_slope', 'log_lr_range', 'minimum_after')
  # The running values and the constants are packed (properties read them);
  # the gradient sample is one strided float32 vector: 15 leaves, and the
  # params snapshot's (rollback).
  assert state.stats.shape == (len(oa.STATS),)
  assert state.stats.dtype == jnp.float32
  assert state.grad_sample.shape == (2,)
  assert len(jax.tree.leaves(state)) == 15 + 1
  many = tx.init({f'w{i}': jnp.zeros((3, i + 1)) for i in range(40)})
  assert len(jax.tree.leaves(many)) == 15 + 40
  no_rollback = oa.autowu(200, 10, window_size=16, rollback=False,
                          decay_guard=math.inf)
  assert len(jax.tree.leaves(no_rollback.init(many.snapshot))) == 15
  assert many.grad_sample.shape == (sum(3 * (i + 1) for i in range(40)),)
  for name in SCALAR_FIELDS:
    assert getattr(state, name).shape == (), name
  assert (float(state.ema_min) == float(state.spike_lr)
          == float(state.restart_estimate) == math.inf)
  assert float(state.snapshot_step) == -1.0
  assert state.window.sums.shape == (2, 16)
  # optax's own tree helpers see the named fields.
  assert float(optax.tree_utils.tree_get(state, 'lr')) == pytest.approx(MIN_LR)

  def step(state, loss):
    _, state = tx.update({'w': jnp.ones(2)}, state, {'w': jnp.zeros(2)},
                         value=loss)
    return state, state

  losses = jnp.concatenate([jnp.linspace(2.0, 1.0, 30),
                            jnp.full(10, jnp.nan), jnp.ones(20)])
  final, states = jax.jit(lambda s: jax.lax.scan(step, s, losses))(state)
  for name in SCALAR_FIELDS:
    stacked = np.asarray(getattr(states, name))
    assert stacked.shape == (60,), name
    np.testing.assert_array_equal(stacked[-1], getattr(final, name))
  np.testing.assert_array_equal(states.phase,
                                (np.arange(60) >= 30).astype(np.int32))
  assert int(final.switch_reason) == oa.NON_FINITE
  assert int(final.switch_step) == 30
  # The window holds the 30 finite warmup losses, frozen at the switch.
  counts = np.asarray(states.window.counts)
  assert counts.shape == (60, 16)
  np.testing.assert_array_equal(counts.sum(axis=1),
                                np.minimum(np.arange(1, 61), 30))
  assert int(oa.window.window_num_losses(final.window)) == 30
  means, _ = oa.window.window_means(final.window)
  mask = np.asarray(oa.window.window_mask(final.window))
  np.testing.assert_allclose(
      np.sum(means[mask] * np.asarray(final.window.counts)[mask]),
      float(jnp.sum(losses[:30])), rtol=1e-6)


def test_authors_rule_keeps_the_papers_values():
  """Under the authors' rule the None-default arguments take the paper's."""
  preset = dict(test_every=SPE, divergence_factor=None)
  paper = dict(preset, min_lr=1e-5, max_warmup_fraction=0.5,
               max_warmup_epochs=math.inf, min_warmup_epochs=0.0,
               decay='cosine',
               restart_fraction=1.0, min_descent=0.0, valley_level=0.0,
               spike_factor=math.inf, knee_slope=0.0, knee_ratio=3.0,
               minimum_after=1.0, coherence_threshold=-1.0,
               rewarm_fraction=0.0, rollback=False, decay_guard=math.inf,
               gp_fit='adam')
  curve = lambda t: 1.0 + ((t - 300.0) / 200.0)**2
  a, (lrs_a, _) = _lr_trajectory(oa.autowu(T, SPE, **preset), T, curve)
  b, (lrs_b, _) = _lr_trajectory(oa.autowu(T, SPE, **paper), T, curve)
  np.testing.assert_array_equal(np.asarray(lrs_a), np.asarray(lrs_b))
  assert int(a.switch_step) == int(b.switch_step)
  assert float(lrs_a[0]) == pytest.approx(1e-5)
  assert oa.AUTHORS == {k: paper[k] for k in oa.AUTHORS}


@pytest.mark.parametrize('fraction', [2.0, 100.0])
def test_restart_fraction_above_one_stops_at_the_largest_lr_tested(fraction):
  """``restart_fraction > 1`` scales the restart up, never past the warmup."""
  curve = lambda t: 1.0 + ((t - 300.0) / 200.0)**2
  one, _ = _lr_trajectory(oa.autowu(T, SPE, **PAPER), T, curve)
  more, _ = _lr_trajectory(
      oa.autowu(T, SPE, **dict(PAPER, restart_fraction=fraction)), T, curve)
  switch = int(one.switch_step)
  assert int(more.switch_step) == switch  # The decision is the same.
  low = PAPER['min_lr']
  tested = low * (1.0 / low)**(switch / WARMUP_STEPS)
  assert float(more.restart_lr) == pytest.approx(
      min(fraction * float(one.restart_lr), tested), rel=1e-4)
  assert float(more.restart_lr) > float(one.restart_lr)


@pytest.mark.parametrize('kwargs, match', [
    (dict(restart_fraction=0.0), 'restart_fraction'),
    (dict(restart_fraction=-0.5), 'restart_fraction'),
    (dict(min_descent=-1.0), 'min_descent'),
    (dict(valley_level=1.0), 'valley_level'),
    (dict(valley_level=-0.1), 'valley_level'),
    (dict(spike_factor=1.0), 'spike_factor'),
    (dict(knee_slope=-0.1), 'knee_slope'),
    (dict(knee_ratio=1.0), 'knee_ratio'),
    (dict(minimum_after=0.5), 'minimum_after'),
    (dict(coherence_threshold=1.5), 'coherence_threshold'),
    (dict(coherence_threshold=-1.5), 'coherence_threshold'),
    (dict(rewarm_fraction=1.0), 'rewarm_fraction'),
    (dict(rewarm_fraction=-0.1), 'rewarm_fraction'),
    (dict(gp_fit='adamw'), 'gp_fit'),
])
def test_bad_rule_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    oa.autowu(1000, 10, **kwargs)


def _coherence_lrs(tx, gradients, num_steps=T, params=None,
                   curve=lambda t: 1.0 + ((t - 300.0) / 200.0)**2):
  """``tx`` on a U-shaped loss over the warmup, handed ``gradients(t)``
  (None: no ``gradients=``), under jit: the LR of every step and the final
  state."""
  params = {'w': jnp.zeros((3, 50)), 'b': jnp.zeros(7)} if params is None else params

  @jax.jit
  def run():
    def step(state, t):
      extra = {} if gradients is None else {'gradients': gradients(t)}
      _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params,
                           value=curve(t), **extra)
      return state, state.lr

    return jax.lax.scan(step, tx.init(params), jnp.arange(num_steps))

  state, lrs = run()
  return np.asarray(lrs), state


def _coherence_run(tx, gradients, num_steps=T, params=None):
  """The final state of :func:`_coherence_lrs`."""
  return _coherence_lrs(tx, gradients, num_steps, params)[1]


def _noise(t):
  key = jax.random.fold_in(jax.random.key(0), t)
  k1, k2 = jax.random.split(key)
  return {'w': jax.random.normal(k1, (3, 50)), 'b': jax.random.normal(k2, (7,))}


def _signal(t):
  g = _noise(t)
  return {'w': 1.0 + 0.1 * g['w'], 'b': 1.0 + 0.1 * g['b']}


def test_coherence_rule_restarts_from_the_largest_lr_tested_after_a_noisy_start():
  """Uncorrelated gradients at the start: the restart is the LR reached."""
  tx = oa.autowu(T, SPE)
  plain = _coherence_run(tx, None)
  coherent = _coherence_run(tx, _signal)
  noisy = _coherence_run(tx, _noise)
  off = _coherence_run(oa.autowu(T, SPE, coherence_threshold=-1.0), _noise)
  switch = int(plain.switch_step)
  assert switch > 0 and int(plain.switch_reason) in (oa.CONFIDENT_MINIMUM, oa.KNEE_PASSED)
  for s in (coherent, noisy, off):  # The decision is the loss's: the same step.
    assert int(s.switch_step) == switch
  assert float(coherent.restart_lr) == float(plain.restart_lr)
  assert float(off.restart_lr) == float(plain.restart_lr)
  # The largest LR tested: the warmup LR of the newest loss in the window.
  reached = MIN_LR * (1.0 / MIN_LR)**(switch / (T // 4))
  assert float(noisy.restart_lr) == pytest.approx(reached, rel=1e-4)
  assert float(noisy.restart_lr) > 1.5 * float(plain.restart_lr)
  # The cosines measured over the first tenth of the maximal warmup (T / 4).
  assert int(noisy.coherence_count) == int(coherent.coherence_count) == T // 40
  assert abs(float(noisy.coherence_sum) / int(noisy.coherence_count)) < 0.2
  assert float(coherent.coherence_sum) / int(coherent.coherence_count) > 0.95
  assert int(plain.coherence_count) == 0


@pytest.mark.parametrize('fraction', [0.1, 0.2])
def test_second_warmup_follows_a_noisy_start_only(fraction):
  """After a noise-dominated start the decay's LR ramps up linearly over
  ``rewarm_fraction * T`` steps from the switch; a coherent start, or
  ``rewarm_fraction=0``, leaves the schedule as it was."""
  lrs, noisy = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=fraction),
                              _noise)
  flat, off = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.0), _noise)
  switch = int(noisy.switch_step)
  assert switch == int(off.switch_step) > 0
  assert float(noisy.restart_lr) == float(off.restart_lr)
  np.testing.assert_array_equal(lrs[:switch], flat[:switch])
  length = int(fraction * T)
  k = np.arange(T - switch)
  np.testing.assert_allclose(lrs[switch:],
                             flat[switch:] * np.minimum((k + 1) / length, 1.0),
                             rtol=1e-6)
  assert lrs[switch] < flat[switch] / (length - 1)
  # A coherent start: the same LRs as without the second warmup.
  coherent, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=fraction),
                               _signal)
  unramped, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.0), _signal)
  np.testing.assert_array_equal(coherent, unramped)


def test_second_warmup_is_the_default_and_not_the_authors():
  assert oa.DEFAULTS['rewarm_fraction'] == 0.2
  assert oa.AUTHORS['rewarm_fraction'] == 0.0
  ramped, state = _coherence_lrs(oa.autowu(T, SPE), _noise)
  switch = int(state.switch_step)
  assert ramped[switch] == pytest.approx(float(state.restart_lr) / (T // 5))
  # No gradients given, or the coherence rule off: no second warmup.
  flat, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.0), None)
  plain, plain_state = _coherence_lrs(oa.autowu(T, SPE), None)
  off, _ = _coherence_lrs(oa.autowu(T, SPE, coherence_threshold=-1.0), _noise)
  assert int(plain_state.switch_step) == switch
  np.testing.assert_array_equal(plain, flat)
  np.testing.assert_array_equal(off, flat)
  assert plain[switch] == float(plain_state.restart_lr)
  # A ramp shorter than one step is none.
  short, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.5 / T), _noise)
  unramped, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.0), _noise)
  np.testing.assert_array_equal(short, unramped)


def test_second_warmup_follows_any_switch_after_a_noisy_start():
  """A warmup that ends at its maximum (the loss never turns up) ramps too."""
  fraction = 0.1
  lrs, state = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=fraction),
                              _noise, curve=lambda t: 2.0 - 1e-4 * t)
  flat, _ = _coherence_lrs(oa.autowu(T, SPE, rewarm_fraction=0.0), _noise,
                           curve=lambda t: 2.0 - 1e-4 * t)
  assert int(state.switch_reason) == oa.MAX_WARMUP
  switch = int(state.switch_step)
  k = np.arange(T - switch)
  np.testing.assert_allclose(
      lrs[switch:], flat[switch:] * np.minimum((k + 1) / int(fraction * T), 1.0),
      rtol=1e-6)



def _rollback_run(tx, curve, num_steps=600, grads=lambda t: {'w': jnp.full((3, 2), 0.1)}):
  """``tx`` on ``curve(t)`` with jitted steps, the params applied: the
  params before every step, every update and the final state."""
  params = {'w': jnp.ones((3, 2))}
  state = tx.init(params)
  step = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, value=loss))
  before, updates = [], []
  for t in range(num_steps):
    u, state = step(grads(t), state, params, jnp.float32(curve(t)))
    before.append(np.asarray(params['w']))
    updates.append(np.asarray(u['w']))
    params = optax.apply_updates(params, u)
  return np.stack(before), np.stack(updates), oa.find_autowu_state(state)


def _u_in_time(t):
  return 1.0 + ((t - 300.0) / 200.0)**2


def _rollback_against_plain(**kwargs):
  """The rollback run on ``_u_in_time`` and the same rule without rollback
  (decay guard off in both: the stream rises after the switch), with what
  both tests check: the same switch, restart point and LRs, the same updates
  before the switch, and the switch's update back to the snapshot, taken at a
  test step before it. Returns ``(state, plain, updates, plain_updates)``."""
  kwargs = dict(kwargs, decay_guard=math.inf)
  tx = optax.chain(optax.adamw(1.0), oa.autowu(T, SPE, **kwargs))
  off = optax.chain(optax.adamw(1.0), oa.autowu(T, SPE, rollback=False,
                                                **kwargs))
  before, updates, state = _rollback_run(tx, _u_in_time)
  _, plain_updates, plain = _rollback_run(off, _u_in_time)
  switch, snap = int(state.switch_step), int(state.snapshot_step)
  assert int(plain.switch_step) == switch > 0
  assert float(plain.restart_lr) == float(state.restart_lr)
  assert int(state.switch_reason) in (oa.CONFIDENT_MINIMUM, oa.KNEE_PASSED)
  assert 0 <= snap < switch - 1
  assert (snap + 1) % oa.default_test_every(T, SPE) == 0  # Taken at a test.
  np.testing.assert_allclose(before[switch] + updates[switch], before[snap],
                             rtol=1e-6)
  # Before the switch the params are the same, so are the updates.
  np.testing.assert_array_equal(updates[:switch], plain_updates[:switch])
  # The schedule does not move: the same LRs as without rollback.
  assert float(state.lr) == float(plain.lr)
  return state, plain, updates, plain_updates


def _ramp_lr(t):
  """The default exponential warmup's LR at step ``t`` (budget ``T``)."""
  return MIN_LR * (1.0 / MIN_LR)**(t / (T // 4))


def test_rollback_returns_the_params_to_the_snapshot_at_the_switch():
  """At the switch the update takes the params back to the snapshot: those
  of the last test step whose LR was at most 1.25 x its test's restart LR
  (the test trails the LR reached), before the LRs the warmup went on to;
  every other update is the one without rollback."""
  assert oa.DEFAULTS['rollback'] is True and oa.AUTHORS['rollback'] is False
  state, plain, updates, plain_updates = _rollback_against_plain()
  switch, snap = int(state.switch_step), int(state.snapshot_step)
  assert _ramp_lr(snap) <= 1.25 * float(state.restart_estimate) * (1 + 1e-5)
  assert _ramp_lr(snap + 1) > 0.5 * float(state.restart_lr)  # Not far back.
  # After the switch the updates are the same but the rolled-back step (the
  # moments are the optimizer's own).
  assert not np.allclose(updates[switch], plain_updates[switch])
  assert int(plain.snapshot_step) == -1 and plain.snapshot is None


@pytest.mark.parametrize('fraction', [0.5, 0.7])
def test_rollback_with_a_lower_restart_goes_back_to_the_restart_point(fraction):
  """With ``restart_fraction`` below 1 the snapshot still follows the
  restart point (its test's estimate before the fraction scales it), so the
  lower restart goes back to the params near that point instead of keeping
  the whole excursion; the switch, the point and the LRs are those of the
  rule without rollback."""
  state, _, _, _ = _rollback_against_plain(restart_fraction=fraction)
  snap = int(state.snapshot_step)
  # The estimate is the fraction x the point's LR: no spike capped it.
  assert math.isinf(float(state.spike_lr))
  point = float(state.restart_estimate) / fraction  # The LR at the point.
  assert _ramp_lr(snap) <= 1.25 * point * (1 + 1e-5)
  assert _ramp_lr(snap + 1) > 0.5 * point  # The point's params, not earlier.


def test_no_rollback_without_an_excursion_or_a_snapshot():
  """A switch at the LR reached (the maximal warmup on a falling loss) keeps
  the params; so do the authors' rule and ``init(None)``."""
  falling = lambda t: 10.0 - 1e-3 * t
  tx = optax.chain(optax.adamw(1.0), oa.autowu(400, 20))
  off = optax.chain(optax.adamw(1.0), oa.autowu(400, 20, rollback=False))
  _, updates, state = _rollback_run(tx, falling, 150)
  _, plain_updates, _ = _rollback_run(off, falling, 150)
  assert int(state.switch_reason) == oa.MAX_WARMUP
  assert int(state.snapshot_step) == -1
  np.testing.assert_array_equal(updates, plain_updates)
  authors = oa.autowu(T, SPE, test_every=SPE, divergence_factor=None)
  assert authors.init({'w': jnp.ones(3)}).snapshot is None
  loss_only = oa.autowu(T, SPE)  # No params: nothing to keep, none needed.
  state = loss_only.init(None)
  assert state.snapshot is None
  _, state = loss_only.update({}, state, value=1.0)
  assert int(state.count) == 1


def test_rollback_needs_the_params_and_a_bool():
  tx = oa.autowu(T, SPE)
  state = tx.init({'w': jnp.ones(3)})
  with pytest.raises(ValueError, match='params'):
    tx.update({'w': jnp.ones(3)}, state, value=1.0)
  with pytest.raises(TypeError, match='rollback'):
    oa.autowu(T, SPE, rollback=1)
  assert oa.autowu(T, SPE, rollback=False, decay_guard=math.inf).init(
      {'w': jnp.ones(3)}).snapshot is None


def test_rollback_snapshot_keeps_the_params_dtypes_under_scan():
  """The snapshot is the params' own tree and dtypes; ``lax.scan`` carries
  it (a bfloat16 leaf stays bfloat16)."""
  params = {'w': jnp.ones((3, 2), jnp.bfloat16), 'b': jnp.zeros(4)}
  tx = optax.chain(optax.adamw(1.0), oa.autowu(400, 20))
  state = tx.init(params)
  snap = oa.find_autowu_state(state).snapshot
  assert jax.tree.map(lambda x: x.dtype, snap) == jax.tree.map(lambda x: x.dtype, params)

  def step(carry, t):
    params, state = carry
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    u, state = tx.update(grads, state, params, value=_u_in_time(3.0 * t))
    return (optax.apply_updates(params, u), state), None

  (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(200)))(
      (params, state))
  s = oa.find_autowu_state(state)
  assert int(s.switch_step) > 0
  assert jax.tree.map(lambda x: x.dtype, s.snapshot) == jax.tree.map(
      lambda x: x.dtype, params)

def test_coherence_of_sampled_leaves_estimates_the_whole_cosine():
  """A leaf larger than the sample is strided per axis and weighted by its
  entries per sampled entry; a smaller one is taken whole."""
  params = {'w': jnp.zeros((300, 100)), 'b': jnp.zeros(4000)}
  x = jax.random.normal(jax.random.key(1), (300, 100))
  y = jax.random.normal(jax.random.key(2), (300, 100))
  u = jax.random.normal(jax.random.key(3), (4000,))
  # w: cosine 0.6 over 30000 entries; b: cosine -1 over 4000.
  grads = [{'w': x, 'b': u}, {'w': 0.6 * x + 0.8 * y, 'b': -u}]
  tx = oa.autowu(T, SPE)
  state = _coherence_run(
      tx, lambda t: jax.tree.map(lambda a, b: jnp.where(t == 0, a, b), *grads),
      num_steps=2, params=params)
  # b whole (4000), then w strided (at most 4096 of 30000), in tree order.
  assert 4000 < state.grad_sample.shape[0] <= 4000 + 4096
  flat = lambda g: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(g)])
  a, b = flat(grads[0]), flat(grads[1])
  exact = float(a @ b / jnp.sqrt((a @ a) * (b @ b)))  # ~0.41; unweighted ~-0.2.
  assert int(state.coherence_count) == 1
  assert float(state.coherence_sum) == pytest.approx(exact, abs=0.05)


def test_coherence_does_not_depend_on_the_gradients_scale():
  for scale in (1e-12, 1.0, 1e10):
    state = _coherence_run(oa.autowu(T, SPE),
                           lambda t: jax.tree.map(lambda g: scale * g, _signal(t)),
                           num_steps=10)
    mean = float(state.coherence_sum) / int(state.coherence_count)
    assert mean > 0.95, scale


def test_ready_made_chains_hand_autowu_the_gradients():
  params = {'w': jnp.ones((4, 3))}
  for make in (oa.autowu_adamw, oa.autowu_lamb, oa.autowu_adamp):
    tx = make(T, SPE)
    state = tx.init(params)
    step = jax.jit(lambda g, s: tx.update(g, s, params, value=1.0))
    for t in range(5):
      _, state = step(jax.tree.map(lambda p: p * (t + 1.0), params), state)
    m = oa.get_metrics(state)
    assert m['gradient_coherence'] == pytest.approx(1.0, abs=1e-5), make.__name__
  # A plain chain measures nothing unless it is handed the gradients.
  tx = optax.chain(optax.adamw(1.0), oa.autowu(T, SPE))
  _, state = tx.update(params, tx.init(params), params, value=1.0)
  assert math.isnan(oa.get_metrics(state)['gradient_coherence'])


def test_gradients_of_other_params_are_an_error():
  tx = optax.chain(optax.adamw(1.0), oa.autowu(T, SPE))
  params = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
  with pytest.raises(ValueError, match='gradients'):
    tx.update(params, tx.init(params), params, value=1.0,
              gradients={'w': jnp.ones((4, 3))})
  with pytest.raises(ValueError, match='gradients'):  # Same sizes, other tree.
    tx.update(params, tx.init(params), params, value=1.0,
              gradients=[jnp.ones((4, 3)), jnp.ones(3)])
  # Containers of another type with the same paths are the same params.
  pair = (jnp.ones((4, 3)), jnp.ones(3))
  tx.update(pair, tx.init(pair), pair, value=1.0, gradients=list(pair))


def test_coherence_rule_off_measures_nothing():
  """``coherence_threshold=-1`` (the authors' preset): no sampling at all."""
  for tx in (oa.autowu(T, SPE, coherence_threshold=-1.0),
             oa.autowu(T, SPE, test_every=SPE, divergence_factor=None)):
    state = _coherence_run(tx, _noise, num_steps=20)
    assert int(state.coherence_count) == 0
    assert not np.any(np.asarray(state.grad_sample))


def _authors_stream(t):
  """Descends, then explodes (spikes of 10-1000x) past the optimum."""
  base = 1.0 + ((t - 300.0) / 200.0)**2
  return jnp.where(t > 380, base * (1.0 + 50.0 * jnp.sin(0.7 * t)**8), base)


def test_authors_preset_fits_the_gp_as_the_authors_do():
  """``gp_fit='adam'``: warm-started Adam hyperparameters, kept in the state,
  and :func:`loss_curve_posterior` reproduces the decision from them."""
  authors = oa.autowu(T, SPE, test_every=SPE, divergence_factor=None)
  state, _ = _lr_trajectory(authors, T, _authors_stream)
  assert int(state.gp_fit_steps) == 100
  assert int(state.phase) == oa.DECAY
  fit = state.gp_adam
  init = oa.gp.adam_fit_init()
  # One Adam state entry per test, 100 steps each, until the switch.
  tests = (int(state.switch_step) + 1) // SPE
  assert int(fit.adam_steps) == 100 * tests
  assert not np.allclose(jax.tree.leaves(fit.params), jax.tree.leaves(init.params))
  _, result = oa.loss_curve_posterior(state)
  assert float(result.probability) == pytest.approx(float(state.probability))
  assert float(result.argmin) == pytest.approx(float(state.argmin))
  # The marginal-likelihood fit keeps no Adam fit: no leaves in the state.
  ml = oa.autowu(T, SPE, test_every=SPE, divergence_factor=None,
                 gp_fit='max_likelihood')
  state_ml, _ = _lr_trajectory(ml, T, _authors_stream)
  assert int(state_ml.gp_fit_steps) == 0
  assert state_ml.gp_adam is None
  assert len(jax.tree.leaves(state_ml)) == len(jax.tree.leaves(state)) - len(
      jax.tree.leaves(init))
  with pytest.raises(ValueError, match='gp_fit_steps'):
    oa.loss_curve_posterior(state_ml, gp_fit_steps=100)


def test_flat_noisy_start_rarely_restarts_badly():
  """Flat noisy start, descent to a minimum, then a blow-up (issue 12)."""
  total = 160
  tx = oa.autowu(total, total // 20)
  warmup_steps = int(oa.DEFAULTS['max_warmup_fraction'] * total)
  u_opt = 0.7  # Position of the optimum in the warmup.
  lr_opt = MIN_LR * (1.0 / MIN_LR)**u_opt

  @jax.jit
  def run(noise, key):
    state = tx.init(None)

    def step(state, key):
      u = state.count / warmup_steps
      d = jnp.clip((u - 0.4) / 0.3, 0.0, 1.0)
      loss = 2.3 - 1.8 * jnp.sin(0.5 * jnp.pi * d)**2
      loss = loss + jnp.where(u > u_opt, 300.0 * (u - u_opt)**2, 0.0)
      loss = loss + noise * jax.random.normal(key)
      _, state = tx.update({}, state, value=loss)
      return state, None

    state, _ = jax.lax.scan(step, state,
                            jax.random.split(key, warmup_steps + 5))
    return state.restart_lr

  bad = 0
  for i, noise in enumerate((0.02, 0.08)):
    for seed in range(20):  # Independent noise for each level.
      ratio = float(run(noise, jax.random.key(seed + 100 * i))) / lr_opt
      bad += not 1 / 3 <= ratio <= 2
  print(f'bad restarts: {bad} of 40')
  assert bad <= 1, bad


# The first losses of a real run (MLP + AdamW, batch 4096, 20 epochs, seed 2,
# the suite's mlp_adamw_b4096_e20): Adam's fast start, then a bump at steps
# 6-9 that the library once took for a confident minimum (restart 0.0016, test
# accuracy 88.49 % against 89.36 % for the grid), then the descent goes on.
_TRANSIENT = [2.492, 1.684, 1.198, 0.96, 0.819, 0.756, 0.772, 0.785, 0.775, 0.838,
              0.728, 0.738, 0.6, 0.65, 0.598, 0.591, 0.555, 0.522, 0.542, 0.534]


@pytest.mark.parametrize('rule, switch', [
    (dict(), -1),  # Defaults: no switch while the LR has not tripled (step 10).
    (dict(min_descent=0.0), -1),  # The guard does not need the gate.
    (dict(min_descent=0.0, minimum_after=1.0), 9),  # Without both: the bump.
])
def test_no_confident_minimum_before_the_lr_has_tripled(rule, switch):
  tx = oa.autowu(260, 13, **rule)
  state = tx.init(None)
  for loss in _TRANSIENT:
    _, state = tx.update({}, state, value=jnp.float32(loss))
  assert int(oa.get_switch(state)[0]) == switch


def _posterior(m):
  """A MinimumTestResult whose posterior mean is ``m`` on a uniform grid."""
  m = jnp.asarray(m, jnp.float32)
  grid = jnp.linspace(0.0, 1.0, m.shape[0])
  post = oa.gp.Posterior(mean=m, var=jnp.zeros_like(m), cov_last=jnp.zeros_like(m))
  return oa.gp.MinimumTestResult(probability=jnp.zeros(()), argmin=grid[jnp.argmin(m)],
                                 hyperparams=None, posterior=post, grid=grid)


def _plateau(x, knee=0.3, depth=2.0, floor=2.7, tilt=0.05):
  """log loss falls steeply until ``knee``, then a nearly flat plateau."""
  steep = floor * np.exp(depth * np.clip(knee - x, 0.0, None))
  return steep * np.exp(-tilt * np.clip(x - knee, 0.0, None))


@pytest.mark.parametrize('span_decades, passed', [(2.0, True), (0.3, False)])
def test_knee_outcome_finds_the_end_of_the_steep_part(span_decades, passed):
  x = np.linspace(0.0, 1.0, 256)
  lr_span = span_decades * math.log(10.0)
  ok, position = oa.knee_outcome(_posterior(_plateau(x)), knee_slope=0.3,
                                 lr_span=jnp.float32(lr_span))
  # Past the knee (x = 0.3) the log loss falls by 0.05 / 2 decades: flat.
  assert float(position) == pytest.approx(0.3, abs=0.02)
  # Passed once the LR doubled past the knee: (1 - 0.3) * span >= log(2).
  assert bool(ok) == passed


@pytest.mark.parametrize('knee_ratio, passed', [(2.0, True), (3.0, False)])
def test_knee_outcome_passes_at_knee_ratio_times_the_knee_lr(knee_ratio, passed):
  x = np.linspace(0.0, 1.0, 256)
  # The knee at x = 0.3; (1 - 0.3) * span = log(2.5): past x2, not yet x3.
  lr_span = math.log(2.5) / 0.7
  ok, _ = oa.knee_outcome(_posterior(_plateau(x, depth=20.0)), knee_slope=0.3,
                          lr_span=jnp.float32(lr_span), knee_ratio=knee_ratio)
  assert bool(ok) == passed


@pytest.mark.parametrize('minimum_after, found', [(1.0, True), (3.0, False)])
def test_knee_outcome_ignores_a_knee_in_the_start_up(minimum_after, found):
  x = np.linspace(0.0, 1.0, 256)
  # The knee at x = 0.3 of a 1-decade span: 10**0.3 = 2x the first LR, < 3x.
  ok, position = oa.knee_outcome(_posterior(_plateau(x, depth=20.0)), knee_slope=0.3,
                                 lr_span=jnp.float32(math.log(10.0)),
                                 minimum_after=minimum_after)
  assert bool(ok) == found
  assert (float(position) < 1.0) == found


def test_knee_outcome_needs_a_real_descent_and_positive_losses():
  x = np.linspace(0.0, 1.0, 64)
  span = jnp.float32(3 * math.log(10.0))
  flat = 2.3 + 0.001 * np.sin(20 * x)  # A flat start: no drop before a "knee".
  assert not bool(oa.knee_outcome(_posterior(flat), knee_slope=0.3, lr_span=span)[0])
  negative = _plateau(x) - 10.0  # Log slopes mean nothing for negative losses.
  ok, position = oa.knee_outcome(_posterior(negative), knee_slope=0.3, lr_span=span)
  assert not bool(ok) and float(position) == 1.0


def test_plateau_stream_switches_at_the_knee():
  """A transformer-like warmup: fast drop, then a plateau that hides the damage."""
  tx = oa.autowu(1000, 100)  # Warmup from 1e-3 over at most 250 steps.
  warm = int(oa.DEFAULTS['max_warmup_fraction'] * 1000)
  knee_lr = 4e-3

  def loss_at(lr):
    d = jnp.log10(lr / knee_lr)  # Decades past the knee.
    return 2.7 * jnp.exp(2.0 * jnp.clip(-d, 0.0, None) - 0.05 * jnp.clip(d, 0.0, None))

  @jax.jit
  def run(key):
    def step(state, key):
      lr = jnp.where(state.count == 0, MIN_LR, state.lr)
      loss = loss_at(lr) * (1.0 + 0.01 * jax.random.normal(key))
      _, state = tx.update({}, state, value=loss)
      return state, None
    return jax.lax.scan(step, tx.init(None), jax.random.split(key, warm))[0]

  state = run(jax.random.key(0))
  step, restart, reason = (np.asarray(v) for v in oa.get_switch(state))
  assert oa.SWITCH_REASONS[int(reason)] == 'knee passed'
  assert knee_lr / 1.5 <= float(restart) <= knee_lr * 1.5
  lr_at_switch = MIN_LR * (1.0 / MIN_LR)**(int(step) / warm)
  # Soon after it doubled (the smoothed curve's slope reaches knee_slope a
  # little past the corner).
  assert 2 * knee_lr <= lr_at_switch <= 4.5 * knee_lr
  # The authors' rule has no knee rule.
  assert oa.AUTHORS['knee_slope'] == 0.0


@pytest.mark.parametrize('make', [
    lambda: oa.autowu_lamb(T, SPE),
    lambda: optax.chain(optax.adamw(1.0),
                        oa.autowu(T, SPE, test_every=SPE, divergence_factor=None)),
])
def test_state_can_be_donated(make):
  """A train step that donates the optimizer state (the usual Flax/Optax
  loop): no two leaves of the state share a buffer."""
  tx = make()
  params = {'w': jnp.ones((4, 3))}
  state = tx.init(params)
  pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(set(pointers)) == len(pointers)
  step = jax.jit(lambda g, s: tx.update(g, s, params, value=1.0),
                 donate_argnums=1)
  for _ in range(3):
    _, state = step(params, state)
  assert int(oa.find_autowu_state(state).count) == 3
