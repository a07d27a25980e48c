"""Learning rate vs batch size: scaling laws, fits and the gradient noise scale.

Two closed forms for the optimal learning rate as a function of the batch size
``B``, both governed by the gradient noise scale ``B_noise``:

* SGD (McCandlish et al. 2018): ``lr_max / (1 + B_noise / B)``, monotone in
  ``B`` and saturating at ``lr_max``.
* Adam-style "surge" (Li et al. 2024):
  ``lr_max / (0.5 * (sqrt(B_noise / B) + sqrt(B / B_noise)))``, which peaks at
  ``B = B_noise``, grows like ``sqrt(B)`` below it and decays like
  ``1 / sqrt(B)`` above it.

This module holds the formulas (:func:`adam_optimal_lr`,
:func:`sgd_optimal_lr`, :func:`transfer_lr`), least-squares fits of them to
measured best learning rates (:func:`fit_surge`, :func:`fit_sgd_form`), the
steps/examples trade-off fit of McCandlish et al. (:func:`b_noise_from_steps`)
and an in-step estimator of the simple noise scale
``B_simple = tr(Sigma) / |G|^2`` that costs no extra gradient computation
(:func:`noise_scale_value_and_grad`, :func:`noise_scale_init`,
:func:`noise_scale_update`, :func:`b_simple`, :func:`track_noise_scale`).

The formulas and the noise-scale estimator are pure JAX and jit-compatible; the
fits run on the host with NumPy (and SciPy when available).
"""

import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_autolr import _checks

try:  # SciPy is optional: it only refines the fits' grid search.
  from scipy import optimize as _sp_optimize
except ImportError:  # pragma: no cover - exercised only without SciPy.
  _sp_optimize = None


# ----------------------------------------------------------------------------
# Closed forms.
# ----------------------------------------------------------------------------


def _xp(*values):
  """Returns ``jnp`` if any value is a JAX array or tracer, else ``np``."""
  return jnp if any(isinstance(v, jax.Array) for v in values) else np


def _check_positive(name: str, value: Any) -> None:
  """Raises ``ValueError`` if a concrete ``value`` has a non-positive entry."""
  try:
    arr = np.asarray(value)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return  # Traced: cannot be checked at trace time.
  if arr.dtype == object:
    return
  if not np.all(arr > 0):
    raise ValueError(f'{name} must be positive, got {value!r}.')


def adam_optimal_lr(batch_size, *, lr_max, b_noise):
  r"""Optimal Adam-style learning rate at a batch size (the "surge" law).

  .. math::

    \eta^*(B) = \frac{\eta_{\max}}
      {\tfrac12\left(\sqrt{B_{noise}/B} + \sqrt{B/B_{noise}}\right)}
      = \frac{\eta_{\max}}{\cosh\left(\tfrac12 \log(B / B_{noise})\right)}.

  The curve peaks at :math:`\eta_{\max}` for :math:`B = B_{noise}`, grows like
  :math:`2\eta_{\max}\sqrt{B/B_{noise}}` for :math:`B \ll B_{noise}` and
  decays like :math:`2\eta_{\max}\sqrt{B_{noise}/B}` for
  :math:`B \gg B_{noise}`.

  Args:
    batch_size: batch size(s) ``B``; scalar, NumPy or JAX array.
    lr_max: peak learning rate :math:`\eta_{\max}` (broadcastable).
    b_noise: gradient noise scale :math:`B_{noise}` (broadcastable).

  Returns:
    The predicted optimal learning rate, broadcast over the inputs; a JAX
    array if any input is a JAX array, else a NumPy value.

  Raises:
    ValueError: if a concrete input has a non-positive entry.

  Example:
    >>> from optax_autolr import scaling
    >>> float(scaling.adam_optimal_lr(256, lr_max=1e-3, b_noise=256))
    0.001

  References:
    Li et al., `Surge Phenomenon in Optimal Learning Rate and Batch Size
    Scaling <https://arxiv.org/abs/2405.14578>`_, 2024.
  """
  for name, v in (('batch_size', batch_size), ('lr_max', lr_max),
                  ('b_noise', b_noise)):
    _check_positive(name, v)
  xp = _xp(batch_size, lr_max, b_noise)
  ratio = xp.sqrt(xp.asarray(b_noise) / xp.asarray(batch_size))
  return lr_max / (0.5 * (ratio + 1.0 / ratio))


def sgd_optimal_lr(batch_size, *, lr_max, b_noise):
  r"""Optimal SGD learning rate at a batch size (McCandlish et al. 2018).

  .. math::

    \eta^*(B) = \frac{\eta_{\max}}{1 + B_{noise} / B}.

  Monotone increasing in :math:`B`, linear (:math:`\eta_{\max} B /
  B_{noise}`) for :math:`B \ll B_{noise}` and saturating at
  :math:`\eta_{\max}` for :math:`B \gg B_{noise}`.

  Args:
    batch_size: batch size(s) ``B``; scalar, NumPy or JAX array.
    lr_max: the large-batch limit :math:`\eta_{\max}` (broadcastable).
    b_noise: gradient noise scale :math:`B_{noise}` (broadcastable).

  Returns:
    The predicted optimal learning rate, broadcast over the inputs; a JAX
    array if any input is a JAX array, else a NumPy value.

  Raises:
    ValueError: if a concrete input has a non-positive entry.

  Example:
    >>> from optax_autolr import scaling
    >>> float(scaling.sgd_optimal_lr(256, lr_max=1.0, b_noise=256))
    0.5

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  for name, v in (('batch_size', batch_size), ('lr_max', lr_max),
                  ('b_noise', b_noise)):
    _check_positive(name, v)
  xp = _xp(batch_size, lr_max, b_noise)
  return lr_max / (1.0 + xp.asarray(b_noise) / xp.asarray(batch_size))


_FORMS = {'adam': adam_optimal_lr, 'sgd': sgd_optimal_lr}


def transfer_lr(lr, from_batch, to_batch, b_noise, form: str = 'adam'):
  r"""Transfers a tuned learning rate to another batch size.

  Scales ``lr`` by the ratio of the optimal-LR law at the two batch sizes:

  .. math::

    \eta(B_{to}) = \eta(B_{from}) \,
      \frac{f(B_{to}; B_{noise})}{f(B_{from}; B_{noise})},

  with :math:`f` the ``'adam'`` (:func:`adam_optimal_lr`) or ``'sgd'``
  (:func:`sgd_optimal_lr`) law; :math:`\eta_{\max}` cancels.

  Args:
    lr: the learning rate tuned at ``from_batch``.
    from_batch: batch size at which ``lr`` was tuned.
    to_batch: target batch size(s).
    b_noise: gradient noise scale :math:`B_{noise}`.
    form: ``'adam'`` (surge law) or ``'sgd'``.

  Returns:
    The predicted optimal learning rate at ``to_batch``.

  Raises:
    ValueError: for an unknown ``form`` or non-positive concrete inputs.

  Example:
    >>> from optax_autolr import scaling
    >>> # Below B_noise the Adam law scales like sqrt(B).
    >>> round(float(scaling.transfer_lr(1e-3, 16, 64, 1e6)), 6)
    0.002

  References:
    Li et al., `Surge Phenomenon in Optimal Learning Rate and Batch Size
    Scaling <https://arxiv.org/abs/2405.14578>`_, 2024.

    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  if form not in _FORMS:
    raise ValueError(f"form must be 'adam' or 'sgd', got {form!r}.")
  _check_positive('lr', lr)
  law = _FORMS[form]
  return lr * (law(to_batch, lr_max=1.0, b_noise=b_noise)
               / law(from_batch, lr_max=1.0, b_noise=b_noise))


# ----------------------------------------------------------------------------
# Fits.
# ----------------------------------------------------------------------------


class ScalingFit(NamedTuple):
  """Result of :func:`fit_surge` or :func:`fit_sgd_form`.

  Attributes:
    lr_max: fitted peak (``'adam'``) or large-batch (``'sgd'``) learning rate.
    b_noise: fitted gradient noise scale.
    rmse_log: root mean square of the residuals ``log(lr) - log(fit)``.
    r2_log: coefficient of determination of the fit of ``log(lr)``; ``nan``
      when all learning rates are equal.
  """

  lr_max: float
  b_noise: float
  rmse_log: float
  r2_log: float


class StepsFit(NamedTuple):
  """Result of :func:`b_noise_from_steps`.

  Attributes:
    b_noise: critical batch size ``B_noise = E_min / S_min``.
    s_min: minimum number of steps (infinite batch) to reach the target.
    e_min: minimum number of examples (tiny batch) to reach the target.
  """

  b_noise: float
  s_min: float
  e_min: float


# Search range for log(b_noise) beyond the measured batch sizes.
_LOG_SPAN = math.log(1e4)
_GRID = 801


def _as_positive_1d(name: str, values) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f'{name} must be one-dimensional, got shape {arr.shape}.')
  if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
    raise ValueError(f'{name} must be finite and positive, got {arr}.')
  return arr


def _validate_pairs(x_name, x, y_name, y):
  x = _as_positive_1d(x_name, x)
  y = _as_positive_1d(y_name, y)
  if x.shape != y.shape:
    raise ValueError(
        f'{x_name} and {y_name} must have the same length, got {x.size} and '
        f'{y.size}.')
  if x.size < 2:
    raise ValueError(f'need at least 2 points to fit, got {x.size}.')
  return x, y


def _log_cosh(u):
  u = np.abs(u)
  return u + np.log1p(np.exp(-2.0 * u)) - math.log(2.0)


def _fit_log_law(batch_sizes, best_lrs, log_shape) -> ScalingFit:
  """Least squares of ``log lr = log lr_max - log_shape(log B, log b_noise)``.

  For a fixed ``b_noise`` the optimal ``log lr_max`` is the mean residual, so
  the fit is a 1-D search over ``log b_noise``: a log grid, refined with
  :func:`scipy.optimize.minimize_scalar` (or a finer grid without SciPy).
  """
  bs, lrs = _validate_pairs('batch_sizes', batch_sizes, 'best_lrs', best_lrs)
  log_b, log_lr = np.log(bs), np.log(lrs)

  def profile(t):
    r = log_lr + log_shape(log_b, t)
    c = np.mean(r)
    return float(np.sum((r - c) ** 2)), c

  lo, hi = log_b.min() - _LOG_SPAN, log_b.max() + _LOG_SPAN
  grid = np.linspace(lo, hi, _GRID)
  sse = np.array([profile(t)[0] for t in grid])
  i = int(np.argmin(sse))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
  if _sp_optimize is not None:
    res = _sp_optimize.minimize_scalar(
        lambda t: profile(t)[0], bounds=(a, b), method='bounded',
        options={'xatol': 1e-10})
    t_best = float(res.x) if res.fun <= sse[i] else float(grid[i])
  else:  # pragma: no cover - exercised only without SciPy.
    t_best = float(grid[i])
    for _ in range(3):
      fine = np.linspace(a, b, 201)
      vals = np.array([profile(t)[0] for t in fine])
      j = int(np.argmin(vals))
      t_best = float(fine[j])
      step = fine[1] - fine[0]
      a, b = t_best - step, t_best + step
  if t_best - lo < 1e-6 * _LOG_SPAN or hi - t_best < 1e-6 * _LOG_SPAN:
    warnings.warn(
        'fitted b_noise is at the edge of the search range '
        f'[{math.exp(lo):.3g}, {math.exp(hi):.3g}]: the batch sizes do not '
        'constrain it.', RuntimeWarning, stacklevel=3)
  sse_best, c = profile(t_best)
  n = log_lr.size
  ss_tot = float(np.sum((log_lr - log_lr.mean()) ** 2))
  r2 = 1.0 - sse_best / ss_tot if ss_tot > 0 else float('nan')
  return ScalingFit(
      lr_max=float(np.exp(c)), b_noise=float(np.exp(t_best)),
      rmse_log=float(np.sqrt(sse_best / n)), r2_log=float(r2))


def fit_surge(batch_sizes, best_lrs) -> ScalingFit:
  r"""Fits the Adam-style surge law to measured best learning rates.

  Minimises the squared error in log space,

  .. math::

    \min_{\eta_{\max}, B_{noise}} \sum_i \left(\log \eta_i - \log \eta_{\max}
      + \log\cosh\left(\tfrac12 \log(B_i / B_{noise})\right)\right)^2,

  where, for a fixed :math:`B_{noise}`, :math:`\log\eta_{\max}` is the mean
  of :math:`\log \eta_i + \log\cosh(\cdot)` (the geometric-mean version of the
  estimate :math:`\eta_{\max} = \mathrm{mean}_i\,\tfrac{\eta_i}{2}(\sqrt{
  B_{noise}/B_i} + \sqrt{B_i/B_{noise}})` of Li et al.), leaving a 1-D search
  over :math:`\log B_{noise}` in ``[min(B) / 1e4, max(B) * 1e4]`` (grid, then
  SciPy's bounded scalar minimiser when installed). A ``RuntimeWarning`` is
  emitted when the optimum is at an end of that range.

  Args:
    batch_sizes: 1-D sequence of positive batch sizes (at least 2).
    best_lrs: the best learning rate measured at each batch size.

  Returns:
    A :class:`ScalingFit` ``(lr_max, b_noise, rmse_log, r2_log)``.

  Raises:
    ValueError: for fewer than 2 points, mismatched lengths or non-positive
      entries.

  Example:
    >>> import numpy as np
    >>> from optax_autolr import scaling
    >>> bs = 2.0 ** np.arange(4, 14)
    >>> lrs = scaling.adam_optimal_lr(bs, lr_max=3e-3, b_noise=500.0)
    >>> fit = scaling.fit_surge(bs, lrs)
    >>> round(fit.b_noise), round(fit.lr_max, 6)
    (500, 0.003)

  References:
    Li et al., `Surge Phenomenon in Optimal Learning Rate and Batch Size
    Scaling <https://arxiv.org/abs/2405.14578>`_, 2024.
  """
  return _fit_log_law(batch_sizes, best_lrs,
                      lambda log_b, t: _log_cosh(0.5 * (log_b - t)))


def fit_sgd_form(batch_sizes, best_lrs, alpha: float = 1.0) -> ScalingFit:
  r"""Fits the generalised SGD law to measured best learning rates.

  The law is :math:`\eta^*(B) = \eta_{\max} / (1 + B_{noise}/B)^{\alpha}`
  (``alpha=1`` is McCandlish et al.'s SGD law, ``alpha=0.5`` its square-root
  variant often used for Adam). The fit minimises the squared error of
  :math:`\log\eta` exactly as :func:`fit_surge` does, with the closed-form
  :math:`\log\eta_{\max}` for each candidate :math:`B_{noise}`.

  Args:
    batch_sizes: 1-D sequence of positive batch sizes (at least 2).
    best_lrs: the best learning rate measured at each batch size.
    alpha: positive exponent of the law (fixed, not fitted).

  Returns:
    A :class:`ScalingFit` ``(lr_max, b_noise, rmse_log, r2_log)``.

  Raises:
    ValueError: for fewer than 2 points, mismatched lengths, non-positive
      entries or ``alpha <= 0``.

  Example:
    >>> import numpy as np
    >>> from optax_autolr import scaling
    >>> bs = 2.0 ** np.arange(4, 14)
    >>> lrs = scaling.sgd_optimal_lr(bs, lr_max=0.5, b_noise=300.0)
    >>> fit = scaling.fit_sgd_form(bs, lrs)
    >>> round(fit.b_noise), round(fit.lr_max, 6)
    (300, 0.5)

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  alpha = float(alpha)
  if not alpha > 0 or not math.isfinite(alpha):
    raise ValueError(f'alpha must be positive and finite, got {alpha}.')
  return _fit_log_law(batch_sizes, best_lrs,
                      lambda log_b, t: alpha * np.logaddexp(0.0, t - log_b))


def b_noise_from_steps(steps, examples) -> StepsFit:
  r"""Estimates :math:`B_{noise}` from the steps/examples trade-off.

  Runs at different batch sizes that reach the same target loss in
  :math:`S` steps using :math:`E` examples follow (McCandlish et al. 2018)

  .. math::

    \left(\frac{S}{S_{\min}} - 1\right)\left(\frac{E}{E_{\min}} - 1\right) = 1,
    \qquad \text{i.e.} \qquad
    \frac{1}{S} = -B_{noise}\,\frac{1}{E} + \frac{1}{S_{\min}},

  with :math:`B_{noise} = E_{\min}/S_{\min}`. This fits the line by ordinary
  least squares of :math:`1/S` on :math:`1/E`.

  Args:
    steps: 1-D sequence of steps to the target, one per run.
    examples: matching 1-D sequence of examples to the target.

  Returns:
    A :class:`StepsFit` ``(b_noise, s_min, e_min)``. If the data do not show
    the trade-off (non-negative slope or non-positive intercept) a
    ``RuntimeWarning`` is emitted and the raw values are returned (then
    ``b_noise <= 0`` or ``s_min`` is negative/infinite).

  Raises:
    ValueError: for fewer than 2 points, mismatched lengths, non-positive
      entries or all ``examples`` equal.

  Example:
    >>> import numpy as np
    >>> from optax_autolr import scaling
    >>> b = 2.0 ** np.arange(4, 12)
    >>> s = 1000.0 * (1 + 256.0 / b)
    >>> fit = scaling.b_noise_from_steps(s, s * b)
    >>> round(fit.b_noise), round(fit.s_min), round(fit.e_min)
    (256, 1000, 256000)

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  s, e = _validate_pairs('steps', steps, 'examples', examples)
  x, y = 1.0 / e, 1.0 / s
  xc = x - x.mean()
  sxx = float(np.sum(xc * xc))
  if not sxx > 0:
    raise ValueError('examples must not all be equal.')
  slope = float(np.sum(xc * (y - y.mean())) / sxx)
  intercept = float(y.mean() - slope * x.mean())
  b_noise = -slope
  if b_noise <= 0 or intercept <= 0:
    warnings.warn(
        f'steps/examples do not show the expected trade-off (slope={slope:.3g},'
        f' intercept={intercept:.3g}); B_noise is not identifiable.',
        RuntimeWarning, stacklevel=2)
  s_min = 1.0 / intercept if intercept != 0 else math.inf
  return StepsFit(b_noise=b_noise, s_min=s_min, e_min=s_min * b_noise)


# ----------------------------------------------------------------------------
# In-step gradient noise scale.
# ----------------------------------------------------------------------------


class NoiseStats(NamedTuple):
  """Unbiased one-step estimates from :func:`noise_scale_value_and_grad`.

  Attributes:
    g2: estimate of the squared norm of the true gradient, ``|G|^2``.
    trace_sigma: estimate of the trace of the per-example gradient
      covariance, ``tr(Sigma)``.

  Both are float32 (or wider) scalars and may be negative for a single step;
  average them (:func:`noise_scale_update`) before dividing.
  """

  g2: jax.Array
  trace_sigma: jax.Array


class NoiseScaleState(NamedTuple):
  """Bias-corrected exponential moving averages of :class:`NoiseStats`.

  Attributes:
    g2_ema: bias-corrected EMA of ``g2`` (0 before the first update).
    trace_ema: bias-corrected EMA of ``trace_sigma`` (0 before the first
      update).
    count: int32 number of updates so far.
  """

  g2_ema: jax.Array
  trace_ema: jax.Array
  count: jax.Array


def _sq_norm_f32(tree, batch_dims: int = 0) -> jax.Array:
  """Squared L2 norm of a pytree, reducing all but ``batch_dims`` axes."""
  total = None
  for leaf in jax.tree.leaves(tree):
    leaf = jnp.asarray(leaf)
    leaf = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    val = jnp.sum(jnp.square(leaf), axis=tuple(range(batch_dims, leaf.ndim)))
    total = val if total is None else total + val
  if total is None:
    return jnp.zeros((), jnp.float32)
  return total


def _leading_shards(x) -> int:
  """Number of shards of the leading axis under explicit sharding, else 1."""
  try:
    sharding = jax.typeof(x).sharding
    spec, mesh = sharding.spec, sharding.mesh
  except Exception:  # pylint: disable=broad-except
    return 1
  if not spec or spec[0] is None:
    return 1
  names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return int(math.prod(mesh.shape[n] for n in names))


def _split_microbatches(x, k: int) -> jax.Array:
  """Reshapes the leading axis ``B`` of ``x`` into ``(k, B // k)``.

  Micro-batch ``j`` holds the contiguous rows ``[j*b, (j+1)*b)``, unless the
  leading axis is explicitly sharded over ``n`` devices with ``n`` not
  dividing ``k``; then micro-batch ``j`` holds rows ``j, j+k, j+2k, ...`` so
  that every device keeps its own rows (no communication).
  """
  b = x.shape[0] // k
  rest = x.shape[1:]
  n = _leading_shards(x)
  if n == 1 or k % n == 0:
    return x.reshape((k, b) + rest)
  if b % n == 0:
    return jnp.swapaxes(x.reshape((b, k) + rest), 0, 1)
  raise ValueError(
      f'cannot split a batch of {x.shape[0]} sharded over {n} devices into '
      f'{k} micro-batches: need {n} to divide {k} or {b}.')


def noise_scale_value_and_grad(
    loss_fn: Callable[..., Any],
    num_microbatches: int,
    *,
    has_aux: bool = False,
) -> Callable[..., Any]:
  r"""Value and gradient with an in-step estimate of the gradient noise scale.

  The returned function splits the leading axis (size :math:`B`) of every leaf
  of ``batch`` into :math:`k` micro-batches of size :math:`b = B/k`, computes
  each micro-batch's loss and gradient with :func:`jax.vmap` of
  :func:`jax.value_and_grad`, and returns their means: for a ``loss_fn`` that
  averages over examples this is the full-batch loss and gradient
  :math:`G_B`, so the estimate costs no extra gradient computation (only the
  memory of :math:`k` gradients). From the micro-batch gradients
  :math:`G_{b,j}` it forms unbiased estimates (McCandlish et al. 2018, App. A)

  .. math::

    |G_b|^2 = \frac1k \sum_j |G_{b,j}|^2, \qquad
    \widehat{|G|^2} = \frac{B|G_B|^2 - b|G_b|^2}{B - b}, \qquad
    \widehat{\mathrm{tr}\,\Sigma} = \frac{|G_b|^2 - |G_B|^2}{1/b - 1/B},

  using :math:`\mathbb{E}|G_n|^2 = |G|^2 + \mathrm{tr}(\Sigma)/n` for a batch
  of :math:`n` i.i.d. examples. Average them over steps with
  :func:`noise_scale_update` and read the simple noise scale
  :math:`B_{simple} = \mathrm{tr}\,\Sigma / |G|^2` with :func:`b_simple`.

  Works under :func:`jax.jit` and with batches sharded along the leading
  axis. Under explicit sharding over :math:`n` devices where :math:`n` does
  not divide :math:`k`, micro-batches interleave rows (row :math:`i` goes to
  micro-batch :math:`i \bmod k`) so that no data moves between devices; the
  estimator only assumes exchangeable examples, so this does not matter.

  Args:
    loss_fn: ``loss_fn(params, batch, *args)`` returning the scalar mean loss
      over the examples of ``batch`` (or ``(loss, aux)`` with ``has_aux``).
    num_microbatches: number :math:`k \ge 2` of micro-batches; must divide the
      batch size.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is returned
      stacked over micro-batches (leading axis :math:`k`).

  Returns:
    A function ``(params, batch, *args) -> ((loss, grads), stats)`` (or
    ``(((loss, aux), grads), stats)``) with ``stats`` a :class:`NoiseStats`.
    ``args`` are passed unchanged to every micro-batch.

  Raises:
    ValueError: if ``num_microbatches < 2`` or (at trace time) it does not
      divide the leading axis of every batch leaf.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optax_autolr import scaling
    >>> def loss_fn(w, batch):
    ...   x, y = batch
    ...   return 0.5 * jnp.mean((x @ w - y) ** 2)
    >>> vg = jax.jit(scaling.noise_scale_value_and_grad(loss_fn, 4))
    >>> x = jax.random.normal(jax.random.key(0), (64, 3))
    >>> (loss, grads), stats = vg(jnp.ones(3), (x, jnp.zeros(64)))
    >>> state = scaling.noise_scale_update(scaling.noise_scale_init(), stats)
    >>> bool(jnp.isfinite(scaling.b_simple(state)))
    True

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018 (Appendix A).
  """
  if (not isinstance(num_microbatches, int) or isinstance(num_microbatches, bool)
      or num_microbatches < 2):
    raise ValueError(
        f'num_microbatches must be an integer >= 2, got {num_microbatches!r}.')
  k = num_microbatches
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def fn(params, batch, *args):
    leaves = jax.tree.leaves(batch)
    if not leaves:
      raise ValueError('batch must contain at least one array.')
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
      raise ValueError(
          'all batch leaves must share the same leading (batch) axis, got '
          f'leading sizes {sorted(map(str, sizes))}.')
    (big,) = sizes
    if big % k:
      raise ValueError(
          f'num_microbatches={k} must divide the batch size {big}.')
    small = big // k
    micro = jax.tree.map(lambda x: _split_microbatches(jnp.asarray(x), k),
                         batch)
    value, grads = jax.vmap(
        lambda mb: value_and_grad(params, mb, *args))(micro)
    if has_aux:
      loss, aux = value
      value_out = (jnp.mean(loss, axis=0), aux)
    else:
      value_out = jnp.mean(value, axis=0)
    mean_grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    g2_small = jnp.mean(_sq_norm_f32(grads, batch_dims=1))
    g2_big = _sq_norm_f32(jax.tree.map(
        lambda g: jnp.mean(g.astype(jnp.promote_types(g.dtype, jnp.float32)),
                           axis=0), grads))
    g2 = (big * g2_big - small * g2_small) / (big - small)
    trace = (g2_small - g2_big) / (1.0 / small - 1.0 / big)
    return (value_out, mean_grads), NoiseStats(g2=g2, trace_sigma=trace)

  return fn


def noise_scale_init(dtype: Any = jnp.float32) -> NoiseScaleState:
  """Returns an empty :class:`NoiseScaleState`.

  Args:
    dtype: floating dtype of the moving averages.

  Returns:
    A state with zero averages and ``count = 0``.
  """
  return NoiseScaleState(
      g2_ema=jnp.zeros((), dtype), trace_ema=jnp.zeros((), dtype),
      count=jnp.zeros((), jnp.int32))


def noise_scale_update(
    state: NoiseScaleState, stats: NoiseStats, decay: float = 0.99
) -> NoiseScaleState:
  r"""Folds one step's :class:`NoiseStats` into the moving averages.

  Each quantity is averaged separately with a bias-corrected EMA: after
  :math:`t` updates

  .. math::

    m_t = \frac{(1-\beta)\sum_{s=1}^{t} \beta^{t-s} x_s}{1 - \beta^t},
    \qquad m_t = m_{t-1} + \frac{1-\beta}{1-\beta^t}(x_t - m_{t-1}),

  so the first update stores :math:`x_1` exactly. The state keeps its dtype.

  Args:
    state: the current :class:`NoiseScaleState`.
    stats: this step's :class:`NoiseStats`.
    decay: EMA decay :math:`\beta \in [0, 1)`.

  Returns:
    The updated :class:`NoiseScaleState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_autolr import scaling
    >>> s = scaling.noise_scale_init()
    >>> s = scaling.noise_scale_update(s, scaling.NoiseStats(2.0, 6.0))
    >>> float(scaling.b_simple(s))
    3.0

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018 (Appendix A).
  """
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ValueError(f'decay must be in [0, 1), got {decay}.')
  dtype = jnp.result_type(state.g2_ema)
  count = state.count + 1
  decay = jnp.asarray(decay, dtype)
  weight = (1.0 - decay) / (1.0 - decay ** count.astype(dtype))

  def ema(old, new):
    return (old + weight * (jnp.asarray(new, dtype) - old)).astype(dtype)

  return NoiseScaleState(
      g2_ema=ema(state.g2_ema, stats.g2),
      trace_ema=ema(state.trace_ema, stats.trace_sigma),
      count=count)


def b_simple(state) -> jax.Array:
  r"""The simple noise scale :math:`B_{simple} = \mathrm{tr}\,\Sigma / |G|^2`.

  Args:
    state: a :class:`NoiseScaleState` (ratio of the averages, the intended
      use) or a single step's :class:`NoiseStats` (very noisy).

  Returns:
    ``trace / g2`` where ``g2 > 0``; ``+inf`` where ``g2 <= 0`` (gradient
    signal not resolved, e.g. before the first update). It may be negative
    when the ``trace`` estimate is.

  Example:
    >>> from optax_autolr import scaling
    >>> float(scaling.b_simple(scaling.NoiseStats(2.0, 6.0)))
    3.0

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  if isinstance(state, NoiseStats):
    g2, trace = state.g2, state.trace_sigma
  else:
    g2, trace = state.g2_ema, state.trace_ema
  g2 = jnp.asarray(g2)
  trace = jnp.asarray(trace)
  safe = jnp.where(g2 > 0, g2, jnp.ones_like(g2))
  return jnp.where(g2 > 0, trace / safe, jnp.full_like(trace / safe, jnp.inf))


def track_noise_scale(
    decay: float = 0.99,
) -> optax.GradientTransformationExtraArgs:
  r"""An identity transformation that keeps a :class:`NoiseScaleState`.

  Pass this step's :class:`NoiseStats` as the extra argument ``noise_stats``
  of ``update``; the updates are returned unchanged and the state is updated
  with :func:`noise_scale_update`. Without ``noise_stats`` the state is left
  as is. Read it back with :func:`optax.tree_utils.tree_get` and
  :func:`b_simple`.

  Args:
    decay: EMA decay of :func:`noise_scale_update`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_autolr import scaling
    >>> opt = optax.chain(scaling.track_noise_scale(), optax.sgd(0.1))
    >>> params = jnp.zeros(3)
    >>> state = opt.init(params)
    >>> stats = scaling.NoiseStats(jnp.float32(2.0), jnp.float32(6.0))
    >>> _, state = opt.update(jnp.ones(3), state, params, noise_stats=stats)
    >>> ns = optax.tree_utils.tree_get(state, 'NoiseScaleState')
    >>> float(scaling.b_simple(ns))
    3.0

  References:
    McCandlish et al., `An Empirical Model of Large-Batch Training
    <https://arxiv.org/abs/1812.06162>`_, 2018.
  """
  _checks.check_float('decay', decay, 0.0, 1.0, high_open=True, static=False)

  def init_fn(params):
    del params
    return noise_scale_init()

  def update_fn(updates, state, params=None, *, noise_stats=None,
                **extra_args):
    del params, extra_args
    if noise_stats is not None:
      state = noise_scale_update(state, noise_stats, decay)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
