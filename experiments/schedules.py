"""Optimizers and learning-rate schedules compared in the experiments.

:func:`make_optimizer` builds one of :data:`SCHEDULES` by name and returns
``(tx, needs_value, info)``. It validates the arguments and calls the
schedule's factory in the registry :data:`OPTIMIZERS` (name -> a small
function :class:`OptimizerArgs` -> :class:`Built`, one per optimizer family);
adding a schedule means adding one factory and one registry entry.

* ``tx``: an Optax transformation. Its ``update`` always accepts
  ``value=loss`` (transformations that do not use it ignore it), so a
  training loop can call ``optimizer.update(model, grads, value=loss)``
  whatever the schedule.
* ``needs_value``: whether ``tx`` actually *requires* ``value=`` (AutoWU,
  reduce-on-plateau).
* ``info``: a :class:`ScheduleInfo` with JSON-friendly hyperparameters
  (``info.hparams``), ``info.lr_fn(opt_state, step) -> (lr, phase,
  probability)`` (jit-friendly; ``nan`` / ``-1`` where a schedule has no such
  quantity) and ``info.eval_params_fn(opt_state, params)`` for the methods
  whose evaluation weights differ from the training iterate (Schedule-Free).

Schedules:

==========================  ==================================================
``autowu_lamb``             LAMB + AutoWU (:func:`optax_autolr.autowu_lamb`)
``autowu_adamp``            AdamP + AutoWU (:func:`optax_autolr.autowu_adamp`)
``autowu_adamw``            AdamW + AutoWU (:func:`optax_autolr.autowu_adamw`)
``warmup_cosine_lamb``      LAMB, linear warmup + cosine decay to 0
``warmup_cosine_adamp``     AdamP, linear warmup + cosine decay to 0
``warmup_cosine_adamw``     AdamW, linear warmup + cosine decay to 0
``warmup_linear_lamb``      LAMB, linear warmup + linear decay to 0
``warmup_linear_adamp``     AdamP, linear warmup + linear decay to 0
``warmup_linear_adamw``     AdamW, linear warmup + linear decay to 0
``prodigy``                 ``optax.contrib.prodigy()`` (defaults)
``dadapt_adamw``            ``optax.contrib.dadapt_adamw()`` (defaults)
``schedule_free_adamw``     ``optax.contrib.schedule_free_adamw`` (default LR
                            0.0025 unless ``peak_lr``; linear warmup over
                            ``warmup_fraction``)
``mechanize_lamb``          ``optax.contrib.mechanize(optax.lamb(1e-3))``
``cocob``                   ``optax.contrib.cocob()`` (defaults)
``reduce_on_plateau``       Adam + ``optax.contrib.reduce_on_plateau`` on the
                            epoch-mean training loss (x0.5 after 2 epochs
                            without improvement)
==========================  ==================================================

Decoupled weight decay (``weight_decay``) is applied, with the same rate, by
every optimizer that has one (LAMB, AdamP, AdamW, Prodigy, D-Adapt AdamW,
Schedule-Free AdamW, the LAMB inside Mechanic, the Adam of
reduce-on-plateau, as AdamW). Where the optimizer takes a mask, only
parameters with ``ndim > 1`` (kernels, not biases or norm scales) decay.
COCOB's ``weight_decay`` is an L2 penalty of different scale and Mechanic's
own ``weight_decay`` is a different quantity, so both keep the Optax default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

import optax_autolr

__all__ = [
    "SCHEDULES",
    "AUTOWU_SCHEDULES",
    "canonical",
    "Built",
    "DEFAULT_PEAK_LR",
    "DEFAULT_WEIGHT_DECAY",
    "OPTIMIZERS",
    "OptimizerArgs",
    "ScheduleInfo",
    "decay_mask",
    "make_optimizer",
]

DEFAULT_WEIGHT_DECAY = 1e-4

# Peak LRs used when ``peak_lr`` is None (schedules that need one).
DEFAULT_PEAK_LR: dict[str, float] = {
    "warmup_cosine_lamb": 1e-2,
    "warmup_cosine_adamp": 3e-3,
    "warmup_cosine_adamw": 3e-3,
    "warmup_linear_lamb": 1e-2,
    "warmup_linear_adamp": 3e-3,
    "warmup_linear_adamw": 3e-3,
    "schedule_free_adamw": 2.5e-3,  # optax default.
    "mechanize_lamb": 1e-3,  # base LR of the inner LAMB.
    "reduce_on_plateau": 3e-3,
}

# reduce_on_plateau settings (per epoch: the loss is averaged over an epoch).
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2

NAN = float("nan")

LrFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class ScheduleInfo:
  """What a training loop needs to know about a schedule besides ``tx``.

  Attributes:
    name: schedule name (one of :data:`SCHEDULES`).
    hparams: JSON-serializable hyperparameters (for ``summary.json``).
    lr_fn: ``(opt_state, step) -> (lr, phase, probability)``, float32 /
      int32 / float32 scalars, traceable under ``jax.jit``. ``opt_state`` is
      the *pure* optimizer state after the update of step ``step`` (0-based)
      (``nnx.as_pure(optimizer.opt_state)``). ``lr`` is the LR used by that
      update (``nan`` when the schedule has none, e.g. COCOB); ``phase`` is
      0 (warmup) / 1 (decay) or -1 when not applicable; ``probability`` is
      AutoWU's past-minimum probability (``nan`` otherwise).
    lr_label: what ``lr`` is, e.g. ``"lr"`` or ``"D"`` (Prodigy's estimate).
    eval_params_fn: ``(opt_state, params) -> params`` for evaluation, or
      None to evaluate the training parameters.
    is_autowu: whether ``optax_autolr.get_switch`` etc. apply to the state.
  """

  name: str
  hparams: dict[str, Any]
  lr_fn: LrFn
  lr_label: str = "lr"
  eval_params_fn: Callable[[Any, Any], Any] | None = None
  is_autowu: bool = False


def decay_mask(params: Any) -> Any:
  """Weight-decay mask: True for parameters with ``ndim > 1``."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _find(state: Any, cls: type) -> Any:
  is_cls = lambda x: isinstance(x, cls)  # noqa: E731
  found = [s for s in jax.tree.leaves(state, is_leaf=is_cls) if is_cls(s)]
  if len(found) != 1:
    raise ValueError(f"expected one {cls.__name__} in the state, found {len(found)}")
  return found[0]


def _f32(x: Any) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _no_phase() -> jax.Array:
  return jnp.asarray(-1, jnp.int32)


def _nan() -> jax.Array:
  return jnp.asarray(NAN, jnp.float32)


def _schedule_lr_fn(schedule: Callable[[Any], Any], warmup_steps: int) -> LrFn:
  def lr_fn(opt_state, step):
    del opt_state
    phase = jnp.where(step < warmup_steps, 0, 1).astype(jnp.int32)
    return _f32(schedule(step)), phase, _nan()

  return lr_fn


def _autowu_lr_fn(opt_state, step):
  del step
  return (
      _f32(optax_autolr.get_lr(opt_state)),
      jnp.asarray(optax_autolr.get_phase(opt_state), jnp.int32),
      _f32(optax_autolr.get_probability(opt_state)),
  )


def _state_field_lr_fn(cls: type, field: str, scale: float = 1.0) -> LrFn:
  def lr_fn(opt_state, step):
    del step
    value = getattr(_find(opt_state, cls), field)
    return _f32(jnp.sum(value) * scale), _no_phase(), _nan()

  return lr_fn


def _constant_lr_fn(lr: float) -> LrFn:
  def lr_fn(opt_state, step):
    del opt_state, step
    return _f32(lr), _no_phase(), _nan()

  return lr_fn


def _no_lr_fn(opt_state, step):
  del opt_state, step
  return _nan(), _no_phase(), _nan()


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerArgs:
  """The validated arguments of :func:`make_optimizer`, as a factory sees them.

  ``lr`` is ``peak_lr`` or the schedule's :data:`DEFAULT_PEAK_LR` (None for
  the LR-free methods); ``warmup_steps`` is ``int(warmup_fraction *
  total_steps)``.
  """

  total_steps: int
  steps_per_epoch: int
  lr: float | None
  warmup_fraction: float
  warmup_steps: int
  weight_decay: float
  autowu_kwargs: dict[str, Any]


class Built(NamedTuple):
  """What a factory returns; :func:`make_optimizer` adds the common fields."""

  tx: optax.GradientTransformationExtraArgs
  hparams: dict[str, Any]
  lr_fn: LrFn
  needs_value: bool = False
  lr_label: str = "lr"
  eval_params_fn: Callable[[Any, Any], Any] | None = None
  is_autowu: bool = False


def _autowu(make: Callable[..., Any], base: str, a: OptimizerArgs) -> Built:
  tx = make(a.total_steps, a.steps_per_epoch, weight_decay=a.weight_decay,
            mask=decay_mask, **a.autowu_kwargs)
  hp = dict(base=base, weight_decay=a.weight_decay, autowu_kwargs=a.autowu_kwargs)
  return Built(tx, hp, _autowu_lr_fn, needs_value=True, is_autowu=True)


def _warmup_decay(make: Callable[..., Any], base: str, a: OptimizerArgs,
                  decay: str = "cosine") -> Built:
  """``make`` with a linear warmup to ``a.lr``, then a ``decay`` (cosine or linear) to 0."""
  if decay not in ("cosine", "linear"):
    raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}")
  if decay == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=a.lr, warmup_steps=a.warmup_steps,
        decay_steps=max(a.total_steps, a.warmup_steps + 1), end_value=0.0)
  else:  # Linear warmup, then linear decay to 0 at total_steps.
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, a.lr, a.warmup_steps),
         optax.linear_schedule(a.lr, 0.0, max(a.total_steps - a.warmup_steps, 1))],
        [a.warmup_steps])
  tx = make(schedule, weight_decay=a.weight_decay, mask=decay_mask)
  hp = dict(base=base, peak_lr=a.lr, warmup_steps=a.warmup_steps,
            warmup_fraction=a.warmup_fraction, weight_decay=a.weight_decay)
  return Built(tx, hp, _schedule_lr_fn(schedule, a.warmup_steps))


def _d_estimate(make: Callable[..., Any], state_cls: type, a: OptimizerArgs) -> Built:
  """Prodigy / D-Adapt AdamW (Optax defaults); ``lr`` is the estimate D."""
  tx = make(weight_decay=a.weight_decay)
  hp = dict(base="adamw", weight_decay=a.weight_decay, optax_defaults=True)
  return Built(tx, hp, _state_field_lr_fn(state_cls, "estim_lr"), lr_label="D")


def _schedule_free_adamw(a: OptimizerArgs) -> Built:
  tx = contrib.schedule_free_adamw(learning_rate=a.lr, warmup_steps=a.warmup_steps or None,
                                   weight_decay=a.weight_decay)
  if a.warmup_steps:
    lr_fn = _schedule_lr_fn(optax.warmup_constant_schedule(0.0, a.lr, a.warmup_steps),
                            a.warmup_steps)
  else:
    lr_fn = _constant_lr_fn(a.lr)
  hp = dict(base="adamw", peak_lr=a.lr, warmup_steps=a.warmup_steps,
            warmup_fraction=a.warmup_fraction, weight_decay=a.weight_decay)
  return Built(tx, hp, lr_fn, eval_params_fn=_schedule_free_eval_params)


def _mechanize_lamb(a: OptimizerArgs) -> Built:
  tx = contrib.mechanize(optax.lamb(a.lr, weight_decay=a.weight_decay, mask=decay_mask))
  hp = dict(base="lamb", base_lr=a.lr, weight_decay=a.weight_decay, mechanic_defaults=True)
  # Effective LR: Mechanic's scale sum(s) times the base LR.
  return Built(tx, hp, _state_field_lr_fn(contrib.MechanicState, "s", scale=a.lr))


def _cocob(a: OptimizerArgs) -> Built:
  del a
  return Built(contrib.cocob(), dict(optax_defaults=True, weight_decay=0.0), _no_lr_fn)


def _reduce_on_plateau(a: OptimizerArgs) -> Built:
  tx = optax.chain(
      optax.adamw(a.lr, weight_decay=a.weight_decay, mask=decay_mask),
      contrib.reduce_on_plateau(factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
                                accumulation_size=a.steps_per_epoch),
  )
  hp = dict(base="adamw", peak_lr=a.lr, weight_decay=a.weight_decay, factor=PLATEAU_FACTOR,
            patience_epochs=PLATEAU_PATIENCE, accumulation_size=a.steps_per_epoch)
  return Built(tx, hp, _state_field_lr_fn(contrib.ReduceLROnPlateauState, "scale",
                                          scale=a.lr), needs_value=True)


OPTIMIZERS: dict[str, Callable[[OptimizerArgs], Built]] = {
    "autowu_lamb": functools.partial(_autowu, optax_autolr.autowu_lamb, "lamb"),
    "autowu_adamp": functools.partial(_autowu, optax_autolr.autowu_adamp, "adamp"),
    "autowu_adamw": functools.partial(_autowu, optax_autolr.autowu_adamw, "adamw"),
    "warmup_cosine_lamb": functools.partial(_warmup_decay, optax.lamb, "lamb"),
    "warmup_cosine_adamp": functools.partial(_warmup_decay, optax_autolr.adamp, "adamp"),
    "warmup_cosine_adamw": functools.partial(_warmup_decay, optax.adamw, "adamw"),
    "warmup_linear_lamb": functools.partial(_warmup_decay, optax.lamb, "lamb", decay="linear"),
    "warmup_linear_adamp": functools.partial(_warmup_decay, optax_autolr.adamp, "adamp",
                                             decay="linear"),
    "warmup_linear_adamw": functools.partial(_warmup_decay, optax.adamw, "adamw",
                                             decay="linear"),
    "prodigy": functools.partial(_d_estimate, contrib.prodigy, contrib.ProdigyState),
    "dadapt_adamw": functools.partial(_d_estimate, contrib.dadapt_adamw,
                                      contrib.DAdaptAdamWState),
    "schedule_free_adamw": _schedule_free_adamw,
    "mechanize_lamb": _mechanize_lamb,
    "cocob": _cocob,
    "reduce_on_plateau": _reduce_on_plateau,
}
"""The registry: schedule name -> factory ``OptimizerArgs -> Built``."""

SCHEDULES: tuple[str, ...] = tuple(OPTIMIZERS)
"""Every name :func:`make_optimizer` accepts."""

AUTOWU_SCHEDULES: tuple[str, ...] = tuple(
    k for k, f in OPTIMIZERS.items() if getattr(f, "func", None) is _autowu)
"""The schedules whose state is AutoWU's (``optax_autolr.get_switch`` applies)."""


def canonical(name: str) -> str:
  """A schedule name as :data:`SCHEDULES` spells it (case-insensitive, ``-`` for ``_``)."""
  return name.lower().replace("-", "_")


def make_optimizer(
    name: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    peak_lr: float | None = None,
    warmup_fraction: float = 0.05,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    autowu_kwargs: dict[str, Any] | None = None,
) -> tuple[optax.GradientTransformationExtraArgs, bool, ScheduleInfo]:
  """Builds the optimizer + LR schedule ``name`` (validates, then calls its factory).

  Args:
    name: one of :data:`SCHEDULES` (``-`` is accepted for ``_``).
    total_steps: number of updates of the whole run.
    steps_per_epoch: updates per epoch (AutoWU's test period,
      reduce-on-plateau's averaging window).
    peak_lr: peak LR of the warmup-cosine/-linear schedules, LR of Schedule-Free
      AdamW and reduce-on-plateau's Adam, base LR of Mechanic's LAMB. None
      takes :data:`DEFAULT_PEAK_LR`. Ignored (recorded as None) by the
      LR-free methods and AutoWU.
    warmup_fraction: linear-warmup length as a fraction of ``total_steps``
      (warmup-cosine/-linear and Schedule-Free), in ``[0, 1)``.
    weight_decay: decoupled weight-decay rate (see the module docstring).
    autowu_kwargs: keyword arguments for :func:`optax_autolr.autowu`
      (``autowu_*`` schedules only; an error for the others).

  Returns:
    ``(tx, needs_value, info)``; see the module docstring.
  """
  key = canonical(name)
  if key not in OPTIMIZERS:
    raise ValueError(f"Unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
  _check_int("total_steps", total_steps, 1)
  _check_int("steps_per_epoch", steps_per_epoch, 1)
  if not 0.0 <= warmup_fraction < 1.0:
    raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if peak_lr is not None and not (math.isfinite(peak_lr) and peak_lr > 0):
    raise ValueError(f"peak_lr must be a positive number, got {peak_lr}")
  autowu_kwargs = dict(autowu_kwargs or {})
  if autowu_kwargs and key not in AUTOWU_SCHEDULES:
    raise ValueError(f"autowu_kwargs given for non-AutoWU schedule {key!r}")
  args = OptimizerArgs(
      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      lr=peak_lr if peak_lr is not None else DEFAULT_PEAK_LR.get(key),
      warmup_fraction=warmup_fraction, warmup_steps=int(warmup_fraction * total_steps),
      weight_decay=weight_decay, autowu_kwargs=autowu_kwargs)
  built = OPTIMIZERS[key](args)
  hp = {"schedule": key, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
        **built.hparams}
  info = ScheduleInfo(name=key, hparams=hp, lr_fn=built.lr_fn, lr_label=built.lr_label,
                      eval_params_fn=built.eval_params_fn, is_autowu=built.is_autowu)
  return built.tx, built.needs_value, info


def _schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
  return contrib.schedule_free_eval_params(
      _find(opt_state, contrib.ScheduleFreeState), params)
