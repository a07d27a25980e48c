"""Flat-noisy-start streams (issue 12): how often AutoWU restarts far from the optimum.

``python -m experiments.flat_start``: the loss stays flat with noise for 40 % of the
maximal warmup, descends to a minimum at 70 % and blows up after it; 40 seeds x
T in {160, 2000} x noise {0.02, 0.08}. A restart outside [lr_opt / 3, 2 lr_opt] is bad.
"""

import jax
import jax.numpy as jnp

import optax_autolr as oa


def bad_restarts(seeds: int = 40, first_seed: int = 1000) -> tuple[int, int]:
  """``(bad, total)`` over the streams, with the library defaults."""
  min_lr, u_opt = oa.DEFAULTS["min_lr"], 0.7
  lr_opt = min_lr * (1.0 / min_lr) ** u_opt
  bad = total = 0
  for t in (160, 2000):
    tx = oa.autowu(t, max(1, t // 20))
    warmup = int(oa.DEFAULTS["max_warmup_fraction"] * t)

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
  return bad, total


if __name__ == "__main__":
  print("bad restarts: {} of {}".format(*bad_restarts()))
