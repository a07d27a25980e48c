"""Small Flax NNX models for the experiments.

The classifiers take NHWC float input (e.g. from :mod:`experiments.data`) and
return unnormalized logits of shape ``(N, num_classes)``;
:class:`Transformer` (a decoder-only language model) takes ``int32`` token
ids ``(N, T)`` and returns next-token logits ``(N, T, vocab)``.

``SmallCNN(use_batchnorm=True)`` holds ``nnx.BatchStat`` running statistics:
call ``model.train()`` before training steps and ``model.eval()`` before
evaluation, and build the optimizer with ``wrt=nnx.Param`` so only parameters
are updated by the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["MLP", "SmallCNN", "Transformer", "MODELS", "make_model"]


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


class _Block(nnx.Module):
  """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.ln1 = nnx.LayerNorm(width, rngs=rngs)
    self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
    self.out = nnx.Linear(width, width, rngs=rngs)
    self.ln2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, w = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)).reshape(n, t, 3, self.heads, -1), 3, axis=2)
    a = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], is_causal=True)
    x = x + self.out(a.reshape(n, t, w))
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
  """Decoder-only transformer language model (GPT-style, pre-LayerNorm).

  Token embedding + learned positions -> ``layers`` x [causal multi-head
  self-attention, 4x GELU MLP], each pre-LayerNorm with a residual -> final
  LayerNorm -> logits through the tied embedding (``tie=True``) or a
  separate head. Attention is :func:`jax.nn.dot_product_attention` with
  ``is_causal=True``: the output at position ``t`` depends on tokens
  ``<= t`` only.

  Args:
    num_classes: Vocabulary size (256 for bytes).
    in_shape: ``(context,)``, the longest sequence.
    layers: Transformer blocks.
    width: Model width (divisible by ``heads``).
    heads: Attention heads.
    tie: Tie the output head to the token embedding.
    rngs: NNX random streams for initialization.
  """

  def __init__(
      self,
      num_classes: int = 256,
      *,
      in_shape: Sequence[int] = (128,),
      layers: int = 2,
      width: int = 128,
      heads: int = 4,
      tie: bool = True,
      rngs: nnx.Rngs,
  ):
    if width % heads:
      raise ValueError(f"`width` ({width}) must be divisible by `heads` ({heads})")
    (context,) = in_shape
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(num_classes, width, embedding_init=init, rngs=rngs)
    self.pos = nnx.Param(init(rngs.params(), (context, width)))
    self.blocks = nnx.List([_Block(width, heads, rngs=rngs) for _ in range(layers)])
    self.ln = nnx.LayerNorm(width, rngs=rngs)
    self.head = None if tie else nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
    for block in self.blocks:
      x = block(x)
    x = self.ln(x)
    return self.embed.attend(x) if self.head is None else self.head(x)


MODELS = {"mlp": MLP, "cnn": SmallCNN, "small_cnn": SmallCNN, "transformer": Transformer}


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
    name: ``"mlp"``, ``"cnn"``, ``"small_cnn"`` or ``"transformer"``
      (case-insensitive, ``-`` allowed for ``_``).
    rngs: NNX random streams, e.g. ``nnx.Rngs(0)``.
    num_classes: Number of output logits (the vocabulary of a transformer).
    in_shape: Shape of one input example ``(H, W, C)``, or ``(context,)``.
    **kwargs: Extra constructor arguments (``hidden=`` for the MLP,
      ``use_batchnorm=`` / ``dense=`` for the CNN, ``layers=`` / ``width=`` /
      ``heads=`` / ``tie=`` for the transformer).

  Returns:
    The initialized model.
  """
  key = name.lower().replace("-", "_")
  if key not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {sorted(MODELS)}")
  return MODELS[key](num_classes=num_classes, in_shape=in_shape, rngs=rngs, **kwargs)
