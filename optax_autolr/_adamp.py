"""AdamP: Adam with projection of the radial component for scale-invariant weights.

Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights" (ICLR 2021, arXiv 2006.08217).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optax_autolr import _checks

__all__ = [
    "ScaleByAdamPState",
    "scale_by_adamp",
    "adamp",
    "scale_invariance_report",
]

# Kinds returned by `scale_invariance_report`.
NOT_SCALE_INVARIANT = 0
CHANNEL_WISE = 1
LAYER_WISE = 2

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


class ScaleByAdamPState(NamedTuple):
  """State for :func:`scale_by_adamp`."""

  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32.
  mu: optax.Updates
  nu: optax.Updates


def _concrete_float(x) -> Optional[float]:
  """Returns ``float(x)`` when ``x`` is a concrete scalar, else ``None``."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return float(x)
  except Exception:  # pylint: disable=broad-except
    return None


def _check_hyperparams(b1, b2, eps, delta, wd_ratio, weight_decay, nesterov):
  """Validates AdamP's hyperparameters at construction (traced ones pass)."""
  check = functools.partial(_checks.check_float, static=False)
  check("b1", b1, 0.0, 1.0, high_open=True)
  check("b2", b2, 0.0, 1.0, high_open=True)
  check("eps", eps, 0.0, math.inf, low_open=True)
  check("delta", delta, 0.0, math.inf, low_open=True)
  check("wd_ratio", wd_ratio, 0.0, 1.0)
  check("weight_decay", weight_decay, 0.0, math.inf)
  _checks.check_bool("nesterov", nesterov)


def _compute_dtype(dtype) -> jnp.dtype:
  """Floating dtype for the internal math: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _views(x: jax.Array):
  """Channel view (-1, out) and layer view (-1, 1) of a ndim > 1 tensor.

  Flax kernels keep the output axis last (Dense ``(in, out)``, Conv ``HWIO``),
  so each column of the channel view is one output channel.
  """
  return x.reshape(-1, x.shape[-1]), x.reshape(-1, 1)


def _max_abs_cos(g: jax.Array, w: jax.Array, eps) -> jax.Array:
  """max over columns of |cos(g_col, w_col)|, norms clamped at ``eps``."""
  dot = jnp.sum(g * w, axis=0)
  gn = jnp.maximum(jnp.linalg.norm(g, axis=0), eps)
  wn = jnp.maximum(jnp.linalg.norm(w, axis=0), eps)
  return jnp.max(jnp.abs(dot) / (gn * wn))


def _detect(g: jax.Array, w: jax.Array, delta, eps) -> tuple[jax.Array, jax.Array]:
  """Returns (channel_fires, layer_fires) booleans for a ndim > 1 tensor."""
  gc, gl = _views(g)
  wc, wl = _views(w)
  channel = _max_abs_cos(gc, wc, eps) < delta / math.sqrt(wc.shape[0])
  layer = _max_abs_cos(gl, wl, eps) < delta / math.sqrt(wl.shape[0])
  return channel, layer


def _remove_radial(p: jax.Array, w: jax.Array, eps) -> jax.Array:
  """p - <w_hat, p> w_hat per column, w_hat = w / (||w|| + eps)."""
  w_hat = w / (jnp.linalg.norm(w, axis=0, keepdims=True) + eps)
  return p - w_hat * jnp.sum(w_hat * p, axis=0, keepdims=True)


def _project(p, g, w, delta, wd_ratio, eps):
  """AdamP projection of one tensor; returns (p, weight-decay multiplier)."""
  if w.ndim <= 1:
    return p, jnp.ones([], p.dtype)
  channel, layer = _detect(g, w, delta, eps)
  pc, pl = _views(p)
  wc, wl = _views(w)
  p_channel = _remove_radial(pc, wc, eps).reshape(p.shape)
  p_layer = _remove_radial(pl, wl, eps).reshape(p.shape)
  p = jnp.where(channel, p_channel, jnp.where(layer, p_layer, p))
  ratio = jnp.where(channel | layer, wd_ratio, 1.0).astype(p.dtype)
  return p, ratio


def _resolve_mask(mask: MaskOrFn, params) -> list:
  """Flattened weight-decay mask leaves (True: decay), aligned with params."""
  treedef = jax.tree.structure(params)
  if mask is None:
    return [True] * treedef.num_leaves
  tree = mask(params) if callable(mask) else mask
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "`mask` must have the same tree structure as `params` (bool leaves),"
        f" got mask={jax.tree.structure(tree)} and params={treedef}."
    ) from e


def scale_by_adamp(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    delta: jax.typing.ArrayLike = 0.1,
    wd_ratio: jax.typing.ArrayLike = 0.1,
    weight_decay: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""Rescale updates according to the AdamP algorithm.

  Adam moments with bias correction give the direction

  .. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
    p_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}
    \quad\text{or, with Nesterov,}\quad
    p_t = \frac{(\beta_1 m_t + (1-\beta_1) g_t) / (1-\beta_1^t)}
               {\sqrt{v_t / (1-\beta_2^t)} + \epsilon}.

  For a tensor :math:`w` with more than one dimension, the check runs first on
  the channel view (one vector per output channel; Flax kernels keep the
  output axis last, so the tensor is reshaped to ``(-1, out)``), then on the
  layer view (the whole flattened tensor). In a view with vectors of
  dimension :math:`d`, the weight is deemed scale-invariant if

  .. math::
    \max_{\text{vectors}} \frac{|\langle g, w \rangle|}
      {\max(\|g\|, \epsilon) \max(\|w\|, \epsilon)} < \frac{\delta}{\sqrt{d}},

  and then the radial component is removed from :math:`p` per vector,

  .. math::
    \hat w = \frac{w}{\|w\| + \epsilon}, \quad
    p_t \leftarrow p_t - \langle \hat w, p_t \rangle \hat w,

  and the decoupled weight decay is multiplied by ``wd_ratio``. The first
  view that fires wins. Tensors with ``ndim <= 1`` (biases, scalars) are never
  projected. The emitted update is

  .. math::
    u_t = p_t + \lambda \, r \, w_{t}, \qquad r \in \{1, \text{wd\_ratio}\},

  so that a later learning-rate scaling (e.g. :func:`optax.scale_by_learning_rate`)
  gives :math:`w_{t+1} = w_t - \eta (p_t + \lambda r w_t)`. This is exactly the
  official PyTorch step, which first multiplies the weight by
  :math:`1 - \eta \lambda r` and then adds :math:`-\eta p_t`, where both terms
  use the weight before the step (the projection uses it too).

  The cosine similarity clamps each norm at ``eps`` as in current
  ``torch.nn.functional.cosine_similarity``; the official code passes the same
  ``eps`` as Adam's. Internal math runs in at least float32; updates have the
  dtype of the params, moments the dtype of ``optax.scale_by_adam``'s.

  Args:
    b1: Decay rate of the first moment, in ``[0, 1)``.
    b2: Decay rate of the second moment, in ``[0, 1)``.
    eps: Term added to the denominator (and used in the projection), ``> 0``.
    delta: Threshold of the cosine-similarity test, ``> 0``.
    wd_ratio: Weight-decay multiplier for scale-invariant tensors, in
      ``[0, 1]``.
    weight_decay: Decoupled weight-decay rate, ``>= 0``.
    nesterov: Whether to use Nesterov momentum as in the official code.
    mask: A tree of booleans with the structure of the params (or a callable
      returning one from the params); ``True`` leaves get weight decay. None
      decays every parameter. Projection is not affected by the mask.
    mu_dtype: Optional dtype of the first moment; None infers it from params.

  Returns:
    A :class:`optax.GradientTransformation`. Its ``update`` requires ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_autolr import scale_by_adamp
    >>> tx = optax.chain(scale_by_adamp(weight_decay=1e-2),
    ...                  optax.scale_by_learning_rate(1e-3))
    >>> params = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = {'kernel': jnp.full((3, 2), 0.1), 'bias': jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
    Official code: https://github.com/clovaai/AdamP
  """
  _check_hyperparams(b1, b2, eps, delta, wd_ratio, weight_decay, nesterov)
  if mu_dtype is not None:
    mu_dtype = jnp.dtype(mu_dtype)
  no_decay = _concrete_float(weight_decay) == 0.0

  def init_fn(params):
    if params is None:
      raise ValueError("scale_by_adamp requires `params` in init.")
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    nu = optax.tree.zeros_like(params)
    return ScaleByAdamPState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "scale_by_adamp requires `params` in update (the projection and the"
          " weight decay need the current weights): call"
          " tx.update(grads, state, params)."
      )
    count = optax.safe_increment(state.count)
    treedef = jax.tree.structure(params)
    g_leaves = treedef.flatten_up_to(updates)
    m_leaves = treedef.flatten_up_to(state.mu)
    v_leaves = treedef.flatten_up_to(state.nu)
    w_leaves = jax.tree.leaves(params)
    decay_leaves = _resolve_mask(mask, params)

    new_u, new_m, new_v = [], [], []
    for g, m, v, w, decay in zip(
        g_leaves, m_leaves, v_leaves, w_leaves, decay_leaves
    ):
      cdt = _compute_dtype(w.dtype)
      g32, w32 = g.astype(cdt), w.astype(cdt)
      m32 = b1 * m.astype(cdt) + (1 - b1) * g32
      v32 = b2 * v.astype(cdt) + (1 - b2) * jnp.square(g32)
      t = count.astype(cdt)
      bc1 = 1 - jnp.asarray(b1, cdt) ** t
      bc2 = 1 - jnp.asarray(b2, cdt) ** t
      denom = jnp.sqrt(v32 / bc2) + eps
      num = b1 * m32 + (1 - b1) * g32 if nesterov else m32
      p = num / bc1 / denom
      p, ratio = _project(p, g32, w32, delta, wd_ratio, eps)
      if decay and not no_decay:
        p = p + weight_decay * ratio * w32
      new_u.append(p.astype(w.dtype))
      new_m.append(m32.astype(m.dtype))
      new_v.append(v32.astype(v.dtype))

    unflat = lambda leaves: jax.tree.unflatten(treedef, leaves)
    return unflat(new_u), ScaleByAdamPState(
        count=count, mu=unflat(new_m), nu=unflat(new_v)
    )

  return optax.GradientTransformation(init_fn, update_fn)


def adamp(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    delta: jax.typing.ArrayLike = 0.1,
    wd_ratio: jax.typing.ArrayLike = 0.1,
    weight_decay: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The AdamP optimizer.

  Adam whose update has its radial component removed on scale-invariant
  weights (tensors followed by a normalization layer), which slows down the
  growth of their norm, with decoupled weight decay reduced by ``wd_ratio`` on
  them. See :func:`scale_by_adamp` for the equations; the step is

  .. math::
    w_{t+1} = w_t - \eta_t \left(\Pi(p_t) + \lambda\, r\, w_t\right).

  Args:
    learning_rate: A float ``>= 0`` or an optax schedule (a function of the
      step).
    b1: Decay rate of the first moment, in ``[0, 1)``.
    b2: Decay rate of the second moment, in ``[0, 1)``.
    eps: Term added to the denominator (and used in the projection), ``> 0``.
    delta: Threshold of the cosine-similarity test, ``> 0``.
    wd_ratio: Weight-decay multiplier for scale-invariant tensors, in
      ``[0, 1]``.
    weight_decay: Decoupled weight-decay rate (multiplied by the learning
      rate), ``>= 0``.
    nesterov: Whether to use Nesterov momentum.
    mask: Tree of booleans (or callable params -> tree) selecting the
      parameters that get weight decay.
    mu_dtype: Optional dtype of the first moment.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` requires
    ``params`` and ignores extra keyword arguments such as ``value``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from flax import nnx
    >>> from optax_autolr import adamp
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)),
    ...                        nnx.LayerNorm(8, rngs=nnx.Rngs(0)),
    ...                        nnx.Linear(8, 1, rngs=nnx.Rngs(0)))
    >>> opt = nnx.Optimizer(model, adamp(1e-3, weight_decay=1e-2), wrt=nnx.Param)
    >>> x = jnp.ones((16, 4))
    >>> loss_fn = lambda m: jnp.mean(m(x) ** 2)
    >>> loss, grads = nnx.value_and_grad(loss_fn)(model)
    >>> _ = opt.update(model, grads, value=loss)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  if not callable(learning_rate):
    _checks.check_float("learning_rate", learning_rate, 0.0, math.inf,
                        static=False)
  return optax.chain(
      scale_by_adamp(
          b1=b1,
          b2=b2,
          eps=eps,
          delta=delta,
          wd_ratio=wd_ratio,
          weight_decay=weight_decay,
          nesterov=nesterov,
          mask=mask,
          mu_dtype=mu_dtype,
      ),
      optax.scale_by_learning_rate(learning_rate),
  )


def scale_invariance_report(
    grads: optax.Updates,
    params: optax.Params,
    delta: float = 0.1,
    eps: float = 1e-8,
) -> Any:
  """Reports which tensors AdamP's test detects as scale-invariant.

  Runs the same test as :func:`scale_by_adamp` on the raw gradient ``g`` and
  the weight ``w`` of each tensor: channel view first (one vector per output
  channel, last axis), then layer view.

  Args:
    grads: Gradients, with the structure of ``params``.
    params: Current parameters.
    delta: Threshold of the cosine-similarity test.
    eps: Floor of the norms in the cosine similarity.

  Returns:
    A tree with the structure of ``params`` of int32 scalars: 0 not detected
    (or ``ndim <= 1``), 1 channel-wise, 2 layer-wise. Works under ``jax.jit``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_autolr import scale_invariance_report
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> g = jnp.array([[0.0, 1.0], [1.0, 0.0]])  # orthogonal to each column
    >>> int(scale_invariance_report({'k': g}, {'k': w})['k'])
    1
  """

  def one(g, w):
    if w.ndim <= 1:
      return jnp.zeros([], jnp.int32)
    cdt = _compute_dtype(w.dtype)
    channel, layer = _detect(g.astype(cdt), w.astype(cdt), delta, eps)
    return jnp.where(
        channel, CHANNEL_WISE, jnp.where(layer, LAYER_WISE, NOT_SCALE_INVARIANT)
    ).astype(jnp.int32)

  return jax.tree.map(one, grads, params)
