"""AutoWU: automated LR warmup and decay as an Optax transformation.

One update reads, in order: measure the start's gradient coherence
(:func:`_coherence`), push the loss into the window (:func:`_push`), run the
divergence guard (:func:`_guard`) and the loss-spike test (:func:`_spike`),
run the minimum test on test steps (:func:`_maybe_test`), decide whether
warmup ends and why (:func:`_decide`), pick the restart LR
(:func:`_restart_lr`), decide when the params snapshot is taken or restored
(:func:`_rollback` in the warmup, the decay guard :func:`_decay_guard` after
the switch), copy the params into it (:func:`_copied`), and apply the LR of
the step (:func:`_lr`) or the step back to the snapshot (:func:`_scaled`). The
stages are module-level functions of a static :class:`_Config`;
:func:`minimum_test` and :func:`default_test_every` are the single definitions
that the plots and the benchmarks share.
"""

import functools
import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_autolr import _checks
from optax_autolr import gp
from optax_autolr import window as window_lib
from optax_autolr._adamp import adamp as _adamp

WARMUP = 0
DECAY = 1

# Why warmup ended (``AutoWUState.switch_reason``).
NOT_SWITCHED = 0
CONFIDENT_MINIMUM = 1
DIVERGED = 2
NON_FINITE = 3
MAX_WARMUP = 4
KNEE_PASSED = 5

SWITCH_REASONS = {
    NOT_SWITCHED: 'not switched',
    CONFIDENT_MINIMUM: 'confident minimum',
    DIVERGED: 'divergence guard',
    NON_FINITE: 'non-finite loss',
    MAX_WARMUP: 'max warmup reached',
    KNEE_PASSED: 'knee passed',
}
PHASES = {WARMUP: 'warmup', DECAY: 'decay'}

# The minimum test and the divergence guard need a few losses first.
_MIN_LOSSES_FOR_TEST = 8
# Decay of the loss EMA the divergence guard compares (about 10 steps).
_GUARD_EMA_DECAY = 0.9
# Losses of a larger magnitude count as non-finite: the float32 window sums
# and the GP's standardization would overflow on them.
_MAX_ABS_LOSS = 1e15
# Tests per maximal warmup at the default cadence.
_TESTS_PER_WARMUP = 40

# The arguments of autowu whose default is None: the library's defaults
# (chosen by measurement: experiments/results/rule_search.md and suite.md) and
# the paper's values, which the authors' rule (tests once an epoch, no guard)
# keeps.
DEFAULTS = dict(min_lr=1e-3, max_warmup_fraction=0.25, max_warmup_epochs=5.0,
                min_warmup_epochs=0.5, decay='linear',
                min_descent=4.0, valley_level=0.05, restart_fraction=1.0,
                spike_factor=1.3, knee_slope=0.2, knee_ratio=2.0,
                minimum_after=3.0, coherence_threshold=0.3,
                rewarm_fraction=0.2, rollback=True, decay_guard=2.0,
                gp_fit='max_likelihood')
AUTHORS = dict(min_lr=1e-5, max_warmup_fraction=0.5,
               max_warmup_epochs=math.inf, min_warmup_epochs=0.0,
               decay='cosine',
               min_descent=0.0, valley_level=0.0, restart_fraction=1.0,
               spike_factor=math.inf, knee_slope=0.0, knee_ratio=3.0,
               minimum_after=1.0, coherence_threshold=-1.0,
               rewarm_fraction=0.0, rollback=False, decay_guard=math.inf,
               gp_fit='adam')
# The knee rule: warmup ends once the LR is ``knee_ratio`` x the knee's (the
# last LR before the minimum where the log loss still fell by ``knee_slope``
# per decade of LR), if the log loss had fallen by 0.1 before the knee.
_KNEE_DROP = 0.1
# The spike test: a loss this many noise scales above the smallest smoothed
# loss (noise scale: EMA of |successive loss differences|, ~1.13 noise std).
_SPIKE_NOISE_SCALES = 4.0
# The coherence of the start: the mean cosine of successive minibatch
# gradients over this fraction of the maximal warmup (at least 2 cosines),
# each gradient leaf sampled at this many evenly strided entries at most.
_COHERENCE_FRACTION = 0.1
_COHERENCE_SAMPLE = 4096
# The rollback's snapshot takes the params at a test step whose LR is at most
# this many times the LR at the test's restart point (its restart LR before a
# ``restart_fraction`` below 1 scales it): while the loss still falls, that
# trails the LR reached (by the valley's half-width and the LR's growth since
# the test's newest loss; 1.19x per test at the default test spacing).
_SNAPSHOT_MARGIN = 1.25
# No rollback past this LR ratio: the rule's own excursion past the restart
# LR is about ``knee_ratio`` (2) x the valley's half-width; a warmup that went
# on much longer kept learning at the larger LRs (measured on the closed-loop
# toy at 100 epochs: a rollback over 6.6x of LR, 7 % of the budget, ended at
# 2-4x the loss).
_MAX_ROLLBACK_RATIO = 4.0
# Each firing of the decay guard (``decay_guard``) multiplies the rest of the
# decay's LR by this.
_DECAY_GUARD_CUT = 0.5
# How the GP's hyperparameters are set at each test (``gp_fit``).
_GP_FITS = ('max_likelihood', 'adam')

INT_CONSTANTS = ('total_steps', 'warmup_steps', 'grid_size', 'gp_fit_steps')
"""The constants in :attr:`AutoWUState.int_constants`, in order."""
FLOAT_CONSTANTS = ('lengthscale', 'noise_floor', 'min_descent', 'valley_level',
                   'knee_slope', 'log_lr_range', 'minimum_after')
"""The constants in :attr:`AutoWUState.float_constants`, in order."""
STATS = ('positives', 'argmin', 'loss_ema', 'ema_min', 'spike_lr',
         'last_loss', 'diff_ema', 'coherence_sum', 'coherence_count',
         'restart_estimate', 'snapshot_step', 'decay_ema', 'decay_low',
         'decay_scale')
"""The running values in :attr:`AutoWUState.stats`, in order."""


class AutoWUState(NamedTuple):
  """State of :func:`autowu`: named scalars, packed values, the loss and
  gradient samples.

  Every field is a fixed-shape array, so the state checkpoints (Orbax) and
  works with ``optax.tree_utils.tree_get(state, 'lr')`` (the named fields),
  ``lax.scan`` and sharding like any Optax state.

  Attributes:
    count: int32, number of updates done so far (the step ``t``).
    phase: int32, ``WARMUP`` (0) or ``DECAY`` (1); never goes back to 0.
    lr: float32, the learning rate applied at the last update.
    probability: float32, past-minimum probability of the last test.
    switch_step: int32, step of the switch (``-1`` before it).
    restart_lr: float32, the decay's peak LR (0 before the switch): the LR
      it starts from, or, after a second warmup (``rewarm_fraction``), the
      one that warmup ramps up to.
    switch_reason: int32, one of the keys of ``SWITCH_REASONS``.
    stats: float32 ``[14]``, the decision rule's running values
      (:data:`STATS`), read as the properties below.
    window: the :class:`~optax_autolr.window.LossWindow` of warmup losses;
      frozen at the switch.
    int_constants: int32 ``[4]``, the transformation's integer constants
      (:data:`INT_CONSTANTS`), read as the properties below.
    float_constants: float32 ``[7]``, its float constants
      (:data:`FLOAT_CONSTANTS`), read as the properties below.
    grad_sample: float32 vector, the last minibatch gradient given as
      ``gradients=`` over the first tenth of the maximal warmup: each leaf
      sampled at evenly strided entries (at most 4096 per leaf), flattened,
      the leaves concatenated in tree order, all divided by the largest
      absolute entry; zeros if none was given or the coherence rule is off
      (``None`` for ``init(None)``).
    snapshot: the params at step ``snapshot_step`` (``rollback``), in their
      own dtypes; after the switch, the decay guard's copy (``decay_guard``);
      ``None`` for ``init(None)`` or with neither ``rollback`` nor the decay
      guard.
    gp_adam: the :class:`~optax_autolr.gp.AdamFit` (GP hyperparameters and
      their Adam state) of the last test under ``gp_fit='adam'``; ``None``
      (no leaves) under ``'max_likelihood'``, which fits afresh each test.

  The running values of the rule, each a read-only float32 property of the
  state (packed in ``stats``, see below why):

  * ``positives``, the number of consecutive positive minimum tests;
  * ``argmin``, the position in ``[0, 1]`` of the last test's restart point
    (the posterior-mean minimum, or its valley point, see ``valley_level``);
  * ``loss_ema``, a short EMA of the finite warmup losses (not bias
    corrected; the window holds their number);
  * ``ema_min``, the smallest bias-corrected ``loss_ema`` so far;
  * ``spike_lr``, the LR of the update before the first loss spike of the
    warmup (``inf`` if none yet; see ``spike_factor``): it caps the restart;
  * ``last_loss``, the last finite warmup loss;
  * ``diff_ema``, an EMA of the absolute difference of successive finite
    warmup losses (not bias corrected), the spike test's noise scale;
  * ``coherence_sum``, the sum of the cosines of successive sampled
    gradients over the first tenth of the maximal warmup, and
    ``coherence_count``, their number;
  * ``restart_estimate``, the restart LR the last test would give
    (``inf`` before the first test);
  * ``snapshot_step``, the step whose params ``snapshot`` holds (the last
    test step whose LR was at most ``1.25 / min(restart_fraction, 1)`` x
    ``restart_estimate``; -1 if none);
    after the switch, the step the params were rolled back to, -1 if they
    were not (the decay guard's copies do not change it: its reference is
    ``decay_low``);
  * ``decay_ema``, a short EMA of the finite losses after the switch
    (``inf`` before the step after it, after a non-finite loss and after
    each firing of the decay guard);
  * ``decay_low``, the decay guard's reference: ``decay_ema`` when the
    params were last copied (``inf`` before the first copy and after each
    firing);
  * ``decay_scale``, the factor of the decay's LR: 1, halved by each firing
    of the decay guard.

  The constants of the transformation are kept so that
  :func:`loss_curve_posterior` reproduces a decision (its probability and
  restart point; not ``coherence_threshold``, which is not kept) from the
  state alone and :func:`check_restored` can tell a checkpoint made for
  another budget. They are packed in two arrays, not eleven scalars, as the
  running values are in one: every state leaf costs a train step a few
  microseconds of buffer handling (more through ``nnx.split`` /
  ``nnx.merge``), and on a small model those add up (measured with
  ``python -m experiments.bench``: 32 leaves -> 23 -> 15 took an MLP step at
  batch 1024 on CPU from 1.026x to 1.021x to 1.010x LAMB's). Each is a
  read-only property of the state:

  * ``total_steps`` (int32), the ``total_steps`` it was built for;
  * ``warmup_steps`` (int32), its maximal warmup :math:`T_w`;
  * ``grid_size`` (int32), the number of posterior grid points;
  * ``gp_fit_steps`` (int32), Adam steps of the GP fit per test
    (``gp_fit='adam'``), 0 for the marginal-likelihood maximum;
  * ``lengthscale`` (float32), the GP's RBF lengthscale;
  * ``noise_floor`` (float32), the GP's noise floor;
  * ``min_descent`` (float32), the descent gate of a positive test;
  * ``valley_level`` (float32), where in the valley the restart point lies;
  * ``knee_slope`` (float32), the knee rule's slope (0: off);
  * ``log_lr_range`` (float32), ``log(max_lr / min_lr)`` of the exponential
    warmup (0 for the linear one, which has no knee rule);
  * ``minimum_after`` (float32), no confident minimum and no knee before the
    LR is this many times ``min_lr``.
  """

  count: jax.Array
  phase: jax.Array
  lr: jax.Array
  probability: jax.Array
  switch_step: jax.Array
  restart_lr: jax.Array
  switch_reason: jax.Array
  stats: jax.Array
  window: window_lib.LossWindow
  int_constants: jax.Array
  float_constants: jax.Array
  grad_sample: jax.Array | None
  snapshot: Any
  gp_adam: gp.AdamFit | None

  positives = property(lambda self: _packed(self, 'positives'))
  argmin = property(lambda self: _packed(self, 'argmin'))
  loss_ema = property(lambda self: _packed(self, 'loss_ema'))
  ema_min = property(lambda self: _packed(self, 'ema_min'))
  spike_lr = property(lambda self: _packed(self, 'spike_lr'))
  last_loss = property(lambda self: _packed(self, 'last_loss'))
  diff_ema = property(lambda self: _packed(self, 'diff_ema'))
  coherence_sum = property(lambda self: _packed(self, 'coherence_sum'))
  coherence_count = property(lambda self: _packed(self, 'coherence_count'))
  restart_estimate = property(lambda self: _packed(self, 'restart_estimate'))
  snapshot_step = property(lambda self: _packed(self, 'snapshot_step'))
  decay_ema = property(lambda self: _packed(self, 'decay_ema'))
  decay_low = property(lambda self: _packed(self, 'decay_low'))
  decay_scale = property(lambda self: _packed(self, 'decay_scale'))

  total_steps = property(lambda self: _packed(self, 'total_steps'))
  warmup_steps = property(lambda self: _packed(self, 'warmup_steps'))
  grid_size = property(lambda self: _packed(self, 'grid_size'))
  gp_fit_steps = property(lambda self: _packed(self, 'gp_fit_steps'))
  lengthscale = property(lambda self: _packed(self, 'lengthscale'))
  noise_floor = property(lambda self: _packed(self, 'noise_floor'))
  min_descent = property(lambda self: _packed(self, 'min_descent'))
  valley_level = property(lambda self: _packed(self, 'valley_level'))
  knee_slope = property(lambda self: _packed(self, 'knee_slope'))
  log_lr_range = property(lambda self: _packed(self, 'log_lr_range'))
  minimum_after = property(lambda self: _packed(self, 'minimum_after'))

  def __repr__(self) -> str:
    s = _to_numpy(self)
    if s is None or any(np.ndim(x) for x in (s.count, s.phase)):
      return 'AutoWUState(' + ', '.join(
          f'{k}={getattr(self, k)!r}' for k in self._fields) + ')'
    m = get_metrics(s)
    num = int(window_lib.window_num_losses(s.window))
    return (
        f"AutoWUState(count={m['step']}, phase='{m['phase']}', "
        f"lr={m['lr']:.4g}, positives={m['positives']}, "
        f"probability={m['probability']:.4g}, argmin={float(s.argmin):.4g}, "
        f"switch_step={m['switch_step']}, restart_lr={m['restart_lr']:.4g}, "
        f"switch_reason='{m['switch_reason']}', "
        f'window=<{num} losses in {int(s.window.num_bins)} of '
        f'{s.window.capacity} bins>, total_steps={int(s.total_steps)})')


def _to_numpy(tree: Any) -> Any:
  """``tree`` with NumPy leaves (also unwraps ``nnx.Variable`` leaves).

  Returns None if a leaf is traced (inside ``jax.jit``).
  """
  tree = _unwrap(tree)
  leaves = jax.tree.leaves(tree)
  numeric = lambda x: (isinstance(x, (np.ndarray, np.generic, jax.Array,
                                      int, float))
                       and not isinstance(x, jax.core.Tracer)
                       and np.asarray(x).dtype.kind in 'biuf')
  if not all(numeric(x) for x in leaves):
    return None  # Traced, abstract (ShapeDtypeStruct), shardings, ...
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _packed(state: AutoWUState | Mapping[str, Any], name: str) -> Any:
  """One packed value of ``state`` (see :class:`AutoWUState`; or its dict
  form): its entry of ``stats``, ``int_constants`` or ``float_constants``
  (stacked states: along the last axis)."""
  for names, field in ((STATS, 'stats'), (INT_CONSTANTS, 'int_constants'),
                       (FLOAT_CONSTANTS, 'float_constants')):
    if name in names:
      packed = (state[field] if isinstance(state, Mapping)
                else getattr(state, field))
      packed = packed.get_value() if hasattr(packed, 'get_value') else packed
      return packed[..., names.index(name)]
  raise AttributeError(name)


def _stats(**values: jax.Array) -> jax.Array:
  """The ``stats`` array of :data:`STATS` ``values``."""
  assert set(values) == set(STATS), sorted(values)
  return jnp.stack([jnp.asarray(values[n], jnp.float32) for n in STATS])


def _unwrap(tree: Any) -> Any:
  """``tree`` with ``nnx.Variable`` leaves replaced by their values."""
  is_var = lambda x: hasattr(x, 'get_value')
  return jax.tree.map(lambda x: x.get_value() if is_var(x) else x, tree,
                      is_leaf=is_var)


class _Config(NamedTuple):
  """The constants of one :func:`autowu`; hashable, a static jit argument."""

  total_steps: int
  warmup_steps: int
  min_lr: float
  max_lr: float
  warmup: str
  decay: str
  decay_start: int
  confidence: float
  patience: int
  test_every: int
  divergence_factor: float | None
  window_size: int
  grid_size: int
  lengthscale: float
  noise_floor: float
  min_descent: float
  valley_level: float
  restart_fraction: float
  spike_factor: float | None
  knee_slope: float
  knee_ratio: float
  minimum_after: float
  coherence_threshold: float
  coherence_steps: int
  rewarm_steps: int
  rollback: bool
  decay_guard: float  # inf: off.
  gp_fit: str


def default_test_every(total_steps: int, steps_per_epoch: int,
                       max_warmup_fraction: float | None = None,
                       max_warmup_epochs: float | None = None,
                       min_warmup_epochs: float | None = None) -> int:
  """The default ``test_every`` of :func:`autowu`: 1/40 of the maximal warmup.

  Args:
    total_steps: see :func:`autowu`.
    steps_per_epoch: see :func:`autowu`.
    max_warmup_fraction: see :func:`autowu` (``None``: its default).
    max_warmup_epochs: see :func:`autowu` (``None``: its default).
    min_warmup_epochs: see :func:`autowu` (``None``: its default).

  Returns:
    ``max(1, min(steps_per_epoch, T_w // 40))`` with the maximal warmup
    ``T_w`` of :func:`autowu`.
  """
  if max_warmup_fraction is None:
    max_warmup_fraction = DEFAULTS['max_warmup_fraction']
  if max_warmup_epochs is None:
    max_warmup_epochs = DEFAULTS['max_warmup_epochs']
  if min_warmup_epochs is None:
    min_warmup_epochs = DEFAULTS['min_warmup_epochs']
  warmup_steps = _max_warmup_steps(total_steps, steps_per_epoch,
                                   max_warmup_fraction, max_warmup_epochs,
                                   min_warmup_epochs)
  return max(1, min(steps_per_epoch, warmup_steps // _TESTS_PER_WARMUP))


def _max_warmup_steps(total_steps, steps_per_epoch, max_warmup_fraction,
                      max_warmup_epochs, min_warmup_epochs) -> int:
  """The maximal warmup: ``max_warmup_fraction`` of the budget, but at least
  ``min_warmup_epochs`` epochs or half the budget, whichever is shorter, and
  at most ``max_warmup_epochs`` epochs; the cap is never below one test a
  step (``_TESTS_PER_WARMUP`` steps; with few steps an epoch, 5 epochs hold no
  test)."""
  floor = min(min_warmup_epochs * steps_per_epoch, 0.5 * total_steps)
  cap = max(max_warmup_epochs * steps_per_epoch, _TESTS_PER_WARMUP)
  return int(math.floor(min(max(max_warmup_fraction * total_steps, floor),
                            cap)))


# --------------------------------------------------------------------------
# The LR schedule.


def _warmup_lr(cfg: _Config, t) -> jax.Array:
  """LR of the warmup at (possibly fractional) step ``t``."""
  frac = jnp.asarray(t, jnp.float32) / cfg.warmup_steps
  if cfg.warmup == 'exp':
    lr = cfg.min_lr * jnp.exp(math.log(cfg.max_lr / cfg.min_lr) * frac)
  else:
    lr = cfg.min_lr + (cfg.max_lr - cfg.min_lr) * frac
  return jnp.minimum(lr, cfg.max_lr)  # exp() may round above max_lr at T_w


def _decay_lr(cfg: _Config, t, switch_step, restart_lr) -> jax.Array:
  """Cosine, constant-then-cosine or linear from ``restart_lr`` to 0 at T."""
  start = jnp.maximum(switch_step, cfg.decay_start)
  length = jnp.maximum(cfg.total_steps - start, 1).astype(jnp.float32)
  frac = jnp.clip((t - start).astype(jnp.float32) / length, 0.0, 1.0)
  if cfg.decay == 'linear':
    lr = restart_lr * (1.0 - frac)
  else:
    lr = restart_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return jnp.where(t >= cfg.total_steps, 0.0, lr)


def _lr(cfg: _Config, t, phase, switch_step, restart_lr, incoherent
        ) -> jax.Array:
  """The LR applied at step ``t``.

  After a noise-dominated start (``incoherent``) the decay's LR is scaled by
  ``min(1, (t + 1 - switch_step) / rewarm_steps)``: a second, linear warmup.
  """
  lr = jnp.where(phase == WARMUP, _warmup_lr(cfg, t),
                 _decay_lr(cfg, t, switch_step, restart_lr))
  if cfg.rewarm_steps:
    ramp = jnp.minimum((t + 1 - switch_step).astype(jnp.float32)
                       / cfg.rewarm_steps, 1.0)
    lr = jnp.where(incoherent & (phase == DECAY), lr * ramp, lr)
  return lr.astype(jnp.float32)


# --------------------------------------------------------------------------
# The stages of one update.


def _push(state: AutoWUState, loss: jax.Array):
  """Adds a finite warmup loss to the window (frozen after the switch).

  Returns:
    ``(window, keep, finite)``: the new window, whether the loss entered it,
    whether the loss is finite (and of sane magnitude).
  """
  finite = jnp.isfinite(loss) & (jnp.abs(loss) <= _MAX_ABS_LOSS)
  keep = (state.phase == WARMUP) & finite
  window = window_lib.window_push(state.window, jnp.where(finite, loss, 0.0),
                                  state.count, accept=keep)
  return window, keep, finite


class _Guard(NamedTuple):
  loss_ema: jax.Array
  ema_min: jax.Array
  enough: jax.Array  # Enough losses for the test and the guard.
  diverged: jax.Array
  non_finite: jax.Array


def _guard(cfg: _Config, state: AutoWUState, loss, window, keep, finite
           ) -> _Guard:
  """The divergence guard: the loss EMA left the basin, or a bad loss."""
  num_losses = window_lib.window_num_losses(window)
  enough = num_losses >= _MIN_LOSSES_FOR_TEST
  loss_ema = jnp.where(keep, _GUARD_EMA_DECAY * state.loss_ema
                       + (1.0 - _GUARD_EMA_DECAY) * loss, state.loss_ema)
  smoothed = loss_ema / (1.0 - _GUARD_EMA_DECAY ** num_losses.astype(
      jnp.float32))
  ema_min = jnp.where(keep & enough, jnp.minimum(state.ema_min, smoothed),
                      state.ema_min)
  if cfg.divergence_factor is None:
    off = jnp.zeros((), bool)
    return _Guard(loss_ema, ema_min, enough, off, off)
  best = state.ema_min
  diverged = (keep & enough & jnp.isfinite(best)
              & (smoothed - best > (cfg.divergence_factor - 1.0)
                 * jnp.abs(best)))
  non_finite = (state.phase == WARMUP) & ~finite
  return _Guard(loss_ema, ema_min, enough, diverged, non_finite)


class _Spike(NamedTuple):
  spike_lr: jax.Array
  last_loss: jax.Array
  diff_ema: jax.Array


def _spike(cfg: _Config, state: AutoWUState, loss, window, keep,
           guard: _Guard) -> _Spike:
  """The spike cap: the LR before the first loss spike caps the restart.

  A spike is one finite warmup loss above ``spike_factor`` x the smallest
  smoothed loss so far and 4 noise scales above it. An LR that made the loss
  jump is past the stable range, even when training progress keeps the
  smoothed curve falling after it (the GP minimum then lies beyond it).
  """
  first = window_lib.window_num_losses(state.window) == 0
  diff = jnp.where(first, 0.0, jnp.abs(loss - state.last_loss))
  diff_ema = jnp.where(keep, _GUARD_EMA_DECAY * state.diff_ema
                       + (1.0 - _GUARD_EMA_DECAY) * diff, state.diff_ema)
  last_loss = jnp.where(keep, loss, state.last_loss)
  if cfg.spike_factor is None:
    return _Spike(state.spike_lr, last_loss, diff_ema)
  num_losses = window_lib.window_num_losses(window)
  noise_scale = state.diff_ema / (1.0 - _GUARD_EMA_DECAY ** jnp.maximum(
      num_losses - 2, 1).astype(jnp.float32))
  rise = loss - state.ema_min
  spike = (keep & guard.enough & jnp.isfinite(state.ema_min)
           & (rise > (cfg.spike_factor - 1.0) * jnp.abs(state.ema_min))
           & (rise > _SPIKE_NOISE_SCALES * noise_scale))
  spike_lr = jnp.where(spike & jnp.isinf(state.spike_lr),
                       _warmup_lr(cfg, jnp.maximum(state.count - 1, 0)),
                       state.spike_lr)
  return _Spike(spike_lr, last_loss, diff_ema)


class _SamplePlan(NamedTuple):
  """How a gradient leaf is sampled for the coherence rule (trace time)."""
  strides: tuple[int, ...]  # Per-axis strides.
  size: int  # Entries of the (flattened) sample.
  weight: float  # Entries of the leaf per sampled entry.


def _sample_plan(shape: tuple[int, ...]) -> _SamplePlan:
  """Per-axis strides of a leaf's gradient sample (at most 4096 entries).

  Striding each axis, rather than the flattened leaf, keeps a sharded leaf
  sharded: only the sample is gathered, never the whole leaf. The weight
  (entries of the leaf per sampled entry) weights the leaf's sums in the
  cosine.
  """
  shape = tuple(int(d) for d in shape)
  strides = [1] * len(shape)
  kept = lambda: [-(-d // s) for d, s in zip(shape, strides)]  # ceil
  while math.prod(kept()) > _COHERENCE_SAMPLE:
    i = int(np.argmax(kept()))  # Halve the longest sampled axis.
    strides[i] = -(-shape[i] // max(1, kept()[i] // 2))
  size = math.prod(kept())
  return _SamplePlan(tuple(strides), size, math.prod(shape) / max(size, 1))


def _scaled_sample(tree: Any) -> list[jax.Array]:
  """Each leaf of ``tree`` at its sampled entries, flattened, float32, all
  divided by the largest absolute entry (so that neither tiny nor huge gradients
  underflow or overflow the cosine's squared norms; NaN if all are zero or
  one is not finite)."""
  leaves = [jnp.ravel(jnp.asarray(x)[tuple(
      slice(None, None, st) for st in _sample_plan(jnp.shape(x)).strides)]
                      ).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a)) for a in leaves])
  return [a / top for a in leaves]


def _split_sample(sample: jax.Array, plans: list[_SamplePlan]
                  ) -> list[jax.Array]:
  """The per-leaf pieces of a concatenated sample (``state.grad_sample``)."""
  ends = np.cumsum([p.size for p in plans])
  return [sample[end - p.size:end] for p, end in zip(plans, ends)]


class _Coherence(NamedTuple):
  grad_sample: jax.Array | None
  coherence_sum: jax.Array
  coherence_count: jax.Array


def _cosine(a: list[jax.Array], b: list[jax.Array],
            weights: list[float]) -> jax.Array:
  """Cosine of two scaled samples (:func:`_scaled_sample`), each leaf's sums
  weighted."""
  dot = sum(w * jnp.sum(x * y) for w, x, y in zip(weights, a, b))
  norm_a = sum(w * jnp.sum(x * x) for w, x in zip(weights, a))
  norm_b = sum(w * jnp.sum(y * y) for w, y in zip(weights, b))
  return dot * jax.lax.rsqrt(norm_a) * jax.lax.rsqrt(norm_b)


def _coherence(cfg: _Config, state: AutoWUState, gradients) -> _Coherence:
  """The start's coherence: cosines of successive minibatch gradients.

  Over the first ``coherence_steps`` steps of the warmup, the cosine of each
  gradient with the previous one, on their strided samples (each leaf's
  sums weighted by its entries per sampled entry, which estimates the whole
  gradient's). Near 1 while the gradient's signal dominates its minibatch
  noise, near 0 when the start is already noise-dominated. Past those steps,
  without ``gradients`` and with the rule off nothing is computed.
  """
  kept = _Coherence(state.grad_sample, state.coherence_sum,
                    state.coherence_count)
  leaves = jax.tree.leaves(gradients)
  if gradients is None or not leaves or cfg.coherence_threshold <= -1.0:
    return kept
  t = state.count
  active = (state.phase == WARMUP) & (t <= cfg.coherence_steps)

  def measure():
    new = _scaled_sample(gradients)
    plans = [_sample_plan(jnp.shape(g)) for g in leaves]
    cosine = _cosine(new, _split_sample(state.grad_sample, plans),
                     [p.weight for p in plans])
    use = (t >= 1) & jnp.isfinite(cosine)
    return _Coherence(
        jnp.concatenate(new),
        jnp.where(use, state.coherence_sum + cosine, state.coherence_sum),
        jnp.where(use, state.coherence_count + 1, state.coherence_count))

  return jax.lax.cond(active, measure, lambda: kept)


def _incoherent_start(cfg: _Config, coherence: _Coherence) -> jax.Array:
  """Whether the start's mean gradient cosine is below ``coherence_threshold``."""
  mean = coherence.coherence_sum / jnp.maximum(coherence.coherence_count, 1)
  return (coherence.coherence_count > 0) & (mean < cfg.coherence_threshold)


def minimum_test(window: window_lib.LossWindow, last_step: jax.Array, *,
                 lengthscale: float, grid_size: int, noise_floor: float
                 ) -> gp.MinimumTestResult:
  """The minimum test on a loss window whose newest loss is at ``last_step``.

  The window's bins sit at ``x = mean step / last_step`` (``x = 1`` is the
  newest loss), so the GP never extrapolates past the data.

  Args:
    window: a :class:`~optax_autolr.window.LossWindow`.
    last_step: step of the newest loss in the window.
    lengthscale: see :func:`autowu`.
    grid_size: see :func:`autowu`.
    noise_floor: see :func:`autowu`.

  Returns:
    The :class:`~optax_autolr.gp.MinimumTestResult`, posterior in loss units.
  """
  return gp.minimum_test(*_window_data(window, last_step),
                         lengthscale=lengthscale, grid_size=grid_size,
                         noise_floor=noise_floor)


def _window_data(window: window_lib.LossWindow, last_step: jax.Array,
                 authors: bool = False):
  """``(x, means, counts, mask)`` of the window's bins.

  ``x = mean step / last_step`` (``x = 1`` now); with ``authors``, their
  ``index / number of losses``, ``mean step / (last_step + 1)`` (the
  newest loss just before 1).
  """
  means, steps = window_lib.window_means(window)
  denominator = jnp.maximum(last_step, 1).astype(jnp.float32)
  if authors:
    denominator = denominator + 1.0
  return steps / denominator, means, window.counts, window_lib.window_mask(
      window)


def _descent_noise(window: window_lib.LossWindow, lengthscale: float
                   ) -> jax.Array:
  """Noise std of a mean over one lengthscale of losses, from the data.

  The one-loss noise is the median absolute difference of adjacent bin
  means, each scaled to one loss (robust to the curve's slope and to a few
  outliers, unlike the GP's fitted noise, which may explain noisy points as
  signal); a mean over the ``lengthscale * n`` losses of one lengthscale (the
  GP's resolution) has ``1 / sqrt(lengthscale * n)`` of it.
  """
  means, _ = window_lib.window_means(window)
  mask = window_lib.window_mask(window)
  counts = jnp.maximum(window.counts, 1).astype(means.dtype)
  pair = mask[1:] & mask[:-1]
  diff = jnp.abs(means[1:] - means[:-1]) * jax.lax.rsqrt(
      1.0 / counts[1:] + 1.0 / counts[:-1])
  diff = jnp.sort(jnp.where(pair, diff, jnp.inf))
  num_pairs = jnp.maximum(jnp.sum(pair), 1)
  one_loss = 1.4826 * diff[(num_pairs - 1) // 2]
  num_losses = window_lib.window_num_losses(window).astype(means.dtype)
  return one_loss * jax.lax.rsqrt(jnp.maximum(lengthscale * num_losses, 1.0))


def minimum_test_outcome(result: gp.MinimumTestResult,
                  window: window_lib.LossWindow, *, lengthscale: float,
                  min_descent: float, valley_level: float):
  """``(probability, position)`` of a test: the descent gate, the restart point.

  The descent gate: a test counts only if the posterior mean falls into its
  minimum by more than ``min_descent`` x :func:`_descent_noise` (a wiggle of
  a flat, noisy start is no minimum); otherwise its probability is 0. The
  restart point: halfway, in x (log LR for the exponential warmup), between
  the posterior-mean minimum and the entry of its valley floor, the first x
  where the mean is within ``valley_level`` x (the drop into the minimum) of
  it; ``valley_level = 0`` gives the minimum itself (the paper's).

  Args:
    result: the :class:`~optax_autolr.gp.MinimumTestResult` of the window.
    window: the window it was computed on.
    lengthscale: see :func:`autowu`.
    min_descent: see :func:`autowu`.
    valley_level: see :func:`autowu`.

  Returns:
    ``(probability, position)``, float32 scalars.
  """
  m = result.posterior.mean
  i_min = jnp.argmin(m)
  drop = jnp.max(jnp.where(jnp.arange(m.shape[0]) <= i_min, m, -jnp.inf)
                 ) - m[i_min]
  probability, position = result.probability, result.argmin
  if valley_level > 0.0:
    entry = jnp.argmax(m <= m[i_min] + valley_level * drop)
    position = 0.5 * (result.grid[entry] + result.argmin)
  if min_descent > 0.0:
    real = drop > min_descent * _descent_noise(window, lengthscale)
    probability = jnp.where(real, probability, 0.0)
  # float32 even under jax_enable_x64 (the GP may compute in float64).
  return probability.astype(jnp.float32), position.astype(jnp.float32)


def knee_outcome(result: gp.MinimumTestResult, *, knee_slope: float,
                 lr_span: jax.Array,
                 knee_ratio: float = DEFAULTS['knee_ratio'],
                 minimum_after: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """``(passed, position)``: the knee of the warmup's loss-vs-LR curve.

  On the exponential warmup, ``x`` is linear in log LR: ``lr_span`` is
  ``log(lr(x=1) / lr(x=0))``. The knee is the last grid point before the
  posterior-mean minimum where the log loss still falls by at least
  ``knee_slope`` per decade of LR; past it the curve is nearly flat, and
  the LRs there teach little more in the short run but may harm the long run
  (a transformer left on its plateau). ``passed``: the LR is ``knee_ratio``
  x the knee's and the log loss fell by 0.1 before it (no knee on a flat start,
  nor for losses that are not all positive). ``position``: the knee's ``x``
  (1 when there is none).

  Args:
    result: the :class:`~optax_autolr.gp.MinimumTestResult` of the window.
    knee_slope: see :func:`autowu`.
    lr_span: ``log`` of the LR range the window spans.
    knee_ratio: see :func:`autowu`.
    minimum_after: a knee at an LR below ``minimum_after`` x ``min_lr``
      (the LR at ``x = 0``) is the optimizer's start-up drop, not a knee
      over LRs: none. The default 1 turns this off; :func:`autowu` passes
      its own (``DEFAULTS['minimum_after']``).

  Returns:
    ``(passed, position)``: a bool and a float32 scalar.
  """
  m, x = result.posterior.mean, result.grid
  log_m = jnp.log(jnp.maximum(m, jnp.finfo(m.dtype).tiny))
  span = jnp.maximum(lr_span, 1e-12)
  slope = -jnp.gradient(log_m, x[1] - x[0]) * math.log(10.0) / span
  index = jnp.arange(m.shape[0])
  steep = (slope >= knee_slope) & (index <= jnp.argmin(m))
  k = jnp.max(jnp.where(steep, index, -1))
  k_pos = jnp.maximum(k, 0)
  found = (jnp.all(m > 0) & (k >= 0) & (lr_span > 0)
           & _past_start_up(x[k_pos] * lr_span, minimum_after))
  k = k_pos
  passed = (found & ((1.0 - x[k]) * lr_span >= math.log(knee_ratio))
            & (log_m[0] - log_m[k] >= _KNEE_DROP))
  return passed, jnp.where(found, x[k], 1.0).astype(jnp.float32)


def _past_start_up(log_lr_ratio, minimum_after: float) -> jax.Array:
  """Whether an LR ``exp(log_lr_ratio)`` x ``min_lr`` is past the optimizer's
  start-up: at least ``minimum_after`` x ``min_lr``."""
  return log_lr_ratio >= math.log(minimum_after)


def _run_test(window, last, lr_span, *, lengthscale, grid_size, noise_floor,
              min_descent, valley_level, knee_slope,
              knee_ratio=DEFAULTS['knee_ratio'], minimum_after=1.0,
              fit_params=None) -> tuple[gp.MinimumTestResult, jax.Array]:
  """The test as the update runs it.

  ``fit_params``: the authors' GP parameters
  (:class:`~optax_autolr.gp.GPParams`, ``gp_fit='adam'``) to test at, on
  their positions; ``None`` fits them by maximum marginal likelihood.

  Returns:
    ``(result, knee)``: the GP's result, with the test's outcome
    (:func:`minimum_test_outcome`; the restart point at most the knee, see
    :func:`knee_outcome`) as its ``probability`` and ``argmin``, and whether
    the knee was passed.
  """
  if fit_params is None:
    result = minimum_test(window, last, lengthscale=lengthscale,
                          grid_size=grid_size, noise_floor=noise_floor)
  else:
    result = gp.minimum_test_given(*_window_data(window, last, True),
                                   fit_params,
                                   lengthscale=lengthscale,
                                   grid_size=grid_size)
  probability, position = minimum_test_outcome(
      result, window, lengthscale=lengthscale, min_descent=min_descent,
      valley_level=valley_level)
  knee = jnp.zeros((), bool)
  if knee_slope > 0.0:
    knee, x_knee = knee_outcome(result, knee_slope=knee_slope, lr_span=lr_span,
                                knee_ratio=knee_ratio,
                                minimum_after=minimum_after)
    position = jnp.minimum(position, x_knee)
  return result._replace(probability=probability, argmin=position), knee


# Eager callers (plots, logging) compile once per set of constants.
_jit_test = jax.jit(_run_test, static_argnames=(
    'lengthscale', 'grid_size', 'noise_floor', 'min_descent', 'valley_level',
    'knee_slope', 'knee_ratio', 'minimum_after'))


def _lr_span(cfg: _Config, t_data) -> jax.Array:
  """``log(lr(t_data) / min_lr)`` of the exponential warmup (0 for linear)."""
  if cfg.warmup != 'exp':
    return jnp.zeros((), jnp.float32)
  frac = jnp.minimum(t_data.astype(jnp.float32) / cfg.warmup_steps, 1.0)
  return math.log(cfg.max_lr / cfg.min_lr) * frac


class _Test(NamedTuple):
  probability: jax.Array
  argmin: jax.Array
  knee: jax.Array  # The knee was passed (at this test).
  gp_adam: gp.AdamFit | None
  restart_estimate: jax.Array  # The restart LR a confident minimum gives.


def _maybe_test(cfg: _Config, run, window, t_data, state: AutoWUState,
                restart_at) -> _Test:
  """A new test when ``run``, else the last one.

  ``restart_at(argmin)``: the restart LR of a confident minimum at that
  restart point (:func:`_restart_lr`); computed with the test, so the steps
  between tests do none of it.
  """
  kept = _Test(state.probability, state.argmin, jnp.zeros((), bool),
               state.gp_adam, state.restart_estimate)

  def test():
    gp_adam, fit_params = state.gp_adam, None
    if cfg.gp_fit == 'adam':
      gp_adam = gp.adam_fit(*_window_data(window, t_data, True), gp_adam,
                            lengthscale=cfg.lengthscale)
      fit_params = gp_adam.params
    result, knee = _run_test(
        window, t_data, _lr_span(cfg, t_data), lengthscale=cfg.lengthscale,
        grid_size=cfg.grid_size, noise_floor=cfg.noise_floor,
        min_descent=cfg.min_descent, valley_level=cfg.valley_level,
        knee_slope=cfg.knee_slope if cfg.warmup == 'exp' else 0.0,
        knee_ratio=cfg.knee_ratio, minimum_after=cfg.minimum_after,
        fit_params=fit_params)
    return _Test(result.probability, result.argmin, knee, gp_adam,
                 restart_at(result.argmin))

  return jax.lax.cond(run, test, lambda: kept)


def _decide(cfg: _Config, state: AutoWUState, is_test, probability, knee,
            guard: _Guard):
  """``(positives, reason)``; ``reason != NOT_SWITCHED`` ends warmup now.

  Priority: a confident minimum, the knee passed, then the guard
  (divergence, then a non-finite loss), then the end of the maximal warmup.
  """
  positive = probability > cfg.confidence
  positives = jnp.where(is_test, jnp.where(positive, state.positives + 1, 0),
                        state.positives)
  confident = is_test & (positives >= cfg.patience)
  if cfg.minimum_after > 1.0 and cfg.warmup == 'exp':
    confident = confident & _past_start_up(_lr_span(cfg, state.count),
                                           cfg.minimum_after)
  reached_max = state.count >= cfg.warmup_steps
  reason = jnp.select(
      [confident, is_test & knee, guard.diverged, guard.non_finite,
       reached_max],
      [CONFIDENT_MINIMUM, KNEE_PASSED, DIVERGED, NON_FINITE, MAX_WARMUP],
      NOT_SWITCHED)
  reason = jnp.where(state.phase == WARMUP, reason, NOT_SWITCHED)
  return positives, reason.astype(jnp.int32)


def _restart_lr(cfg: _Config, reason, t, t_data, argmin, non_finite,
                spike_lr, incoherent):
  """The decay's peak LR, for a switch at step ``t`` (the LR it starts from,
  unless a second warmup ramps up to it).

  ``restart_fraction`` x the warmup LR at the test's restart point, or the LR
  reached when the maximal warmup ends without a minimum; at most the LR
  before the first loss spike. After a noise-dominated start
  (``incoherent``), a confident minimum or a passed knee restarts from the
  largest LR tested instead of the restart point. The loss seen at step t
  follows the update made with the LR of step t - 1: after a non-finite loss,
  restart at most from the LR of step t - 2, the largest one whose outcome
  was finite.
  """
  at_point = jnp.minimum(  # Never above the largest LR tested.
      cfg.restart_fraction * _warmup_lr(cfg, argmin * t_data),
      _warmup_lr(cfg, t_data))
  by_test = (reason == CONFIDENT_MINIMUM) | (reason == KNEE_PASSED)
  at_point = jnp.where(incoherent & by_test, _warmup_lr(cfg, t_data),
                       at_point)
  restart = jnp.minimum(
      jnp.where(reason == MAX_WARMUP, _warmup_lr(cfg, t), at_point), spike_lr)
  return jnp.where(non_finite,
                   jnp.minimum(restart, _warmup_lr(cfg, jnp.maximum(t - 2, 0))),
                   restart)


class _Rollback(NamedTuple):
  take: jax.Array  # This step's params go into the snapshot.
  snapshot_step: jax.Array
  back: jax.Array  # This update returns the params to the snapshot.


def _rollback(cfg: _Config, state: AutoWUState, t, is_test, estimate,
              switch, restart) -> _Rollback:
  """The warmup's use of the params snapshot: when to copy, when to go back.

  At each test step (``is_test``) the snapshot takes the params if the step's LR
  is at most ``_SNAPSHOT_MARGIN / min(restart_fraction, 1)`` x the restart LR
  that test gives (``estimate``): for a fraction of at most 1, 1.25 x the LR at
  its restart point (with the margin scaled too, a fraction of at most 0.8 would
  let no test step qualify, and a lower restart would go back to nothing). Where
  the loss-spike cap sets the estimate, that allows up to ``1.25 /
  restart_fraction`` x the capped LR, so with a fraction below 1 the copy may be
  from after the spike. Copying at the tests only keeps the params' copy off the
  other steps. A switch whose restart LR is below the LR of the last update (the
  warmup went past it), by at most ``_MAX_ROLLBACK_RATIO`` x the snapshot's,
  returns the params to it. With ``rollback`` off, or without a snapshot
  (``init(None)``), it neither copies nor goes back.
  """
  no = jnp.zeros((), bool)
  if state.snapshot is None or not cfg.rollback:
    return _Rollback(no, state.snapshot_step, no)
  margin = _SNAPSHOT_MARGIN / min(cfg.restart_fraction, 1.0)
  take = is_test & ~switch & (_warmup_lr(cfg, t) <= margin * estimate)
  reached = _warmup_lr(cfg, jnp.maximum(t - 1, 0))  # The last update's.
  back = (switch & (state.snapshot_step >= 0) & (restart < reached)
          & (reached <= _MAX_ROLLBACK_RATIO
             * _warmup_lr(cfg, state.snapshot_step)))
  step = jnp.where(take, t, jnp.where(switch & ~back, -1,
                                      state.snapshot_step))
  return _Rollback(take, step, back)


class _DecayGuard(NamedTuple):
  decay_ema: jax.Array
  decay_low: jax.Array
  decay_scale: jax.Array
  take: jax.Array  # This step's params go into the snapshot.
  fire: jax.Array  # This update returns the params to the guard's copy.


def _decay_guard(cfg: _Config, state: AutoWUState, t, loss,
                 finite) -> _DecayGuard:
  """The decay guard: back to the copy when the loss leaves the basin.

  From the step after the switch, ``decay_ema`` smooths the loss (the
  warmup guard's EMA). At the test cadence (``test_every``), while it is at
  a new low, the params are copied into the snapshot, idle after the switch,
  and ``decay_low`` takes its value. The guard fires when the EMA exceeds
  ``decay_low`` by ``decay_guard - 1`` x its size (``decay_guard`` x it for a
  positive loss), or on a non-finite loss, once a copy is kept: the update
  returns the params to the copy and the rest of the decay runs at half its
  LR (``decay_scale``; the optimizer's moments are not rolled back); the EMA
  starts again from the next loss, and the next copy sets the reference
  afresh, so one blow-up halves the LR once, not at every step until the
  loss is back. It selects only, so until it fires every update is the one
  without it, bit for bit.

  What it cannot do: the step back is the update ``snapshot - params``, so
  params that are already non-finite stay so (a non-finite loss from finite
  params, a bad batch, has its params undone, but not the inner optimizer's
  moments, which keep the bad gradient: chain ``optax.apply_if_finite`` on
  the inner optimizer for that; one from non-finite params only halves the
  LR). The EMA weighs a loss by 0.1, so one finite loss about
  ``10 (decay_guard - 1) + 1`` x the low (11x by default) fires it too. Its
  first copy is of the params at the first test-cadence step after the
  switch with a finite loss, whatever its size. Without a snapshot
  (``init(None)``) a firing only cuts the LR.
  """
  no = jnp.zeros((), bool)
  if math.isinf(cfg.decay_guard):
    return _DecayGuard(state.decay_ema, state.decay_low, state.decay_scale,
                       no, no)
  after = state.phase == DECAY  # The step after the switch, or later.
  ema = jnp.where(jnp.isinf(state.decay_ema), loss,
                  _GUARD_EMA_DECAY * state.decay_ema
                  + (1.0 - _GUARD_EMA_DECAY) * loss)
  ema = jnp.where(after & finite, ema, jnp.inf)
  kept = jnp.isfinite(state.decay_low)
  left = ema - state.decay_low > (cfg.decay_guard - 1.0) * jnp.abs(
      state.decay_low)  # As the warmup guard: losses may be negative.
  fire = after & kept & (~finite | left)
  take = (after & finite & ~fire & (ema <= state.decay_low)
          & ((t + 1) % cfg.test_every == 0))
  return _DecayGuard(
      decay_ema=jnp.where(fire, jnp.inf, ema),
      decay_low=jnp.where(take, ema, jnp.where(fire, jnp.inf,
                                                state.decay_low)),
      decay_scale=jnp.where(fire, _DECAY_GUARD_CUT * state.decay_scale,
                            state.decay_scale),
      take=take, fire=fire)


def _copied(snapshot: Any | None, params: Any, take: jax.Array) -> Any | None:
  """The snapshot, or the params in its dtypes where ``take`` (one cond).

  The rollback copies in the warmup and the decay guard after the switch, so
  one ``lax.cond`` on either serves both.
  """
  if snapshot is None:
    return None
  return jax.lax.cond(
      take, lambda: jax.tree.map(lambda p, s: p.astype(s.dtype), params,
                                 snapshot),
      lambda: snapshot)


def _scaled(updates: Any, lr: jax.Array, snapshot: Any | None,
            back: jax.Array, params: Any) -> Any:
  """The updates times ``lr``, or the step back to the snapshot (``back``).

  A select, not a ``lax.cond``: the product then fuses into the caller's
  ``apply_updates`` as it does without a snapshot, so every update but the
  step back is the one without it, bit for bit (a cond's output is written
  out, and XLA's rounding of the product then differs). The select reads
  the snapshot on every step; measured on CPU it costs a step no more than
  the cond did, within noise (``python -m experiments.bench_layout
  --against ...``).
  """
  updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
  if snapshot is None:
    return updates
  return jax.tree.map(
      lambda s, p, u: jnp.where(back, (s - p).astype(u.dtype), u),
      snapshot, params, updates)


@functools.partial(jax.jit, static_argnums=0)
def _update(cfg: _Config, updates, state: AutoWUState, loss, gradients,
            params):
  """One AutoWU update (jitted: one dispatch per eager call)."""
  t = state.count
  coherence = _coherence(cfg, state, gradients)
  window, keep, finite = _push(state, loss)
  guard = _guard(cfg, state, loss, window, keep, finite)
  spike = _spike(cfg, state, loss, window, keep, guard)
  is_test = ((state.phase == WARMUP) & guard.enough
             & ((t + 1) % cfg.test_every == 0))
  # Step of the newest loss in the window: x = 1 of the test.
  t_data = jnp.where(keep, t, jnp.maximum(t - 1, 0))
  # The test starts once the updates are computed: on CPU a test overlapping
  # the backward pass competes with its matmuls for the threads (measured:
  # +4.8 ms instead of +0.8 ms per MLP test step).
  updates, window, t_data = jax.lax.optimization_barrier(
      (updates, window, t_data))
  incoherent = _incoherent_start(cfg, coherence)

  def restart_at(reason, argmin):
    return _restart_lr(cfg, reason, t, t_data, argmin, guard.non_finite,
                       spike.spike_lr, incoherent)

  test = _maybe_test(cfg, is_test | guard.diverged | guard.non_finite, window,
                     t_data, state,
                     functools.partial(restart_at, CONFIDENT_MINIMUM))
  positives, reason = _decide(cfg, state, is_test, test.probability,
                              test.knee, guard)
  switch = reason != NOT_SWITCHED
  restart = restart_at(reason, test.argmin)
  rollback = _rollback(cfg, state, t, is_test, test.restart_estimate, switch,
                       restart)
  decay_guard = _decay_guard(cfg, state, t, loss, finite)
  # Taken in the warmup (rollback) or after the switch (guard), never both.
  snapshot = _copied(state.snapshot, params, rollback.take | decay_guard.take)
  switch_step = jnp.where(switch, t, state.switch_step)
  restart_lr = jnp.where(switch, restart, state.restart_lr)
  phase = jnp.where(switch, DECAY, state.phase)
  lr = decay_guard.decay_scale * _lr(cfg, t, phase, switch_step, restart_lr,
                                     incoherent)
  updates = _scaled(updates, lr, snapshot,
                    back=rollback.back | decay_guard.fire, params=params)
  stats = _stats(positives=positives, argmin=test.argmin,
                 loss_ema=guard.loss_ema, ema_min=guard.ema_min,
                 spike_lr=spike.spike_lr, last_loss=spike.last_loss,
                 diff_ema=spike.diff_ema,
                 coherence_sum=coherence.coherence_sum,
                 coherence_count=coherence.coherence_count,
                 restart_estimate=test.restart_estimate,
                 snapshot_step=rollback.snapshot_step,
                 decay_ema=decay_guard.decay_ema,
                 decay_low=decay_guard.decay_low,
                 decay_scale=decay_guard.decay_scale)
  return updates, state._replace(
      count=optax.safe_int32_increment(t), phase=phase, lr=lr,
      probability=test.probability, switch_step=switch_step,
      restart_lr=restart_lr,
      switch_reason=jnp.where(switch, reason, state.switch_reason),
      stats=stats, window=window, grad_sample=coherence.grad_sample,
      snapshot=snapshot, gp_adam=test.gp_adam)


# --------------------------------------------------------------------------
# The transformation.


def autowu(
    total_steps: int,
    steps_per_epoch: int,
    *,
    min_lr: float | None = None,
    max_lr: float = 1.0,
    max_warmup_fraction: float | None = None,
    max_warmup_epochs: float | None = None,
    min_warmup_epochs: float | None = None,
    warmup: Literal['exp', 'linear'] = 'exp',
    decay: Literal['cosine', 'constant_cosine', 'linear'] | None = None,
    cooldown_fraction: float = 0.2,
    confidence: float = 0.95,
    patience: int = 3,
    test_every: int | None = None,
    divergence_factor: float | None = 2.0,
    window_size: int = 256,
    grid_size: int = 256,
    lengthscale: float = 0.2,
    noise_floor: float = 1e-4,
    min_descent: float | None = None,
    valley_level: float | None = None,
    restart_fraction: float | None = None,
    spike_factor: float | None = None,
    knee_slope: float | None = None,
    knee_ratio: float | None = None,
    minimum_after: float | None = None,
    coherence_threshold: float | None = None,
    rewarm_fraction: float | None = None,
    rollback: bool | None = None,
    decay_guard: float | None = None,
    gp_fit: Literal['max_likelihood', 'adam'] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Automated learning-rate warmup and decay driven by the training loss.

  AutoWU (Kim et al. 2021) warms the learning rate up exponentially from
  ``min_lr`` towards ``max_lr``,

  .. math::

    \eta(t) = \eta_{min} (\eta_{max} / \eta_{min})^{t / T_w},
    \quad T_w = \lfloor f_w T \rfloor

  (the maximal warmup; ``max_warmup_epochs`` and ``min_warmup_epochs`` bound
  it in epochs),

  and smooths the curve of warmup losses against the warmup position with a
  Gaussian process. Every ``test_every`` steps it computes the probability
  that the minimum of the smoothed curve lies in the past,

  .. math::

    p = \max_{i < k} \Phi\left(\frac{m_k - m_i}
        {\sqrt{C_{ii} + C_{kk} - 2 C_{ik}}}\right),

  and after ``patience`` consecutive tests with :math:`p >` ``confidence`` it
  restarts from the LR the warmup had at the minimum of the posterior mean
  (the paper's rule; by default, halfway in log LR between that minimum and
  the entry of its valley floor, at most the knee of the curve and at most
  the LR before the first loss spike), then decays it to zero at
  ``total_steps`` (linear by default; the paper's cosine, or constant then
  cosine over the last ``cooldown_fraction``). Past ``total_steps`` the LR
  is 0. If
  no switch happens by :math:`T_w`, decay starts from the LR reached.

  **Chain order.** The transformation multiplies the incoming updates by the
  (positive) LR, so it goes *last* in a chain, after an optimizer built with
  ``learning_rate=1.0``: ``optax.chain(optax.lamb(1.0), autowu(...))``. Put
  anywhere else (e.g. before ``optax.adam``, which normalizes the scale away)
  it silently does nothing useful; this cannot be detected from inside the
  chain. Its update needs the training loss, ``update(updates, state,
  params, value=loss)`` (the global mean loss in data-parallel training),
  and may take the minibatch gradients, ``gradients=grads`` (the
  coherence rule; :func:`autowu_adamw` etc. pass them themselves).

  **Defaults that differ from the paper** (measured on Fashion-MNIST, see the
  README): the warmup starts at 1e-3 and takes at most a quarter of the budget
  (the paper's 1e-5 over half of it spends a third of a short budget at LRs
  that teach nothing) and at most 5 epochs (``max_warmup_epochs``: a slower
  ramp restarts lower, and past 20 epochs too low: MLP + LAMB at 40 / 80
  epochs restarted at 0.007-0.012 against the grid's 0.01, 0.51 / 0.40 pp
  below the grid, with the cap 0.16 / 0.20) and at least half an epoch on
  budgets under two epochs (``min_warmup_epochs``: on a one-epoch budget a
  quarter of it ramps the LR too fast to see a high LR's damage; LAMB on a
  byte-level LM restarted 3x above the grid's peak, 24-27 % above the grid
  in bits per byte), the restart point lies in the valley before the
  minimum (a fast warmup measures each LR for few steps, so LRs past the
  optimum still look good), a test needs a real descent (``min_descent``), no
  confident minimum ends warmup before the LR has tripled
  (``minimum_after``; Adam's start-up bump once did), a loss spike caps the
  restart (``spike_factor``), and the knee rule (``knee_slope``,
  :func:`knee_outcome`) ends warmup once the LR has doubled past the knee of
  the log-loss-vs-log-LR curve (``knee_ratio``) and restarts at most from
  the knee: on a transformer the loss reaches a plateau early in the warmup,
  and the LRs along the plateau look fine in the short run but leave the
  model on it for good (measured on a byte-level LM: restart 2x lower, 33 %
  -> 9 % above a tuned grid in bits per byte at batch 16). Given the
  minibatch gradients (``update(..., value=loss, gradients=grads)``; the
  ready-made chains do it), a start whose successive gradients are already
  uncorrelated (``coherence_threshold``) restarts from the largest LR
  tested: the loss curve of such a ramp starts inside a broad basin and its
  valley sits too low (measured on Fashion-MNIST with AdamW: the CNN's
  grid picks 6-10x the valley; restarting at the LR reached ends 0.17 pp
  below the grid instead of 0.58), and the decay after it begins with a
  second, linear warmup over a fifth of the budget (``rewarm_fraction``; on
  the three AdamW image cases of the suite the mean gap to the grid goes
  from -0.26 to -0.10 pp, see the README). At a switch below the LR the
  warmup reached, the params go back to where the warmup's LR was that of
  the restart (``rollback``): the decay starts from weights the larger LRs
  never touched (the optimizer's moments stay; the steps since are lost to
  the budget). This keeps a copy of the params in the state. After the
  switch, the same copy backs the decay guard (``decay_guard``): when the
  loss leaves its basin, the params go back to its lowest point and the rest
  of the decay runs at half the LR (with the 5-epoch cap, a toy that
  tolerates lower LRs over longer budgets blew up in 6 of 12 runs at 100
  epochs; with the guard in none; it never fired on the suite's runs). For
  a model whose best LR is below ~3e-3, pass a smaller ``min_lr``.

  **Short budgets.** Testing once an epoch, as the authors do, lets the LR grow
  by x30 or more between the true minimum and the switch when the budget is
  ~20 epochs. The default ``test_every`` (:func:`default_test_every`) is 1/40
  of the maximal warmup, so the LR grows by at most
  :math:`(\eta_{max}/\eta_{min})^{1/40}` between tests, and the divergence
  guard ends warmup as soon as the loss leaves the basin: a non-finite loss,
  or a short (10-step) EMA :math:`\bar y` of the loss with
  :math:`\bar y - \bar y_{min} > (\mathrm{factor} - 1) |\bar y_{min}|`
  (:math:`\bar y_{min}` the smallest EMA so far) restarts at once from the LR
  at the GP minimum. The authors' rule is exactly ``autowu(...,
  test_every=steps_per_epoch, divergence_factor=None)``.

  **Non-finite losses** (NaN, +-Inf, magnitude above 1e15) never enter the
  window, the guard's EMA or the GP; with the guard on, the first one in
  warmup ends it (``NON_FINITE``). The guard and the knee rule assume a loss
  whose zero means something (cross-entropy, MSE). Non-finite losses,
  checkpoints, data parallelism, gradient accumulation and
  ``inject_hyperparams`` are covered in the user guide (``docs/guide``).

  Args:
    total_steps: T, the total number of updates (steps_per_epoch x epochs),
      >= 2.
    steps_per_epoch: number of updates per epoch (the authors' test period),
      in ``[1, total_steps]``.
    min_lr: initial warmup LR, > 0; ``None``: ``DEFAULTS['min_lr']``.
    max_lr: largest warmup LR, > ``min_lr``.
    max_warmup_fraction: :math:`f_w`, the longest warmup as a fraction of T,
      in (0, 1); ``None``: ``DEFAULTS['max_warmup_fraction']``.
    max_warmup_epochs: the longest warmup in epochs, > 0 (``math.inf``: no
      cap): the maximal warmup is at most ``max(max_warmup_epochs *
      steps_per_epoch, 40)`` steps (the cap is never below 40 steps, one
      test a step), so past
      ``max_warmup_epochs / f_w`` epochs (20 at the defaults) a longer budget
      lengthens the decay, not the warmup. ``None``:
      ``DEFAULTS['max_warmup_epochs']`` (5; the paper's warmup has no cap).
    min_warmup_epochs: the maximal warmup is at least this many epochs or
      half the budget, whichever is shorter (the cap above still bounds
      it), >= 0:
      :math:`T_w` = ``floor(min(max(f_w * T, min(min_warmup_epochs *
      steps_per_epoch, T / 2)), max(max_warmup_epochs * steps_per_epoch,
      40)))``, so it changes only budgets under ``min_warmup_epochs / f_w``
      epochs (2 at the defaults); 0 disables it. ``None``:
      ``DEFAULTS['min_warmup_epochs']`` (0.5; the paper's warmup is half the
      budget).
    warmup: ``'exp'`` (exponential, the paper's) or ``'linear'``.
    decay: the LR's shape from the restart to 0 at T: ``'linear'``,
      ``'cosine'`` or ``'constant_cosine'`` (constant, then a cosine over the
      last ``cooldown_fraction`` of T). ``None``: ``DEFAULTS['decay']``
      (linear; the paper's is cosine).
    cooldown_fraction: fraction of T of the final cosine for
      ``'constant_cosine'``, in (0, 1].
    confidence: a test is positive if the past-minimum probability exceeds
      this, in (0.5, 1).
    patience: number of consecutive positive tests that end warmup, >= 1.
    test_every: steps between minimum tests, in ``[1, T_w]``; ``None`` gives
      :func:`default_test_every`.
    divergence_factor: see above, > 1; ``None`` disables the guard.
    window_size: capacity of the loss window (even, >= 8).
    grid_size: number of posterior grid points (>= 8).
    lengthscale: RBF lengthscale as a fraction of the elapsed warmup,
      >= 0.01 (the GP's cost grows like 1 / lengthscale).
    noise_floor: smallest per-bin noise-to-signal variance ratio, in (0, 1).
    min_descent: descent gate, >= 0: a test counts as positive only if the
      posterior mean falls into its minimum by more than this many noise
      std of a mean over one lengthscale of losses (see
      :func:`minimum_test_outcome`); 0 disables it. ``None``:
      ``DEFAULTS['min_descent']``.
    valley_level: where the restart point lies, in [0, 1): 0 is the
      posterior-mean minimum (the paper's); ``v > 0`` halfway between it and
      the entry of its valley floor (the first x within ``v`` x the drop of
      the minimum). ``None``: ``DEFAULTS['valley_level']``.
    restart_fraction: the restart LR is this multiple of the warmup LR at the
      restart point, > 0, and at most the largest LR the warmup tested.
      ``None``: ``DEFAULTS['restart_fraction']``.
    spike_factor: the restart LR is at most the LR of the update before the
      first warmup loss above ``spike_factor`` x the smallest smoothed loss
      and 4 noise scales above it, > 1; ``math.inf`` disables the cap.
      ``None``: ``DEFAULTS['spike_factor']``.
    knee_slope: the knee rule (exponential warmup, positive losses), >= 0:
      the restart point is at most the knee of the loss-vs-LR curve, the
      last LR before the minimum where the log loss still fell by this much
      per decade of LR, and warmup ends once the LR is ``knee_ratio`` x the
      knee's (see :func:`knee_outcome`); 0 disables it. ``None``:
      ``DEFAULTS['knee_slope']``.
    knee_ratio: with the knee rule, warmup ends once the LR is this many
      times the knee's, > 1. ``None``: ``DEFAULTS['knee_ratio']``.
    minimum_after: (exponential warmup) no confident minimum ends warmup
      before the LR is this many times ``min_lr``, and a knee at a lower LR
      is none, >= 1: a dip or a fast drop in the first steps is the
      optimizer's start-up transient, not a feature of the loss over LRs;
      1 disables it. ``None``: ``DEFAULTS['minimum_after']``.
    coherence_threshold: in [-1, 1]; used only when the update is given the
      minibatch gradients (``gradients=``, as the ready-made chains
      :func:`autowu_adamw`, :func:`autowu_lamb` and :func:`autowu_adamp`
      do): if the mean cosine of successive gradients over the first tenth
      of the maximal warmup is below it, the start is noise-dominated, and a
      confident minimum or a passed knee restarts from the largest LR the
      warmup tested instead of the restart point (``restart_fraction``
      does not apply to it; still at most the LR before the first loss
      spike); -1 disables it. ``None``: ``DEFAULTS['coherence_threshold']``.
      Under ``optax.MultiSteps`` pass the accumulated gradients (the
      ready-made chains inside it see them); inside
      ``optax.multi_transform`` or ``optax.masked`` leave ``gradients=`` to
      the ready-made chains (user-passed gradients of the whole model raise).
    rewarm_fraction: after a noise-dominated start (see
      ``coherence_threshold``; whatever ended warmup), the decay begins with
      a second, linear warmup over this fraction of T: the LR of step ``t``
      is the decay's times ``min(1, (t + 1 - switch_step) / L)``,
      ``L = floor(rewarm_fraction * T)``; in [0, 1), 0 (or ``L < 1``)
      disables it. It never applies without ``gradients=`` or with
      ``coherence_threshold=-1``. ``state.lr`` (:func:`get_lr`) is the
      ramped LR; ``restart_lr`` the decay's peak. ``None``:
      ``DEFAULTS['rewarm_fraction']``.
    rollback: whether to undo the warmup's excursion past the restart LR: the
      state keeps a copy of the params (``snapshot``, in their dtypes), the
      params of the last test step whose LR was at most ``1.25 /
      min(restart_fraction, 1)`` x that test's restart LR (for a fraction of at
      most 1, 1.25 x the LR at its restart point: a lower restart goes back to
      about the restart point's params, not below them; where the loss-spike cap
      binds, up to ``1.25 / fraction`` x the capped LR, so the copy may be from
      after the spike); a switch whose restart LR is below the LR of the last
      update (a confident minimum, the knee, the guard, a loss spike's cap; not
      the LR reached at the end of the maximal warmup, nor the largest LR tested
      after a noisy start), if that LR is at most 4x the snapshot's (a longer
      warmup kept learning at the larger LRs), makes that update ``snapshot -
      params``, so the chain must apply it (``optax.apply_updates``) and
      ``autowu`` must be the last transformation. Needs ``params`` at every
      update (a ``ValueError`` without them) unless built with ``init(None)``.
      The optimizer's own state (moments) is not rolled back. ``None``:
      ``DEFAULTS['rollback']`` (``True``; the authors' rule: ``False``).
    decay_guard: the guard after the switch, > 1 (``math.inf``: off). From the
      step after the switch a short EMA of the loss (about 10 steps) is tracked;
      at every ``test_every``-th step at which it is at a new low, the params
      are copied (into the rollback's ``snapshot``, idle after the switch). Once
      the EMA exceeds ``decay_guard`` x its value at the copy, or a loss is
      non-finite, the update returns the params to the copy (``snapshot -
      params``, as the rollback does) and the rest of the decay runs at half its
      LR (each firing halves it again; the optimizer's moments are kept). Params
      that are already non-finite stay so (``snapshot - params`` is then
      non-finite too): after a non-finite loss from a bad batch the params are
      restored, but the inner optimizer's moments keep the bad gradient (chain
      ``optax.apply_if_finite`` on the inner optimizer), and one from non-finite
      params only halves the LR. The first copy is taken at the first
      ``test_every``-th step after the switch with a finite loss. The EMA weighs
      a loss by 0.1, so one finite loss about ``10 (decay_guard - 1) + 1`` x the
      low (11x by default) fires it as a blow-up does. It selects only: until it
      fires, every update is the one without it, bit for bit. It keeps the
      restart safe when the capped warmup (``max_warmup_epochs``) restarts a
      long budget too high. Needs ``params`` as ``rollback`` does (under
      ``init(None)`` a firing only halves the LR). ``None``:
      ``DEFAULTS['decay_guard']`` (2; the authors' rule: off).
    gp_fit: how each test sets the GP's signal and noise variance:
      ``'max_likelihood'`` maximizes the marginal likelihood of the
      standardized losses at every test; ``'adam'`` is the authors' fit
      (:func:`optax_autolr.gp.adam_fit`: raw loss units, 100 Adam steps per
      test warm-started from the last test's, so the noise adapts slowly and
      a loss that explodes is all but interpolated), their positions
      (``index / number of losses``) and their test's jitter (1e-4 squared
      loss units). ``None``: ``DEFAULTS['gp_fit']``
      (``'max_likelihood'``; the authors' rule: ``'adam'``).

  The arguments whose default is ``None`` take the library's defaults
  (``optax_autolr.DEFAULTS``, chosen by measurement, see the README), except
  under the authors' rule (``test_every == steps_per_epoch`` and
  ``divergence_factor=None``), where they take the paper's values
  (``optax_autolr.AUTHORS``: ``min_lr=1e-5``, ``max_warmup_fraction=0.5``
  with no cap in epochs,
  cosine decay, restart at the minimum, no gate, no spike cap, no knee, no
  coherence rule, no second warmup, no rollback and no decay guard, the
  authors' GP fit).
  Any of them given explicitly is used as given.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AutoWUState`.

  Raises:
    ValueError: an argument out of its range (the message names it).
    TypeError: an argument of the wrong kind, e.g. a ``jax.Array`` (the
      arguments are constants, not injectable hyperparameters).

  Example:
    >>> import jax
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
    >>> print(f'{float(optax_autolr.get_lr(state)):.1e}')
    1.0e-03

  References:
    Kim et al., `Automated Learning Rate Scheduler for Large-batch Training
    <https://arxiv.org/abs/2107.05855>`_, 2021.
  """
  cfg = _make_config(**locals())

  def init_fn(params):
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    i32 = lambda v: jnp.asarray(v, jnp.int32)
    constants = _state_constants(cfg)
    return AutoWUState(
        count=i32(0), phase=i32(WARMUP), lr=f32(cfg.min_lr),
        probability=f32(0.0), switch_step=i32(-1), restart_lr=f32(0.0),
        switch_reason=i32(NOT_SWITCHED),
        stats=_stats(positives=0.0, argmin=0.0, loss_ema=0.0,
                     ema_min=jnp.inf, spike_lr=jnp.inf, last_loss=0.0,
                     diff_ema=0.0, coherence_sum=0.0, coherence_count=0.0,
                     restart_estimate=jnp.inf, snapshot_step=-1.0,
                     decay_ema=jnp.inf, decay_low=jnp.inf, decay_scale=1.0),
        window=window_lib.window_init(cfg.window_size),
        int_constants=i32([constants[n] for n in INT_CONSTANTS]),
        float_constants=f32([constants[n] for n in FLOAT_CONSTANTS]),
        grad_sample=None if params is None else jnp.zeros(  # Uncommitted.
            (sum(_sample_plan(jnp.shape(p)).size
                 for p in jax.tree.leaves(params)),), jnp.float32),
        snapshot=(optax.tree_utils.tree_zeros_like(params)
                  if _keeps_snapshot(cfg) and params is not None else None),
        gp_adam=gp.adam_fit_init() if cfg.gp_fit == 'adam' else None)

  def update_fn(updates, state, params=None, *, value=None, gradients=None,
                **extra_args):
    del extra_args
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
    if state.snapshot is None:
      params = None  # Not needed.
    elif params is None:
      raise ValueError(
          'autowu(rollback=True) and its decay guard need the params at every '
          'update: call `tx.update(updates, state, params, value=loss)` '
          '(nnx.Optimizer passes them), or build it with `rollback=False, '
          'decay_guard=math.inf`.')
    _warn_if_other_config(cfg, state)
    if gradients is not None:
      _check_gradients(gradients, updates, state.grad_sample)
    return _update(cfg, updates, state, loss.astype(jnp.float32), gradients,
                   params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _keeps_snapshot(cfg: _Config) -> bool:
  """Whether the state keeps a params snapshot (rollback, decay guard)."""
  return cfg.rollback or not math.isinf(cfg.decay_guard)


def _check_gradients(gradients: Any, updates: Any, grad_sample: Any) -> None:
  """``gradients=`` must have the leaves of the updates (of the params
  :func:`autowu` got)."""
  paths = lambda tree: [jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]]
  shapes = lambda tree: [jnp.shape(x) for x in jax.tree.leaves(tree)]
  size = sum(_sample_plan(s).size for s in shapes(gradients))
  if (shapes(gradients) != shapes(updates) or paths(gradients) != paths(updates)
      or size != (0 if grad_sample is None else np.size(grad_sample))):
    raise ValueError(
        '`gradients` must be the minibatch gradients of the params autowu was '
        'initialized with (the same tree): got '
        f'{len(jax.tree.leaves(gradients))} leaves, the updates have '
        f'{len(jax.tree.leaves(updates))}, or their paths or shapes differ. '
        'Inside `optax.multi_transform` or `optax.masked`, leave `gradients` '
        'out.')


def _is_authors_rule(test_every, divergence_factor, steps_per_epoch) -> bool:
  """Whether the arguments ask for the authors' rule (tests once an epoch, no guard)."""
  return (test_every is not None and divergence_factor is None
          and not isinstance(test_every, bool)
          and isinstance(test_every, numbers.Integral)
          and int(test_every) == steps_per_epoch)


def _check_rule_args(min_descent, valley_level, restart_fraction,
                     spike_factor, knee_slope, knee_ratio, minimum_after,
                     coherence_threshold, rewarm_fraction) -> dict[str, Any]:
  """Checks the decision rule's arguments (defaults already resolved)."""
  c = _checks
  if isinstance(spike_factor, numbers.Real) and spike_factor == math.inf:
    spike_factor = None  # No cap.
  else:
    spike_factor = c.check_float('spike_factor', spike_factor, 1.0, math.inf,
                                 low_open=True)
  return dict(
      min_descent=c.check_float('min_descent', min_descent, 0.0, math.inf),
      valley_level=c.check_float('valley_level', valley_level, 0.0, 1.0,
                                 high_open=True),
      restart_fraction=c.check_float('restart_fraction', restart_fraction,
                                     0.0, math.inf, low_open=True),
      spike_factor=spike_factor,
      knee_slope=c.check_float('knee_slope', knee_slope, 0.0, math.inf),
      knee_ratio=c.check_float('knee_ratio', knee_ratio, 1.0, math.inf,
                               low_open=True),
      minimum_after=c.check_float('minimum_after', minimum_after, 1.0,
                                  math.inf),
      coherence_threshold=c.check_float('coherence_threshold',
                                        coherence_threshold, -1.0, 1.0),
      rewarm_fraction=c.check_float('rewarm_fraction', rewarm_fraction, 0.0,
                                    1.0, high_open=True))


def _check_decay_guard(decay_guard) -> float:
  """``decay_guard`` as a float > 1, or ``math.inf`` (off)."""
  if isinstance(decay_guard, numbers.Real) and decay_guard == math.inf:
    return math.inf
  return _checks.check_float('decay_guard', decay_guard, 1.0, math.inf,
                             low_open=True)


def _check_schedule_args(total_steps, steps_per_epoch, min_lr, max_lr,
                         max_warmup_fraction, max_warmup_epochs,
                         min_warmup_epochs, warmup, decay,
                         cooldown_fraction) -> dict[str, Any]:
  """Checks the LR range and the schedule's shape; derives the step counts."""
  c = _checks
  min_lr = c.check_float('min_lr', min_lr, 0.0, math.inf, low_open=True)
  max_lr = c.check_float('max_lr', max_lr, 0.0, math.inf, low_open=True)
  if max_lr <= min_lr:
    raise ValueError(
        f'`max_lr` must be > `min_lr`, got max_lr={max_lr}, min_lr={min_lr}.')
  max_warmup_fraction = c.check_float('max_warmup_fraction',
                                      max_warmup_fraction, 0.0, 1.0,
                                      low_open=True, high_open=True)
  if not (isinstance(max_warmup_epochs, numbers.Real)
          and max_warmup_epochs == math.inf):  # inf: no cap.
    max_warmup_epochs = c.check_float('max_warmup_epochs', max_warmup_epochs,
                                      0.0, math.inf, low_open=True)
  min_warmup_epochs = c.check_float('min_warmup_epochs', min_warmup_epochs,
                                    0.0, math.inf)
  c.check_choice('warmup', warmup, ('exp', 'linear'))
  c.check_choice('decay', decay, ('cosine', 'constant_cosine', 'linear'))
  cooldown_fraction = c.check_float('cooldown_fraction', cooldown_fraction,
                                    0.0, 1.0, low_open=True)
  warmup_steps = _max_warmup_steps(total_steps, steps_per_epoch,
                                   max_warmup_fraction, max_warmup_epochs,
                                   min_warmup_epochs)
  if warmup_steps < 1:
    raise ValueError(
        '`max_warmup_fraction * total_steps` must be >= 1 step, got '
        f'{max_warmup_fraction} * {total_steps}.')
  decay_start = (int(math.floor((1.0 - cooldown_fraction) * total_steps))
                 if decay == 'constant_cosine' else 0)
  return dict(min_lr=min_lr, max_lr=max_lr, warmup=warmup, decay=decay,
              warmup_steps=warmup_steps, decay_start=decay_start)


def _check_test_args(steps_per_epoch, warmup_steps, confidence, patience,
                     test_every, divergence_factor) -> dict[str, Any]:
  """Checks when and how warmup is tested; warns when it cannot end early."""
  c = _checks
  confidence = c.check_float('confidence', confidence, 0.5, 1.0,
                             low_open=True, high_open=True)
  patience = c.check_int('patience', patience, 1)
  if test_every is None:  # default_test_every's, from the checked warmup.
    test_every = max(1, min(steps_per_epoch,
                            warmup_steps // _TESTS_PER_WARMUP))
  test_every = c.check_int('test_every', test_every, 1, warmup_steps)
  if warmup_steps < _MIN_LOSSES_FOR_TEST:
    warnings.warn(
        f'autowu: the maximal warmup ({warmup_steps} steps) is shorter than '
        f'the {_MIN_LOSSES_FOR_TEST} losses the minimum test and the guards '
        'need: warmup will end at the LR it reached (up to `max_lr`). '
        'Lengthen the budget, `max_warmup_fraction` or `max_warmup_epochs`, '
        'or lower `max_lr`.',
        stacklevel=4)
  elif patience * test_every > warmup_steps:
    warnings.warn(
        f'autowu: `patience` * `test_every` = {patience} * {test_every} > '
        f'the maximal warmup ({warmup_steps} steps): warmup can only end by '
        'the divergence guard or at the maximal warmup, never by a confident '
        'minimum. Test more often or lengthen the warmup.', stacklevel=4)
  if divergence_factor is not None:
    divergence_factor = c.check_float('divergence_factor', divergence_factor,
                                      1.0, math.inf, low_open=True)
  return dict(confidence=confidence, patience=patience, test_every=test_every,
              divergence_factor=divergence_factor)


def _check_gp_args(window_size, grid_size, lengthscale, noise_floor, gp_fit
                   ) -> dict[str, Any]:
  """Checks the loss window's and the GP's sizes and fit."""
  c = _checks
  window_size = c.check_int('window_size', window_size, 8)
  if window_size % 2:
    raise ValueError(f'`window_size` must be even, got {window_size}.')
  return dict(
      window_size=window_size,
      grid_size=c.check_int('grid_size', grid_size, 8),
      lengthscale=c.check_float('lengthscale', lengthscale,
                                gp.MIN_LENGTHSCALE, math.inf),
      noise_floor=c.check_float('noise_floor', noise_floor, 0.0, 1.0,
                                low_open=True, high_open=True),
      gp_fit=c.check_choice('gp_fit', gp_fit, _GP_FITS))


def _make_config(total_steps, steps_per_epoch, min_lr, max_lr,
                 max_warmup_fraction, max_warmup_epochs, min_warmup_epochs,
                 warmup, decay,
                 cooldown_fraction,
                 confidence, patience, test_every, divergence_factor,
                 window_size, grid_size, lengthscale, noise_floor,
                 min_descent, valley_level, restart_fraction,
                 spike_factor, knee_slope, knee_ratio, minimum_after,
                 coherence_threshold, rewarm_fraction, rollback,
                 decay_guard, gp_fit) -> _Config:
  """Validates the arguments of :func:`autowu` and derives its constants.

  Arguments left to None take the library's default (:data:`DEFAULTS`), or
  the paper's value (:data:`AUTHORS`) under the authors' rule.
  """
  total_steps = _checks.check_int('total_steps', total_steps, 2)
  steps_per_epoch = _checks.check_int('steps_per_epoch', steps_per_epoch, 1,
                                      total_steps)
  authors = _is_authors_rule(test_every, divergence_factor, steps_per_epoch)
  preset = AUTHORS if authors else DEFAULTS
  given = dict(min_lr=min_lr, max_warmup_fraction=max_warmup_fraction,
               max_warmup_epochs=max_warmup_epochs,
               min_warmup_epochs=min_warmup_epochs,
               decay=decay, min_descent=min_descent, valley_level=valley_level,
               restart_fraction=restart_fraction, spike_factor=spike_factor,
               knee_slope=knee_slope, knee_ratio=knee_ratio,
               minimum_after=minimum_after,
               coherence_threshold=coherence_threshold,
               rewarm_fraction=rewarm_fraction, rollback=rollback,
               decay_guard=decay_guard, gp_fit=gp_fit)
  r = {k: preset[k] if v is None else v for k, v in given.items()}
  rule = _check_rule_args(r['min_descent'], r['valley_level'],
                          r['restart_fraction'], r['spike_factor'],
                          r['knee_slope'], r['knee_ratio'],
                          r['minimum_after'], r['coherence_threshold'],
                          r['rewarm_fraction'])
  sched = _check_schedule_args(total_steps, steps_per_epoch, r['min_lr'],
                               max_lr, r['max_warmup_fraction'],
                               r['max_warmup_epochs'], r['min_warmup_epochs'],
                               warmup, r['decay'],
                               cooldown_fraction)
  test = _check_test_args(steps_per_epoch, sched['warmup_steps'], confidence,
                          patience, test_every, divergence_factor)
  coherence_steps = max(2, int(_COHERENCE_FRACTION * sched['warmup_steps']))
  rewarm_steps = int(math.floor(rule.pop('rewarm_fraction') * total_steps))
  return _Config(total_steps=total_steps, **sched, **test, **rule,
                 coherence_steps=coherence_steps, rewarm_steps=rewarm_steps,
                 rollback=_checks.check_bool('rollback', r['rollback']),
                 decay_guard=_check_decay_guard(r['decay_guard']),
                 **_check_gp_args(window_size, grid_size, lengthscale,
                                  noise_floor, r['gp_fit']))


def _state_constants(cfg: _Config) -> dict[str, Any]:
  """The constants of ``cfg`` as the state keeps them
  (:data:`INT_CONSTANTS`, :data:`FLOAT_CONSTANTS`)."""
  exp = cfg.warmup == 'exp'  # The linear warmup has no knee rule.
  values = dict(
      gp_fit_steps=gp.AUTHORS_FIT_STEPS if cfg.gp_fit == 'adam' else 0,
      knee_slope=cfg.knee_slope if exp else 0.0,
      log_lr_range=math.log(cfg.max_lr / cfg.min_lr) if exp else 0.0,
      minimum_after=cfg.minimum_after if exp else 1.0)
  return {n: values[n] if n in values else getattr(cfg, n)
          for n in INT_CONSTANTS + FLOAT_CONSTANTS}


def _config_mismatch(ours: dict[str, Any], state_values: dict[str, Any]
                     ) -> list[str]:
  """``'name: state x, transformation y'`` for every differing constant.

  Values may be arrays (stacked states): they differ if any element does.
  """
  def text(v):
    v = np.unique(np.asarray(v, np.float64))
    if np.isnan(v).all():
      return 'missing (an older version\'s)'
    return f'{v[0]:g}' if v.size == 1 else '[' + ', '.join(
        f'{x:g}' for x in v) + ']'

  return [f'{name}: state {text(state_values[name])}, transformation '
          f'{text(ours[name])}' for name in ours
          if not np.allclose(state_values[name], ours[name], rtol=1e-6)]


def _warn_if_other_config(cfg: _Config, state: AutoWUState) -> None:
  """Eager updates: warn when the state was made by another ``autowu``."""
  packed = _unwrap((state.int_constants, state.float_constants))
  if any(isinstance(x, jax.core.Tracer) or np.ndim(x) != 1 for x in packed):
    return  # Under jit (or a stacked state): see check_restored.
  values = np.concatenate([np.asarray(x, np.float64) for x in packed])
  diffs = _config_mismatch(
      _state_constants(cfg),
      dict(zip(INT_CONSTANTS + FLOAT_CONSTANTS, values)))
  if diffs:
    warnings.warn('autowu: the state was made for another configuration ('
                  + '; '.join(diffs) + '); the transformation\'s wins.',
                  stacklevel=3)


def _flat_kwargs(autowu_kwargs: dict[str, Any]) -> dict[str, Any]:
  """Undoes ``optax.inject_hyperparams``'s binding of ``**autowu_kwargs``.

  It passes them as one keyword named ``autowu_kwargs``; flattened, the
  arguments reach :func:`autowu`, whose checks then say why injecting fails.
  """
  nested = autowu_kwargs.pop('autowu_kwargs', None)
  return {**(nested or {}), **autowu_kwargs}


def _then_autowu(inner, total_steps, steps_per_epoch, autowu_kwargs):
  """The ready-made chains: ``optax.chain(inner, autowu(...))``.

  Its update hands :func:`autowu` the incoming gradients (``gradients=``,
  the coherence rule) unless the caller passes them.
  """
  tx = optax.chain(inner, autowu(total_steps, steps_per_epoch,
                                 **_flat_kwargs(autowu_kwargs)))

  def update_fn(updates, state, params=None, **extra_args):
    extra_args.setdefault('gradients', updates)
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


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
  by the AutoWU learning rate, as in the paper's setup. The update hands
  :func:`autowu` the incoming gradients (``gradients=``, its coherence rule).

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
  lamb = optax.lamb(1.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                    mask=mask)
  return _then_autowu(lamb, total_steps, steps_per_epoch, autowu_kwargs)


def autowu_adamw(
    total_steps: int,
    steps_per_epoch: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Any = None,
    **autowu_kwargs,
) -> optax.GradientTransformationExtraArgs:
  """AdamW (``optax.adamw`` with learning rate 1) followed by :func:`autowu`.

  ``b1``, ``b2``, ``eps``, ``weight_decay`` and ``mask`` are those of
  ``optax.adamw``; its decoupled weight decay is part of the update, so
  AutoWU's learning rate scales it, as in ``optax.adamw(schedule)``. Every
  other keyword argument goes to :func:`autowu`. Call the update with
  ``value=loss``; it hands :func:`autowu` the incoming gradients
  (``gradients=``, its coherence rule).

  Example:
    >>> import optax_autolr
    >>> tx = optax_autolr.autowu_adamw(total_steps=2000, steps_per_epoch=100,
    ...                                weight_decay=1e-4)

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  adamw = optax.adamw(1.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=mask)
  return _then_autowu(adamw, total_steps, steps_per_epoch, autowu_kwargs)


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
  scales it, as a PyTorch scheduler would. The update hands :func:`autowu`
  the incoming gradients (``gradients=``, its coherence rule).

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
  inner = _adamp(1.0, b1=b1, b2=b2, eps=eps, delta=delta, wd_ratio=wd_ratio,
                 weight_decay=weight_decay, nesterov=nesterov, mask=mask)
  return _then_autowu(inner, total_steps, steps_per_epoch, autowu_kwargs)


# --------------------------------------------------------------------------
# Reading the state back.


def find_autowu_states(state: Any) -> dict[str, AutoWUState]:
  """Every :class:`AutoWUState` inside an optimizer state, by pytree path.

  Args:
    state: an optimizer state pytree (chains, ``optax.multi_transform``,
      ``optax.MultiSteps``, ``optax.inject_hyperparams``,
      ``nnx.Optimizer.opt_state``).

  Returns:
    ``{path: state}``, the paths as ``jax.tree_util.keystr`` gives them, in
    pytree order.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_autolr
    >>> tx = optax.multi_transform(
    ...     {'a': optax.chain(optax.lamb(1.0), optax_autolr.autowu(100, 10)),
    ...      'b': optax.chain(optax.adam(1.0), optax_autolr.autowu(100, 10))},
    ...     {'x': 'a', 'y': 'b'})
    >>> state = tx.init({'x': jnp.ones(2), 'y': jnp.ones(2)})
    >>> list(optax_autolr.find_autowu_states(state))
    [".inner_states['a'].inner_state[1]", ".inner_states['b'].inner_state[1]"]
    >>> lr = optax_autolr.get_lr(state, path="['b']")
    >>> print(f'{float(lr):.0e}')
    1e-03
  """
  is_state = lambda x: isinstance(x, AutoWUState)
  found = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_state)[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in found
          if is_state(leaf)}


def find_autowu_state(state: Any, path: str | None = None) -> AutoWUState:
  """Returns the :class:`AutoWUState` inside an optimizer state.

  Args:
    state: an optimizer state pytree (see :func:`find_autowu_states`).
    path: which one, when there are several: a substring of its path in
      :func:`find_autowu_states`, e.g. ``"['encoder']"`` in an
      ``optax.multi_transform`` state. ``None`` requires exactly one.

  Returns:
    The :class:`AutoWUState`.

  Raises:
    ValueError: if no state, or not exactly one, matches.
  """
  found = find_autowu_states(state)
  if path is not None:
    found = {k: v for k, v in found.items() if path in k}
  if len(found) == 1:
    return next(iter(found.values()))
  if not found:
    where = f' at a path containing {path!r}' if path is not None else ''
    raise ValueError(f'no AutoWUState{where} in the optimizer state.')
  paths = ', '.join(found)
  raise ValueError(
      f'found {len(found)} AutoWUStates in the optimizer state, at {paths}: '
      'pass `path=` (a substring of one of them) to pick one.')


def get_lr(state: Any, path: str | None = None) -> jax.Array:
  """The LR applied at the last update (``min_lr`` before the first)."""
  return _unwrap(find_autowu_state(state, path).lr)


def get_phase(state: Any, path: str | None = None) -> jax.Array:
  """``WARMUP`` (0) or ``DECAY`` (1)."""
  return _unwrap(find_autowu_state(state, path).phase)


def get_probability(state: Any, path: str | None = None) -> jax.Array:
  """Past-minimum probability of the last minimum test."""
  return _unwrap(find_autowu_state(state, path).probability)


def get_switch(state: Any, path: str | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(switch_step, restart_lr, switch_reason)``; step is -1 before it.

  ``restart_lr`` is the decay's peak LR: after a second warmup
  (``rewarm_fraction``) the applied LR (:func:`get_lr`) reaches it only at
  the ramp's end.
  """
  s = _unwrap(find_autowu_state(state, path))
  return s.switch_step, s.restart_lr, s.switch_reason


def get_metrics(state: Any, path: str | None = None) -> dict[str, Any]:
  """The AutoWU values worth logging, as Python numbers and text.

  For a host-side logger (TensorBoard, CLU, W&B); it reads the values off the
  device, so call it outside ``jax.jit`` (inside, log :func:`get_lr` etc.).

  Args:
    state: an optimizer state holding an :class:`AutoWUState`.
    path: see :func:`find_autowu_state`.

  Returns:
    A dict with ``step``, ``lr``, ``phase`` (``'warmup'``/``'decay'``),
    ``probability``, ``positives``, ``switch_step``, ``restart_lr``,
    ``switch_reason`` (text, from ``SWITCH_REASONS``),
    ``gradient_coherence`` (the mean cosine of successive gradients at the
    start of the warmup, NaN before any or without ``gradients=``) and
    ``snapshot_step`` (the step whose params the rollback's snapshot holds;
    after the switch, the step the params went back to; -1 for none) and
    ``decay_scale`` (the factor of the decay's LR: 1, halved by each firing
    of the decay guard, see ``decay_guard``).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_autolr
    >>> tx = optax.chain(optax.lamb(1.0), optax_autolr.autowu(1000, 50))
    >>> m = optax_autolr.get_metrics(tx.init({'w': jnp.ones(3)}))
    >>> m['phase'], m['switch_reason'], m['step']
    ('warmup', 'not switched', 0)
  """
  s = _to_numpy(find_autowu_state(state, path))
  if s is None:
    raise TypeError('get_metrics reads values off the device: call it '
                    'outside jax.jit, on a state of arrays.')
  if np.ndim(s.count):
    raise ValueError(
        f'get_metrics needs one state, got a stacked one (count shape '
        f'{np.shape(s.count)}): index it first, e.g. '
        '`jax.tree.map(lambda x: x[-1], state)`.')
  return {
      'step': int(s.count), 'lr': float(s.lr),
      'phase': PHASES[int(s.phase)], 'probability': float(s.probability),
      'positives': int(s.positives), 'switch_step': int(s.switch_step),
      'restart_lr': float(s.restart_lr),
      'switch_reason': SWITCH_REASONS[int(s.switch_reason)],
      'gradient_coherence': (float(s.coherence_sum) / int(s.coherence_count)
                             if int(s.coherence_count) else math.nan),
      'snapshot_step': int(s.snapshot_step),
      'decay_scale': float(s.decay_scale),
  }


def lr_hyperparams(state: Any, path: str | None = None
                   ) -> dict[str, jax.Array]:
  """``{'learning_rate': lr}``: the AutoWU LR in ``inject_hyperparams`` form.

  The arguments of :func:`autowu` are Python constants fixed when it is
  built, so ``optax.inject_hyperparams(autowu)`` is not supported (it raises
  a ``TypeError``); the LR it applies is part of its state. This reads it
  for code that logs ``state.hyperparams``. The effective LR also includes
  any ``learning_rate`` of the optimizer before :func:`autowu` in the chain.
  Works inside ``jax.jit``.

  Args:
    state: an optimizer state holding an :class:`AutoWUState`.
    path: see :func:`find_autowu_state`.

  Returns:
    ``{'learning_rate': lr}``, the LR applied at the last update.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_autolr
    >>> tx = optax.chain(optax.lamb(1.0), optax_autolr.autowu(1000, 50))
    >>> state = tx.init({'w': jnp.ones(3)})
    >>> {k: f'{float(v):.0e}' for k, v in
    ...  optax_autolr.lr_hyperparams(state).items()}
    {'learning_rate': '1e-03'}
  """
  return {'learning_rate': get_lr(state, path)}


def _config_nodes(tree: Any) -> dict[str, dict[str, float]]:
  """The constants of every AutoWU state in ``tree``, by path.

  Finds :class:`AutoWUState` nodes and their dict forms (``nnx.State`` of a
  split ``nnx.Optimizer``, an Orbax restore without a target).
  """
  def is_node(x):  # Dicts: by the constants (packed, or one leaf each in
    return isinstance(x, AutoWUState) or (  # earlier 0.3.0 states).
        isinstance(x, Mapping) and (
            all(n in x for n in ('int_constants', 'float_constants'))
            or all(n in x for n in INT_CONSTANTS[:3])))

  def value(node, name):
    if isinstance(node, AutoWUState) or 'int_constants' in node:
      return np.asarray(_packed(node, name))
    if name not in node:
      return np.asarray(np.nan)  # A state of an older version.
    v = node[name]
    return np.asarray(v.get_value() if hasattr(v, 'get_value') else v)

  found = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]
  return {jax.tree_util.keystr(path): {n: value(node, n)
                                        for n in INT_CONSTANTS
                                        + FLOAT_CONSTANTS}
          for path, node in found if is_node(node)}


def check_restored(restored: Any, fresh: Any) -> list[str]:
  """Warns when a restored state was made by an ``autowu`` of another config.

  A checkpoint restores into ``tx.init(params)`` of whatever ``tx`` the
  script builds now; if that ``tx`` has another ``total_steps`` (or warmup,
  lengthscale, ...), training goes on under the new constants, which is
  rarely what was meant. Call this after restoring, outside ``jax.jit``.
  Both arguments may also be the dict forms of optimizer states (an
  ``nnx.State``, an Orbax restore without a target).

  Args:
    restored: the restored optimizer state.
    fresh: ``tx.init(params)`` of the transformation that will continue.

  Returns:
    The differences found (also issued as one ``UserWarning``), ``[]`` if
    none.
  """
  new, old = _config_nodes(fresh), _config_nodes(restored)
  if len(new) == 1 and len(old) == 1:  # One each: paths may differ in form.
    new, old = {'': next(iter(new.values()))}, {'': next(iter(old.values()))}
  diffs = []
  for key, old_values in old.items():
    if key not in new:
      diffs.append(f'{key}: no AutoWU state at this path in `fresh`')
      continue
    diffs += [f'{key}: {d}' if key else d
              for d in _config_mismatch(new[key], old_values)]
  if diffs:
    warnings.warn('the restored AutoWU state was made for another '
                  'configuration: ' + '; '.join(diffs), stacklevel=2)
  return diffs


def loss_curve_posterior(state: Any, *, path: str | None = None,
                         lengthscale: float | None = None,
                         grid_size: int | None = None,
                         noise_floor: float | None = None,
                         min_descent: float | None = None,
                         valley_level: float | None = None,
                         knee_slope: float | None = None,
                         minimum_after: float | None = None,
                         gp_fit_steps: int | None = None,
                         ) -> tuple[jax.Array, gp.MinimumTestResult]:
  """Recomputes the minimum test on the warmup window, for plots and logging.

  After the switch the window is frozen, so this is the test the switch
  decision was based on: with the state's own constants (the defaults), the
  result's ``probability`` and ``argmin`` (the restart point, see
  :func:`minimum_test_outcome`) equal the state's, and its posterior is the GP's.
  Reading the constants needs a concrete state, so call it outside
  ``jax.jit`` (it is compiled internally, once per set of constants); under
  ``jax.jit`` pass all eight. Under ``gp_fit='adam'`` the test uses the
  hyperparameters the state's last test fitted (no new fit).

  Args:
    state: an optimizer state holding an :class:`AutoWUState`.
    path: see :func:`find_autowu_state`.
    lengthscale: overrides the state's RBF lengthscale.
    grid_size: overrides the state's number of grid points.
    noise_floor: overrides the state's noise floor.
    min_descent: overrides the state's descent gate.
    valley_level: overrides the state's valley level.
    knee_slope: overrides the state's knee slope.
    minimum_after: overrides the state's ``minimum_after``.
    gp_fit_steps: overrides the state's (0: fit by maximum marginal
      likelihood; more: test at the state's ``gp_adam`` hyperparameters).

  Returns:
    ``(steps, result)``: the grid as (fractional) step numbers and the
    :class:`~optax_autolr.gp.MinimumTestResult`, whose posterior is in loss
    units.
  """
  s = _unwrap(find_autowu_state(state, path))
  given = {'lengthscale': lengthscale, 'grid_size': grid_size,
           'noise_floor': noise_floor, 'min_descent': min_descent,
           'valley_level': valley_level, 'knee_slope': knee_slope,
           'minimum_after': minimum_after, 'gp_fit_steps': gp_fit_steps}
  for name, v in given.items():
    if v is None:
      field = getattr(s, name)
      if isinstance(field, jax.core.Tracer):
        raise TypeError(
            f'loss_curve_posterior under jax.jit cannot read `{name}` from '
            f'the state: pass {name}=... explicitly.')
      # The float32 copy, back to the shortest decimal (0.2, not 0.2000000030).
      given[name] = float(str(np.float32(field)))
  last = jnp.where(s.phase == WARMUP, s.count - 1, s.switch_step)
  # A non-finite loss at the switch step never entered the window.
  last = jnp.where((s.phase == DECAY) & (s.switch_reason == NON_FINITE),
                   s.switch_step - 1, last)
  last = jnp.maximum(last, 1)
  given['grid_size'] = int(given['grid_size'])
  fit_params = None
  if given.pop('gp_fit_steps'):
    if s.gp_adam is None:
      raise ValueError(
          'gp_fit_steps > 0 tests at the fit kept in the state, and this '
          "state has none (it was made with gp_fit='max_likelihood').")
    fit_params = s.gp_adam.params
  lr_span = s.log_lr_range * jnp.minimum(
      last.astype(jnp.float32) / s.warmup_steps, 1.0)
  result, _ = _jit_test(s.window, last, lr_span, fit_params=fit_params,
                        **given)
  # x = 1 is the newest loss's step; the authors' positions put it at
  # last + 1.
  end = last.astype(jnp.float32) + (0.0 if fit_params is None else 1.0)
  return result.grid * end, result
