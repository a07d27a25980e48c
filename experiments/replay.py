"""Replays recorded warmup losses through an AutoWU rule, offline.

Until AutoWU switches, its LR depends only on the step (the warmup ramp), so
a recorded run's losses up to its switch are exactly what any rule with the
same ramp (``min_lr``, ``max_lr``, ``max_warmup_fraction``) would have seen.
:func:`replay` feeds such a stream to ``optax_autolr.autowu`` and returns the
rule's decision; it is exact for every rule that switches no later than the
recorded run did (:func:`exact`), which makes comparing decision rules cheap.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optax_autolr

__all__ = ["exact", "replay"]


@functools.lru_cache(maxsize=64)
def _scan(total_steps: int, steps_per_epoch: int, kwargs: tuple) -> Any:
  tx = optax_autolr.autowu(total_steps, steps_per_epoch, **dict(kwargs))

  def step(state, loss):
    _, state = tx.update(jnp.zeros(()), state, value=loss)
    return state, (state.phase, state.lr)

  return jax.jit(lambda losses: jax.lax.scan(step, tx.init(jnp.zeros(())), losses))


def replay(losses: Any, total_steps: int, steps_per_epoch: int, **autowu_kwargs: Any
           ) -> dict[str, Any]:
  """The decision of ``autowu(total_steps, steps_per_epoch, **autowu_kwargs)`` on ``losses``.

  Returns:
    ``{"switch_step", "restart_lr", "switch_reason"}`` (``switch_step`` None
    when the stream ends in warmup).
  """
  state, _ = _scan(int(total_steps), int(steps_per_epoch),
                   tuple(sorted(autowu_kwargs.items())))(jnp.asarray(losses, jnp.float32))
  step, lr, reason = (np.asarray(v) for v in optax_autolr.get_switch(state))
  switched = int(step) >= 0
  return dict(switch_step=int(step) if switched else None,
              restart_lr=float(lr) if switched else None,
              switch_reason=optax_autolr.SWITCH_REASONS[int(reason)])


def exact(decision: dict[str, Any], recorded_switch: int | None) -> bool:
  """Whether a replayed decision is exact (it switched no later than the recording)."""
  s = decision["switch_step"]
  return s is not None and (recorded_switch is None or s <= recorded_switch)
