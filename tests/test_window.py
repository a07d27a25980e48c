"""Tests for the fixed-capacity loss window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_autolr import window as wl


def _reference_bins(losses, capacity):
  """Bins by the documented rule, in plain Python."""
  size = 1
  while -(-len(losses) // size) > capacity:
    size *= 2
  return [losses[i:i + size] for i in range(0, len(losses), size)], size


@pytest.mark.parametrize('num', [1, 7, 8, 9, 16, 17, 33, 100, 257])
def test_bins_cover_everything_at_halving_resolution(num):
  capacity = 8
  losses = np.arange(num, dtype=np.float32) * 0.5 + 1.0
  push = jax.jit(wl.window_push)
  w = wl.window_init(capacity)
  for step, loss in enumerate(losses):
    w = push(w, loss, step)
  bins, size = _reference_bins(list(losses), capacity)
  assert int(w.num_bins) == len(bins)
  assert int(w.bin_size) == size
  assert int(wl.window_num_losses(w)) == num
  means, steps = wl.window_means(w)
  mask = np.asarray(wl.window_mask(w))
  np.testing.assert_allclose(means[mask], [np.mean(b) for b in bins],
                             rtol=1e-6)
  np.testing.assert_allclose(
      steps[mask], [np.mean((np.asarray(b) - 1.0) / 0.5) for b in bins],
      rtol=1e-6)
  assert float(wl.window_min(w)) == pytest.approx(np.mean(bins[0]))


def test_shapes_and_dtypes_are_fixed():
  w0 = wl.window_init(16)
  w = w0
  for i in range(100):
    w = wl.window_push(w, jnp.float32(i), i)
  for a, b in zip(w0, w):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_empty_window_min_is_inf():
  assert float(wl.window_min(wl.window_init(8))) == np.inf


@pytest.mark.parametrize('capacity', [3, 2, 5, 7.0])
def test_bad_capacity(capacity):
  with pytest.raises(ValueError, match='capacity'):
    wl.window_init(capacity)


def test_rejected_push_changes_nothing_and_counts_follow_the_invariant():
  w = wl.window_init(8)
  push = jax.jit(wl.window_push)
  for i in range(21):  # Two merges: bins of 4 losses.
    w = push(w, jnp.float32(i), i)
    same = push(w, jnp.float32(1e3), 99, False)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(w)):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(w.counts, [4, 4, 4, 4, 4, 1, 0, 0])
  assert int(w.last_count) == 1 and int(w.bin_size) == 4
  np.testing.assert_allclose(w.loss_sums[:6], [6, 22, 38, 54, 70, 20])
  np.testing.assert_allclose(w.step_sums, w.loss_sums)
