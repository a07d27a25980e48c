"""Flat-noisy-start streams (issue 12): how often AutoWU restarts far from the optimum.

``python -m experiments.flat_start``: the loss stays flat with noise for 40 % of the
maximal warmup, descends to a minimum at 70 % and blows up after it; 40 seeds x
T in {160, 2000} x noise {0.02, 0.08}. A restart outside [lr_opt / 3, 2 lr_opt] is bad.
With the defaults it writes ``experiments/results/flat_start.json`` (the count, the bad
streams, the library version, machine and date), which the suite's report reads.
``python -m experiments.flat_start 'min_descent=4.0'`` screens a candidate rule
(``autowu`` keyword arguments as Python literals; none: the defaults) and writes nothing.
"""

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import optax_autolr as oa

RESULTS = Path(__file__).resolve().parent / "results" / "flat_start.json"


def bad_restarts(seeds: int = 40, first_seed: int = 1000, bad_streams: list | None = None,
                 **autowu_kwargs: Any) -> tuple[int, int]:
  """``(bad, total)`` over the streams, with the library defaults and ``autowu_kwargs``.

  ``bad_streams``: a list to append each bad stream to (``T``, noise, seed, ratio).
  """
  rule = dict(oa.DEFAULTS, **autowu_kwargs)
  min_lr, u_opt = rule["min_lr"], 0.7
  lr_opt = min_lr * (1.0 / min_lr) ** u_opt
  bad = total = 0
  for t in (160, 2000):
    tx = oa.autowu(t, max(1, t // 20), **autowu_kwargs)
    warmup = int(rule["max_warmup_fraction"] * t)

    @jax.jit
    def run(noise, key, tx=tx, warmup=warmup):
      def step(state, key):
        u = state.count / warmup
        d = jnp.clip((u - 0.4) / 0.3, 0.0, 1.0)
        loss = 2.3 - 1.8 * jnp.sin(0.5 * jnp.pi * d) ** 2
        loss = loss + jnp.where(u > u_opt, 300.0 * (u - u_opt) ** 2, 0.0)
        _, state = tx.update({}, state, value=loss + noise * jax.random.normal(key))
        return state, None
      return jax.lax.scan(step, tx.init(None), jax.random.split(key, warmup + 5))[0].restart_lr

    for i, noise in enumerate((0.02, 0.08)):
      for seed in range(seeds):
        ratio = float(run(noise, jax.random.key(first_seed + seed + 100 * i))) / lr_opt
        total += 1
        if not 1 / 3 <= ratio <= 2:
          bad += 1
          print(f"bad: T={t} noise={noise} seed={seed} restart/lr_opt={ratio:.3f}")
          if bad_streams is not None:
            bad_streams.append(dict(T=t, noise=noise, seed=seed, ratio=round(ratio, 4)))
  return bad, total


def main(argv: list[str] | None = None) -> tuple[int, int]:
  """Counts the bad restarts; with the defaults, writes :data:`RESULTS`."""
  from experiments import cli  # noqa: PLC0415
  from experiments.machine import machine_info  # noqa: PLC0415
  from experiments.suite import library_version  # noqa: PLC0415

  p = cli.ArgumentParser(prog="python -m experiments.flat_start",
                         description=__doc__.split("\n")[0])
  p.add_argument("rule", nargs="*", type=cli.keyword_literal, metavar="NAME=VALUE",
                 help="autowu keyword arguments (Python literals); none: the defaults")
  kwargs = dict(p.parse_args(sys.argv[1:] if argv is None else argv).rule)
  streams: list = []
  try:
    bad, total = bad_restarts(bad_streams=streams, **kwargs)
  except (TypeError, ValueError) as e:
    p.error(str(e))
  print(f"bad restarts: {bad} of {total}")
  if not kwargs:
    RESULTS.write_text(json.dumps(dict(
        command="python -m experiments.flat_start", bad=bad, total=total,
        bad_streams=streams, library_version=library_version(), machine=machine_info(),
        finished_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    ), indent=1) + "\n")
  return bad, total


if __name__ == "__main__":
  main()
