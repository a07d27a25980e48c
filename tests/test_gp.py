"""Tests for the closed-form GP of the AutoWU minimum test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from optax_autolr import gp

LENGTHSCALE = 0.2


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _data(seed, n, capacity):
  rng = np.random.default_rng(seed)
  x = np.sort(rng.uniform(0, 1, n))
  counts = rng.integers(1, 6, n).astype(float)
  y = np.sin(5 * x) + 0.3 * x + rng.normal(0, 0.2, n) / np.sqrt(counts)
  pad = capacity - n
  mask = np.r_[np.ones(n, bool), np.zeros(pad, bool)]
  # Junk in the unused slots must not matter.
  return (x, y, counts, np.r_[x, rng.uniform(0, 1, pad)],
          np.r_[y, rng.normal(0, 5, pad)], np.r_[counts, np.full(pad, 3.0)],
          mask)


def _dense_posterior(x, y, noise, xq, s, mean):
  k = lambda a, b: s * np.exp(-0.5 * ((a[:, None] - b[None]) / LENGTHSCALE)**2)
  kxx = k(x, x) + np.diag(noise)
  kxq = k(x, xq)
  post_mean = mean + kxq.T @ np.linalg.solve(kxx, y - mean)
  post_cov = k(xq, xq) - kxq.T @ np.linalg.solve(kxx, kxq)
  return post_mean, post_cov


def _neg_lml(log_params, x, y, counts, mean):
  s, noise = np.exp(log_params)
  kxx = s * np.exp(-0.5 * ((x[:, None] - x[None]) / LENGTHSCALE)**2)
  kxx = kxx + np.diag(noise / counts)
  chol = np.linalg.cholesky(kxx)
  alpha = np.linalg.solve(kxx, y - mean)
  return 0.5 * ((y - mean) @ alpha + 2 * np.log(np.diag(chol)).sum()
                + len(x) * np.log(2 * np.pi))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_posterior_matches_dense_numpy(x64, seed):
  del x64
  x, y, counts, xp, yp, cp, mask = _data(seed, 37, 48)
  s, noise, mean = 0.7, 0.04, 0.25
  xq = np.linspace(0, 1, 65)
  post = jax.jit(lambda *a: gp.posterior(
      *a, signal_var=s, lengthscale=LENGTHSCALE, mean=mean,
      mask=jnp.asarray(mask)))(xp, yp, noise / cp, xq)
  ref_mean, ref_cov = _dense_posterior(x, y, noise / counts, xq, s, mean)
  assert post.mean.dtype == jnp.float64
  np.testing.assert_allclose(post.mean, ref_mean, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(post.var, np.diag(ref_cov), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(post.cov_last, ref_cov[:, -1], rtol=1e-5,
                             atol=1e-9)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_fit_reaches_scipy_marginal_likelihood(x64, seed):
  del x64
  x, y, counts, xp, yp, cp, mask = _data(seed, 40, 64)
  mean = float(np.mean(y))
  fit = jax.jit(lambda *a: gp.fit_hyperparams(
      *a, lengthscale=LENGTHSCALE, mean=mean, mask=jnp.asarray(mask)))(
          xp, yp, cp)
  best = min(
      (optimize.minimize(_neg_lml, start, args=(x, y, counts, mean),
                         method='Nelder-Mead',
                         options=dict(xatol=1e-10, fatol=1e-12, maxiter=4000))
       for start in ([0.0, -2.0], [-1.0, 0.0], [1.0, -4.0])),
      key=lambda r: r.fun)
  ours = -_neg_lml(np.log([fit.signal_var, fit.noise_var]), x, y, counts,
                   mean)
  # The value we report is the value at the returned hyperparameters ...
  np.testing.assert_allclose(fit.log_marginal_likelihood, ours, rtol=1e-9)
  # ... and it is no worse than scipy's optimum.
  assert ours >= -best.fun - 1e-7, (ours, -best.fun)


def test_fit_respects_noise_floor(x64):
  del x64
  x = np.linspace(0, 1, 30)
  y = np.sin(4 * x)  # Noise-free: the unconstrained optimum is zero noise.
  fit = gp.fit_hyperparams(x, y, np.ones(30), lengthscale=LENGTHSCALE,
                           noise_floor=1e-3)
  np.testing.assert_allclose(fit.noise_var / fit.signal_var, 1e-3, rtol=1e-6)


def _posterior_for_probability(seed):
  x, y, counts, xp, yp, cp, mask = _data(seed, 30, 32)
  xq = np.linspace(0, 1, 40)
  post = gp.posterior(xp, yp, 0.05 / cp, xq, signal_var=0.5,
                      lengthscale=LENGTHSCALE, mask=jnp.asarray(mask))
  ref_mean, ref_cov = _dense_posterior(x, y, 0.05 / counts, xq, 0.5, 0.0)
  return post, ref_mean, ref_cov


@pytest.mark.parametrize('seed', [0, 4, 5])
def test_past_minimum_probability_matches_monte_carlo(x64, seed):
  del x64
  post, ref_mean, ref_cov = _posterior_for_probability(seed)
  jitter = 1e-9
  p = jax.jit(gp.past_minimum_probability, static_argnums=1)(post, jitter)
  rng = np.random.default_rng(seed)
  num = 200_000
  chol = np.linalg.cholesky(ref_cov + 1e-10 * np.eye(len(ref_mean)))
  f = ref_mean + rng.standard_normal((num, len(ref_mean))) @ chol.T
  pairwise = np.mean(f[:, -1:] > f[:, :-1], axis=0)
  mc = pairwise.max()
  se = np.sqrt(mc * (1 - mc) / num)
  assert abs(float(p) - mc) < 5 * se + 1e-3, (float(p), mc)
  # The exact pairwise formula, independently.
  var = np.diag(ref_cov)
  z = (ref_mean[-1] - ref_mean[:-1]) / np.sqrt(
      var[:-1] + var[-1] - 2 * ref_cov[:-1, -1] + jitter)
  np.testing.assert_allclose(p, stats.norm.cdf(z).max(), rtol=1e-6)


def test_minimum_test_on_u_curve_and_monotone_curve():
  n = 200
  x = jnp.linspace(0, 1, n)
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 0.05, n)
  u = (x - 0.6)**2 + noise
  ones = jnp.ones(n)
  mask = jnp.ones(n, bool)
  res = jax.jit(gp.minimum_test)(x, u, ones, mask)
  assert res.probability > 0.99
  assert abs(float(res.argmin) - 0.6) < 0.05
  res = jax.jit(gp.minimum_test)(x, 1.0 - x + noise, ones, mask)
  assert res.probability < 0.5
  assert float(res.argmin) > 0.95


def test_minimum_test_is_scale_and_shift_invariant():
  n = 64
  x = jnp.linspace(0, 1, n)
  y = jnp.cos(4 * x) + 0.05 * jnp.asarray(
      np.random.default_rng(1).normal(size=n))
  ones, mask = jnp.ones(n), jnp.ones(n, bool)
  a = gp.minimum_test(x, y, ones, mask)
  b = gp.minimum_test(x, 1e4 * y - 3e4, ones, mask)
  np.testing.assert_allclose(a.probability, b.probability, atol=1e-3)
  np.testing.assert_allclose(a.argmin, b.argmin)


def test_constant_and_empty_curves_are_finite():
  n = 32
  x = jnp.linspace(0, 1, n)
  for y in (jnp.full(n, 3.0), jnp.full(n, -1e6)):
    res = gp.minimum_test(x, y, jnp.ones(n), jnp.ones(n, bool))
    assert np.isfinite(res.probability) and res.probability <= 0.5 + 1e-6
  res = gp.minimum_test(x, jnp.zeros(n), jnp.ones(n), jnp.zeros(n, bool))
  assert np.isfinite(res.probability) and float(res.argmin) == 0.0
