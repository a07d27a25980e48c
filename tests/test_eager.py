"""AutoWU outside jax.jit: no compilation after the first update."""

import logging

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_autolr as oa


def _compilations(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith('Compiling ')]


@pytest.mark.parametrize('make', [
    lambda: optax.chain(optax.lamb(1.0), oa.autowu(1000, 50)),
    lambda: optax.chain(optax.adamw(1.0), oa.autowu(1000, 50, test_every=1)),
    lambda: oa.autowu_adamp(1000, 50, test_every=1, weight_decay=1e-2),
])
def test_eager_updates_compile_once(make, caplog):
  tx = make()
  params = {'w': jnp.ones((3, 2)), 'b': jnp.zeros(2)}
  state = tx.init(params)
  loss_fn = lambda p: jnp.sum(p['w'] ** 2) + jnp.sum(p['b'] ** 2)

  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  for _ in range(3):  # Warm every cache (test and non-test steps).
    params, state = step(params, state)
  caplog.set_level(logging.DEBUG)
  with jax.log_compiles():
    for _ in range(5):
      params, state = step(params, state)
  assert _compilations(caplog) == []
  assert int(oa.find_autowu_state(state).count) == 8
