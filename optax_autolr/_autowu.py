"""AutoWU: automated LR warmup and decay as an Optax transformation."""

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_autolr._adamp import adamp as _adamp
from optax_autolr import gp
from optax_autolr import window as window_lib

WARMUP = 0
DECAY = 1

# Why warmup ended (``AutoWUState.switch_reason``).
NOT_SWITCHED = 0
CONFIDENT_MINIMUM = 1
DIVERGED = 2
NON_FINITE = 3
MAX_WARMUP = 4

SWITCH_REASONS = {
    NOT_SWITCHED: 'not switched',
    CONFIDENT_MINIMUM: 'confident minimum',
    DIVERGED: 'divergence guard',
    NON_FINITE: 'non-finite loss',
    MAX_WARMUP: 'max warmup reached',
}

# The minimum test and the divergence guard need a few losses first.
_MIN_LOSSES_FOR_TEST = 8
# Decay of the loss EMA the divergence guard compares (about 10 steps).
_GUARD_EMA_DECAY = 0.9
# Losses of a larger magnitude count as non-finite: the float32 window sums
# and the GP's standardization would overflow on them.
_MAX_ABS_LOSS = 1e15


# Layout of the packed scalar state (see ``AutoWUState``).
INT_FIELDS = ('phase', 'positives', 'switch_step', 'switch_reason',
               'num_bins', 'bin_size', 'last_count')
FLOAT_FIELDS = ('lr', 'probability', 'argmin', 'restart_lr', 'loss_ema',
                 'ema_min')
_I = {name: i for i, name in enumerate(INT_FIELDS)}
_F = {name: i for i, name in enumerate(FLOAT_FIELDS)}


def _int_field(name):
  index = _I[name]
  return property(lambda self: self.ints[..., index],
                  doc=f'int32 ``{name}`` (packed in ``ints``).')


def _float_field(name):
  index = _F[name]
  return property(lambda self: self.floats[..., index],
                  doc=f'float32 ``{name}`` (packed in ``floats``).')


class AutoWUState(NamedTuple):
  """State of :func:`autowu`: four arrays of fixed shape and dtype.

  The scalars are packed into one int32 and one float32 vector, and the loss
  window into one ``[2, window_size]`` array: every leaf of an optimizer
  state is a buffer passed in and out of every jitted train step, and every
  separate scalar output a separate small kernel (on XLA:CPU, a few
  microseconds each; see ``experiments/results/bench.md``). Read the values
  through the named properties below (they also work on states stacked
  along leading axes, e.g. by ``lax.scan``), or with :func:`get_lr`,
  :func:`get_phase`, :func:`get_probability` and :func:`get_switch`.

  Attributes:
    count: int32, number of updates done so far (the step ``t``).
    ints: int32 ``[7]``: ``phase``, ``positives``, ``switch_step``,
      ``switch_reason``, and the window's ``num_bins``, ``bin_size``,
      ``last_count``.
    floats: float32 ``[6]``: ``lr``, ``probability``, ``argmin``,
      ``restart_lr``, ``loss_ema``, ``ema_min``.
    sums: float32 ``[2, window_size]``, the loss and step sums of the
      window's bins (see :class:`~optax_autolr.window.LossWindow`).

  Properties:
    phase: ``WARMUP`` (0) or ``DECAY`` (1); never goes back to 0.
    lr: the learning rate applied at the last update.
    window: the :class:`~optax_autolr.window.LossWindow` of warmup losses;
      frozen at the switch.
    positives: consecutive positive minimum tests.
    probability: past-minimum probability of the last test.
    argmin: position in ``[0, 1]`` of the last test's minimum.
    switch_step: step of the switch (``-1`` before it).
    restart_lr: the LR the decay starts from (0 before the switch).
    switch_reason: one of the keys of ``SWITCH_REASONS``.
    loss_ema: short EMA of the finite warmup losses (not bias corrected;
      the window holds their number).
    ema_min: smallest bias-corrected ``loss_ema`` so far.
  """

  count: jax.Array
  ints: jax.Array
  floats: jax.Array
  sums: jax.Array

  phase = _int_field('phase')
  positives = _int_field('positives')
  switch_step = _int_field('switch_step')
  switch_reason = _int_field('switch_reason')
  lr = _float_field('lr')
  probability = _float_field('probability')
  argmin = _float_field('argmin')
  restart_lr = _float_field('restart_lr')
  loss_ema = _float_field('loss_ema')
  ema_min = _float_field('ema_min')

  @property
  def window(self) -> window_lib.LossWindow:
    """The loss window, as a :class:`~optax_autolr.window.LossWindow`."""
    return window_lib.LossWindow(
        sums=self.sums, num_bins=self.ints[..., _I['num_bins']],
        bin_size=self.ints[..., _I['bin_size']],
        last_count=self.ints[..., _I['last_count']])


def _check_static(name, value):
  if isinstance(value, jax.Array):
    raise TypeError(
        f'`{name}` must be a Python number, got a jax.Array: the arguments of '
        'autowu are constants fixed when it is built, not hyperparameters '
        'that optax.inject_hyperparams can inject (read the LR with '
        'optax_autolr.get_lr(state) or lr_hyperparams(state)).')


def _check_positive_int(name, value, minimum=1):
  _check_static(name, value)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'`{name}` must be an integer >= {minimum}, got {value!r}.')


def _check_float(name, value, low, high, low_open=False, high_open=False):
  _check_static(name, value)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f'`{name}` must be a number, got {type(value).__name__}.')
  value = float(value)
  bad = (not math.isfinite(value) or value < low or value > high
         or (low_open and value == low) or (high_open and value == high))
  if bad:
    lb = '(' if low_open else '['
    hb = ')' if high_open else ']'
    raise ValueError(f'`{name}` must be in {lb}{low}, {high}{hb}, got {value!r}.')
  return value


def autowu(
    total_steps: int,
    steps_per_epoch: int,
    *,
    min_lr: float = 1e-5,
    max_lr: float = 1.0,
    max_warmup_fraction: float = 0.5,
    warmup: Literal['exp', 'linear'] = 'exp',
    decay: Literal['cosine', 'constant_cosine'] = 'cosine',
    cooldown_fraction: float = 0.2,
    confidence: float = 0.95,
    patience: int = 3,
    test_every: int | None = None,
    divergence_factor: float | None = 2.0,
    window_size: int = 256,
    grid_size: int = 256,
    lengthscale: float = 0.2,
    noise_floor: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
  r"""Automated learning-rate warmup and decay driven by the training loss.

  AutoWU (Kim et al. 2021) warms the learning rate up exponentially from
  ``min_lr`` towards ``max_lr``,

  .. math::

    \eta(t) = \eta_{min} (\eta_{max} / \eta_{min})^{t / T_w},
    \quad T_w = \lfloor f_w T \rfloor,

  and smooths the curve of warmup losses against the warmup position with a
  Gaussian process. Every ``test_every`` steps it computes the probability
  that the minimum of the smoothed curve lies in the past,

  .. math::

    p = \max_{i < k} \Phi\left(\frac{m_k - m_i}
        {\sqrt{C_{ii} + C_{kk} - 2 C_{ik}}}\right),

  and after ``patience`` consecutive tests with :math:`p >` ``confidence`` it
  restarts from the LR the warmup had at the minimum of the posterior mean,
  then decays it to zero at ``total_steps`` (cosine, or constant then cosine
  over the last ``cooldown_fraction``). Past ``total_steps`` the LR is 0. If
  no switch happens by :math:`T_w`, decay starts from the LR reached.

  Short budgets: testing once an epoch, as the authors do, lets the LR grow by
  x30 or more between the true minimum and the switch when the budget is ~20
  epochs. The default ``test_every`` is therefore a fixed fraction (1/40) of
  the maximal warmup, so the LR grows by at most
  :math:`(\eta_{max}/\eta_{min})^{1/40}` between tests, and the divergence
  guard ends warmup as soon as the loss leaves the basin: a non-finite loss,
  or a short (10-step) EMA of the loss :math:`\bar y` with
  :math:`\bar y - \bar y_{min} > (\mathrm{factor} - 1) |\bar y_{min}|`,
  where :math:`\bar y_{min}` is the smallest EMA so far (for positive losses:
  :math:`\bar y > \mathrm{factor} \cdot \bar y_{min}`), restarts at once
  from the LR at the GP minimum. The EMA (rather than single losses against
  the smallest single loss) keeps minibatch noise from firing the guard. The authors' rule is exactly
  ``autowu(..., test_every=steps_per_epoch, divergence_factor=None)``.

  Non-finite losses: a loss that is NaN, +-Inf or of magnitude above 1e15
  never enters the loss window, the guard's EMA or the GP (their float32
  statistics would overflow), so the state stays finite. With the guard on,
  the first such loss in warmup ends warmup at that step (``switch_reason ==
  NON_FINITE``): the minimum test runs on the window of finite losses (x = 1
  is the newest of them) and the decay starts from the warmup LR at the GP
  minimum, at most the LR of two steps before (the loss seen at step t
  follows the update made with the LR of step t - 1). With
  ``divergence_factor=None`` (the authors' rule) such losses are skipped and
  warmup goes on. After the switch the decay is a fixed schedule: bad losses
  change nothing.

  Negative losses and offsets: the minimum test standardizes the losses, so
  it takes the same decisions for a loss shifted by any constant or scaled by
  any positive factor. The guard measures the rise of the smoothed loss
  against :math:`|\bar y_{min}|`, which assumes a loss whose zero means
  something (cross-entropy, MSE: with factor 2, "the loss doubled"; for a
  negative minimum m, the loss climbed above :math:`m + (\mathrm{factor} -
  1)|m|`, i.e. above 0 for factor 2). A large constant offset makes the guard
  fire later or never (around -1e6, a rise of 1e3 is small against
  :math:`|\bar y_{min}|`); pass losses without such an offset.

  The transformation multiplies the incoming updates by the (positive) LR, so
  it goes last in a chain after an optimizer built with ``learning_rate=1.0``
  and needs the training loss at every update: ``update(updates, state,
  params, value=loss)``. In data-parallel training pass the global mean loss,
  so that every replica (and every host) takes the same decisions; the state
  holds only scalars and the small loss window, and stays replicated.

  Gradient accumulation: ``optax.MultiSteps(tx, every_k_schedule=k)`` runs
  the inner update on every micro-step but keeps its new state only on the
  last micro-step of each period, so AutoWU advances once per period and sees
  the ``value`` of the last micro-batch only (not the mean; a NaN on an
  earlier micro-batch goes unseen). Pass the running mean of the period's
  losses so far as ``value`` (at the last micro-step it is the mean loss of
  the period), and count ``total_steps`` and ``steps_per_epoch`` in
  optimizer steps (micro-steps / k).

  ``optax.inject_hyperparams``: the arguments of ``autowu`` are Python
  constants fixed when it is built (``optax.inject_hyperparams(autowu)``
  raises a ``TypeError``); the LR is part of the state: read it with
  :func:`get_lr`, or :func:`lr_hyperparams` for a ``{'learning_rate': lr}``
  dict like ``InjectHyperparamsState.hyperparams``. Injecting the inner
  optimizer's hyperparameters, ``optax.chain(optax.inject_hyperparams(
  optax.lamb)(learning_rate=1.0), autowu(...))``, works.

  Checkpoints: the state is a pytree of fixed-shape arrays; save the whole
  optimizer state (e.g. with Orbax) and restore it into ``tx.init(params)``
  of a freshly built ``tx``: training resumes exactly as if uninterrupted.

  Everything runs inside ``jax.jit``: the loss window has a fixed capacity
  (adjacent bins merge when it is full, so it always covers the whole warmup)
  and the GP fit is a closed-form computation guarded by ``lax.cond``, so it
  costs nothing on steps without a test.

  Args:
    total_steps: T, the total number of updates (steps_per_epoch x epochs).
    steps_per_epoch: number of updates per epoch (the authors' test period).
    min_lr: initial warmup LR, > 0.
    max_lr: largest warmup LR, > ``min_lr``.
    max_warmup_fraction: :math:`f_w`, the longest warmup as a fraction of T,
      in (0, 1).
    warmup: ``'exp'`` (exponential, the paper's) or ``'linear'``.
    decay: ``'cosine'`` or ``'constant_cosine'``.
    cooldown_fraction: fraction of T of the final cosine for
      ``'constant_cosine'``, in (0, 1].
    confidence: a test is positive if the past-minimum probability exceeds
      this, in (0.5, 1).
    patience: number of consecutive positive tests that end warmup, >= 1.
    test_every: steps between minimum tests; ``None`` gives
      ``max(1, min(steps_per_epoch, T_w // 40))``.
    divergence_factor: see above, > 1; ``None`` disables the guard.
    window_size: capacity of the loss window (even, >= 8).
    grid_size: number of posterior grid points (>= 8).
    lengthscale: RBF lengthscale as a fraction of the elapsed warmup,
      >= 0.01 (the GP's cost grows like 1 / lengthscale).
    noise_floor: smallest per-bin noise-to-signal variance ratio, > 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AutoWUState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_autolr
    >>> tx = optax.chain(optax.lamb(1.0),
    ...                  optax_autolr.autowu(total_steps=1000,
    ...                                      steps_per_epoch=50))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss_fn = lambda p: jnp.sum(p['w'] ** 2)
    >>> loss, grads = jax.value_and_grad(loss_fn)(params)
    >>> updates, state = tx.update(grads, state, params, value=loss)
    >>> params = optax.apply_updates(params, updates)
    >>> float(optax_autolr.get_lr(state))
    1e-05

  References:
    Kim et al., `Automated Learning Rate Scheduler for Large-batch Training
    <https://arxiv.org/abs/2107.05855>`_, 2021.
  """
  _check_positive_int('total_steps', total_steps, 2)
  _check_positive_int('steps_per_epoch', steps_per_epoch)
  min_lr = _check_float('min_lr', min_lr, 0.0, math.inf, low_open=True)
  max_lr = _check_float('max_lr', max_lr, 0.0, math.inf, low_open=True)
  if max_lr <= min_lr:
    raise ValueError(
        f'`max_lr` must be > `min_lr`, got max_lr={max_lr}, min_lr={min_lr}.')
  max_warmup_fraction = _check_float(
      'max_warmup_fraction', max_warmup_fraction, 0.0, 1.0, True, True)
  if warmup not in ('exp', 'linear'):
    raise ValueError(f"`warmup` must be 'exp' or 'linear', got {warmup!r}.")
  if decay not in ('cosine', 'constant_cosine'):
    raise ValueError(
        f"`decay` must be 'cosine' or 'constant_cosine', got {decay!r}.")
  cooldown_fraction = _check_float(
      'cooldown_fraction', cooldown_fraction, 0.0, 1.0, low_open=True)
  confidence = _check_float('confidence', confidence, 0.5, 1.0, True, True)
  _check_positive_int('patience', patience)
  warmup_steps = int(math.floor(max_warmup_fraction * total_steps))
  if warmup_steps < 1:
    raise ValueError(
        '`max_warmup_fraction * total_steps` must be >= 1 step, got '
        f'{max_warmup_fraction} * {total_steps}.')
  if test_every is None:
    test_every = max(1, min(steps_per_epoch, warmup_steps // 40))
  _check_positive_int('test_every', test_every)
  if divergence_factor is not None:
    divergence_factor = _check_float('divergence_factor', divergence_factor,
                                     1.0, math.inf, low_open=True)
  _check_positive_int('window_size', window_size, 8)
  if window_size % 2:
    raise ValueError(f'`window_size` must be even, got {window_size}.')
  _check_positive_int('grid_size', grid_size, 8)
  lengthscale = _check_float('lengthscale', lengthscale, gp.MIN_LENGTHSCALE,
                             math.inf)
  noise_floor = _check_float('noise_floor', noise_floor, 0.0, 1.0, True)

  log_ratio = math.log(max_lr / min_lr)
  decay_start_floor = (
      int(math.floor((1.0 - cooldown_fraction) * total_steps))
      if decay == 'constant_cosine' else 0)

  def warmup_lr(t):
    """LR of the warmup at (possibly fractional) step ``t``."""
    frac = jnp.asarray(t, jnp.float32) / warmup_steps
    if warmup == 'exp':
      lr = min_lr * jnp.exp(log_ratio * frac)
    else:
      lr = min_lr + (max_lr - min_lr) * frac
    return jnp.minimum(lr, max_lr)  # exp() may round above max_lr at t = T_w

  def decay_lr(t, switch_step, restart_lr):
    start = jnp.maximum(switch_step, decay_start_floor)
    length = jnp.maximum(total_steps - start, 1).astype(jnp.float32)
    frac = jnp.clip((t - start).astype(jnp.float32) / length, 0.0, 1.0)
    lr = restart_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t >= total_steps, 0.0, lr)

  def run_test(window, t):
    """Minimum test on ``window``, whose newest loss was seen at step ``t``."""
    mask = window_lib.window_mask(window)
    means, steps = window_lib.window_means(window)
    x = steps / jnp.maximum(t, 1).astype(jnp.float32)
    result = gp.minimum_test(x, means, window.counts, mask,
                             lengthscale=lengthscale, grid_size=grid_size,
                             noise_floor=noise_floor)
    # float32 even under jax_enable_x64 (the GP may compute in float64).
    return (result.probability.astype(jnp.float32),
            result.argmin.astype(jnp.float32))

  def pack(window, **values):
    ints = jnp.stack([jnp.asarray(values[k], jnp.int32) if k in values else
                      jnp.asarray(getattr(window, k), jnp.int32)
                      for k in INT_FIELDS])
    floats = jnp.stack([jnp.asarray(values[k], jnp.float32)
                        for k in FLOAT_FIELDS])
    return ints, floats

  def init_fn(params):
    del params
    window = window_lib.window_init(window_size)
    ints, floats = pack(
        window, phase=WARMUP, positives=0, switch_step=-1,
        switch_reason=NOT_SWITCHED, lr=min_lr, probability=0.0, argmin=0.0,
        restart_lr=0.0, loss_ema=0.0, ema_min=jnp.inf)
    return AutoWUState(count=jnp.zeros((), jnp.int32), ints=ints,
                       floats=floats, sums=window.sums)

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    if value is None:
      raise ValueError(
          'autowu needs the training loss at every update: call '
          '`tx.update(updates, state, params, value=loss)` (with '
          'nnx.Optimizer: `optimizer.update(model, grads, value=loss)`).')
    loss = jnp.asarray(value)
    if loss.shape != ():
      raise ValueError(
          '`value` must be the scalar training loss (the global mean in '
          f'data-parallel training), got shape {loss.shape}.')
    loss = loss.astype(jnp.float32)
    t = state.count
    in_warmup = state.phase == WARMUP
    finite = jnp.isfinite(loss) & (jnp.abs(loss) <= _MAX_ABS_LOSS)

    # Loss window; frozen after the switch and never fed non-finite losses.
    # One fused element-wise update, no branch (see window.py).
    keep = in_warmup & finite
    window = window_lib.window_push(state.window, jnp.where(finite, loss, 0.0),
                                    t, accept=keep)

    num_losses = window_lib.window_num_losses(window)
    enough = num_losses >= _MIN_LOSSES_FOR_TEST
    loss_ema = jnp.where(keep, _GUARD_EMA_DECAY * state.loss_ema
                         + (1.0 - _GUARD_EMA_DECAY) * loss, state.loss_ema)
    smoothed = loss_ema / (1.0 - _GUARD_EMA_DECAY ** num_losses.astype(
        jnp.float32))
    if divergence_factor is None:
      non_finite = jnp.zeros((), bool)
      diverged = jnp.zeros((), bool)
    else:
      non_finite = in_warmup & ~finite
      best = state.ema_min
      diverged = (keep & enough & jnp.isfinite(best)
                  & (smoothed - best > (divergence_factor - 1.0)
                     * jnp.abs(best)))
    ema_min = jnp.where(keep & enough, jnp.minimum(state.ema_min, smoothed),
                        state.ema_min)
    is_test = in_warmup & enough & ((t + 1) % test_every == 0)
    # Step of the newest loss in the window: x = 1 of the test, so that the
    # GP never extrapolates to a step whose loss was not finite.
    t_data = jnp.where(keep, t, jnp.maximum(t - 1, 0))

    # The only branch of the step: the GP runs on test steps (and when the
    # guard fires), never on the others. It starts once the updates are
    # computed: on CPU a test overlapping the backward pass competes with its
    # matmuls for the threads, and its chain of small kernels then waits at
    # every step (measured: +4.8 ms instead of +0.8 ms per MLP test step).
    updates, window, t_data = jax.lax.optimization_barrier(
        (updates, window, t_data))
    probability, argmin = jax.lax.cond(
        is_test | diverged | non_finite,
        run_test,
        lambda *_: (state.probability, state.argmin),
        window, t_data)
    positive = probability > confidence
    positives = jnp.where(is_test, jnp.where(positive, state.positives + 1, 0),
                          state.positives)
    confident = is_test & (positives >= patience)
    reached_max = in_warmup & (t >= warmup_steps)
    switch = in_warmup & (confident | diverged | non_finite | reached_max)
    reason = jnp.select(
        [confident, diverged, non_finite, reached_max],
        [CONFIDENT_MINIMUM, DIVERGED, NON_FINITE, MAX_WARMUP],
        NOT_SWITCHED)

    current_warmup_lr = warmup_lr(t)
    restart = jnp.where(reached_max & ~(confident | diverged | non_finite),
                        current_warmup_lr, warmup_lr(argmin * t_data))
    # The loss seen at step t follows the update made with the LR of step
    # t - 1: after a non-finite loss, restart at most from the LR of step
    # t - 2, the largest one whose outcome was finite.
    restart = jnp.where(non_finite,
                        jnp.minimum(restart, warmup_lr(jnp.maximum(t - 2, 0))),
                        restart)
    switch_step = jnp.where(switch, t, state.switch_step)
    restart_lr = jnp.where(switch, restart, state.restart_lr)
    phase = jnp.where(switch, DECAY, state.phase)
    lr = jnp.where(phase == WARMUP, current_warmup_lr,
                   decay_lr(t, switch_step, restart_lr)).astype(jnp.float32)

    updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
    ints, floats = pack(
        window, phase=phase, positives=positives, switch_step=switch_step,
        switch_reason=jnp.where(switch, reason, state.switch_reason),
        lr=lr, probability=probability, argmin=argmin, restart_lr=restart_lr,
        loss_ema=loss_ema, ema_min=ema_min)
    new_state = AutoWUState(count=optax.safe_int32_increment(t), ints=ints,
                            floats=floats, sums=window.sums)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def autowu_lamb(
    total_steps: int,
    steps_per_epoch: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: Any = None,
    **autowu_kwargs,
) -> optax.GradientTransformationExtraArgs:
  """LAMB (``optax.lamb`` with learning rate 1) followed by :func:`autowu`.

  Weight decay is applied inside LAMB, before the trust ratio, and is scaled
  by the AutoWU learning rate, as in the paper's setup.

  Args:
    total_steps: see :func:`autowu`.
    steps_per_epoch: see :func:`autowu`.
    b1: LAMB's first-moment decay.
    b2: LAMB's second-moment decay.
    eps: LAMB's epsilon.
    weight_decay: LAMB's (decoupled) weight decay.
    mask: which params get weight decay (see ``optax.lamb``).
    **autowu_kwargs: any keyword argument of :func:`autowu`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; call its update with
    ``value=loss``.

  Example:
    >>> import optax_autolr
    >>> tx = optax_autolr.autowu_lamb(total_steps=2000, steps_per_epoch=100,
    ...                               weight_decay=1e-4)
  """
  return optax.chain(
      optax.lamb(1.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                 mask=mask),
      autowu(total_steps, steps_per_epoch, **autowu_kwargs),
  )


def autowu_adamp(
    total_steps: int,
    steps_per_epoch: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    mask: Any = None,
    **autowu_kwargs,
) -> optax.GradientTransformationExtraArgs:
  """AdamP (learning rate 1) followed by :func:`autowu`: the authors' setup.

  Kim et al. (2021) trained with AdamP (Heo et al. 2021). AdamP's decoupled
  weight decay is emitted as part of the update, so AutoWU's learning rate
  scales it, as a PyTorch scheduler would.

  Args:
    total_steps: see :func:`autowu`.
    steps_per_epoch: see :func:`autowu`.
    b1: see :func:`~optax_autolr.adamp`.
    b2: see :func:`~optax_autolr.adamp`.
    eps: see :func:`~optax_autolr.adamp`.
    delta: see :func:`~optax_autolr.adamp`.
    wd_ratio: see :func:`~optax_autolr.adamp`.
    weight_decay: see :func:`~optax_autolr.adamp`.
    nesterov: see :func:`~optax_autolr.adamp`.
    mask: which params get weight decay (see :func:`~optax_autolr.adamp`).
    **autowu_kwargs: any keyword argument of :func:`autowu`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; call its update with
    ``value=loss``.

  Example:
    >>> import optax_autolr
    >>> tx = optax_autolr.autowu_adamp(total_steps=2000, steps_per_epoch=100,
    ...                                weight_decay=1e-4)
  """
  return optax.chain(
      _adamp(1.0, b1=b1, b2=b2, eps=eps, delta=delta,
                      wd_ratio=wd_ratio, weight_decay=weight_decay,
                      nesterov=nesterov, mask=mask),
      autowu(total_steps, steps_per_epoch, **autowu_kwargs),
  )


def find_autowu_state(state: Any) -> AutoWUState:
  """Returns the (single) :class:`AutoWUState` inside an optimizer state.

  Works on any nesting of chains, ``optax.MultiSteps``,
  ``optax.inject_hyperparams`` or ``nnx.Optimizer.opt_state``.

  Args:
    state: an optimizer state pytree.

  Returns:
    The :class:`AutoWUState` it holds.

  Raises:
    ValueError: if there is not exactly one.
  """
  is_state = lambda x: isinstance(x, AutoWUState)
  found = [s for s in jax.tree.leaves(state, is_leaf=is_state) if is_state(s)]
  if len(found) != 1:
    raise ValueError(
        f'expected exactly one AutoWUState in the optimizer state, found '
        f'{len(found)}.')
  return found[0]


def get_lr(state: Any) -> jax.Array:
  """The LR applied at the last update (``min_lr`` before the first)."""
  return find_autowu_state(state).lr


def get_phase(state: Any) -> jax.Array:
  """``WARMUP`` (0) or ``DECAY`` (1)."""
  return find_autowu_state(state).phase


def get_probability(state: Any) -> jax.Array:
  """Past-minimum probability of the last minimum test."""
  return find_autowu_state(state).probability


def get_switch(state: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(switch_step, restart_lr, switch_reason)``; step is -1 before it."""
  s = find_autowu_state(state)
  return s.switch_step, s.restart_lr, s.switch_reason


def lr_hyperparams(state: Any) -> dict[str, jax.Array]:
  """``{'learning_rate': lr}``: the AutoWU LR in ``inject_hyperparams`` form.

  The arguments of :func:`autowu` are Python constants fixed when it is
  built, so ``optax.inject_hyperparams(autowu)`` is not supported (it raises
  a ``TypeError``); the LR it applies is part of its state. This reads it
  from any optimizer state, for code that logs ``state.hyperparams`` of an
  ``optax.inject_hyperparams`` optimizer. The effective LR also includes any
  ``learning_rate`` of the optimizer before :func:`autowu` in the chain (1 in
  the recommended ``optax.chain(optax.lamb(1.0), autowu(...))``). Works
  inside ``jax.jit``.

  Args:
    state: an optimizer state holding an :class:`AutoWUState`.

  Returns:
    ``{'learning_rate': lr}``, the LR applied at the last update.

  Example:
    >>> import optax
    >>> import optax_autolr
    >>> from optax_autolr import lr_hyperparams
    >>> tx = optax.chain(optax.lamb(1.0), optax_autolr.autowu(1000, 50))
    >>> state = tx.init({'w': jax.numpy.ones(3)})
    >>> {k: float(v) for k, v in lr_hyperparams(state).items()}
    {'learning_rate': 1e-05}
  """
  return {'learning_rate': get_lr(state)}


def loss_curve_posterior(state: Any, *, lengthscale: float = 0.2,
                         grid_size: int = 256
                         ) -> tuple[jax.Array, gp.MinimumTestResult]:
  """Recomputes the GP fit on the warmup window, for plots and logging.

  After the switch the window is frozen, so this shows the posterior the
  switch decision was based on (use the same ``lengthscale`` and
  ``grid_size`` as the :func:`autowu` that made ``state``).

  Args:
    state: an optimizer state holding an :class:`AutoWUState`.
    lengthscale: the RBF lengthscale of the :func:`autowu` call.
    grid_size: number of posterior grid points.

  Returns:
    ``(steps, result)``: the grid as (fractional) step numbers and the
    :class:`~optax_autolr.gp.MinimumTestResult`, whose posterior is in loss
    units.
  """
  s = find_autowu_state(state)
  last = jnp.where(s.phase == WARMUP, s.count - 1, s.switch_step)
  # A non-finite loss at the switch step never entered the window.
  last = jnp.where((s.phase == DECAY) & (s.switch_reason == NON_FINITE),
                   s.switch_step - 1, last)
  last = jnp.maximum(last, 1).astype(jnp.float32)
  means, steps = window_lib.window_means(s.window)
  result = gp.minimum_test(steps / last, means, s.window.counts,
                           window_lib.window_mask(s.window),
                           lengthscale=lengthscale, grid_size=grid_size)
  return result.grid * last, result
