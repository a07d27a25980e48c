"""Closed-form Gaussian-process smoothing of a loss curve, inside ``jax.jit``.

The model behind the AutoWU minimum test (Kim et al. 2021, SPEC §1):

.. math::

  y_j = \\mu + f(x_j) + \\epsilon_j, \\quad
  f \\sim \\mathcal{GP}\\big(0, s\\, e^{-(x - x')^2 / (2 \\ell^2)}\\big), \\quad
  \\epsilon_j \\sim \\mathcal{N}(0, \\sigma^2 / c_j),

with a fixed lengthscale :math:`\\ell`, a known mean :math:`\\mu`, and a bin
holding :math:`c_j` losses having noise variance :math:`\\sigma^2 / c_j`
(heteroscedastic noise). Writing :math:`D = \\mathrm{diag}(1 / c_j)` and
:math:`r = \\sigma^2 / s`, the covariance is :math:`s (K + r D)`. One symmetric
eigendecomposition :math:`D^{-1/2} K D^{-1/2} = Q \\Lambda Q^\\top` then gives
the marginal likelihood for *every* :math:`r` in :math:`O(n)`, with the signal
variance profiled out in closed form (:math:`\\hat s = y^\\top (K + rD)^{-1} y /
n`). The fit is a vectorized log-spaced search over :math:`r` refined by a
golden-section search, all in ``jax.numpy``: no host callbacks, fixed shapes.

Arrays have a fixed length; a boolean ``mask`` marks the points in use, so the
same compiled code serves any number of points.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

_TINY = 1e-30
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class GPHyperparams(NamedTuple):
  """Fitted hyperparameters.

  Attributes:
    signal_var: signal variance :math:`s` of the RBF kernel.
    noise_var: noise variance :math:`\\sigma^2` of a bin holding one loss.
    log_marginal_likelihood: log marginal likelihood at these values.
  """

  signal_var: jax.Array
  noise_var: jax.Array
  log_marginal_likelihood: jax.Array


class Posterior(NamedTuple):
  """Posterior of the latent :math:`f` (plus the mean) on query points.

  Attributes:
    mean: ``[G]`` posterior mean.
    var: ``[G]`` posterior variance of :math:`f`.
    cov_last: ``[G]`` posterior covariance of each point with the last one.
  """

  mean: jax.Array
  var: jax.Array
  cov_last: jax.Array


class MinimumTestResult(NamedTuple):
  """Outcome of :func:`minimum_test`.

  Attributes:
    probability: past-minimum probability (SPEC §1).
    argmin: position in ``[0, 1]`` of the minimum of the posterior mean.
    hyperparams: fitted :class:`GPHyperparams` (standardized units).
    posterior: :class:`Posterior` on the grid, in the units of ``y``.
    grid: ``[G]`` query points, ``linspace(0, 1, G)``.
  """

  probability: jax.Array
  argmin: jax.Array
  hyperparams: GPHyperparams
  posterior: Posterior
  grid: jax.Array


def rbf_kernel(x1: jax.Array, x2: jax.Array, lengthscale: float) -> jax.Array:
  """Unit-variance RBF kernel matrix :math:`e^{-(x_1 - x_2)^2 / (2\\ell^2)}`."""
  d = (x1[:, None] - x2[None, :]) / lengthscale
  return jnp.exp(-0.5 * d * d)


def _eigensystem(x, weights, mask, lengthscale):
  """Eigendecomposition of ``W^{1/2} K W^{1/2}``; unused rows are identity."""
  sqrt_w = jnp.where(mask, jnp.sqrt(jnp.where(mask, weights, 1.0)), 0.0)
  a = sqrt_w[:, None] * rbf_kernel(x, x, lengthscale) * sqrt_w[None, :]
  a = jnp.where(mask[:, None] & mask[None, :], a, jnp.eye(x.shape[0], dtype=a.dtype))
  lam, q = jnp.linalg.eigh(a)
  # The RBF Gram matrix is PSD; round-off can make tiny eigenvalues negative.
  return jnp.maximum(lam, 0.0), q, sqrt_w


def _posterior_from_eig(lam, q, sqrt_w, ratio, signal_var, x, yc, mask, xq,
                        lengthscale):
  inv = 1.0 / (lam + ratio)
  kxq = jnp.where(mask[:, None], rbf_kernel(x, xq, lengthscale), 0.0)
  b = q.T @ (sqrt_w[:, None] * kxq)
  z = q.T @ (sqrt_w * yc)
  mean = b.T @ (inv * z)
  var = signal_var * (1.0 - jnp.sum(b * b * inv[:, None], axis=0))
  k_last = rbf_kernel(xq, xq[-1:], lengthscale)[:, 0]
  cov_last = signal_var * (k_last - b.T @ (inv * b[:, -1]))
  return mean, jnp.maximum(var, 0.0), cov_last


def posterior(x: jax.Array, y: jax.Array, noise_var: jax.Array,
              xq: jax.Array, *, signal_var: jax.Array, lengthscale: float,
              mean: jax.Array = 0.0, mask: jax.Array | None = None
              ) -> Posterior:
  """Posterior of a constant-mean RBF GP with per-point noise variances.

  Args:
    x: ``[n]`` input positions.
    y: ``[n]`` observations.
    noise_var: ``[n]`` noise variance of each observation (positive).
    xq: ``[G]`` query positions; ``cov_last`` is taken against ``xq[-1]``.
    signal_var: RBF signal variance :math:`s` (positive).
    lengthscale: RBF lengthscale.
    mean: the constant prior mean.
    mask: optional ``[n]`` boolean mask of the points in use.

  Returns:
    A :class:`Posterior` with the mean, variance and covariance with the last
    query point of the latent function at ``xq``.
  """
  if mask is None:
    mask = jnp.ones(x.shape, bool)
  weights = signal_var / jnp.where(mask, noise_var, 1.0)
  lam, q, sqrt_w = _eigensystem(x, weights, mask, lengthscale)
  yc = jnp.where(mask, y - mean, 0.0)
  m, v, c = _posterior_from_eig(lam, q, sqrt_w, 1.0, signal_var, x, yc, mask,
                                xq, lengthscale)
  return Posterior(m + mean, v, c)


def _profile_lml(log_ratio, lam, z2, logdet_d, n, n_unused):
  """Log marginal likelihood with the signal variance profiled out."""
  ratio = jnp.exp(log_ratio)
  quad = jnp.sum(z2 / (lam + ratio))
  s = jnp.maximum(quad / n, _TINY)
  logdet = (n * jnp.log(s) + logdet_d + jnp.sum(jnp.log(lam + ratio))
            - n_unused * jnp.log1p(ratio))
  return -0.5 * (quad / s + logdet + n * jnp.log(2 * jnp.pi)), s


def _fit_from_eig(lam, q, sqrt_w, yc, mask, noise_floor, max_noise_ratio,
                  num_search, num_refine):
  n = jnp.maximum(jnp.sum(mask), 1).astype(lam.dtype)
  n_unused = jnp.sum(~mask).astype(lam.dtype)
  z2 = (q.T @ (sqrt_w * yc)) ** 2
  logdet_d = -jnp.sum(jnp.where(mask, 2.0 * jnp.log(jnp.where(mask, sqrt_w, 1.0)), 0.0))
  lml = lambda lr: _profile_lml(lr, lam, z2, logdet_d, n, n_unused)[0]

  lo, hi = math.log(noise_floor), math.log(max_noise_ratio)
  grid = jnp.linspace(lo, hi, num_search, dtype=lam.dtype)
  values = jax.vmap(lml)(grid)
  best = jnp.argmax(values)
  a = grid[jnp.maximum(best - 1, 0)]
  b = grid[jnp.minimum(best + 1, num_search - 1)]

  def golden(_, ab):
    a, b = ab
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    left = lml(c) >= lml(d)
    return jnp.where(left, a, c), jnp.where(left, d, b)

  a, b = jax.lax.fori_loop(0, num_refine, golden, (a, b))
  candidates = jnp.stack([0.5 * (a + b), grid[best]])
  cvals = jax.vmap(lml)(candidates)
  log_ratio = candidates[jnp.argmax(cvals)]
  value, s = _profile_lml(log_ratio, lam, z2, logdet_d, n, n_unused)
  return jnp.exp(log_ratio), s, value


class _Fit(NamedTuple):
  lam: jax.Array
  q: jax.Array
  sqrt_w: jax.Array
  ratio: jax.Array
  yc: jax.Array
  hyperparams: GPHyperparams


def _fit(x, yc, counts, mask, lengthscale, noise_floor, max_noise_ratio,
         num_search=64, num_refine=30):
  """Eigendecomposition and marginal-likelihood fit on centered data."""
  yc = jnp.where(mask, yc, 0.0)
  counts = jnp.where(mask, counts, 1).astype(yc.dtype)
  cmax = jnp.maximum(jnp.max(jnp.where(mask, counts, 0.0)), 1.0)
  lam, q, sqrt_w = _eigensystem(x, counts / cmax, mask, lengthscale)
  ratio, s, value = _fit_from_eig(lam, q, sqrt_w, yc, mask, noise_floor,
                                  max_noise_ratio, num_search, num_refine)
  return _Fit(lam, q, sqrt_w, ratio, yc,
              GPHyperparams(s, ratio * s * cmax, value))


def fit_hyperparams(x: jax.Array, y: jax.Array, counts: jax.Array, *,
                    lengthscale: float, mean: jax.Array = 0.0,
                    mask: jax.Array | None = None, noise_floor: float = 1e-4,
                    max_noise_ratio: float = 1e4, num_search: int = 64,
                    num_refine: int = 30) -> GPHyperparams:
  """Maximizes the marginal likelihood over signal and noise variance.

  The noise variance of a bin holding :math:`c_j` losses is
  :math:`\\sigma^2 / c_j`. The ratio :math:`r = \\sigma^2 / (s\\, c_{max})`
  (the noise-to-signal ratio of the fullest bin) is searched on a log grid in
  ``[noise_floor, max_noise_ratio]`` and refined by golden-section search; the
  signal variance is the closed-form optimum for each ratio.

  Args:
    x: ``[n]`` input positions.
    y: ``[n]`` observations (bin means).
    counts: ``[n]`` number of losses averaged in each observation.
    lengthscale: the fixed RBF lengthscale.
    mean: the constant prior mean (known).
    mask: optional ``[n]`` boolean mask of the points in use.
    noise_floor: smallest noise-to-signal variance ratio of the fullest bin.
    max_noise_ratio: largest such ratio.
    num_search: number of log-spaced ratios evaluated at once.
    num_refine: golden-section iterations around the best of them.

  Returns:
    :class:`GPHyperparams`.
  """
  if mask is None:
    mask = jnp.ones(x.shape, bool)
  fit = _fit(x, y - mean, counts, mask, lengthscale, noise_floor,
             max_noise_ratio, num_search, num_refine)
  return fit.hyperparams


def past_minimum_probability(post: Posterior, jitter: float = 1e-6
                             ) -> jax.Array:
  """Probability that the minimum of the curve lies before its last point.

  .. math::

    p = \\max_{i < k} \\Phi\\left(\\frac{m_k - m_i}
        {\\sqrt{C_{ii} + C_{kk} - 2 C_{ik} + \\mathrm{jitter}}}\\right),

  with :math:`k` the last query point.

  Args:
    post: the :class:`Posterior` on the query points.
    jitter: added to the variance of each difference.

  Returns:
    Scalar probability.
  """
  diff = post.mean[-1] - post.mean[:-1]
  var = post.var[:-1] + post.var[-1] - 2.0 * post.cov_last[:-1]
  z = diff / jnp.sqrt(jnp.maximum(var, 0.0) + jitter)
  return jnp.max(norm.cdf(z))


def minimum_test(x: jax.Array, y: jax.Array, counts: jax.Array,
                 mask: jax.Array, *, lengthscale: float = 0.2,
                 grid_size: int = 256, noise_floor: float = 1e-4,
                 max_noise_ratio: float = 1e4,
                 jitter: float = 1e-6) -> MinimumTestResult:
  """The AutoWU minimum test on a binned loss curve.

  Standardizes the bin means, fits the signal and noise variance by marginal
  likelihood, computes the posterior on ``linspace(0, 1, grid_size)`` and the
  probability that the minimum is in the past.

  Args:
    x: ``[n]`` positions in ``[0, 1]`` (1 = now).
    y: ``[n]`` bin means of the loss.
    counts: ``[n]`` number of losses in each bin.
    mask: ``[n]`` boolean mask of the bins in use.
    lengthscale: the fixed RBF lengthscale, as a fraction of the curve.
    grid_size: number of posterior grid points.
    noise_floor: see :func:`fit_hyperparams`.
    max_noise_ratio: see :func:`fit_hyperparams`.
    jitter: see :func:`past_minimum_probability` (standardized units).

  Returns:
    A :class:`MinimumTestResult`; the posterior is in the units of ``y``.
  """
  n = jnp.maximum(jnp.sum(mask), 1)
  y = jnp.where(mask, y, 0.0)
  mu = jnp.sum(y) / n
  std = jnp.sqrt(jnp.sum(jnp.where(mask, (y - mu) ** 2, 0.0)) / n)
  std = jnp.where(std > 1e-7 * (jnp.abs(mu) + 1e-30), std, 1.0)
  ys = jnp.where(mask, (y - mu) / std, 0.0)

  fit = _fit(x, ys, counts, mask, lengthscale, noise_floor, max_noise_ratio)
  s = fit.hyperparams.signal_var
  grid = jnp.linspace(0.0, 1.0, grid_size, dtype=y.dtype)
  m, v, c = _posterior_from_eig(fit.lam, fit.q, fit.sqrt_w, fit.ratio, s, x,
                                fit.yc, mask, grid, lengthscale)
  prob = past_minimum_probability(Posterior(m, v, c), jitter * s)
  argmin = grid[jnp.argmin(m)]
  post = Posterior(mu + std * m, std**2 * v, std**2 * c)
  hyper = fit.hyperparams
  return MinimumTestResult(prob, argmin, hyper, post, grid)
