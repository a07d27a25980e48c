"""Tests for optax_autolr.adamp (optax_autolr/_adamp.py)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_autolr import (
    ScaleByAdamPState,
    adamp,
    scale_by_adamp,
    scale_invariance_report,
)

# Expected kinds for the test model below (0 none, 1 channel-wise, 2 layer-wise).
EXPECTED_KINDS = {
    "conv": 1,  # Conv HWIO followed by BatchNorm: per-output-channel invariant.
    "dense_bn": 1,  # Dense (in, out) followed by BatchNorm.
    "dense_ln": 2,  # Dense followed by a global RMS normalization.
    "dense_plain": 0,  # Plain Dense: not scale-invariant.
    "bias": 0,  # ndim 1: never projected.
    "scale": 0,  # ndim 0: never projected.
}


# --------------------------------------------------------------------------
# Test model: a loss in which some kernels are followed by normalizations.
# --------------------------------------------------------------------------
def _init_params(dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  p = {
      "conv": 0.5 * jax.random.normal(ks[0], (3, 3, 2, 4)),
      "dense_bn": jax.random.normal(ks[1], (4, 5)),
      "dense_ln": jax.random.normal(ks[2], (5, 6)),
      "dense_plain": 0.1 * jax.random.normal(ks[3], (6, 3)),
      "bias": 0.1 * jax.random.normal(ks[4], (3,)),
      "scale": jnp.array(1.5),
  }
  return jax.tree.map(lambda x: x.astype(dtype), p)


def _data(dtype=jnp.float32, seed=1):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(kx, (8, 6, 6, 2)).astype(dtype)
  y = (5.0 * jax.random.normal(ky, (8, 3))).astype(dtype)
  return x, y


def _batch_norm(h, axes):
  mean = jnp.mean(h, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=axes, keepdims=True)
  return (h - mean) / jnp.sqrt(var)


def _forward(params, x):
  h = jax.lax.conv_general_dilated(
      x, params["conv"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(_batch_norm(h, (0, 1, 2)))
  h = jnp.mean(h, axis=(1, 2))
  h = jnp.tanh(params["scale"] * _batch_norm(h @ params["dense_bn"], (0,)))
  h = h @ params["dense_ln"]
  h = h / jnp.sqrt(jnp.mean(jnp.square(h)))  # Invariant to the global scale.
  return h @ params["dense_plain"] + params["bias"]


def _loss(params, x, y):
  return jnp.mean(jnp.square(_forward(params, x) - y))


# --------------------------------------------------------------------------
# Independent NumPy reference (float64), written from the paper's equations
# and the official PyTorch step order (decay first, then the step).
# --------------------------------------------------------------------------
class _NumpyAdamP:

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, delta=0.1, wd_ratio=0.1,
               weight_decay=0.0, nesterov=False):
    self.lr = lr if callable(lr) else (lambda step: lr)
    self.b1, self.b2, self.eps = b1, b2, eps
    self.delta, self.wd_ratio, self.wd = delta, wd_ratio, weight_decay
    self.nesterov = nesterov
    self.t = 0
    self.m, self.v = {}, {}

  def _cos(self, a, b):
    na = max(np.sqrt(np.sum(a * a)), self.eps)
    nb = max(np.sqrt(np.sum(b * b)), self.eps)
    return abs(np.sum(a * b)) / (na * nb)

  def _project(self, vectors_w, vectors_g, vectors_p):
    """Lists of per-vector arrays; returns projected list or None."""
    dim = vectors_w[0].size
    cosines = [self._cos(g, w) for g, w in zip(vectors_g, vectors_w)]
    if max(cosines) >= self.delta / math.sqrt(dim):
      return None
    out = []
    for w, p in zip(vectors_w, vectors_p):
      w_hat = w / (np.sqrt(np.sum(w * w)) + self.eps)
      out.append(p - np.sum(w_hat * p) * w_hat)
    return out

  def step(self, params, grads):
    lr = float(self.lr(self.t))
    self.t += 1
    t = self.t
    new_params, kinds = {}, {}
    for name, w in params.items():
      g = grads[name]
      m = self.m.get(name, np.zeros_like(w))
      v = self.v.get(name, np.zeros_like(w))
      m = self.b1 * m + (1 - self.b1) * g
      v = self.b2 * v + (1 - self.b2) * g * g
      self.m[name], self.v[name] = m, v
      denom = np.sqrt(v) / math.sqrt(1 - self.b2**t) + self.eps
      step_size = lr / (1 - self.b1**t)
      if self.nesterov:
        perturb = (self.b1 * m + (1 - self.b1) * g) / denom
      else:
        perturb = m / denom
      kind, ratio = 0, 1.0
      if w.ndim > 1:
        n_out = w.shape[-1]
        cols = lambda a: [a.reshape(-1, n_out)[:, j] for j in range(n_out)]
        proj = self._project(cols(w), cols(g), cols(perturb))
        if proj is not None:
          perturb = np.stack(proj, axis=1).reshape(w.shape)
          kind, ratio = 1, self.wd_ratio
        else:
          proj = self._project([w.ravel()], [g.ravel()], [perturb.ravel()])
          if proj is not None:
            perturb = proj[0].reshape(w.shape)
            kind, ratio = 2, self.wd_ratio
      kinds[name] = kind
      w = w * (1 - lr * self.wd * ratio)
      new_params[name] = w - step_size * perturb
    return new_params, kinds


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _np_tree(tree):
  return jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), tree)


# --------------------------------------------------------------------------
# Agreement with the NumPy reference.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov,schedule", [(False, False), (True, True)])
def test_matches_numpy_reference(x64, nesterov, schedule):
  del x64
  lr = (lambda step: 0.02 * (1.0 - 0.02 * step)) if schedule else 0.02
  hp = dict(b1=0.9, b2=0.99, eps=1e-8, delta=0.1, wd_ratio=0.1,
            weight_decay=0.5, nesterov=nesterov)
  tx = adamp(lr, **hp)
  ref = _NumpyAdamP(lr, **hp)

  params = _init_params(jnp.float64)
  x, y = _data(jnp.float64)
  grad_fn = jax.jit(jax.grad(_loss))

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    kinds = scale_invariance_report(grads, params)
    return optax.apply_updates(params, updates), state, kinds

  state = tx.init(params)
  ref_params = _np_tree(params)
  for _ in range(20):
    ref_grads = _np_tree(grad_fn(ref_params, x, y))
    ref_params, ref_kinds = ref.step(ref_params, ref_grads)
    params, state, kinds = step(params, state)
    assert ref_kinds == EXPECTED_KINDS
    assert {k: int(v) for k, v in kinds.items()} == EXPECTED_KINDS
    chex.assert_trees_all_close(
        _np_tree(params), ref_params, rtol=1e-6, atol=1e-12)
  assert params["conv"].dtype == jnp.float64


def test_reference_comparison_is_sensitive(x64):
  """Sanity check of the comparison: other settings do not agree."""
  del x64
  params = _init_params(jnp.float64)
  x, y = _data(jnp.float64)
  grads = jax.grad(_loss)(params, x, y)
  tx = adamp(0.02, weight_decay=0.5)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  ours = _np_tree(optax.apply_updates(params, updates))
  for hp in (dict(wd_ratio=1.0), dict(nesterov=True)):
    ref = _NumpyAdamP(0.02, **{**dict(weight_decay=0.5), **hp})
    other, _ = ref.step(_np_tree(params), _np_tree(grads))
    with pytest.raises(AssertionError):
      chex.assert_trees_all_close(ours["conv"], other["conv"], rtol=1e-6)


# --------------------------------------------------------------------------
# Projection.
# --------------------------------------------------------------------------
def _column_cos(w, u):
  w = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
  u = np.asarray(u, np.float64).reshape(-1, u.shape[-1])
  return np.abs(np.sum(w * u, 0)) / (
      np.linalg.norm(w, axis=0) * np.linalg.norm(u, axis=0))


def _layer_cos(w, u):
  w = np.asarray(w, np.float64).ravel()
  u = np.asarray(u, np.float64).ravel()
  return abs(w @ u) / (np.linalg.norm(w) * np.linalg.norm(u))


def test_projection_removes_radial_component_only_when_detected():
  params = _init_params()
  x, y = _data()
  tx = scale_by_adamp()
  adam = optax.scale_by_adam()

  @jax.jit
  def run(params):
    grads = jax.grad(_loss)(params, x, y)
    u, _ = tx.update(grads, tx.init(params), params)
    a, _ = adam.update(grads, adam.init(params), params)
    return u, a

  u, a = run(params)
  for name in ("conv", "dense_bn"):  # Channel-wise: every column orthogonal.
    assert np.max(_column_cos(params[name], u[name])) < 1e-5
    assert np.max(_column_cos(params[name], a[name])) > 1e-2
  # Layer-wise: orthogonal as a whole, not per column.
  assert _layer_cos(params["dense_ln"], u["dense_ln"]) < 1e-5
  assert _layer_cos(params["dense_ln"], a["dense_ln"]) > 1e-2
  assert np.max(_column_cos(params["dense_ln"], u["dense_ln"])) > 1e-2
  # Not detected, ndim <= 1: the plain Adam direction.
  for name in ("dense_plain", "bias", "scale"):
    chex.assert_trees_all_close(u[name], a[name], rtol=1e-6)
  assert np.max(_column_cos(params["dense_plain"], u["dense_plain"])) > 1e-2


def test_weight_decay_term_uses_wd_ratio_on_scale_invariant():
  params = _init_params()
  x, y = _data()
  grads = jax.grad(_loss)(params, x, y)
  wd, ratio = 0.3, 0.25
  tx0 = scale_by_adamp(wd_ratio=ratio)
  tx1 = scale_by_adamp(wd_ratio=ratio, weight_decay=wd)
  u0, _ = jax.jit(tx0.update)(grads, tx0.init(params), params)
  u1, _ = jax.jit(tx1.update)(grads, tx1.init(params), params)
  for name, kind in EXPECTED_KINDS.items():
    factor = wd * (ratio if kind else 1.0)
    chex.assert_trees_all_close(
        u1[name] - u0[name], factor * params[name], rtol=1e-5, atol=1e-6)


def test_scale_invariance_report():
  params = _init_params()
  x, y = _data()
  grads = jax.grad(_loss)(params, x, y)
  report = jax.jit(scale_invariance_report)(grads, params)
  assert {k: int(v) for k, v in report.items()} == EXPECTED_KINDS
  assert all(v.dtype == jnp.int32 and v.shape == () for v in report.values())
  # A tiny delta detects nothing.
  report = scale_invariance_report(grads, params, delta=1e-12)
  assert all(int(v) == 0 for v in report.values())


# --------------------------------------------------------------------------
# dtypes, mask, arguments.
# --------------------------------------------------------------------------
def test_bf16_params_keep_dtype():
  params = _init_params(jnp.bfloat16)
  x, y = _data(jnp.bfloat16)
  tx = adamp(1e-2, weight_decay=0.1)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return updates, optax.apply_updates(params, updates), state

  updates, new_params, new_state = step(params, state)
  for tree in (updates, new_params):
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(tree))
  chex.assert_trees_all_equal_dtypes(state, new_state)
  assert all(jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(new_params))
  adamp_state = new_state[0]
  assert isinstance(adamp_state, ScaleByAdamPState)
  assert adamp_state.count.dtype == jnp.int32
  # mu_dtype is honoured.
  tx32 = scale_by_adamp(mu_dtype=jnp.float32)
  s = tx32.init(params)
  u, s2 = jax.jit(tx32.update)(params, s, params)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(s2.mu))
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(s2.nu))
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(u))


@pytest.mark.parametrize("as_callable", [False, True])
def test_mask_excludes_weight_decay(as_callable):
  params = _init_params()
  x, y = _data()
  grads = jax.grad(_loss)(params, x, y)
  mask = {k: v.ndim > 1 for k, v in params.items()}  # Decay kernels only.
  if as_callable:
    mask_arg = lambda p: jax.tree.map(lambda v: v.ndim > 1, p)
  else:
    mask_arg = mask
  tx_mask = scale_by_adamp(weight_decay=0.2, mask=mask_arg)
  tx_none = scale_by_adamp(weight_decay=0.0)
  tx_all = scale_by_adamp(weight_decay=0.2)
  run = lambda tx: jax.jit(tx.update)(grads, tx.init(params), params)[0]
  u_mask, u_none, u_all = run(tx_mask), run(tx_none), run(tx_all)
  for name, decayed in mask.items():
    expected = u_all[name] if decayed else u_none[name]
    chex.assert_trees_all_close(u_mask[name], expected, rtol=1e-6)
  assert not np.allclose(u_all["bias"], u_none["bias"])


def test_mask_with_wrong_structure_raises():
  params = _init_params()
  tx = scale_by_adamp(weight_decay=0.1, mask={"conv": True})
  with pytest.raises(ValueError, match="mask"):
    tx.update(params, tx.init(params), params)


def test_params_required():
  params = _init_params()
  tx = adamp(1e-3)
  state = tx.init(params)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="params"):
    scale_by_adamp().init(None)


@pytest.mark.parametrize("kwargs,name", [
    (dict(b1=1.0), "b1"), (dict(b1=-0.1), "b1"),
    (dict(b2=1.0), "b2"), (dict(b2=-1e-3), "b2"),
    (dict(eps=0.0), "eps"), (dict(delta=0.0), "delta"),
    (dict(delta=-1.0), "delta"),
    (dict(wd_ratio=1.5), "wd_ratio"), (dict(wd_ratio=-0.1), "wd_ratio"),
    (dict(weight_decay=-1e-4), "weight_decay"),
])
def test_invalid_arguments(kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    scale_by_adamp(**kwargs)
  with pytest.raises(ValueError, match=f"`{name}`"):
    adamp(1e-3, **kwargs)


# --------------------------------------------------------------------------
# Optax conformance.
# --------------------------------------------------------------------------
def test_in_chain_with_sign_flip_and_scheduler_last():
  """scale(-1) + positive scheduler last == scale_by_learning_rate."""
  params = _init_params()
  x, y = _data()
  sched = optax.cosine_decay_schedule(0.05, 10)
  tx_a = adamp(sched, weight_decay=0.1)
  tx_b = optax.chain(
      optax.clip_by_global_norm(1e3),
      scale_by_adamp(weight_decay=0.1),
      optax.scale(-1.0),
      optax.scale_by_schedule(sched),
  )

  def run(tx):
    @jax.jit
    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(_loss)(params, x, y)
      updates, state = tx.update(grads, state, params, value=loss)
      return (optax.apply_updates(params, updates), state), loss

    (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, 10)
    return p, losses

  p_a, losses = run(tx_a)
  p_b, _ = run(tx_b)
  chex.assert_trees_all_close(p_a, p_b, rtol=1e-5, atol=1e-6)
  assert losses[-1] < losses[0]


def test_converges_in_scan(scan_train):
  target = jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
  loss = lambda p: jnp.sum(jnp.square(p["w"] - target)) + jnp.sum(
      jnp.square(p["b"] - 1.0))
  params = {"w": jnp.zeros((3, 2)) + 0.1, "b": jnp.zeros(2)}
  _, _, values = scan_train(adamp(0.05), loss, params, 400)
  assert values[-1] < 1e-3 * values[0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_state_dtype_stable(x64, dtype):
  del x64
  params = {"w": jnp.ones((3, 4), dtype), "b": jnp.ones((4,), dtype),
            "s": jnp.ones((), dtype)}
  tx = adamp(1e-2, weight_decay=0.1)
  state = tx.init(params)
  new_state = state
  update = jax.jit(tx.update)
  for _ in range(2):
    updates, new_state = update(params, new_state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  chex.assert_trees_all_equal_dtypes(updates, params)


def test_flax_nnx_optimizer():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      h = jax.nn.relu(self.bn(self.conv(x)))
      return self.out(jnp.mean(h, axis=(1, 2)))

  model = Net(nnx.Rngs(0))
  opt = nnx.Optimizer(model, adamp(1e-2, weight_decay=1e-2), wrt=nnx.Param)
  x, y = _data()

  @nnx.jit
  def train_step(model, opt):
    loss_fn = lambda m: jnp.mean(jnp.square(m(x) - y))
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads, value=loss)
    return loss

  losses = [float(train_step(model, opt)) for _ in range(5)]
  assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(b1="0.9"), TypeError, "b1"),
        (dict(weight_decay="x"), TypeError, "weight_decay"),
        (dict(nesterov="yes"), TypeError, "nesterov"),
        (dict(eps=None), TypeError, "eps"),
        (dict(delta=-0.1), ValueError, "delta"),
        (dict(wd_ratio=1.5), ValueError, "wd_ratio"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        scale_by_adamp(**kwargs)
    with pytest.raises(error, match=f"`{name}`"):
        adamp(1e-3, **kwargs)


@pytest.mark.parametrize("lr, error", [("1e-3", TypeError), (-1.0, ValueError)])
def test_bad_learning_rate_raises_at_construction(lr, error):
    with pytest.raises(error, match="`learning_rate`"):
        adamp(lr)


def test_numpy_and_schedule_hyperparameters_are_accepted():
    params = {"w": jnp.ones((2, 2))}
    for tx in (
        adamp(np.float32(1e-3), b1=np.float64(0.9), weight_decay=np.float32(0.0)),
        adamp(optax.constant_schedule(1e-3), b2=jnp.float32(0.99)),
        optax.inject_hyperparams(adamp)(learning_rate=1e-3, b1=0.9),
    ):
        state = tx.init(params)
        updates, _ = tx.update(params, state, params)
        assert np.all(np.isfinite(updates["w"]))
