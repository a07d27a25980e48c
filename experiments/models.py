"""Small Flax NNX classifiers for the experiments.

All models take NHWC float input (e.g. from :mod:`experiments.data`) and
return unnormalized logits of shape ``(N, num_classes)``.

``SmallCNN(use_batchnorm=True)`` holds ``nnx.BatchStat`` running statistics:
call ``model.train()`` before training steps and ``model.eval()`` before
evaluation, and build the optimizer with ``wrt=nnx.Param`` so only parameters
are updated by the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

__all__ = ["MLP", "SmallCNN", "MODELS", "make_model"]


class MLP(nnx.Module):
  """Flatten -> [Linear -> relu] * len(hidden) -> Linear.

  Args:
    hidden: Widths of the hidden layers.
    num_classes: Number of output logits.
    in_shape: Shape of one input example ``(H, W, C)``.
    rngs: NNX random streams for initialization.
  """

  def __init__(
      self,
      hidden: Sequence[int] = (512, 256),
      num_classes: int = 10,
      *,
      in_shape: Sequence[int] = (28, 28, 1),
      rngs: nnx.Rngs,
  ):
    sizes = [math.prod(in_shape), *hidden]
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
    )
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return self.head(x)


class SmallCNN(nnx.Module):
  """Two 3x3 conv blocks (32, 64 channels) and a dense head.

  Each block is conv -> [BatchNorm] -> relu -> 2x2 average pool; then
  flatten -> Linear(dense) -> relu -> Linear(num_classes). With
  ``dense=0`` the flattened features go straight to the logits.

  Args:
    num_classes: Number of output logits.
    in_shape: Shape of one input example ``(H, W, C)``.
    use_batchnorm: Add BatchNorm after each conv (otherwise no norm).
    dense: Width of the hidden dense layer (0 for none).
    rngs: NNX random streams for initialization.
  """

  def __init__(
      self,
      num_classes: int = 10,
      *,
      in_shape: Sequence[int] = (28, 28, 1),
      use_batchnorm: bool = True,
      dense: int = 256,
      rngs: nnx.Rngs,
  ):
    h, w, c = in_shape
    self.use_batchnorm = use_batchnorm
    self.conv1 = nnx.Conv(c, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    if use_batchnorm:
      self.bn1 = nnx.BatchNorm(32, rngs=rngs)
      self.bn2 = nnx.BatchNorm(64, rngs=rngs)
    features = (h // 4) * (w // 4) * 64
    self.dense = nnx.Linear(features, dense, rngs=rngs) if dense else None
    self.head = nnx.Linear(dense or features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, bn in ((self.conv1, "bn1"), (self.conv2, "bn2")):
      x = conv(x)
      if self.use_batchnorm:
        x = getattr(self, bn)(x)
      x = nnx.avg_pool(jax.nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    if self.dense is not None:
      x = jax.nn.relu(self.dense(x))
    return self.head(x)


MODELS = {"mlp": MLP, "cnn": SmallCNN, "small_cnn": SmallCNN}


def make_model(
    name: str,
    rngs: nnx.Rngs,
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (28, 28, 1),
    **kwargs,
) -> nnx.Module:
  """Builds a model by name.

  Args:
    name: ``"mlp"``, ``"cnn"`` or ``"small_cnn"`` (case-insensitive,
      ``-`` allowed for ``_``).
    rngs: NNX random streams, e.g. ``nnx.Rngs(0)``.
    num_classes: Number of output logits.
    in_shape: Shape of one input example ``(H, W, C)``.
    **kwargs: Extra constructor arguments (``hidden=`` for the MLP,
      ``use_batchnorm=`` / ``dense=`` for the CNN).

  Returns:
    The initialized model.
  """
  key = name.lower().replace("-", "_")
  if key not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {sorted(MODELS)}")
  return MODELS[key](num_classes=num_classes, in_shape=in_shape, rngs=rngs, **kwargs)
