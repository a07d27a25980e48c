"""Closed loop: AutoWU against the best fixed-peak cosine schedule.

The toy problem is a ReLU student fitting a ReLU teacher with LAMB. Past an
LR threshold LAMB's relative steps kill units and blow the weights up, and the
damage stays: overshooting the optimal LR during warmup is costly, as on real
networks with short budgets.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_autolr as oa

DIM, HIDDEN, NUM, BATCH = 16, 64, 4096, 256
STEPS_PER_EPOCH = NUM // BATCH
PEAKS = np.logspace(-3.5, -0.5, 7)


def _data():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (NUM, DIM))
  w1 = jax.random.normal(k2, (DIM, 32)) / jnp.sqrt(DIM)
  w2 = jax.random.normal(k3, (32,)) / jnp.sqrt(32.0)
  return x, jax.nn.relu(x @ w1) @ w2


def _init(seed):
  k1, k2 = jax.random.split(jax.random.key(seed + 100))
  return {'w1': jax.random.normal(k1, (DIM, HIDDEN)) / jnp.sqrt(DIM),
          'b1': jnp.zeros(HIDDEN),
          'w2': jax.random.normal(k2, (HIDDEN,)) / jnp.sqrt(HIDDEN),
          'b2': jnp.zeros(())}


def _loss(p, x, y):
  pred = jax.nn.relu(x @ p['w1'] + p['b1']) @ p['w2'] + p['b2']
  return jnp.mean((pred - y)**2)


def _train(tx, total_steps, seed):
  x, y = _data()
  params = _init(seed)
  state = tx.init(params)

  def step(carry, key):
    params, state = carry
    idx = jax.random.randint(key, (BATCH,), 0, NUM)
    loss, grads = jax.value_and_grad(_loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params, value=loss)
    return (optax.apply_updates(params, updates), state), loss

  keys = jax.random.split(jax.random.key(seed), total_steps)
  (params, state), _ = jax.lax.scan(step, (params, state), keys)
  final = _loss(params, x, y)
  return jnp.where(jnp.isfinite(final), final, jnp.inf), state


@functools.partial(jax.jit, static_argnums=0)
def _cosine_grid(epochs, seed):
  total = STEPS_PER_EPOCH * epochs

  def one(peak):
    sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, total // 20, total)
    tx = optax.chain(optax.lamb(sched), optax.scale(peak))
    return _train(tx, total, seed)[0]

  return jax.vmap(one)(jnp.asarray(PEAKS))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _autowu(epochs, authors, seed):
  total = STEPS_PER_EPOCH * epochs
  kwargs = (dict(test_every=STEPS_PER_EPOCH, divergence_factor=None)
            if authors else {})
  return _train(oa.autowu_lamb(total, STEPS_PER_EPOCH, **kwargs), total, seed)


@pytest.mark.parametrize('epochs', [20, 100])
def test_autowu_close_to_best_cosine_and_authors_rule_degrades(epochs):
  seeds = (0, 1, 2)
  grid = np.stack([np.asarray(_cosine_grid(epochs, s)) for s in seeds[:2]])
  grid = grid.mean(axis=0)
  best = grid.min()
  worst = grid[np.isfinite(grid)].max()
  initial = float(_loss(_init(0), *_data()))
  ours = np.array([float(_autowu(epochs, False, s)[0]) for s in seeds])
  summary = dict(epochs=epochs, initial=initial, grid=grid, ours=ours)
  # The toy is hard enough that the LR matters: the grid spans > 100x.
  assert worst > 100 * best, summary
  # AutoWU with our defaults and no tuning lands within a small factor of
  # the best tuned peak LR: in the top 25% of the grid's log range.
  assert ours.mean() < 5.0 * best, summary
  assert np.log(ours.mean() / best) < 0.25 * np.log(worst / best), summary
  if epochs == 20:
    # The once-an-epoch test overshoots and the damage stays.
    authors = np.array([float(_autowu(epochs, True, s)[0]) for s in seeds[:2]])
    summary['authors'] = authors
    assert authors.min() > 10.0 * ours.max(), summary
  print(summary)
