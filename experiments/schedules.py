"""Optimizers and learning-rate schedules compared in the experiments.

:func:`make_optimizer` builds one of :data:`SCHEDULES` by name and returns
``(tx, needs_value, info)``:

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
``warmup_cosine_lamb``      LAMB, linear warmup + cosine decay to 0
``warmup_cosine_adamp``     AdamP, linear warmup + cosine decay to 0
``warmup_cosine_adamw``     AdamW, linear warmup + cosine decay to 0
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
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib

import optax_autolr

__all__ = [
    "SCHEDULES",
    "AUTOWU_SCHEDULES",
    "DEFAULT_PEAK_LR",
    "DEFAULT_WEIGHT_DECAY",
    "ScheduleInfo",
    "decay_mask",
    "make_optimizer",
]

SCHEDULES: tuple[str, ...] = (
    "autowu_lamb",
    "autowu_adamp",
    "warmup_cosine_lamb",
    "warmup_cosine_adamp",
    "warmup_cosine_adamw",
    "prodigy",
    "dadapt_adamw",
    "schedule_free_adamw",
    "mechanize_lamb",
    "cocob",
    "reduce_on_plateau",
)
"""Every name :func:`make_optimizer` accepts."""

AUTOWU_SCHEDULES: tuple[str, ...] = ("autowu_lamb", "autowu_adamp")

DEFAULT_WEIGHT_DECAY = 1e-4

# Peak LRs used when ``peak_lr`` is None (schedules that need one).
DEFAULT_PEAK_LR: dict[str, float] = {
    "warmup_cosine_lamb": 1e-2,
    "warmup_cosine_adamp": 3e-3,
    "warmup_cosine_adamw": 3e-3,
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
    """Builds the optimizer + LR schedule ``name``.

    Args:
      name: one of :data:`SCHEDULES` (``-`` is accepted for ``_``).
      total_steps: number of updates of the whole run.
      steps_per_epoch: updates per epoch (AutoWU's test period,
        reduce-on-plateau's averaging window).
      peak_lr: peak LR of the warmup-cosine schedules, LR of Schedule-Free
        AdamW and reduce-on-plateau's Adam, base LR of Mechanic's LAMB. None
        takes :data:`DEFAULT_PEAK_LR`. Ignored (recorded as None) by the
        LR-free methods and AutoWU.
      warmup_fraction: linear-warmup length as a fraction of ``total_steps``
        (warmup-cosine and Schedule-Free), in ``[0, 1)``.
      weight_decay: decoupled weight-decay rate (see the module docstring).
      autowu_kwargs: keyword arguments for :func:`optax_autolr.autowu`
        (``autowu_*`` schedules only; an error for the others).

    Returns:
      ``(tx, needs_value, info)``; see the module docstring.
    """
    key = name.lower().replace("-", "_")
    if key not in SCHEDULES:
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

    lr = peak_lr if peak_lr is not None else DEFAULT_PEAK_LR.get(key)
    warmup_steps = int(warmup_fraction * total_steps)
    hp: dict[str, Any] = {"schedule": key, "total_steps": total_steps,
                          "steps_per_epoch": steps_per_epoch}
    eval_params_fn = None
    lr_label = "lr"
    needs_value = False
    is_autowu = False

    if key in AUTOWU_SCHEDULES:
        is_autowu = needs_value = True
        make = optax_autolr.autowu_lamb if key == "autowu_lamb" else optax_autolr.autowu_adamp
        tx = make(total_steps, steps_per_epoch, weight_decay=weight_decay, mask=decay_mask,
                  **autowu_kwargs)
        hp.update(base=key.split("_", 1)[1], weight_decay=weight_decay,
                  autowu_kwargs=autowu_kwargs)
        lr_fn = _autowu_lr_fn
    elif key.startswith("warmup_cosine_"):
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
        base = key.removeprefix("warmup_cosine_")
        if base == "lamb":
            tx = optax.lamb(schedule, weight_decay=weight_decay, mask=decay_mask)
        elif base == "adamw":
            tx = optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
        else:
            tx = optax_autolr.adamp(schedule, weight_decay=weight_decay, mask=decay_mask)
        hp.update(base=base, peak_lr=lr, warmup_steps=warmup_steps,
                  warmup_fraction=warmup_fraction, weight_decay=weight_decay)
        lr_fn = _schedule_lr_fn(schedule, warmup_steps)
    elif key == "prodigy":
        tx = contrib.prodigy(weight_decay=weight_decay)
        hp.update(base="adamw", weight_decay=weight_decay, optax_defaults=True)
        lr_fn = _state_field_lr_fn(contrib.ProdigyState, "estim_lr")
        lr_label = "D"
    elif key == "dadapt_adamw":
        tx = contrib.dadapt_adamw(weight_decay=weight_decay)
        hp.update(base="adamw", weight_decay=weight_decay, optax_defaults=True)
        lr_fn = _state_field_lr_fn(contrib.DAdaptAdamWState, "estim_lr")
        lr_label = "D"
    elif key == "schedule_free_adamw":
        tx = contrib.schedule_free_adamw(
            learning_rate=lr, warmup_steps=warmup_steps or None,
            weight_decay=weight_decay)
        if warmup_steps:
            schedule = optax.warmup_constant_schedule(0.0, lr, warmup_steps)
            lr_fn = _schedule_lr_fn(schedule, warmup_steps)
        else:
            lr_fn = _constant_lr_fn(lr)
        eval_params_fn = _schedule_free_eval_params
        hp.update(base="adamw", peak_lr=lr, warmup_steps=warmup_steps,
                  warmup_fraction=warmup_fraction, weight_decay=weight_decay)
    elif key == "mechanize_lamb":
        tx = contrib.mechanize(optax.lamb(lr, weight_decay=weight_decay, mask=decay_mask))
        hp.update(base="lamb", base_lr=lr, weight_decay=weight_decay,
                  mechanic_defaults=True)
        # Effective LR: Mechanic's scale sum(s) times the base LR.
        lr_fn = _state_field_lr_fn(contrib.MechanicState, "s", scale=lr)
    elif key == "cocob":
        tx = contrib.cocob()
        hp.update(optax_defaults=True, weight_decay=0.0)
        lr_fn = _no_lr_fn
    else:  # reduce_on_plateau
        needs_value = True
        tx = optax.chain(
            optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask),
            contrib.reduce_on_plateau(
                factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
                accumulation_size=steps_per_epoch),
        )
        hp.update(base="adamw", peak_lr=lr, weight_decay=weight_decay,
                  factor=PLATEAU_FACTOR, patience_epochs=PLATEAU_PATIENCE,
                  accumulation_size=steps_per_epoch)

        def lr_fn(opt_state, step, _lr=lr):
            del step
            scale = _find(opt_state, contrib.ReduceLROnPlateauState).scale
            return _f32(scale * _lr), _no_phase(), _nan()

    info = ScheduleInfo(name=key, hparams=hp, lr_fn=lr_fn, lr_label=lr_label,
                        eval_params_fn=eval_params_fn, is_autowu=is_autowu)
    return tx, needs_value, info


def _schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
    return contrib.schedule_free_eval_params(
        _find(opt_state, contrib.ScheduleFreeState), params)
