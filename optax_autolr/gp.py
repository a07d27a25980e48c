"""Closed-form Gaussian-process smoothing of a loss curve, inside ``jax.jit``.

The model behind the AutoWU minimum test (Kim et al. 2021, SPEC §1):

.. math::

  y_j = \\mu + f(x_j) + \\epsilon_j, \\quad
  f \\sim \\mathcal{GP}\\big(0, s\\, e^{-(x - x')^2 / (2 \\ell^2)}\\big), \\quad
  \\epsilon_j \\sim \\mathcal{N}(0, \\sigma^2 / c_j),

on positions :math:`x \\in [0, 1]`, with a fixed lengthscale :math:`\\ell`, a
known mean :math:`\\mu`, and a bin holding :math:`c_j` losses having noise
variance :math:`\\sigma^2 / c_j` (heteroscedastic noise).

Computation. On :math:`[0, 1]^2` the RBF kernel has a tiny numerical rank:
for :math:`\\ell = 0.2`, 20 eigenvalues above :math:`10^{-15}` of the largest.
Once per lengthscale (in float64 NumPy, cached) the kernel is expanded in
Chebyshev polynomials, :math:`k(x, x') = T(x)^\\top C\\, T(x')` with
:math:`T_i(x) = T_i(2x - 1)`, and the symmetric coefficient matrix is
factored as :math:`C = B B^\\top` (its eigenvalues below :math:`10^{-15}` of
the largest dropped). That gives features :math:`\\phi(x) = B^\\top T(x)` with
:math:`\\phi(x)^\\top \\phi(x') = k(x, x')` to about 1e-14 in float64 and 3e-7
in float32 (the evaluation is stable: :math:`|T_i| \\le 1`, no inverse of
an ill-conditioned Gram matrix), so the GP is the Bayesian linear regression
:math:`f = \\phi^\\top w`, :math:`w \\sim \\mathcal{N}(0, s I_m)`, with
:math:`m \\approx 4 / \\ell` features. With :math:`W = \\mathrm{diag}(c_j /
c_{max})` and :math:`r = \\sigma^2 / (s\\, c_{max})`, a Householder QR of the
:math:`n \\times m` matrix :math:`W^{1/2} \\Phi` (in ``jax.numpy``) and an SVD of
its :math:`m \\times m` factor R (never :math:`\\Phi^\\top W \\Phi`, which would
square the condition number) give the
marginal likelihood for *every* :math:`r` in :math:`O(m)` (the data's component
outside the feature span enters through its weighted residual), with the
signal variance profiled out in closed form; the fit is a vectorized
log-spaced search over :math:`r` refined by a few zoomed searches, and the
posterior on a grid of G points costs :math:`O(G m)`. A test on n bins is
:math:`O(n m^2 + m^3)` instead of the :math:`O(n^3)` eigendecomposition of
the n x n kernel matrix, with the same result to the precision above
(checked against a dense float64 GP in ``tests/test_gp.py``). All in
``jax.numpy``: no host callbacks, fixed shapes.

Two fits of :math:`(s, \\sigma^2)`: :func:`minimum_test` standardizes the
losses and maximizes the marginal likelihood at every test (the library's
default); :func:`adam_fit` is the authors' (raw loss units, a warm-started
Adam run of 100 steps per test, the mean :math:`\\mu` fitted too) and
:func:`minimum_test_given` the test at its hyperparameters. Since the data
enter the marginal likelihood only through :math:`W^{1/2}(y - \\mu)`, one
reduction of the two columns :math:`y` and :math:`1` gives it, and its
gradient, for every :math:`\\mu` in :math:`O(m)`.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm

_TINY = 1e-30


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
  """Outcome of :func:`minimum_test` (or :func:`minimum_test_given`).

  Attributes:
    probability: past-minimum probability (SPEC §1).
    argmin: position in ``[0, 1]`` of the minimum of the posterior mean.
    hyperparams: the :class:`GPHyperparams` (standardized units from
      :func:`minimum_test`, loss units from :func:`minimum_test_given`).
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


# Smallest supported lengthscale (as a fraction of [0, 1]); the number of
# features grows like 4 / lengthscale.
MIN_LENGTHSCALE = 0.01
# Chebyshev coefficients (degrees) and eigenvalues of the coefficient matrix
# kept, relative to the largest; float64 round-off of the expansion is ~1e-15.
_COEF_TOL = 1e-13
_EIG_TOL = 1e-15


@functools.lru_cache(maxsize=64)
def _chebyshev_factor(lengthscale: float) -> np.ndarray:
  """``B`` (degrees x features), float64: ``k(x, x') = T(x)^T B B^T T(x')``.

  ``T(x)`` are the Chebyshev polynomials of the first kind at ``2x - 1``;
  the identity holds on ``[0, 1]^2`` to ~1e-14.
  """
  n = 16
  while True:
    # 2-D Chebyshev coefficients from the values at the n Chebyshev nodes.
    theta = np.pi * (np.arange(n) + 0.5) / n
    t = np.cos(theta)
    d = (t[:, None] - t[None, :]) / (2.0 * lengthscale)
    values = np.exp(-0.5 * d * d)
    basis = np.cos(np.outer(np.arange(n), theta))  # T_i(t_j)
    coef = (2.0 / n) ** 2 * (basis @ values @ basis.T)
    coef[0, :] *= 0.5
    coef[:, 0] *= 0.5
    row = np.abs(coef).max(axis=1)
    degrees = int(np.nonzero(row > _COEF_TOL * row.max())[0].max()) + 1
    if degrees <= n // 2:  # Resolved: the rest is round-off.
      break
    n *= 2
  coef = coef[:degrees, :degrees]
  mu, vec = np.linalg.eigh(0.5 * (coef + coef.T))
  keep = mu > _EIG_TOL * mu.max()
  return vec[:, keep] * np.sqrt(mu[keep])


def rbf_features(x: jax.Array, lengthscale: float) -> jax.Array:
  """Features ``[n, m]`` with ``phi(x) @ phi(x').T`` = the RBF kernel.

  Valid for positions in ``[0, 1]`` (others are clipped to it); see the
  module docstring for the construction and its precision.

  Args:
    x: ``[n]`` positions in ``[0, 1]``.
    lengthscale: the RBF lengthscale, a Python float >=
      :data:`MIN_LENGTHSCALE`.

  Returns:
    ``[n, m]`` array of the dtype of ``x`` (at least float32).
  """
  if (isinstance(lengthscale, bool)
      or not isinstance(lengthscale, (int, float, np.floating))):
    raise TypeError('`lengthscale` must be a Python float (a static '
                    f'argument), got {type(lengthscale).__name__}.')
  if not (math.isfinite(lengthscale) and lengthscale >= MIN_LENGTHSCALE):
    raise ValueError(
        f'`lengthscale` must be a number >= {MIN_LENGTHSCALE} (a fraction of '
        f'the [0, 1] axis), got {lengthscale!r}.')
  factor = _chebyshev_factor(float(lengthscale))
  x = jnp.asarray(x)
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  t = jnp.clip(2.0 * x.astype(dtype) - 1.0, -1.0, 1.0)
  cheb = [jnp.ones_like(t), t]  # Three-term recurrence: stable on [-1, 1].
  for _ in range(2, factor.shape[0]):
    cheb.append(2.0 * t * cheb[-1] - cheb[-2])
  return jnp.stack(cheb[:factor.shape[0]], axis=-1) @ jnp.asarray(
      factor, dtype)


class _System(NamedTuple):
  """The data, reduced to the feature space (see the module docstring)."""
  sigma: jax.Array  # [m] eigenvalues of Phi^T W Phi (0 if unresolved).
  vec: jax.Array  # [m, m] its eigenvectors.
  h: jax.Array  # [m] vec^T Phi^T W y (0 where sigma is 0).
  residual: jax.Array  # Weighted squared residual of y outside the span.
  rank: jax.Array  # Number of nonzero sigma.


def _householder(a, num_steps):
  """Applies ``num_steps`` Householder reflections to ``a`` (``[n, k]``).

  Column ``j < num_steps`` is reduced to zero below its diagonal; the other
  columns get the same orthogonal transformation ``Q^T``. Plain
  ``jax.numpy`` (no LAPACK call): a few fused vector operations per step.
  """
  rows = jnp.arange(a.shape[0])
  for j in range(num_steps):
    x = jnp.where(rows >= j, a[:, j], 0.0)
    norm = jnp.sqrt(jnp.sum(x * x))
    alpha = jnp.where(x[j] > 0, -norm, norm)
    v = x - jnp.where(rows == j, alpha, 0.0)
    vv = jnp.sum(v * v)
    beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
    a = a - (beta * v)[:, None] * (v @ a)[None, :]
  return a


def _reduce(x, sqrt_w, cols, lengthscale):
  """``W^{1/2} [Phi, cols]`` reduced to the feature space.

  Householder QR first (in ``jax.numpy``: O(n m^2), n the number of bins),
  then an SVD of the small ``R``. This never forms ``Phi^T W Phi`` (which
  would square the condition number), and the only LAPACK call is on an
  m x m matrix, too small for a multithreaded BLAS to start its threads (on
  CPU those threads would compete with the training step's own).

  Returns:
    ``(sv, vt, resolved, z, outside)``: the singular values of ``R = U S
    V^T`` (those within round-off of zero set to 0: they carry no
    information, their directions join the residual), ``V^T``, which are
    resolved, ``U^T`` of the reduced ``cols`` (``[m, k]``) and their parts
    outside the feature span (``[n', k]``).
  """
  phi = rbf_features(x, lengthscale).astype(jnp.result_type(sqrt_w, cols))
  m = phi.shape[1]
  a = jnp.concatenate([sqrt_w[:, None] * phi, sqrt_w[:, None] * cols], axis=1)
  # Fewer bins than features: zero rows change nothing and make R m x m.
  a = jnp.pad(a, ((0, max(0, m + 1 - a.shape[0])), (0, 0)))
  a = _householder(a, m)
  u, sv, vt = jnp.linalg.svd(a[:m, :m])
  tol = (max(a.shape) * jnp.finfo(sv.dtype).eps
         * jnp.maximum(jnp.max(sv), 0.0))
  resolved = sv > tol
  return (jnp.where(resolved, sv, 0.0), vt, resolved, u.T @ a[:m, m:],
          a[m:, m:])


def _projected(sv, vec, resolved, z, outside) -> _System:
  """The :class:`_System` of one reduced column (``z``, ``outside``)."""
  return _System(sigma=sv * sv, vec=vec, h=jnp.where(resolved, sv * z, 0.0),
                 residual=(jnp.sum(outside**2)
                           + jnp.sum(jnp.where(resolved, 0.0, z * z))),
                 rank=jnp.sum(resolved))


def _system(x, weights, yc, mask, lengthscale):
  """Weighted least-squares system of the masked data in feature space
  (:func:`_reduce`)."""
  sqrt_w = jnp.sqrt(jnp.where(mask, weights, 0.0))
  sv, vt, resolved, z, outside = _reduce(
      x, sqrt_w, jnp.where(mask, yc, 0.0)[:, None], lengthscale)
  return _projected(sv, vt.T, resolved, z[:, 0], outside[:, 0])


def _posterior_from_system(sys, ratio, signal_var, xq, lengthscale):
  a = rbf_features(xq, lengthscale).astype(sys.h.dtype) @ sys.vec
  inv = 1.0 / (sys.sigma + ratio)
  mean = a @ (inv * sys.h)
  var = signal_var * ratio * jnp.sum(a * a * inv, axis=1)
  cov_last = signal_var * ratio * (a @ (inv * a[-1]))
  return mean, var, cov_last


def posterior(x: jax.Array, y: jax.Array, noise_var: jax.Array,
              xq: jax.Array, *, signal_var: jax.Array, lengthscale: float,
              mean: jax.Array = 0.0, mask: jax.Array | None = None
              ) -> Posterior:
  """Posterior of a constant-mean RBF GP with per-point noise variances.

  Args:
    x: ``[n]`` input positions in ``[0, 1]``.
    y: ``[n]`` observations.
    noise_var: ``[n]`` noise variance of each observation (positive).
    xq: ``[G]`` query positions in ``[0, 1]``; ``cov_last`` is taken
      against ``xq[-1]``.
    signal_var: RBF signal variance :math:`s` (positive).
    lengthscale: RBF lengthscale (Python float >= :data:`MIN_LENGTHSCALE`).
    mean: the constant prior mean.
    mask: optional ``[n]`` boolean mask of the points in use.

  Returns:
    A :class:`Posterior` with the mean, variance and covariance with the last
    query point of the latent function at ``xq``.
  """
  if mask is None:
    mask = jnp.ones(jnp.shape(x), bool)
  weights = signal_var / jnp.where(mask, noise_var, 1.0)
  sys = _system(x, weights, jnp.asarray(y) - mean, mask, lengthscale)
  m, v, c = _posterior_from_system(sys, 1.0, signal_var, xq, lengthscale)
  return Posterior(m + mean, v, c)


def _quad_logdet(sys, ratio, log_ratio, n):
  """``(y^T A^-1 y, log det A)`` of ``A = Phi Phi^T + ratio W^-1`` (the
  kernel matrix over the signal variance) in the feature space, less the
  ``log det W^-1`` that the callers add."""
  inside = jnp.where(sys.sigma > 0, sys.h**2 / (
      jnp.where(sys.sigma > 0, sys.sigma, 1.0) * (sys.sigma + ratio)), 0.0)
  quad = sys.residual / ratio + jnp.sum(inside)
  logdet = (jnp.sum(jnp.where(sys.sigma > 0, jnp.log(sys.sigma + ratio), 0.0))
            + (n - sys.rank) * log_ratio)
  return quad, logdet


def _profile_lml(log_ratio, sys, logdet_w, n):
  """Log marginal likelihood with the signal variance profiled out."""
  quad, logdet = _quad_logdet(sys, jnp.exp(log_ratio), log_ratio, n)
  s = jnp.maximum(quad / n, _TINY)
  logdet = n * jnp.log(s) - logdet_w + logdet
  return -0.5 * (quad / s + logdet + n * jnp.log(2 * jnp.pi)), s


def _fit_from_system(sys, weights, mask, noise_floor, max_noise_ratio,
                     num_search, num_refine):
  dtype = sys.h.dtype
  n = jnp.maximum(jnp.sum(mask), 1).astype(dtype)
  logdet_w = jnp.sum(jnp.where(mask, jnp.log(jnp.where(mask, weights, 1.0)),
                               0.0))
  lml = lambda lr: _profile_lml(lr, sys, logdet_w, n)[0]

  # A grid over [lo, hi], then num_refine zooms, each a grid of the same
  # size over the best point's two neighbouring cells: every pass is one
  # vectorized evaluation (no sequential loop, which would cost a device
  # round trip per iteration on an accelerator).
  grid = jnp.linspace(math.log(noise_floor), math.log(max_noise_ratio),
                      num_search, dtype=dtype)
  unit = jnp.linspace(0.0, 1.0, num_search, dtype=dtype)
  best = jnp.argmax(jax.vmap(lml)(grid))
  for _ in range(num_refine):
    a = grid[jnp.maximum(best - 1, 0)]
    b = grid[jnp.minimum(best + 1, num_search - 1)]
    grid = a + (b - a) * unit
    best = jnp.argmax(jax.vmap(lml)(grid))
  log_ratio = grid[best]
  value, s = _profile_lml(log_ratio, sys, logdet_w, n)
  return jnp.exp(log_ratio), s, value


class _Fit(NamedTuple):
  system: _System
  ratio: jax.Array
  hyperparams: GPHyperparams


def _fit(x, yc, counts, mask, lengthscale, noise_floor, max_noise_ratio,
         num_search=64, num_refine=3):
  """Feature-space system and marginal-likelihood fit on centered data."""
  yc = jnp.where(mask, yc, 0.0)
  counts = jnp.where(mask, counts, 1).astype(yc.dtype)
  cmax = jnp.maximum(jnp.max(jnp.where(mask, counts, 0.0)), 1.0)
  weights = counts / cmax
  sys = _system(x, weights, yc, mask, lengthscale)
  ratio, s, value = _fit_from_system(sys, weights, mask, noise_floor,
                                     max_noise_ratio, num_search, num_refine)
  return _Fit(sys, ratio, GPHyperparams(s, ratio * s * cmax, value))


def fit_hyperparams(x: jax.Array, y: jax.Array, counts: jax.Array, *,
                    lengthscale: float, mean: jax.Array = 0.0,
                    mask: jax.Array | None = None, noise_floor: float = 1e-4,
                    max_noise_ratio: float = 1e4, num_search: int = 64,
                    num_refine: int = 3) -> GPHyperparams:
  """Maximizes the marginal likelihood over signal and noise variance.

  The noise variance of a bin holding :math:`c_j` losses is
  :math:`\\sigma^2 / c_j`. The ratio :math:`r = \\sigma^2 / (s\\, c_{max})`
  (the noise-to-signal ratio of the fullest bin) is searched on a log grid in
  ``[noise_floor, max_noise_ratio]`` and refined by zoomed grid searches;
  the signal variance is the closed-form optimum for each ratio.

  Args:
    x: ``[n]`` input positions in ``[0, 1]``.
    y: ``[n]`` observations (bin means).
    counts: ``[n]`` number of losses averaged in each observation.
    lengthscale: the fixed RBF lengthscale (Python float >=
      :data:`MIN_LENGTHSCALE`).
    mean: the constant prior mean (known).
    mask: optional ``[n]`` boolean mask of the points in use.
    noise_floor: smallest noise-to-signal variance ratio of the fullest bin.
    max_noise_ratio: largest such ratio.
    num_search: number of log-spaced ratios evaluated at once.
    num_refine: zoom passes, each a grid of ``num_search`` points over the
      two cells around the best point so far (each narrows the spacing
      by ``(num_search - 1) / 2``).

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
  m, v, c = _posterior_from_system(fit.system, fit.ratio, s, grid,
                                   lengthscale)
  prob = past_minimum_probability(Posterior(m, v, c), jitter * s)
  argmin = grid[jnp.argmin(m)]
  post = Posterior(mu + std * m, std**2 * v, std**2 * c)
  hyper = fit.hyperparams
  return MinimumTestResult(prob, argmin, hyper, post, grid)


# The authors' GP fit (github.com/kakaobrain/autowu ``autowu.py``, commit
# 582a8a8, ``Regressor`` and ``CustomGP``): noise ``softplus(raw) + 1e-4``
# started at 1e-3, outputscale ``softplus(raw)`` started at ``softplus(0)``,
# 100 Adam steps of lr 0.01 per test on the negative marginal likelihood per
# point, parameters and Adam state kept from test to test.
AUTHORS_NOISE_INIT = 1e-3
AUTHORS_NOISE_LOWER = 1e-4
AUTHORS_FIT_STEPS = 100
AUTHORS_FIT_LR = 0.01
# Added to each difference variance of the past-minimum probability (squared
# loss units) by the authors' test.
AUTHORS_JITTER = 1e-4


class GPParams(NamedTuple):
  """The authors' GP parameters (scalars, float32).

  Attributes:
    mean: the constant prior mean (loss units).
    raw_signal_var: the signal variance is ``softplus(raw_signal_var)``.
    raw_noise_var: the one-loss noise variance is ``softplus(raw_noise_var)
      + 1e-4`` (:data:`AUTHORS_NOISE_LOWER`).
  """

  mean: jax.Array
  raw_signal_var: jax.Array
  raw_noise_var: jax.Array


class AdamFit(NamedTuple):
  """The authors' GP parameters and their Adam state, kept across tests.

  Attributes:
    params: the :class:`GPParams`.
    adam_mu: Adam's first moment of each parameter.
    adam_nu: Adam's second moment of each parameter.
    adam_steps: int32, Adam steps so far.
  """

  params: GPParams
  adam_mu: GPParams
  adam_nu: GPParams
  adam_steps: jax.Array


def _inv_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))


def adam_fit_init() -> AdamFit:
  """The authors' starting point: mean 0, signal variance ``softplus(0)``,
  noise variance :data:`AUTHORS_NOISE_INIT`, a fresh Adam state."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  params = GPParams(f32(0.0), f32(0.0), f32(
      _inv_softplus(AUTHORS_NOISE_INIT - AUTHORS_NOISE_LOWER)))
  zeros = lambda: GPParams(f32(0.0), f32(0.0), f32(0.0))  # Own buffers:
  return AdamFit(params, zeros(), zeros(),  # a donated state shares none.
                 jnp.zeros((), jnp.int32))


def adam_fit_hyperparams(params: GPParams
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(mean, signal_var, noise_var)`` of :class:`GPParams`."""
  return (params.mean, jax.nn.softplus(params.raw_signal_var),
          jax.nn.softplus(params.raw_noise_var) + AUTHORS_NOISE_LOWER)


class _MeanSystem(NamedTuple):
  """:class:`_System` of the data and of the constant 1, for any mean."""
  sigma: jax.Array  # [m] eigenvalues of Phi^T W Phi (0 if unresolved).
  vec: jax.Array  # [m, m] its eigenvectors.
  sv: jax.Array  # [m] singular values of W^1/2 Phi (0 if unresolved).
  z: jax.Array  # [2, m] U^T of the reduced data and ones columns.
  outside: jax.Array  # [2, n] their parts outside the feature span.
  resolved: jax.Array  # [m] bool.
  cmax: jax.Array  # Largest count.
  logdet_w: jax.Array  # sum log(c_j / cmax) over the bins in use.
  n: jax.Array  # Number of bins in use.


def _mean_system(x, y, counts, mask, lengthscale) -> _MeanSystem:
  """The reduction of :func:`_system`, applied to ``y`` and to ones at once.

  The data enter the marginal likelihood only through ``W^{1/2} (y - mean)``,
  linear in the mean: reducing the two columns once gives it for every mean.
  """
  dtype = jnp.result_type(y, jnp.float32)
  counts = jnp.where(mask, counts, 1).astype(dtype)
  cmax = jnp.maximum(jnp.max(jnp.where(mask, counts, 0.0)), 1.0)
  weights = counts / cmax
  sqrt_w = jnp.sqrt(jnp.where(mask, weights, 0.0))
  cols = jnp.stack([jnp.where(mask, y, 0.0), jnp.ones_like(sqrt_w)], axis=1)
  sv, vt, resolved, z, outside = _reduce(x, sqrt_w, cols, lengthscale)
  logdet_w = jnp.sum(jnp.where(mask, jnp.log(weights), 0.0))
  return _MeanSystem(sigma=sv * sv, vec=vt.T, sv=sv, z=z.T, outside=outside.T,
                     resolved=resolved, cmax=cmax, logdet_w=logdet_w,
                     n=jnp.maximum(jnp.sum(mask), 1).astype(dtype))


def _centered(ms: _MeanSystem, mean) -> _System:
  """The :class:`_System` of ``y - mean``."""
  return _projected(ms.sv, ms.vec, ms.resolved, ms.z[0] - mean * ms.z[1],
                    ms.outside[0] - mean * ms.outside[1])


def _lml_given(ms: _MeanSystem, mean, signal_var, noise_var) -> jax.Array:
  """Log marginal likelihood at given hyperparameters (nothing profiled)."""
  ratio = noise_var / (signal_var * ms.cmax)
  quad, logdet = _quad_logdet(_centered(ms, mean), ratio, jnp.log(ratio),
                              ms.n)
  logdet = ms.n * jnp.log(signal_var) - ms.logdet_w + logdet
  return -0.5 * (quad / signal_var + logdet + ms.n * jnp.log(2 * jnp.pi))


def adam_fit(x: jax.Array, y: jax.Array, counts: jax.Array, mask: jax.Array,
             fit: AdamFit, *, lengthscale: float,
             num_steps: int = AUTHORS_FIT_STEPS) -> AdamFit:
  """The authors' fit: a few Adam steps on the marginal likelihood, warm.

  The constant mean is first re-set to the mean of the losses; then
  ``num_steps`` Adam steps (lr 0.01, ``optax.scale_by_adam``) on the
  negative log marginal likelihood per bin, in raw loss units (no
  standardization), from the parameters and Adam state of the previous
  test. Far from converged by design: the noise variance moves by about a
  factor ``e`` per test at most, so on a loss that explodes the GP keeps a
  noise far below the data's variance (the paper's behaviour;
  :func:`minimum_test` maximizes instead).

  The authors fit a random subset of 100 per-step losses; this fits the bin
  means, a bin's noise variance the one-loss noise over its count: the same
  model while every bin holds one loss (an AutoWU window of 256 bins, up to
  256 losses), and without the scatter within bins beyond that.

  Args:
    x: ``[n]`` positions in ``[0, 1]``.
    y: ``[n]`` bin means of the loss.
    counts: ``[n]`` number of losses in each bin.
    mask: ``[n]`` boolean mask of the bins in use (none: ``fit`` is
      returned unchanged, as it is when the new one is not finite).
    fit: the :class:`AdamFit` of the previous test (:func:`adam_fit_init`
      before the first).
    lengthscale: the fixed RBF lengthscale.
    num_steps: Adam steps.

  Returns:
    The new :class:`AdamFit`.

  References:
    Kim et al., `Automated Learning Rate Scheduler for Large-batch Training
    <https://arxiv.org/abs/2107.05855>`_, 2021 (code: github.com/kakaobrain/
    autowu).
  """
  ms = _mean_system(x, y, counts, mask, lengthscale)
  c = jnp.where(mask, counts, 0).astype(ms.sigma.dtype)
  data_mean = jnp.sum(c * jnp.where(mask, y, 0.0)) / jnp.maximum(jnp.sum(c), 1)
  params = fit.params._replace(
      mean=data_mean.astype(fit.params.mean.dtype))
  adam = optax.scale_by_adam()

  def loss(p):
    mean, s, noise = adam_fit_hyperparams(
        jax.tree.map(lambda v: v.astype(ms.sigma.dtype), p))
    return -_lml_given(ms, mean, s, noise) / ms.n

  def step(_, carry):
    p, state = carry
    direction, state = adam.update(jax.grad(loss)(p), state)
    return optax.apply_updates(p, optax.tree.scale(-AUTHORS_FIT_LR,
                                                   direction)), state

  state = optax.ScaleByAdamState(count=fit.adam_steps, mu=fit.adam_mu,
                                 nu=fit.adam_nu)
  params, state = jax.lax.fori_loop(0, num_steps, step, (params, state))
  new = AdamFit(params, state.mu, state.nu, state.count)
  # No data, or a fit that overflowed (a loss spike of ~1e9 squares past
  # float32 in Adam's second moment): keep the last fit.
  ok = jnp.any(mask) & functools.reduce(
      jnp.logical_and, [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(new)])
  return jax.tree.map(functools.partial(jnp.where, ok), new, fit)


def minimum_test_given(x: jax.Array, y: jax.Array, counts: jax.Array,
                       mask: jax.Array, params: jax.Array, *,
                       lengthscale: float = 0.2, grid_size: int = 256,
                       jitter: float = AUTHORS_JITTER) -> MinimumTestResult:
  """The minimum test at given hyperparameters (raw loss units): the authors'.

  Args:
    x: ``[n]`` positions in ``[0, 1]`` (1 = now).
    y: ``[n]`` bin means of the loss.
    counts: ``[n]`` number of losses in each bin.
    mask: ``[n]`` boolean mask of the bins in use.
    params: the :class:`GPParams` (see :func:`adam_fit`).
    lengthscale: the fixed RBF lengthscale.
    grid_size: number of posterior grid points.
    jitter: added to each difference variance, in squared loss units.

  Returns:
    A :class:`MinimumTestResult` in the units of ``y``, its hyperparameters
    too (``noise_var``: of one loss).
  """
  ms = _mean_system(x, y, counts, mask, lengthscale)
  mean, s, noise = adam_fit_hyperparams(
      jax.tree.map(lambda v: v.astype(ms.sigma.dtype), params))
  grid = jnp.linspace(0.0, 1.0, grid_size, dtype=ms.sigma.dtype)
  ratio = noise / (s * ms.cmax)
  m, v, c = _posterior_from_system(_centered(ms, mean), ratio, s, grid,
                                   lengthscale)
  post = Posterior(mean + m, v, c)
  hyper = GPHyperparams(s, noise, _lml_given(ms, mean, s, noise))
  return MinimumTestResult(past_minimum_probability(post, jitter),
                           grid[jnp.argmin(m)], hyper, post, grid)
