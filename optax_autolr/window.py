"""A fixed-capacity loss window that always covers the whole warmup.

The window stores per-step training losses in ``capacity`` bins. Every full bin
holds the same number of losses (``bin_size``); only the newest bin may be
partially filled. When all bins are full and a new loss arrives, adjacent
pairs of bins are merged (sums and counts added), halving the resolution and
doubling ``bin_size``. The memory is therefore fixed while the window spans
every loss seen so far, which is what the AutoWU minimum test needs.

All functions are pure and jit-compatible; shapes never change.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossWindow(NamedTuple):
  """State of a :func:`window_init` loss window.

  Attributes:
    loss_sums: ``[capacity]`` float32, sum of the losses in each bin.
    step_sums: ``[capacity]`` float32, sum of the step indices of those losses.
    counts: ``[capacity]`` int32, number of losses in each bin.
    num_bins: int32 scalar, number of bins in use (the rest are empty).
    bin_size: int32 scalar, number of losses in a full bin.
  """

  loss_sums: jax.Array
  step_sums: jax.Array
  counts: jax.Array
  num_bins: jax.Array
  bin_size: jax.Array


def window_init(capacity: int) -> LossWindow:
  """Returns an empty loss window with ``capacity`` bins.

  Args:
    capacity: number of bins; an even integer >= 4.

  Returns:
    An empty :class:`LossWindow`.
  """
  if not isinstance(capacity, int) or capacity < 4 or capacity % 2:
    raise ValueError(
        f'window capacity must be an even integer >= 4, got {capacity!r}.')
  return LossWindow(
      loss_sums=jnp.zeros((capacity,), jnp.float32),
      step_sums=jnp.zeros((capacity,), jnp.float32),
      counts=jnp.zeros((capacity,), jnp.int32),
      num_bins=jnp.zeros((), jnp.int32),
      bin_size=jnp.ones((), jnp.int32),
  )


def _merge_pairs(x: jax.Array) -> jax.Array:
  half = x.reshape(-1, 2).sum(axis=1, dtype=x.dtype)
  return jnp.concatenate([half, jnp.zeros_like(half)])


def window_push(window: LossWindow, loss: jax.Array,
                step: jax.Array) -> LossWindow:
  """Adds one loss observed at ``step`` to the window.

  Args:
    window: the current window.
    loss: scalar loss (must be finite; the caller filters).
    step: scalar step index at which the loss was observed.

  Returns:
    The updated window.
  """
  capacity = window.counts.shape[0]
  last = jnp.maximum(window.num_bins - 1, 0)
  last_full = (window.num_bins == 0) | (
      window.counts[last] >= window.bin_size)
  merge = last_full & (window.num_bins == capacity)

  loss_sums = jnp.where(merge, _merge_pairs(window.loss_sums),
                        window.loss_sums)
  step_sums = jnp.where(merge, _merge_pairs(window.step_sums),
                        window.step_sums)
  counts = jnp.where(merge, _merge_pairs(window.counts), window.counts)
  num_bins = jnp.where(merge, capacity // 2, window.num_bins)
  bin_size = jnp.where(merge, 2 * window.bin_size, window.bin_size)

  index = jnp.where(last_full, num_bins, num_bins - 1)
  return LossWindow(
      loss_sums=loss_sums.at[index].add(jnp.asarray(loss, jnp.float32)),
      step_sums=step_sums.at[index].add(jnp.asarray(step, jnp.float32)),
      counts=counts.at[index].add(1),
      num_bins=jnp.where(last_full, num_bins + 1, num_bins).astype(jnp.int32),
      bin_size=bin_size.astype(jnp.int32),
  )


def window_mask(window: LossWindow) -> jax.Array:
  """Boolean ``[capacity]`` mask of the bins in use."""
  return jnp.arange(window.counts.shape[0]) < window.num_bins


def window_means(window: LossWindow) -> tuple[jax.Array, jax.Array]:
  """Returns the mean loss and mean step of every bin (0 for empty bins)."""
  denom = jnp.maximum(window.counts, 1).astype(jnp.float32)
  return window.loss_sums / denom, window.step_sums / denom


def window_min(window: LossWindow) -> jax.Array:
  """Smallest bin mean in use (``+inf`` for an empty window)."""
  means, _ = window_means(window)
  return jnp.min(jnp.where(window_mask(window), means, jnp.inf))


def window_num_losses(window: LossWindow) -> jax.Array:
  """Total number of losses held by the window.

  O(1): every bin but the newest holds ``bin_size`` losses.
  """
  last = jnp.maximum(window.num_bins - 1, 0)
  full = last * window.bin_size
  return jnp.where(window.num_bins > 0, full + window.counts[last], 0)
