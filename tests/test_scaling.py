"""Tests for optax_autolr.scaling (LR vs batch size, gradient noise scale)."""

import os
import subprocess
import sys
import textwrap
import warnings

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_autolr import scaling


# ----------------------------------------------------------------------------
# Closed forms.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('b_noise', [1.0, 37.0, 512.0, 1e5])
def test_adam_peak_at_b_noise(b_noise):
  lr_max = 3e-3
  np.testing.assert_allclose(
      scaling.adam_optimal_lr(b_noise, lr_max=lr_max, b_noise=b_noise),
      lr_max, rtol=1e-12)
  for factor in (0.5, 0.9, 1.1, 2.0, 100.0):
    assert scaling.adam_optimal_lr(
        b_noise * factor, lr_max=lr_max, b_noise=b_noise) < lr_max
  # Symmetric in log(B / b_noise).
  np.testing.assert_allclose(
      scaling.adam_optimal_lr(b_noise * 4, lr_max=lr_max, b_noise=b_noise),
      scaling.adam_optimal_lr(b_noise / 4, lr_max=lr_max, b_noise=b_noise),
      rtol=1e-12)


def test_adam_asymptotes():
  b_noise, lr_max = 1000.0, 1.0
  f = lambda b: scaling.adam_optimal_lr(b, lr_max=lr_max, b_noise=b_noise)
  # B << b_noise: lr ~ 2 lr_max sqrt(B / b_noise), so 4x batch -> 2x lr.
  np.testing.assert_allclose(f(4e-3) / f(1e-3), 2.0, rtol=1e-4)
  np.testing.assert_allclose(f(1e-3), 2 * np.sqrt(1e-3 / b_noise), rtol=1e-5)
  # B >> b_noise: lr ~ 2 lr_max sqrt(b_noise / B), so 4x batch -> lr / 2.
  np.testing.assert_allclose(f(4e9) / f(1e9), 0.5, rtol=1e-4)
  np.testing.assert_allclose(f(1e9), 2 * np.sqrt(b_noise / 1e9), rtol=1e-5)


def test_sgd_form_monotone_with_limit():
  bs = np.logspace(-2, 9, 200)
  lrs = scaling.sgd_optimal_lr(bs, lr_max=0.7, b_noise=300.0)
  assert np.all(np.diff(lrs) > 0)
  assert np.all(lrs < 0.7)
  np.testing.assert_allclose(lrs[-1], 0.7, rtol=1e-6)
  np.testing.assert_allclose(
      scaling.sgd_optimal_lr(300.0, lr_max=0.7, b_noise=300.0), 0.35)
  # Linear regime: lr ~ lr_max * B / b_noise.
  np.testing.assert_allclose(lrs[0], 0.7 * bs[0] / 300.0, rtol=1e-4)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    log_b=st.floats(-5, 15), log_bn=st.floats(-5, 15),
    lr_max=st.floats(1e-6, 10.0))
def test_adam_form_bounded_by_lr_max(log_b, log_bn, lr_max):
  b, bn = np.exp(log_b), np.exp(log_bn)
  val = scaling.adam_optimal_lr(b, lr_max=lr_max, b_noise=bn)
  assert 0 < val <= lr_max * (1 + 1e-12)
  sgd = scaling.sgd_optimal_lr(b, lr_max=lr_max, b_noise=bn)
  assert 0 < sgd <= lr_max * (1 + 1e-12)


def test_formulas_accept_numpy_jax_and_scalars():
  bs = np.array([16.0, 64.0, 256.0, 1024.0])
  for law in (scaling.adam_optimal_lr, scaling.sgd_optimal_lr):
    ref = law(bs, lr_max=1e-3, b_noise=200.0)
    assert isinstance(ref, np.ndarray) and ref.shape == (4,)
    out = law(jnp.asarray(bs), lr_max=1e-3, b_noise=200.0)
    assert isinstance(out, jax.Array)
    chex.assert_trees_all_close(out, ref.astype(np.float32), rtol=1e-6)
    jitted = jax.jit(lambda b, bn, law=law: law(b, lr_max=1e-3, b_noise=bn))
    chex.assert_trees_all_close(
        jitted(jnp.asarray(bs), 200.0), ref.astype(np.float32), rtol=1e-6)
    scalar = law(64, lr_max=1e-3, b_noise=200)
    np.testing.assert_allclose(scalar, ref[1])
    # Broadcasting over b_noise.
    grid = law(bs[:, None], lr_max=1e-3, b_noise=np.array([100.0, 400.0]))
    assert grid.shape == (4, 2)


@pytest.mark.parametrize('law', [scaling.adam_optimal_lr,
                                 scaling.sgd_optimal_lr])
@pytest.mark.parametrize('kwargs', [
    dict(batch_size=0, lr_max=1.0, b_noise=1.0),
    dict(batch_size=np.array([4.0, -1.0]), lr_max=1.0, b_noise=1.0),
    dict(batch_size=8, lr_max=0.0, b_noise=1.0),
    dict(batch_size=8, lr_max=1.0, b_noise=-3.0),
    dict(batch_size=jnp.array([0.0]), lr_max=1.0, b_noise=1.0),
])
def test_formulas_reject_non_positive(law, kwargs):
  with pytest.raises(ValueError, match='must be positive'):
    kwargs = dict(kwargs)
    law(kwargs.pop('batch_size'), **kwargs)


def test_transfer_lr():
  lr = 2e-3
  # Identity and sqrt(B) / 1/sqrt(B) regimes of the Adam law.
  np.testing.assert_allclose(scaling.transfer_lr(lr, 64, 64, 500.0), lr)
  np.testing.assert_allclose(
      scaling.transfer_lr(lr, 1, 4, 1e8), 2 * lr, rtol=1e-4)
  np.testing.assert_allclose(
      scaling.transfer_lr(lr, 1e8, 4e8, 1.0), lr / 2, rtol=1e-4)
  # Transfer to the peak gives lr_max.
  lr_max, bn = 1e-2, 256.0
  lr32 = scaling.adam_optimal_lr(32, lr_max=lr_max, b_noise=bn)
  np.testing.assert_allclose(scaling.transfer_lr(lr32, 32, bn, bn), lr_max)
  sgd32 = scaling.sgd_optimal_lr(32, lr_max=lr_max, b_noise=bn)
  np.testing.assert_allclose(
      scaling.transfer_lr(sgd32, 32, [256, 1024], bn, form='sgd'),
      scaling.sgd_optimal_lr(np.array([256, 1024]), lr_max=lr_max, b_noise=bn))
  out = jax.jit(scaling.transfer_lr, static_argnames='form')(
      jnp.float32(lr), 32.0, 128.0, 64.0, form='sgd')
  chex.assert_trees_all_close(
      out, jnp.float32(lr * (1 / (1 + 0.5)) / (1 / (1 + 2.0))), rtol=1e-6)
  with pytest.raises(ValueError, match='form'):
    scaling.transfer_lr(lr, 32, 64, 100.0, form='lamb')
  with pytest.raises(ValueError, match='positive'):
    scaling.transfer_lr(lr, 32, 64, 0.0)


# ----------------------------------------------------------------------------
# Fits.
# ----------------------------------------------------------------------------


_BATCHES = 2.0 ** np.arange(3, 15)  # 12 batch sizes, 8 .. 16384.


def _noisy(lrs, rel_sigma, seed):
  rng = np.random.default_rng(seed)
  return lrs * np.exp(rel_sigma * rng.standard_normal(lrs.shape))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fit_surge_recovers_parameters_and_beats_sgd_form(seed):
  lr_max, bn = 3e-3, 600.0
  lrs = _noisy(scaling.adam_optimal_lr(_BATCHES, lr_max=lr_max, b_noise=bn),
               0.07, seed)
  fit = scaling.fit_surge(_BATCHES, lrs)
  assert isinstance(fit, scaling.ScalingFit)
  np.testing.assert_allclose(fit.lr_max, lr_max, rtol=0.2)
  np.testing.assert_allclose(fit.b_noise, bn, rtol=0.3)
  assert 0.02 < fit.rmse_log < 0.15  # ~ the 7 % noise level.
  assert fit.r2_log > 0.9
  for alpha in (1.0, 0.5):
    other = scaling.fit_sgd_form(_BATCHES, lrs, alpha=alpha)
    assert fit.rmse_log < other.rmse_log
    assert fit.r2_log > other.r2_log


@pytest.mark.filterwarnings('ignore:fitted b_noise is at the edge')
@pytest.mark.parametrize('alpha', [1.0, 0.5])
@pytest.mark.parametrize('seed', [0, 1])
def test_fit_sgd_form_recovers_parameters_and_beats_surge(alpha, seed):
  lr_max, bn = 0.4, 900.0
  clean = lr_max / (1 + bn / _BATCHES) ** alpha
  if alpha == 1.0:
    np.testing.assert_allclose(
        clean, scaling.sgd_optimal_lr(_BATCHES, lr_max=lr_max, b_noise=bn))
  lrs = _noisy(clean, 0.05, seed)
  fit = scaling.fit_sgd_form(_BATCHES, lrs, alpha=alpha)
  np.testing.assert_allclose(fit.lr_max, lr_max, rtol=0.2)
  np.testing.assert_allclose(fit.b_noise, bn, rtol=0.3)
  assert fit.rmse_log < 0.1
  surge = scaling.fit_surge(_BATCHES, lrs)
  assert fit.rmse_log < surge.rmse_log


def test_fits_exact_on_noiseless_data():
  lrs = scaling.adam_optimal_lr(_BATCHES[:7], lr_max=1e-3, b_noise=77.0)
  fit = scaling.fit_surge(_BATCHES[:7], lrs)
  np.testing.assert_allclose(fit.lr_max, 1e-3, rtol=1e-6)
  np.testing.assert_allclose(fit.b_noise, 77.0, rtol=1e-6)
  assert fit.rmse_log < 1e-7 and fit.r2_log > 1 - 1e-10
  lrs = scaling.sgd_optimal_lr(_BATCHES, lr_max=0.1, b_noise=2000.0)
  fit = scaling.fit_sgd_form(_BATCHES, lrs)
  np.testing.assert_allclose(fit.lr_max, 0.1, rtol=1e-6)
  np.testing.assert_allclose(fit.b_noise, 2000.0, rtol=1e-6)
  # Accepts lists and JAX arrays too.
  fit2 = scaling.fit_sgd_form(list(_BATCHES), jnp.asarray(lrs))
  np.testing.assert_allclose(fit2.b_noise, 2000.0, rtol=1e-3)


@pytest.mark.parametrize('fit', [scaling.fit_surge, scaling.fit_sgd_form])
def test_fits_validate_inputs(fit):
  with pytest.raises(ValueError, match='at least 2'):
    fit([64], [1e-3])
  with pytest.raises(ValueError, match='same length'):
    fit([64, 128, 256], [1e-3, 2e-3])
  with pytest.raises(ValueError, match='positive'):
    fit([64, -128], [1e-3, 2e-3])
  with pytest.raises(ValueError, match='positive'):
    fit([64, 128], [1e-3, 0.0])
  with pytest.raises(ValueError, match='positive'):
    fit([64, 128], [1e-3, np.nan])
  with pytest.raises(ValueError, match='one-dimensional'):
    fit([[64, 128]], [[1e-3, 2e-3]])


def test_fit_sgd_form_rejects_bad_alpha():
  with pytest.raises(ValueError, match='alpha'):
    scaling.fit_sgd_form([64, 128], [1e-3, 2e-3], alpha=0.0)


def test_fit_warns_when_b_noise_unconstrained():
  # All points deep in the sqrt(B) regime: b_noise runs to the search edge.
  bs = np.array([1.0, 2.0, 4.0, 8.0])
  lrs = np.sqrt(bs) * 1e-3
  with pytest.warns(RuntimeWarning, match='edge'):
    scaling.fit_surge(bs, lrs)


# ----------------------------------------------------------------------------
# Steps / examples trade-off.
# ----------------------------------------------------------------------------


def _steps_examples(bs, s_min, bn):
  steps = s_min * (1 + bn / bs)
  examples = s_min * bn * (1 + bs / bn)  # E_min = S_min * B_noise.
  np.testing.assert_allclose(examples, steps * bs)
  return steps, examples


def test_b_noise_from_steps_exact():
  bs = 2.0 ** np.arange(2, 14)
  steps, examples = _steps_examples(bs, 1500.0, 320.0)
  fit = scaling.b_noise_from_steps(steps, examples)
  assert isinstance(fit, scaling.StepsFit)
  np.testing.assert_allclose(fit.b_noise, 320.0, rtol=1e-8)
  np.testing.assert_allclose(fit.s_min, 1500.0, rtol=1e-8)
  np.testing.assert_allclose(fit.e_min, 1500.0 * 320.0, rtol=1e-8)


def test_b_noise_from_steps_noisy():
  bs = 2.0 ** np.arange(4, 12)
  steps, _ = _steps_examples(bs, 2000.0, 200.0)
  rng = np.random.default_rng(0)
  steps = steps * np.exp(0.03 * rng.standard_normal(steps.shape))
  fit = scaling.b_noise_from_steps(steps, steps * bs)
  np.testing.assert_allclose(fit.b_noise, 200.0, rtol=0.2)
  np.testing.assert_allclose(fit.s_min, 2000.0, rtol=0.2)
  np.testing.assert_allclose(fit.e_min, 2000.0 * 200.0, rtol=0.3)


def test_b_noise_from_steps_validation():
  with pytest.raises(ValueError, match='at least 2'):
    scaling.b_noise_from_steps([10.0], [100.0])
  with pytest.raises(ValueError, match='same length'):
    scaling.b_noise_from_steps([10.0, 20.0], [100.0])
  with pytest.raises(ValueError, match='positive'):
    scaling.b_noise_from_steps([10.0, 0.0], [100.0, 200.0])
  with pytest.raises(ValueError, match='equal'):
    scaling.b_noise_from_steps([10.0, 20.0], [100.0, 100.0])
  # Steps growing with examples: no trade-off, warn and return raw values.
  with pytest.warns(RuntimeWarning, match='trade-off'):
    fit = scaling.b_noise_from_steps([10.0, 20.0, 40.0], [100.0, 400.0, 900.0])
  assert fit.b_noise <= 0


# ----------------------------------------------------------------------------
# Gradient noise scale.
# ----------------------------------------------------------------------------


def _linreg_loss(params, batch):
  pred = batch['x'] @ params['w'] + params['b']
  return 0.5 * jnp.mean((pred - batch['y']) ** 2)


def _linreg_batch(key, w_star, sigma, n, *, batch_dims=()):
  kx, ke = jax.random.split(key)
  d = w_star.shape[0]
  x = jax.random.normal(kx, batch_dims + (n, d))
  y = x @ w_star + sigma * jax.random.normal(ke, batch_dims + (n,))
  return {'x': x, 'y': y}


def test_estimator_matches_direct_per_example_computation():
  d, big, k = 5, 48, 4
  small = big // k
  key = jax.random.key(0)
  w_star = jax.random.normal(key, (d,))
  batch = _linreg_batch(jax.random.key(1), w_star, 0.3, big)
  params = {'w': jnp.zeros(d), 'b': jnp.float32(0.2)}
  vg = jax.jit(scaling.noise_scale_value_and_grad(_linreg_loss, k))
  (loss, grads), stats = vg(params, batch)
  # Mean loss and gradient are the full-batch ones.
  loss_ref, grads_ref = jax.value_and_grad(_linreg_loss)(params, batch)
  chex.assert_trees_all_close(loss, loss_ref, rtol=1e-5)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-5, atol=1e-6)
  # Direct formula from per-example gradients, in float64 NumPy.
  x = np.asarray(batch['x'], np.float64)
  r = x @ np.asarray(params['w']) + 0.2 - np.asarray(batch['y'], np.float64)
  per_ex = np.concatenate([x * r[:, None], r[:, None]], axis=1)  # [B, d+1]
  g_big = per_ex.mean(0)
  g_small = per_ex.reshape(k, small, d + 1).mean(1)
  n2_small = np.mean(np.sum(g_small ** 2, axis=1))
  n2_big = np.sum(g_big ** 2)
  g2 = (big * n2_big - small * n2_small) / (big - small)
  trace = (n2_small - n2_big) / (1 / small - 1 / big)
  np.testing.assert_allclose(stats.g2, g2, rtol=1e-4)
  np.testing.assert_allclose(stats.trace_sigma, trace, rtol=1e-4)
  assert stats.g2.dtype == jnp.float32 and stats.g2.shape == ()


@pytest.mark.parametrize('k', [2, 8])
def test_estimator_unbiased_on_linear_regression(k):
  # x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, sigma^2); at w = w* + e the
  # per-example gradient g = x (x.e - eps) has E[g] = e and
  # E|g|^2 = (d+2)|e|^2 + d sigma^2, so tr(Sigma) = (d+1)|e|^2 + d sigma^2.
  d, big, sigma, n_batches = 6, 64, 0.7, 4000
  w_star = jax.random.normal(jax.random.key(2), (d,))
  e = 0.4 * jax.random.normal(jax.random.key(3), (d,))
  e2 = float(jnp.sum(e ** 2))
  g2_true = e2
  trace_true = (d + 1) * e2 + d * sigma ** 2

  def loss_fn(w, batch):
    return 0.5 * jnp.mean((batch['x'] @ w - batch['y']) ** 2)

  vg = scaling.noise_scale_value_and_grad(loss_fn, k)
  batches = _linreg_batch(jax.random.key(4 + k), w_star, sigma, big,
                          batch_dims=(n_batches,))
  (_, grads), stats = jax.jit(jax.vmap(vg, in_axes=(None, 0)))(
      w_star + e, batches)
  chex.assert_shape(stats.g2, (n_batches,))
  g2 = np.asarray(stats.g2, np.float64)
  trace = np.asarray(stats.trace_sigma, np.float64)
  se = lambda v: v.std(ddof=1) / np.sqrt(v.size)
  assert abs(g2.mean() - g2_true) < 4 * se(g2), (g2.mean(), g2_true, se(g2))
  assert abs(trace.mean() - trace_true) < 4 * se(trace), (
      trace.mean(), trace_true, se(trace))
  # Precision is good enough for the test to bite.
  assert se(g2) < 0.05 * g2_true and se(trace) < 0.05 * trace_true
  # The naive |G_B|^2 is biased by tr(Sigma)/B: many standard errors away.
  naive = np.sum(np.asarray(grads, np.float64) ** 2, axis=1)
  np.testing.assert_allclose(naive.mean(), g2_true + trace_true / big,
                             atol=4 * se(naive))
  assert naive.mean() - g2_true > 10 * se(naive)


def test_estimator_no_recompilation_and_has_aux():
  traces = []

  def loss_fn(params, batch, scale):
    traces.append(None)
    loss = _linreg_loss(params, batch) * scale
    return loss, {'loss': loss}

  vg = jax.jit(scaling.noise_scale_value_and_grad(loss_fn, 4, has_aux=True))
  params = {'w': jnp.ones(3), 'b': jnp.zeros(())}
  batch = _linreg_batch(jax.random.key(0), jnp.ones(3), 0.1, 16)
  ((loss, aux), grads), stats = vg(params, batch, 2.0)
  n_traces = len(traces)
  batch2 = _linreg_batch(jax.random.key(1), jnp.ones(3), 0.1, 16)
  out2 = vg(params, batch2, 3.0)
  jax.block_until_ready(out2)
  assert len(traces) == n_traces  # no retrace on the second call.
  chex.assert_shape(aux['loss'], (4,))
  chex.assert_trees_all_close(loss, jnp.mean(aux['loss']), rtol=1e-6)
  chex.assert_trees_all_equal_structs(grads, params)
  assert isinstance(stats, scaling.NoiseStats)


def test_estimator_validation():
  with pytest.raises(ValueError, match='>= 2'):
    scaling.noise_scale_value_and_grad(_linreg_loss, 1)
  with pytest.raises(ValueError, match='>= 2'):
    scaling.noise_scale_value_and_grad(_linreg_loss, 2.0)
  vg = scaling.noise_scale_value_and_grad(_linreg_loss, 3)
  params = {'w': jnp.ones(3), 'b': jnp.zeros(())}
  batch = _linreg_batch(jax.random.key(0), jnp.ones(3), 0.1, 16)
  with pytest.raises(ValueError, match='divide'):
    jax.jit(vg)(params, batch)
  bad = {'x': batch['x'], 'y': batch['y'][:8]}
  with pytest.raises(ValueError, match='leading'):
    vg(params, bad)


def test_estimator_bf16_params():
  params = {'w': jnp.ones(3, jnp.bfloat16), 'b': jnp.zeros((), jnp.bfloat16)}
  batch = jax.tree.map(lambda a: a.astype(jnp.bfloat16),
                       _linreg_batch(jax.random.key(0), jnp.ones(3), 0.1, 16))
  (loss, grads), stats = jax.jit(
      scaling.noise_scale_value_and_grad(_linreg_loss, 4))(params, batch)
  assert grads['w'].dtype == jnp.bfloat16
  assert stats.g2.dtype == jnp.float32
  assert np.isfinite(stats.g2) and np.isfinite(stats.trace_sigma)


@pytest.mark.parametrize('axis_type', ['Explicit', 'Auto'])
def test_estimator_sharded_one_device(axis_type):
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((1,), ('data',),
                       axis_types=(getattr(AxisType, axis_type),))
  params = {'w': jnp.ones(4), 'b': jnp.zeros(())}
  batch = _linreg_batch(jax.random.key(0), jnp.arange(4.0), 0.5, 32)
  vg = jax.jit(scaling.noise_scale_value_and_grad(_linreg_loss, 4))
  ref = vg(params, batch)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  with jax.set_mesh(mesh):
    out = vg(params, sharded)
  chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)


_EIGHT_DEVICE_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from optax_autolr import scaling
    assert jax.device_count() == 8, jax.devices()

    def loss_fn(p, batch):
      x, y = batch
      return 0.5 * jnp.mean((x @ p['w'] + p['b'] - y) ** 2)

    big = 64
    x = jax.random.normal(jax.random.key(0), (big, 5))
    y = jax.random.normal(jax.random.key(1), (big,))
    params = {'w': jnp.ones(5), 'b': jnp.zeros(())}
    for k in (2, 4, 8, 16):
      vg = jax.jit(scaling.noise_scale_value_and_grad(loss_fn, k))
      for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
        xs, ys = jax.device_put((x, y), NamedSharding(mesh, P('data')))
        ps = jax.device_put(params, NamedSharding(mesh, P()))
        with jax.set_mesh(mesh):
          out = vg(ps, (xs, ys))
        if axis_type == AxisType.Explicit and k % 8:
          # Interleaved micro-batches: row i goes to micro-batch i % k.
          perm = lambda a: a.reshape((big // k, k) + a.shape[1:]).swapaxes(
              0, 1).reshape(a.shape)
          ref = vg(params, (perm(x), perm(y)))
        else:
          ref = vg(params, (x, y))
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
          np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print('OK')
''')


def test_estimator_sharded_eight_devices_subprocess():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '')
                      + ' --xla_force_host_platform_device_count=8').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run(
      [sys.executable, '-c', _EIGHT_DEVICE_SCRIPT], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'OK' in proc.stdout


# ----------------------------------------------------------------------------
# EMA state, b_simple, optax wrapper.
# ----------------------------------------------------------------------------


def test_noise_scale_update_bias_corrected_ema():
  decay = 0.9
  g2s = np.array([2.0, 1.0, 4.0, 3.0])
  traces = np.array([10.0, 30.0, 20.0, 5.0])
  state = scaling.noise_scale_init()
  update = jax.jit(scaling.noise_scale_update, static_argnames='decay')
  for t in range(4):
    state = update(state, scaling.NoiseStats(g2s[t], traces[t]), decay=decay)
    w = (1 - decay) * decay ** np.arange(t, -1, -1)
    norm = 1 - decay ** (t + 1)
    np.testing.assert_allclose(state.g2_ema, np.sum(w * g2s[:t + 1]) / norm,
                               rtol=1e-5)
    np.testing.assert_allclose(
        state.trace_ema, np.sum(w * traces[:t + 1]) / norm, rtol=1e-5)
    assert int(state.count) == t + 1
  # First update stores the value exactly; constant stats stay constant.
  state = scaling.noise_scale_init()
  for _ in range(5):
    state = scaling.noise_scale_update(state, scaling.NoiseStats(2.0, 7.0))
    np.testing.assert_allclose(state.g2_ema, 2.0, rtol=1e-6)
    np.testing.assert_allclose(scaling.b_simple(state), 3.5, rtol=1e-6)
  with pytest.raises(ValueError, match='decay'):
    scaling.noise_scale_update(state, scaling.NoiseStats(1.0, 1.0), decay=1.0)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_noise_scale_state_dtype_stable(dtype):
  state = scaling.noise_scale_init(dtype)
  stats = scaling.NoiseStats(jnp.float32(1.5), jnp.float32(3.0))
  new = jax.jit(scaling.noise_scale_update)(state, stats)
  chex.assert_trees_all_equal_dtypes(new, state)
  chex.assert_trees_all_equal_shapes(new, state)


def test_b_simple_guards_division():
  assert np.isposinf(scaling.b_simple(scaling.noise_scale_init()))
  assert np.isposinf(scaling.b_simple(scaling.NoiseStats(-1.0, 5.0)))
  assert np.isposinf(scaling.b_simple(scaling.NoiseStats(0.0, 0.0)))
  np.testing.assert_allclose(
      scaling.b_simple(scaling.NoiseStats(2.0, -1.0)), -0.5)
  vec = scaling.b_simple(scaling.NoiseStats(jnp.array([1.0, 0.0]),
                                            jnp.array([3.0, 3.0])))
  np.testing.assert_array_equal(vec, [3.0, np.inf])


def test_train_step_in_scan_tracks_b_simple():
  # Fixed w: the EMA of the in-step estimates converges to the analytic
  # B_simple = tr(Sigma) / |G|^2 = ((d+1)|e|^2 + d sigma^2) / |e|^2.
  d, big, sigma = 4, 32, 0.5
  w_star = jnp.arange(1.0, d + 1)
  e = jnp.full((d,), 0.5)
  b_true = ((d + 1) * 1.0 + d * sigma ** 2) / 1.0

  def loss_fn(w, batch):
    return 0.5 * jnp.mean((batch['x'] @ w - batch['y']) ** 2)

  vg = scaling.noise_scale_value_and_grad(loss_fn, 4)

  def step(state, key):
    batch = _linreg_batch(key, w_star, sigma, big)
    _, stats = vg(w_star + e, batch)
    return scaling.noise_scale_update(state, stats, decay=0.999), None

  keys = jax.random.split(jax.random.key(0), 3000)
  state, _ = jax.jit(lambda s: jax.lax.scan(step, s, keys))(
      scaling.noise_scale_init())
  np.testing.assert_allclose(scaling.b_simple(state), b_true, rtol=0.15)

  # A real training loop: SGD + the optax wrapper, in lax.scan.
  opt = optax.chain(scaling.track_noise_scale(decay=0.9), optax.sgd(0.1))

  def train_step(carry, key):
    w, opt_state = carry
    batch = _linreg_batch(key, w_star, sigma, big)
    (loss, grads), stats = vg(w, batch)
    updates, opt_state = opt.update(grads, opt_state, w, noise_stats=stats,
                                    value=loss)
    return (optax.apply_updates(w, updates), opt_state), loss

  w0 = jnp.zeros(d)
  (w, opt_state), losses = jax.jit(
      lambda c: jax.lax.scan(train_step, c, keys[:300]))((w0, opt.init(w0)))
  assert losses[-20:].mean() < 0.1 * losses[:5].mean()
  chex.assert_trees_all_close(w, w_star, atol=0.15)
  ns = optax.tree_utils.tree_get(opt_state, 'NoiseScaleState')
  assert int(ns.count) == 300
  # Near the optimum the gradient is noise-dominated: B_simple is large.
  assert scaling.b_simple(ns) > big or not np.isfinite(scaling.b_simple(ns))


def test_track_noise_scale_transformation():
  tx = scaling.track_noise_scale(decay=0.5)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  chex.assert_trees_all_close(state, scaling.noise_scale_init())
  update = jax.jit(tx.update)
  updates = {'w': jnp.arange(3.0)}
  # Without noise_stats: identity and state untouched; extra kwargs accepted.
  out, same = update(updates, state, params, value=jnp.float32(1.0))
  chex.assert_trees_all_close(out, updates)
  chex.assert_trees_all_close(same, state)
  stats = scaling.NoiseStats(jnp.float32(2.0), jnp.float32(8.0))
  out, state = update(updates, state, params, noise_stats=stats)
  chex.assert_trees_all_close(out, updates)
  assert int(state.count) == 1
  np.testing.assert_allclose(scaling.b_simple(state), 4.0, rtol=1e-6)
  stats2 = scaling.NoiseStats(jnp.float32(4.0), jnp.float32(8.0))
  out, state = update(updates, state, params, noise_stats=stats2)
  np.testing.assert_allclose(state.g2_ema, 2.0 + 2.0 / 3.0 * 2.0, rtol=1e-6)
  with pytest.raises(ValueError, match='decay'):
    scaling.track_noise_scale(decay=-0.1)


def test_public_names_documented():
  for name in ('adam_optimal_lr', 'sgd_optimal_lr', 'transfer_lr',
               'fit_surge', 'fit_sgd_form', 'b_noise_from_steps',
               'noise_scale_value_and_grad', 'noise_scale_init',
               'noise_scale_update', 'b_simple', 'track_noise_scale'):
    doc = getattr(scaling, name).__doc__
    for section in ('Args:', 'Returns:', 'Example:', 'References:'):
      if name == 'noise_scale_init' and section in ('Example:', 'References:'):
        continue
      assert section in doc, (name, section)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    scaling.fit_surge(_BATCHES, scaling.adam_optimal_lr(
        _BATCHES, lr_max=1.0, b_noise=100.0))
