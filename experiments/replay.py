"""Replays recorded warmup losses through an AutoWU rule, offline.

Until AutoWU switches, its LR depends only on the step (the warmup ramp), so
a recorded run's losses up to its switch are exactly what any rule with the
same ramp (``min_lr``, ``max_lr``, ``max_warmup_fraction``) would have seen.
:func:`replay` feeds such a stream to ``optax_autolr.autowu`` and returns the
rule's decision; it is exact for every rule that switches no later than the
recorded run did (:func:`exact`), which makes comparing decision rules cheap.

The traces hold losses, not gradients: a replay runs without ``gradients=``,
so AutoWU's coherence rule is off in it (the decision of a plain
``optax.chain(optimizer, autowu(...))``). Where the recorded run's start was
incoherent (the AdamW image cases), its restart is the largest LR tested and
the replay's the restart point.
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
    _, state = tx.update(jnp.zeros(()), state, jnp.zeros(()), value=loss)
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


def rule_search_traces(path: str = "experiments/results/rule_search_runs.jsonl"
                       ) -> list[tuple[str, list[float], int, int, int]]:
  """``(name, losses, total_steps, steps_per_epoch, switch_step)`` of the rule search's
  runs with the current warmup (``D2``: min_lr 1e-3, a quarter of the budget)."""
  import json  # noqa: PLC0415

  out = []
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      if r["name"] == "D2_minlr1e-3_gate3" and r.get("trace"):
        c = r["config"]
        out.append((f"{c['schedule']} B{c['batch_size']} E{c['epochs']} s{c['seed']}",
                    r["trace"]["loss"], r["total_steps"], r["steps_per_epoch"],
                    r["switch_step"]))
  return out


def main(argv: list[str] | None = None) -> None:
  """Prints each recorded decision and the replayed decision of ``autowu(**KWARGS)``.

  ``python -m experiments.replay 'knee_slope=0.0'`` (Python literals; none: the defaults).
  """
  import sys  # noqa: PLC0415

  from experiments import cli  # noqa: PLC0415

  p = cli.ArgumentParser(prog="python -m experiments.replay",
                         description=__doc__.split("\n")[0])
  p.add_argument("rule", nargs="*", type=cli.keyword_literal, metavar="NAME=VALUE",
                 help="autowu keyword arguments (Python literals); none: the defaults")
  kwargs = dict(p.parse_args(sys.argv[1:] if argv is None else argv).rule)
  traces = list(rule_search_traces())
  try:  # The arguments' own errors, on the traces' budgets, before any replay.
    for _, _, total, spe, _ in traces:
      optax_autolr.autowu(total, spe, **kwargs)
  except (TypeError, ValueError) as e:
    p.error(str(e))
  for name, losses, total, spe, switch in traces:
    d = replay(losses, total, spe, **kwargs)
    print(f"{name:28s} switch {d['switch_step']!s:>4} restart {d['restart_lr'] or 0:.4f} "
          f"{d['switch_reason']:18s}{'' if exact(d, switch) else ' (not exact)'}")


if __name__ == "__main__":
  main()
