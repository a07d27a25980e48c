"""A fixed-capacity loss window that always covers the whole warmup.

The window stores per-step training losses in ``capacity`` bins. Every full bin
holds the same number of losses (``bin_size``); only the newest bin may be
partially filled (``last_count`` losses). When all bins are full and a new loss
arrives, adjacent pairs of bins are merged (sums added), halving the
resolution and doubling ``bin_size``. The memory is therefore fixed while the
window spans every loss seen so far, which is what the AutoWU minimum test
needs.

Because of that invariant the per-bin counts are implied by three integers
and are not stored. A push is a few element-wise operations on one
``[2, capacity]`` array (a one-hot add, the merge written with strided
slices), so under ``jax.jit`` it compiles to a single fused loop with no
dynamic-update-slice and no data-dependent branch: it runs on every training
step and must cost next to nothing.

All functions are pure and jit-compatible; shapes never change.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossWindow(NamedTuple):
  """State of a :func:`window_init` loss window.

  Attributes:
    sums: ``[2, capacity]`` float32; row 0 is the sum of the losses in each
      bin, row 1 the sum of the step indices at which they were seen.
    num_bins: int32 scalar, number of bins in use (the rest are empty).
    bin_size: int32 scalar, number of losses in a full bin.
    last_count: int32 scalar, number of losses in the newest bin (0 when
      the window is empty).
  """

  sums: jax.Array
  num_bins: jax.Array
  bin_size: jax.Array
  last_count: jax.Array

  @property
  def capacity(self) -> int:
    """Number of bins (static)."""
    return self.sums.shape[-1]

  @property
  def loss_sums(self) -> jax.Array:
    """``[capacity]`` sum of the losses in each bin."""
    return self.sums[..., 0, :]

  @property
  def step_sums(self) -> jax.Array:
    """``[capacity]`` sum of the step indices of those losses."""
    return self.sums[..., 1, :]

  @property
  def counts(self) -> jax.Array:
    """``[capacity]`` int32 number of losses in each bin (0 if empty)."""
    index = jnp.arange(self.capacity)
    num_bins = jnp.asarray(self.num_bins)[..., None]
    return jnp.where(
        index < num_bins - 1, jnp.asarray(self.bin_size)[..., None],
        jnp.where(index == num_bins - 1,
                  jnp.asarray(self.last_count)[..., None], 0)
    ).astype(jnp.int32)


def window_init(capacity: int) -> LossWindow:
  """Returns an empty loss window with ``capacity`` bins.

  Args:
    capacity: number of bins; an even integer >= 4.

  Returns:
    An empty :class:`LossWindow`.
  """
  if (isinstance(capacity, bool) or not isinstance(capacity, int)
      or capacity < 4 or capacity % 2):
    raise ValueError(
        f'window capacity must be an even integer >= 4, got {capacity!r}.')
  return LossWindow(
      sums=jnp.zeros((2, capacity), jnp.float32),
      num_bins=jnp.zeros((), jnp.int32),
      bin_size=jnp.ones((), jnp.int32),
      last_count=jnp.zeros((), jnp.int32),
  )


def window_push(window: LossWindow, loss: jax.Array, step: jax.Array,
                accept: jax.Array | bool = True) -> LossWindow:
  """Adds one loss observed at ``step`` to the window.

  Args:
    window: the current window.
    loss: scalar loss; must be finite when accepted (the caller filters).
    step: scalar step index at which the loss was observed.
    accept: scalar bool; if false the window is returned unchanged (lets a
      jitted caller skip a loss without a branch).

  Returns:
    The updated window.
  """
  capacity = window.capacity
  accept = jnp.asarray(accept, bool)
  last_full = (window.num_bins == 0) | (window.last_count >= window.bin_size)
  merge = accept & last_full & (window.num_bins == capacity)

  sums = window.sums
  merged = sums[:, 0::2] + sums[:, 1::2]
  sums = jnp.where(merge, jnp.concatenate([merged, jnp.zeros_like(merged)],
                                          axis=1), sums)
  num_bins = jnp.where(merge, capacity // 2, window.num_bins)
  bin_size = jnp.where(merge, 2 * window.bin_size, window.bin_size)

  index = jnp.where(last_full, num_bins, num_bins - 1)
  value = jnp.stack([jnp.asarray(loss, jnp.float32),
                     jnp.asarray(step, jnp.float32)])
  hot = accept & (jnp.arange(capacity) == index)
  sums = sums + jnp.where(hot[None, :], value[:, None], 0.0)
  return LossWindow(
      sums=sums,
      num_bins=jnp.where(accept & last_full, num_bins + 1,
                         num_bins).astype(jnp.int32),
      bin_size=bin_size.astype(jnp.int32),
      last_count=jnp.where(
          accept, jnp.where(last_full, 1, window.last_count + 1),
          window.last_count).astype(jnp.int32),
  )


def window_mask(window: LossWindow) -> jax.Array:
  """Boolean ``[capacity]`` mask of the bins in use."""
  return jnp.arange(window.capacity) < window.num_bins


def window_means(window: LossWindow) -> tuple[jax.Array, jax.Array]:
  """Returns the mean loss and mean step of every bin (0 for empty bins)."""
  denom = jnp.maximum(window.counts, 1).astype(jnp.float32)
  return window.loss_sums / denom, window.step_sums / denom


def window_min(window: LossWindow) -> jax.Array:
  """Smallest bin mean in use (``+inf`` for an empty window)."""
  means, _ = window_means(window)
  return jnp.min(jnp.where(window_mask(window), means, jnp.inf))


def window_num_losses(window: LossWindow) -> jax.Array:
  """Total number of losses held by the window (O(1))."""
  return jnp.where(window.num_bins > 0,
                   (window.num_bins - 1) * window.bin_size + window.last_count,
                   0)
