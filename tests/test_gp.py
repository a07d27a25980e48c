"""Tests for the closed-form GP of the AutoWU minimum test."""

import chex
import jax
import jax.extend
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


@pytest.mark.parametrize('lengthscale', [0.05, 0.2, 1.0])
def test_features_reproduce_the_rbf_kernel(lengthscale):
  rng = np.random.default_rng(0)
  x = np.r_[0.0, 1.0, rng.uniform(0, 1, 300)]
  dense = np.exp(-0.5 * ((x[:, None] - x[None]) / lengthscale) ** 2)
  with jax.enable_x64(True):
    phi = np.asarray(gp.rbf_features(jnp.asarray(x), lengthscale))
    assert phi.dtype == np.float64
  # The number of features is tiny (the kernel's numerical rank) ...
  assert phi.shape[1] <= 4.5 / lengthscale + 5
  # ... and they reproduce the kernel to round-off.
  assert np.abs(phi @ phi.T - dense).max() < 1e-12
  phi32 = np.asarray(gp.rbf_features(jnp.asarray(x, jnp.float32),
                                     lengthscale), np.float64)
  assert np.abs(phi32 @ phi32.T - dense).max() < 2e-6


@pytest.mark.parametrize('lengthscale', [0.0, 0.005, -1.0, float('nan')])
def test_too_small_lengthscale_raises(lengthscale):
  with pytest.raises(ValueError, match='lengthscale'):
    gp.rbf_features(jnp.linspace(0, 1, 8), lengthscale)


def test_minimum_test_matches_a_dense_gp_on_a_full_window(x64):
  """The feature-space test equals a dense O(W^3) GP on 256 merged bins."""
  del x64
  n = 256
  rng = np.random.default_rng(3)
  x = np.linspace(0, 1, n) + rng.uniform(-1e-3, 1e-3, n)
  x = np.clip(x, 0, 1)
  x[-1] = 1.0
  counts = np.r_[np.full(n - 1, 4.0), 2.0]  # The newest bin is partial.
  y = (2.3 * np.exp(-3 * x) + 2 * (x - 0.7) ** 2
       + rng.normal(0, 0.05, n) / np.sqrt(counts))
  res = jax.jit(gp.minimum_test)(x, y, counts, jnp.ones(n, bool))
  # Dense reference at the fitted hyperparameters (standardized units).
  mu, sd = y.mean(), y.std()
  ys = (y - mu) / sd
  s = float(res.hyperparams.signal_var)
  noise = float(res.hyperparams.noise_var) / counts
  ref_mean, ref_cov = _dense_posterior(x, ys, noise, np.asarray(res.grid), s,
                                       0.0)
  np.testing.assert_allclose(res.posterior.mean, mu + sd * ref_mean,
                             rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(res.posterior.var, sd**2 * np.diag(ref_cov),
                             rtol=1e-5, atol=1e-10)
  np.testing.assert_allclose(res.posterior.cov_last, sd**2 * ref_cov[:, -1],
                             rtol=1e-5, atol=1e-10)
  # The fit is the dense profile-likelihood optimum: no ratio on a fine grid
  # does better (dense LML, signal variance profiled out).
  cmax = counts.max()
  kxx = np.exp(-0.5 * ((x[:, None] - x[None]) / LENGTHSCALE) ** 2)

  def profile(ratio):
    c = kxx + np.diag(ratio * cmax / counts)
    chol = np.linalg.cholesky(c)
    quad = ys @ np.linalg.solve(c, ys)
    s_hat = quad / n
    return -0.5 * (n + n * np.log(s_hat) + 2 * np.log(np.diag(chol)).sum()
                   + n * np.log(2 * np.pi))

  ratio = float(res.hyperparams.noise_var / res.hyperparams.signal_var / cmax)
  np.testing.assert_allclose(profile(ratio), res.hyperparams.
                             log_marginal_likelihood, rtol=1e-9)
  best = max(profile(r) for r in np.geomspace(1e-4, 1e4, 2001))
  assert float(res.hyperparams.log_marginal_likelihood) >= best - 1e-9


def test_minimum_test_cost_is_linear_in_the_window():
  """No W x W matrix anywhere: the only solver call is on m x m."""
  n = 1024
  jaxpr = jax.make_jaxpr(gp.minimum_test)(
      jnp.linspace(0, 1, n), jnp.zeros(n), jnp.ones(n), jnp.ones(n, bool))
  m = gp.rbf_features(jnp.zeros(1), 0.2).shape[1]
  solver_shapes = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name in ('eigh', 'eig', 'svd', 'cholesky', 'lu', 'qr',
                                'triangular_solve', 'householder_product'):
        solver_shapes.append(tuple(eqn.invars[0].aval.shape))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  assert solver_shapes == [(m, m)], solver_shapes


@pytest.mark.parametrize('n, capacity', [(5, 8), (12, 16), (12, 64)])
def test_fewer_points_than_features_match_dense_numpy(x64, n, capacity):
  del x64
  x, y, counts, xp, yp, cp, mask = _data(7, n, capacity)
  assert n < gp.rbf_features(jnp.zeros(1), LENGTHSCALE).shape[1]
  xq = np.linspace(0, 1, 33)
  post = gp.posterior(xp, yp, 0.05 / cp, xq, signal_var=0.7,
                      lengthscale=LENGTHSCALE, mean=0.1,
                      mask=jnp.asarray(mask))
  ref_mean, ref_cov = _dense_posterior(x, y, 0.05 / counts, xq, 0.7, 0.1)
  np.testing.assert_allclose(post.mean, ref_mean, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(post.var, np.diag(ref_cov), rtol=1e-5,
                             atol=1e-9)
  fit = gp.fit_hyperparams(xp, yp, cp, lengthscale=LENGTHSCALE, mean=0.1,
                           mask=jnp.asarray(mask))
  ours = -_neg_lml(np.log([fit.signal_var, fit.noise_var]), x, y, counts,
                   0.1)
  np.testing.assert_allclose(fit.log_marginal_likelihood, ours, rtol=1e-9)


def test_lml_and_posterior_at_given_hyperparameters_match_dense_numpy(x64):
  """The authors' fit's objective and test: the marginal likelihood and the
  posterior at given (mean, signal, noise), heteroscedastic, masked."""
  del x64
  x, y, counts, xp, yp, cp, mask = _data(3, 41, 56)
  params = gp.GPParams(*jnp.asarray([0.4, 0.3, -2.0]))
  mean, s, noise = (float(v) for v in gp.adam_fit_hyperparams(params))
  ms = gp._mean_system(jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(cp),
                       jnp.asarray(mask), LENGTHSCALE)
  np.testing.assert_allclose(
      -gp._lml_given(ms, mean, s, noise),
      _neg_lml(np.log([s, noise]), x, y, counts, mean), rtol=1e-9)
  res = jax.jit(lambda *a: gp.minimum_test_given(
      *a, lengthscale=LENGTHSCALE, grid_size=65))(
          xp, yp, cp, jnp.asarray(mask), params)
  ref_mean, ref_cov = _dense_posterior(x, y, noise / counts,
                                       np.linspace(0, 1, 65), s, mean)
  np.testing.assert_allclose(res.posterior.mean, ref_mean, rtol=1e-6,
                             atol=1e-9)
  np.testing.assert_allclose(res.posterior.var, np.diag(ref_cov), rtol=1e-5,
                             atol=1e-9)
  diff = ref_mean[-1] - ref_mean[:-1]
  var = np.diag(ref_cov)[:-1] + ref_cov[-1, -1] - 2 * ref_cov[:-1, -1]
  np.testing.assert_allclose(
      res.probability,
      np.max(stats.norm.cdf(diff / np.sqrt(var + gp.AUTHORS_JITTER))),
      rtol=1e-6)


def test_adam_fit_matches_the_authors_fit():
  """Three warm-started fits (100 Adam steps each, the mean re-set to the
  data's) follow the NumPy port of the authors' ``Regressor`` (float64 dense
  GP) to float32 precision, on a loss curve that explodes."""
  from experiments import authors_check as ac  # noqa: PLC0415

  rng = np.random.default_rng(0)
  ref = ac._AuthorsGP(0)  # noqa: SLF001
  fit = gp.adam_fit_init()
  np.testing.assert_allclose(jax.tree.leaves(fit.params), ref.params, rtol=1e-6)
  run = jax.jit(lambda x, y, f: gp.adam_fit(
      x, y, jnp.ones_like(y), jnp.ones(y.shape, bool), f,
      lengthscale=LENGTHSCALE))
  losses = np.r_[2.3 - np.linspace(0, 1.8, 60), 0.5 + np.geomspace(0.01, 30, 30)]
  losses = losses + 0.05 * rng.normal(size=losses.size)
  for n in (50, 70, 90):
    y = losses[:n]
    x = np.arange(n) / n
    ref.params[0] = y.mean()
    ref.fit(x, y)
    fit = run(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), fit)
    got = [float(v) for v in gp.adam_fit_hyperparams(fit.params)]
    np.testing.assert_allclose(got, ref.hyper(), rtol=2e-3)
  # No data: the fit is kept as it was.
  kept = jax.jit(lambda f: gp.adam_fit(
      jnp.zeros(8), jnp.zeros(8), jnp.zeros(8), jnp.zeros(8, bool), f,
      lengthscale=LENGTHSCALE))(fit)
  chex.assert_trees_all_equal(kept, fit)
