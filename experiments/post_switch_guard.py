"""A guard after AutoWU's switch (an experiments-side candidate, not in the library).

:func:`post_switch_guard` wraps a chain that ends in ``optax_autolr.autowu``. After the
switch it smooths the loss (an EMA of about 10 steps, started the step after the switch)
and keeps a copy of the params at the EMA's lowest point (taken every ``check_every``
steps while the EMA is at a new low). When the EMA leaves its basin, above ``factor`` x
its lowest value, the update returns the params to that copy and every later update is
scaled by ``cut`` (the rest of the decay at ``cut`` x its LR; the optimizer's moments
are kept); a non-finite loss fires it too. The EMA then starts again from the next loss,
and the guard may fire again, each time cutting once more.

The suite runs it as the ``post_switch_guard`` entry of a candidate's AutoWU keywords
(``suite.VARIANTS``, e.g. ``guard``), which :mod:`experiments.schedules` takes out of the
keywords before they reach ``autowu``; ``python -m experiments.warmup_cap`` runs it on the
closed-loop toy.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_autolr as oa

_EMA_DECAY = 0.9  # About 10 steps, as the warmup's divergence guard.


class PostSwitchGuardState(NamedTuple):
  inner: Any
  count: jax.Array  # int32, updates done.
  ema: jax.Array  # float32, loss EMA since the switch (NaN before it, and after a firing).
  ema_min: jax.Array  # float32, the EMA when the copy was taken (inf before the first).
  scale: jax.Array  # float32, the updates' factor: 1, times ``cut`` per firing.
  firings: jax.Array  # int32.
  snapshot: Any  # The params at the EMA's lowest check.


def post_switch_guard(tx: optax.GradientTransformationExtraArgs, *, factor: float = 2.0,
                      cut: float = 0.5, check_every: int = 10
                      ) -> optax.GradientTransformationExtraArgs:
  """``tx`` (a chain ending in AutoWU) with a guard after the switch (module docstring).

  Args:
    tx: the chain; its state must hold one ``AutoWUState``.
    factor: the guard fires when the loss EMA exceeds ``factor`` x its lowest value, > 1.
    cut: the factor each firing applies to the later updates, in (0, 1).
    check_every: the params copy is taken at most this often (steps), >= 1.

  Returns:
    The guarded transformation; ``update`` needs ``params`` and ``value`` (the loss).
  """
  if not factor > 1.0:
    raise ValueError(f"factor must be > 1, got {factor}")
  if not 0.0 < cut < 1.0:
    raise ValueError(f"cut must be in (0, 1), got {cut}")
  if int(check_every) < 1:
    raise ValueError(f"check_every must be >= 1, got {check_every}")

  def init(params):
    return PostSwitchGuardState(
        inner=tx.init(params), count=jnp.zeros((), jnp.int32),
        ema=jnp.full((), jnp.nan, jnp.float32), ema_min=jnp.full((), jnp.inf, jnp.float32),
        scale=jnp.ones((), jnp.float32), firings=jnp.zeros((), jnp.int32),
        snapshot=jax.tree.map(jnp.array, params))

  def update(updates, state, params=None, *, value, **extra):
    if params is None:
      raise ValueError("post_switch_guard needs params")
    updates, inner = tx.update(updates, state.inner, params, value=value, **extra)
    t = state.count
    after = (oa.get_phase(inner) == oa.DECAY) & (t > oa.get_switch(inner)[0])
    loss = jnp.asarray(value, jnp.float32)
    ema = jnp.where(jnp.isnan(state.ema), loss,
                    _EMA_DECAY * state.ema + (1.0 - _EMA_DECAY) * loss)
    ema = jnp.where(after, ema, jnp.nan)
    fire = after & jnp.isfinite(state.ema_min) & ~(ema <= factor * state.ema_min)
    low = after & ~fire & (ema <= state.ema_min)
    take = low & (t % check_every == 0)
    snapshot = jax.lax.cond(take, lambda: jax.tree.map(jnp.array, params),
                            lambda: state.snapshot)
    ema_min = jnp.where(take, ema, state.ema_min)
    scale = jnp.where(fire, cut * state.scale, state.scale)
    # Selects only, so that before a firing the updates are the chain's, bit for bit.
    updates = jax.tree.map(
        lambda s, p, u: jnp.where(fire, (s - p).astype(u.dtype), jnp.where(
            state.scale == 1.0, u, (state.scale * u).astype(u.dtype))),
        snapshot, params, updates)
    return updates, PostSwitchGuardState(
        inner=inner, count=optax.safe_int32_increment(t),
        ema=jnp.where(fire, jnp.nan, ema), ema_min=ema_min, scale=scale,
        firings=state.firings + fire.astype(jnp.int32), snapshot=snapshot)

  return optax.GradientTransformationExtraArgs(init, update)
