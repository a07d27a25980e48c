"""Shared test helpers."""

import jax
import optax
import pytest


def _scan_train(tx, loss_fn, params, num_steps):
  """Trains ``params`` with ``tx`` (``value=loss`` passed) in one jitted scan.

  Returns:
    ``(params, state, losses)``.
  """

  def step(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=loss)
    return (optax.apply_updates(params, updates), state), loss

  (params, state), losses = jax.jit(
      lambda c: jax.lax.scan(step, c, None, length=num_steps))(
          (params, tx.init(params)))
  return params, state, losses


@pytest.fixture
def scan_train():
  """:func:`_scan_train`: train in one jitted ``lax.scan``."""
  return _scan_train
