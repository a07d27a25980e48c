"""Reliability of AutoWU: resume, bad losses, dtypes, wrappers.

Compilation dominates the cost of these tests, so a few jitted functions are
built once (module fixtures, ``functools.cache``) and fed different loss
streams as arrays; windows and grids are small.
"""

import functools
import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_autolr as oa
from optax_autolr import lr_hyperparams

SMALL = dict(window_size=16, grid_size=32)

# Scan runs on loss streams: T = 200 steps, at most 100 of warmup.
T, SPE, N = 200, 10, 220
TW = T // 2
TEST_EVERY = max(1, min(SPE, TW // 40))  # the default: 2 steps
MIN_LR, MAX_LR = 1e-5, 1.0

CONFIGS = {
    # The library's rule on the paper's warmup (the loss streams below are
    # laid out for 1e-5 over half the budget), without the knee rule: it
    # reads the log loss, so it is invariant to scale but not to shift (see
    # test_knee_rule_is_scale_invariant_and_off_for_negative_losses). The
    # streams do not answer the LR, so the decay guard is off but in
    # 'guard' (see test_decay_guard_fires_once_on_a_non_finite_loss).
    'default': dict(min_lr=MIN_LR, max_warmup_fraction=0.5,
                    max_warmup_epochs=math.inf, knee_slope=0.0,
                    decay_guard=math.inf),
    'guard': dict(min_lr=MIN_LR, max_warmup_fraction=0.5,
                  max_warmup_epochs=math.inf, knee_slope=0.0),
    'knee': dict(min_lr=MIN_LR, max_warmup_fraction=0.5,
                 max_warmup_epochs=math.inf, decay_guard=math.inf),
    'authors': dict(test_every=SPE, divergence_factor=None),
    'linear': dict(warmup='linear', decay='constant_cosine', min_lr=1e-3,
                   max_lr=0.1, patience=1, confidence=0.6,
                   divergence_factor=1.5, max_warmup_fraction=0.5,
                   max_warmup_epochs=math.inf, decay_guard=math.inf),
}


@functools.cache
def _runner(config):
  """Jitted ``losses[N] -> (final state, stacked per-step states)``."""
  tx = oa.autowu(T, SPE, **SMALL, **CONFIGS[config])

  @jax.jit
  def run(losses):
    def step(state, loss):
      _, state = tx.update({}, state, value=loss)
      return state, state

    return jax.lax.scan(step, tx.init(None), losses)

  return run


def _run(losses, config='default'):
  state, states = _runner(config)(jnp.asarray(losses, jnp.float32))
  return state, states


def _warmup_lr(t, tw=TW, min_lr=MIN_LR, max_lr=MAX_LR):
  return min_lr * (max_lr / min_lr)**(np.asarray(t, np.float64) / tw)


def _u_curve(n=N, bottom=60, seed=0):
  """Falls linearly to a minimum at ``bottom``, then rises quadratically."""
  t = np.arange(n)
  u = np.where(t < bottom, 2.0 - t / bottom,
               1.0 + 0.5 * ((t - bottom) / 50.0)**2)
  return u + 0.01 * np.random.default_rng(seed).standard_normal(n)


_INF_UNTIL_SET = ('ema_min', 'spike_lr', 'restart_estimate', 'decay_ema',
                  'decay_low')


def _assert_state_finite(state):
  """Every value is finite; ``ema_min``, ``spike_lr``,
  ``restart_estimate``, ``decay_ema`` and ``decay_low`` may be ``+inf``
  (not set yet, or reset by the decay guard)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path)
    leaf = np.asarray(leaf)
    if name.endswith('stats'):
      leaf = np.delete(leaf, [oa.STATS.index(n) for n in _INF_UNTIL_SET],
                       axis=-1)
    assert np.all(np.isfinite(leaf)), name
  for name in _INF_UNTIL_SET:
    value = np.asarray(getattr(state, name))
    assert not np.any(np.isnan(value) | (value == -np.inf)), name


@pytest.fixture(scope='module')
def u_reference():
  state, states = _run(_u_curve())
  assert int(state.switch_reason) == oa.CONFIDENT_MINIMUM
  return state, states


# --------------------------------------------------------------------------
# Non-finite losses.


def test_non_finite_loss_in_warmup_restarts_at_gp_minimum(u_reference):
  ref, _ = u_reference
  bad_step = 65  # After the minimum (60), before the confident switch.
  assert int(ref.switch_step) > bad_step
  results = []
  for bad in [np.nan, np.inf, -np.inf, 1e30, -1e20]:
    losses = _u_curve()
    losses[bad_step] = bad
    state, states = _run(losses)
    _assert_state_finite(states)
    assert int(state.switch_step) == bad_step, bad
    assert int(state.switch_reason) == oa.NON_FINITE, bad
    # The window holds the finite losses only, frozen at the switch.
    assert int(oa.window.window_num_losses(state.window)) == bad_step
    results.append(states.lr)
  for lrs in results[1:]:
    np.testing.assert_array_equal(lrs, results[0])

  # The restart LR is the warmup LR at the GP minimum of the finite losses,
  # with x = 1 the newest of them (step 64), and at most the LR of step 63 ...
  last = bad_step - 1
  argmin_step = float(state.argmin) * last
  assert 55 <= argmin_step <= last
  np.testing.assert_allclose(
      state.restart_lr, min(_warmup_lr(argmin_step), _warmup_lr(last - 1)),
      rtol=1e-5)
  # ... near the true minimum (step 60), below the LR that led to the
  # non-finite loss; then the decay starts from it.
  assert 0.5 < float(state.restart_lr) / _warmup_lr(60) < 2.0
  assert float(state.restart_lr) < float(results[0][bad_step - 1])
  assert float(results[0][bad_step]) == pytest.approx(float(state.restart_lr))
  assert float(results[0][-1]) == 0.0


@pytest.mark.parametrize('bad_step', [0, 3])
def test_non_finite_loss_before_any_test(bad_step):
  losses = _u_curve()
  losses[bad_step] = np.nan
  state, states = _run(losses)
  _assert_state_finite(states)
  assert int(state.switch_step) == bad_step
  assert int(state.switch_reason) == oa.NON_FINITE
  assert 0.0 < float(state.restart_lr) <= _warmup_lr(max(bad_step - 2, 0))
  assert np.all(np.diff(np.asarray(states.lr)[bad_step:]) <= 0.0)


def test_non_finite_losses_after_the_switch_change_nothing(u_reference):
  ref, ref_states = u_reference
  losses = _u_curve()
  losses[[100, 150, 151, 210]] = [np.nan, np.inf, -np.inf, np.nan]
  state, states = _run(losses)
  _assert_state_finite(states)
  np.testing.assert_array_equal(states.lr, ref_states.lr)
  chex.assert_trees_all_equal(state.window, ref.window)


def test_decay_guard_fires_once_on_a_non_finite_loss():
  # The U-curve's rise after the switch is slow (the EMA stays below twice
  # its low until step ~145); a NaN loss at 110 fires the guard there, once.
  clean, clean_states = _run(_u_curve()[:140], 'guard')
  switch = int(clean.switch_step)
  assert switch < 100 and float(clean.decay_scale) == 1.0
  assert np.isfinite(float(clean.decay_low))  # A copy was kept.
  losses = _u_curve()[:140]
  losses[110] = np.nan
  state, states = _run(losses, 'guard')
  _assert_state_finite(states)
  lr, clean_lr = np.asarray(states.lr), np.asarray(clean_states.lr)
  np.testing.assert_array_equal(lr[:110], clean_lr[:110])
  np.testing.assert_allclose(lr[110:], 0.5 * clean_lr[110:], rtol=1e-6)
  assert float(state.decay_scale) == 0.5
  assert float(state.switch_step) == switch


def test_guard_off_skips_non_finite_losses():
  clean, _ = _run(_u_curve(), 'authors')
  assert int(clean.switch_reason) == oa.CONFIDENT_MINIMUM
  bad_steps = [20, 30, 40, 41, 55]
  losses = _u_curve()
  losses[bad_steps] = [np.nan, np.inf, -np.inf, np.nan, 1e30]
  state, states = _run(losses, 'authors')
  _assert_state_finite(states)
  # Warmup goes on through the bad losses, on the warmup schedule ...
  assert np.all(np.asarray(states.phase)[:int(state.switch_step)] == 0)
  np.testing.assert_allclose(states.lr[:60], _warmup_lr(np.arange(60)),
                             rtol=1e-5)
  # ... skipping them, and switches on an epoch boundary near the clean run.
  assert int(state.switch_reason) == oa.CONFIDENT_MINIMUM
  assert (int(state.switch_step) + 1) % SPE == 0
  assert abs(int(state.switch_step) - int(clean.switch_step)) <= SPE
  assert int(oa.window.window_num_losses(state.window)) == (
      int(state.switch_step) + 1 - len(bad_steps))
  np.testing.assert_allclose(state.restart_lr, clean.restart_lr, rtol=0.2)


# --------------------------------------------------------------------------
# Negative, huge, tiny and constant losses.


@pytest.mark.parametrize('scale, shift', [
    (1e-9, 0.0), (1e9, 0.0), (1e3, -1e6), (1.0, 1e4), (1.0, -1e6),
    (1.0, -3.0)])
def test_scaled_and_shifted_u_curves_switch_like_the_unscaled_one(
    u_reference, scale, shift):
  ref, _ = u_reference
  state, states = _run(scale * _u_curve() + shift)
  _assert_state_finite(states)
  assert int(state.switch_reason) == oa.CONFIDENT_MINIMUM
  # The GP standardizes the losses: the same decisions up to float32
  # rounding (at -1e6 + O(1), float32 resolves 0.06 of the 1.0 range).
  assert abs(int(state.switch_step) - int(ref.switch_step)) <= 2 * TEST_EVERY
  assert 0.7 < float(state.restart_lr) / float(ref.restart_lr) < 1.4


def test_knee_rule_is_scale_invariant_and_off_for_negative_losses():
  ref, _ = _run(_u_curve(), 'knee')
  assert int(ref.switch_reason) == oa.KNEE_PASSED  # Passed before the minimum is sure.
  for scale in (1e-6, 1e6):
    state, _ = _run(scale * _u_curve(), 'knee')
    assert int(state.switch_step) == int(ref.switch_step)
    np.testing.assert_allclose(state.restart_lr, ref.restart_lr, rtol=1e-3)
  state, _ = _run(_u_curve() - 3.0, 'knee')  # Negative: the rule without the knee.
  no_knee, _ = _run(_u_curve() - 3.0)
  assert int(state.switch_step) == int(no_knee.switch_step)
  np.testing.assert_allclose(state.restart_lr, no_knee.restart_lr, rtol=1e-6)


@pytest.mark.parametrize('value', [0.0, 3.0, -2.5, -1e6, 1e9, 1e-9, 1e15])
def test_constant_losses_never_switch_before_max_warmup(value):
  state, states = _run(np.full(N, value))
  _assert_state_finite(states)
  assert int(state.switch_reason) == oa.MAX_WARMUP
  assert int(state.switch_step) == TW
  assert np.all(np.asarray(states.probability) <= 0.95)
  np.testing.assert_allclose(state.restart_lr, MAX_LR, rtol=1e-5)


def _jump(losses, at, to):
  losses = losses.copy()
  losses[at:] = to
  return losses


def test_divergence_guard_with_negative_losses():
  # The guard fires when the smoothed loss rises by more than
  # (factor - 1) |min| above its minimum: a negative loss (min ~ -1.8) that
  # jumps to +3 is caught like a positive one (min ~ 1.2) that jumps to 4.
  for shift, to in [(0.0, 4.0), (-3.0, 3.0)]:
    state, _ = _run(_jump(_u_curve() + shift, 50, to))
    assert int(state.switch_reason) == oa.DIVERGED, shift
    assert 50 <= int(state.switch_step) <= 60, shift
    assert float(state.restart_lr) <= _warmup_lr(50)
  # Shifted by -1e6, the same jump is small against |min|, so the guard
  # stays quiet; the (shift-invariant) minimum test ends warmup instead.
  state, _ = _run(_jump(1e3 * _u_curve() - 1e6, 50, 4e3 - 1e6))
  assert int(state.switch_reason) == oa.CONFIDENT_MINIMUM
  assert 50 <= int(state.switch_step) <= 50 + 4 * TEST_EVERY
  assert float(state.restart_lr) <= _warmup_lr(50)


# --------------------------------------------------------------------------
# A training step with LAMB: resume, callbacks, transfers (recompiles: in
# test_conformance.py).

CHAIN_T, CHAIN_SPE = 600, 20
TARGET = np.array([1.0, -2.0, 3.0, 0.5], np.float32)


def _chain():
  return optax.chain(optax.lamb(1.0),
                     oa.autowu(CHAIN_T, CHAIN_SPE, **SMALL,
                               max_warmup_epochs=math.inf))  # The stream's.


def _params():
  return {'w': jnp.zeros(4, jnp.float32), 'h': jnp.zeros(3, jnp.bfloat16)}


def _chain_stream(n=1000):
  """A loss stream with its minimum at step 100, then rising."""
  t = np.arange(n)
  u = np.where(t < 100, 2.0 - t / 100, 1.0 + 0.5 * ((t - 100) / 80)**2)
  u = u + 0.01 * np.random.default_rng(1).standard_normal(n)
  return u.astype(np.float32)


def _make_step(tx, traces=None):
  def step(params, state, value):
    if traces is not None:
      traces.append(1)  # Runs once per trace.
    def loss_fn(p):
      return (jnp.sum((p['w'] - TARGET)**2)
              + jnp.sum((p['h'].astype(jnp.float32) - 1.0)**2))
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state

  return step


@pytest.fixture(scope='module')
def chain_step():
  tx = _chain()
  traces = []
  raw = _make_step(tx, traces)
  return tx, raw, jax.jit(raw), traces


def test_checkpoint_resume_mid_warmup_and_mid_decay(chain_step, tmp_path):
  tx, _, step, _ = chain_step
  stream = _chain_stream(400)
  saves = {60: None, 250: None}
  params, state = _params(), tx.init(_params())
  lrs = []
  with ocp.StandardCheckpointer() as ckptr:
    for i in range(400):
      if i in saves:
        saves[i] = tmp_path / f'step_{i}'
        ckptr.save(saves[i], {'params': params, 'opt_state': state})
        assert int(oa.get_phase(state)) == (oa.WARMUP if i == 60 else oa.DECAY)
      params, state = step(params, state, stream[i])
      lrs.append(oa.get_lr(state))
  lrs = np.asarray(lrs)
  switch = oa.get_switch(state)
  assert int(switch[2]) == oa.CONFIDENT_MINIMUM and 60 < int(switch[0]) < 250

  # As a fresh process: build the optimizer again and restore into its init
  # state. (The update is the same program of the same arguments: to save a
  # compilation, it continues with the compiled step.)
  tx2 = _chain()
  for start, path in saves.items():
    target = {'params': _params(), 'opt_state': tx2.init(_params())}
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(path, target)
    chex.assert_trees_all_equal_structs(restored, target)
    chex.assert_trees_all_equal_shapes_and_dtypes(restored, target)
    p, s = restored['params'], restored['opt_state']
    assert int(oa.find_autowu_state(s).count) == start
    resumed = []
    for i in range(start, 400):
      p, s = step(p, s, stream[i])
      resumed.append(oa.get_lr(s))
    np.testing.assert_array_equal(np.asarray(resumed), lrs[start:])
    chex.assert_trees_all_equal(oa.get_switch(s), switch)
    chex.assert_trees_all_equal(s, state)
    chex.assert_trees_all_equal(p, params)


def _primitives(jaxpr):
  """Names of all primitives in a (closed) jaxpr, sub-jaxprs included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          names |= _primitives(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          names |= _primitives(sub)
  return names


def test_update_has_no_host_callbacks(chain_step):
  tx, raw, _, _ = chain_step
  params = _params()
  jaxpr = jax.make_jaxpr(raw)(params, tx.init(params), jnp.float32(1.0))
  names = _primitives(jaxpr.jaxpr)
  assert 'cond' in names and 'svd' in names  # Sub-jaxprs were searched.
  assert not {n for n in names if 'callback' in n}, names


def test_update_runs_under_transfer_guard(chain_step):
  tx, _, step, _ = chain_step
  params = jax.device_put(_params())
  state = jax.device_put(tx.init(params))
  values = list(jax.device_put(_chain_stream(8)))
  params, state = step(params, state, values[0])  # Compiled outside.
  with jax.transfer_guard('disallow'):
    for value in values[1:]:
      params, state = step(params, state, value)
  assert int(oa.find_autowu_state(state).count) == 8


def test_dtypes_bf16_f32_f64_with_x64():
  with jax.enable_x64(True):
    params = {'bf16': jnp.zeros(3, jnp.bfloat16),
              'f32': jnp.zeros(3, jnp.float32),
              'f64': jnp.zeros(3, jnp.float64)}
    dtypes = jax.tree.map(lambda p: p.dtype, params)
    tx = optax.chain(optax.lamb(1.0), oa.autowu(40, 5, **SMALL))

    @jax.jit
    def step(params, state):
      def loss_fn(p):
        return sum(jnp.sum((x.astype(jnp.float64) - 2.0)**2)
                   for x in jax.tree.leaves(p))
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state = tx.update(grads, state, params, value=loss)
      chex.assert_trees_all_equal_dtypes(updates, params)
      return optax.apply_updates(params, updates), state

    state = first = tx.init(params)
    phases = set()
    for _ in range(50):  # Warmup (window merges), switch, decay, LR 0.
      params, state = step(params, state)
      phases.add(int(oa.get_phase(state)))
      chex.assert_trees_all_equal_shapes_and_dtypes(first, state)
      assert jax.tree.map(lambda p: p.dtype, params) == dtypes
    assert phases == {oa.WARMUP, oa.DECAY}
    assert float(oa.get_lr(state)) == 0.0
    aw = oa.find_autowu_state(state)
    assert aw.lr.dtype == jnp.float32 and aw.count.dtype == jnp.int32
    assert step._cache_size() == 1


# --------------------------------------------------------------------------
# optax.MultiSteps and optax.inject_hyperparams.


def test_multisteps_autowu_sees_the_last_micro_batch_loss():
  k, periods = 4, 10
  tx = optax.MultiSteps(
      optax.chain(optax.lamb(1.0), oa.autowu(40, 5, **SMALL)),
      every_k_schedule=k)
  step = jax.jit(_make_step(tx))
  micro = 5.0 - np.arange(k * periods, dtype=np.float32) * 0.1
  micro[k + 1] = np.nan  # Inside period 1, not its last micro-batch.

  def run(values):
    params, state = _params(), tx.init(_params())
    for value in values:
      params, state = step(params, state, value)
    return oa.find_autowu_state(state)

  # Passing each micro-batch's loss: AutoWU updates once per period and only
  # sees the loss of its last micro-batch (the NaN above goes unseen).
  aw = run(micro)
  assert int(aw.count) == periods
  assert int(aw.phase) == oa.WARMUP
  means, _ = oa.window.window_means(aw.window)
  np.testing.assert_allclose(means[:periods], micro[k - 1::k], rtol=1e-6)

  # The recipe: pass the running mean of the period's losses; at the last
  # micro-batch it is the period's mean loss, and a NaN shows.
  running = np.concatenate([
      np.cumsum(p) / np.arange(1, k + 1) for p in micro.reshape(periods, k)])
  aw = run(running)
  assert int(aw.switch_step) == 1 and int(aw.switch_reason) == oa.NON_FINITE
  finite = micro.copy()
  finite[k + 1] = 1.0
  running = np.concatenate([
      np.cumsum(p) / np.arange(1, k + 1) for p in finite.reshape(periods, k)])
  aw = run(running)
  means, _ = oa.window.window_means(aw.window)
  np.testing.assert_allclose(means[:periods],
                             finite.reshape(periods, k).mean(1), rtol=1e-6)


def test_inject_hyperparams_and_lr_hyperparams():
  tx = optax.chain(optax.inject_hyperparams(optax.lamb)(learning_rate=1.0),
                   oa.autowu(40, 5, **SMALL, **CONFIGS['default']))
  step = jax.jit(_make_step(tx))
  # float32 params: inject_hyperparams(lamb) turns a bf16 moment into float32
  # at the first update (its hyperparams are float32 arrays), a recompile
  # that has nothing to do with AutoWU.
  params = {'w': jnp.zeros(4), 'h': jnp.zeros(3)}
  state = tx.init(params)
  for value in np.linspace(2.0, 1.0, 12, dtype=np.float32):
    params, state = step(params, state, value)
  assert step._cache_size() == 1
  hyper = lr_hyperparams(state)
  assert set(hyper) == {'learning_rate'}
  assert float(hyper['learning_rate']) == float(oa.get_lr(state))
  np.testing.assert_allclose(hyper['learning_rate'], _warmup_lr(11, tw=20),
                             rtol=1e-5)
  assert float(state[0].hyperparams['learning_rate']) == 1.0
  # Inside jit, for metrics.
  lr = jax.jit(lr_hyperparams)(state)['learning_rate']
  assert float(lr) == float(oa.get_lr(state))


# --------------------------------------------------------------------------
# Properties over random loss streams.

_SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38, 1e15, -1e15,
            0.0, 1e-30]


def _burst(value, start=10, stop=70):
  losses = _u_curve().astype(np.float32)
  losses[start:stop] = value
  return losses


@st.composite
def _loss_streams(draw):
  kind = draw(st.sampled_from(['random', 'shaped']))
  if kind == 'random':
    values = draw(st.lists(st.floats(width=32), min_size=N, max_size=N))
    return np.asarray(values, np.float32)
  shape = draw(st.sampled_from(['u', 'constant', 'falling', 'walk']))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  if shape == 'u':
    losses = _u_curve(bottom=draw(st.integers(5, 150)), seed=seed)
  elif shape == 'constant':
    losses = np.ones(N)
  elif shape == 'falling':
    losses = 2.0 - np.arange(N) / N + 0.05 * rng.standard_normal(N)
  else:
    losses = 1.0 + np.cumsum(0.1 * rng.standard_normal(N))
  losses = (draw(st.sampled_from([1e-9, 1.0, 1e3, 1e9])) * losses
            + draw(st.sampled_from([0.0, -1e6, 1e4, -2.0])))
  for _ in range(draw(st.integers(0, 6))):
    losses[draw(st.integers(0, N - 1))] = draw(st.sampled_from(_SPECIAL))
  if draw(st.booleans()):  # A burst: merged bins hold several of them.
    start = draw(st.integers(0, N - 1))
    losses[start:start + draw(st.integers(1, 60))] = draw(
        st.sampled_from(_SPECIAL))
  return losses.astype(np.float32)


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=[
                         hypothesis.HealthCheck.too_slow,
                         hypothesis.HealthCheck.data_too_large])
@hypothesis.given(losses=_loss_streams(),
                  config=st.sampled_from(sorted(CONFIGS)))
# Float32 sums of huge losses overflow once merged bins hold several.
@hypothesis.example(losses=_burst(3e38), config='authors')
@hypothesis.example(losses=_burst(-3e38), config='authors')
@hypothesis.example(losses=_burst(np.nan, 0, N), config='authors')
@hypothesis.example(losses=_burst(np.inf, 0, N), config='default')
@hypothesis.example(losses=_burst(1e30, 100, N), config='linear')
# One spike on a flat zero loss: the authors' GP fit's Adam moments overflow.
@hypothesis.example(losses=np.where(np.arange(220) == 99, 1.3714737e9, 0.0
                                    ).astype(np.float32), config='authors')
def test_property_lr_bounded_phase_monotone_state_finite(losses, config):
  args = dict(dict(min_lr=MIN_LR, max_lr=MAX_LR), **CONFIGS[config])
  _, states = _run(losses, config)
  _assert_state_finite(states)
  lrs = np.asarray(states.lr)
  phases = np.asarray(states.phase)
  assert np.all((lrs >= 0.0) & (lrs <= args['max_lr']))
  assert np.all(np.diff(phases) >= 0)  # Never back to warmup.
  assert np.all(phases[TW:] == oa.DECAY)  # The switch comes by T_w.
  assert np.all(lrs[T:] == 0.0)  # And the LR is 0 from total_steps on.
  warm = phases == oa.WARMUP
  if args.get('warmup', 'exp') == 'exp':
    expected = _warmup_lr(np.arange(N), min_lr=args['min_lr'],
                          max_lr=args['max_lr'])
  else:
    expected = args['min_lr'] + (args['max_lr'] - args['min_lr']) * (
        np.arange(N) / TW)
  np.testing.assert_allclose(lrs[warm], expected[warm], rtol=1e-5)
  restart = np.asarray(states.restart_lr)
  assert np.all((restart >= 0.0) & (restart <= args['max_lr']))
  switch = np.asarray(states.switch_step)
  assert np.all((switch >= -1) & (switch <= TW))
  prob = np.asarray(states.probability)
  assert np.all((prob >= 0.0) & (prob <= 1.0))
  argmin = np.asarray(states.argmin)
  assert np.all((argmin >= 0.0) & (argmin <= 1.0))
  kept = np.asarray(states.window.counts).sum(axis=-1)
  assert np.all(kept <= np.arange(1, N + 1))
