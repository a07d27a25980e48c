"""One conformance matrix over every transformation the library ships.

Like Optax's ``optax/contrib/_common_test.py``: ``CASES`` lists each
transformation with what its update needs, and every check runs over every
case. The checks the test files used to repeat (jit, no recompilation, extra
kwargs, a stable state) live here; each file keeps what is specific to its
transformation.

Compilation dominates the cost. Each case compiles one jitted ``CHUNK``-step
runner, shared by the checks through ``functools.cache``, and one
``optax.MultiSteps`` step; the eager updates of AutoWU run its jitted stage,
compiled once per parameter tree for all cases.
"""

import dataclasses
import functools
import logging
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_autolr as oa

# AutoWU: at most 100 steps of warmup and LR 0 from step 200 on, so the
# CHUNKS * CHUNK = 1000-step run spans warmup, decay and the LR-0 tail.
T, SPE = 200, 10
SMALL = dict(window_size=16, grid_size=32)
CHUNK, CHUNKS = 100, 10


def _no_extra_args(loss, grads):
  del loss, grads
  return {}


def _noise_stats(loss, grads):
  """A finite stand-in for the NoiseStats that ``track_noise_scale`` reads."""
  g2 = sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
           for g in jax.tree.leaves(grads))
  return {'noise_stats': oa.NoiseStats(g2, jnp.asarray(loss, jnp.float32))}


def _check_autowu_schedule(states):
  """Per-step AutoWU states: one switch, then LR 0 from ``T`` on."""
  aw = oa.find_autowu_state(states)
  t = np.asarray(aw.count) - 1  # The step each LR was applied at.
  phase, lr = np.asarray(aw.phase), np.asarray(aw.lr)
  assert phase[0] == oa.WARMUP and phase[-1] == oa.DECAY
  assert np.all(np.diff(phase) >= 0)
  assert np.all(lr[t < T - 1] > 0.0) and np.all(lr[t >= T] == 0.0)


@dataclasses.dataclass(frozen=True)
class Case:
  """A transformation under test and what its update needs.

  Attributes:
    name: the test id.
    make: builds the transformation.
    needs_value: whether ``update`` needs ``value=loss``.
    needs_params: whether ``update`` needs ``params``.
    state_name: the state ``NamedTuple`` that ``tree_get`` finds by name.
    inject: ``(factory, kwargs)`` for ``optax.inject_hyperparams``.
    inject_raises: whether ``inject_hyperparams(factory)`` raises a
      ``TypeError`` by design (the factory's arguments are constants).
    extra_args: ``(loss, grads) -> kwargs`` the case's update also gets.
    check_run: asserts on the stacked per-step states of the 1000 steps.
    known_defects: check name -> ``(reason, exception)``: a strict xfail.
  """

  name: str
  make: Callable[[], optax.GradientTransformation]
  needs_value: bool
  needs_params: bool
  state_name: str
  inject: tuple[Callable[..., Any], dict[str, Any]]
  inject_raises: bool = False
  extra_args: Callable[..., dict[str, Any]] = _no_extra_args
  check_run: Callable[[Any], None] | None = None
  known_defects: dict[str, tuple[str, type]] = dataclasses.field(
      default_factory=dict)


_AUTOWU_ARGS = dict(total_steps=T, steps_per_epoch=SPE)


def _autowu_chain_case(name: str) -> Case:
  """A ready-made chain ``oa.<name>`` (optimizer, then autowu)."""
  factory = getattr(oa, name)
  return Case(name, lambda: factory(T, SPE, weight_decay=1e-4, **SMALL),
              needs_value=True, needs_params=True, state_name='AutoWUState',
              inject=(factory, _AUTOWU_ARGS), inject_raises=True,
              check_run=_check_autowu_schedule)

CASES = {case.name: case for case in [
    Case('autowu', lambda: oa.autowu(T, SPE, **SMALL),
         needs_value=True, needs_params=True, state_name='AutoWUState',
         inject=(oa.autowu, _AUTOWU_ARGS), inject_raises=True,
         check_run=_check_autowu_schedule),
    *[_autowu_chain_case(name) for name in
      ('autowu_lamb', 'autowu_adamp', 'autowu_adamw')],
    Case('adamp', lambda: oa.adamp(1e-2, weight_decay=0.01, nesterov=True),
         needs_value=False, needs_params=True, state_name='ScaleByAdamPState',
         inject=(oa.adamp, dict(learning_rate=0.01, weight_decay=0.1,
                                wd_ratio=0.2, delta=0.1))),
    Case('scale_by_adamp', lambda: oa.scale_by_adamp(weight_decay=0.01),
         needs_value=False, needs_params=True, state_name='ScaleByAdamPState',
         inject=(oa.scale_by_adamp, dict(weight_decay=0.1, wd_ratio=0.2))),
    Case('track_noise_scale', lambda: oa.track_noise_scale(decay=0.9),
         needs_value=False, needs_params=False, state_name='NoiseScaleState',
         inject=(oa.track_noise_scale, dict(decay=0.9)),
         extra_args=_noise_stats),
]}


def _cases(check):
  """``CASES`` as pytest params; a known defect of ``check`` is an xfail."""
  params = []
  for case in CASES.values():
    marks = ()
    if check in case.known_defects:
      reason, raises = case.known_defects[check]
      marks = pytest.mark.xfail(strict=True, raises=raises, reason=reason)
    params.append(pytest.param(case, id=case.name, marks=marks))
  return params


# --------------------------------------------------------------------------
# The harness: one loss, one step, one jitted runner per case.


def _params(dtype=None):
  """A float32 kernel and a bfloat16 vector, or both of ``dtype``."""
  w = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
  h = jnp.linspace(0.0, 0.5, 3)
  return {'w': w.astype(dtype or jnp.float32),
          'h': h.astype(dtype or jnp.bfloat16)}


def _loss(params):
  """Log-cosh distance to 1: finite even if a case ascends (no LR sign)."""
  x = [p.astype(jnp.float32) - 1.0 for p in jax.tree.leaves(params)]
  return sum(jnp.sum(jnp.logaddexp(v, -v) - jnp.log(2.0)) for v in x)


def _step(case, tx, params, state, **kwargs):
  """``(loss, updates, state)`` of one update with ``value=loss``."""
  loss, grads = jax.value_and_grad(_loss)(params)
  kwargs = dict(value=loss, **case.extra_args(loss, grads), **kwargs)
  updates, state = tx.update(grads, state, params, **kwargs)
  return loss, updates, state


def _run_eager(case, tx, params, state, n):
  """``n`` eager steps; returns ``(params, updates, state)`` of the last."""
  for _ in range(n):
    _, updates, state = _step(case, tx, params, state)
    params = optax.apply_updates(params, updates)
  return params, updates, state


@functools.cache
def _runner(name):
  """``(tx, run, traces)``: ``run`` is ``CHUNK`` jitted steps of a case.

  ``run(params, state)`` returns the final ``(params, state)`` and the
  per-step ``(loss, updates, state)``; every step also passes an unknown
  keyword argument. ``traces`` grows by one per trace of ``run``.
  """
  case = CASES[name]
  tx = optax.with_extra_args_support(case.make())
  traces = []

  def body(carry, _):
    params, state = carry
    loss, updates, state = _step(case, tx, params, state,
                                 unknown_kwarg=jnp.float32(1.0))
    chex.assert_trees_all_equal_dtypes(updates, params)
    return (optax.apply_updates(params, updates), state), (loss, updates,
                                                           state)

  @jax.jit
  def run(params, state):
    traces.append(None)
    return jax.lax.scan(body, (params, state), None, CHUNK)

  return tx, run, traces


def _signature(tree):
  """Structure, then (shape, dtype, weak type) of every leaf."""
  avals = [jax.typeof(x) for x in jax.tree.leaves(tree)]
  return (jax.tree.structure(tree),
          [(a.shape, a.dtype, a.weak_type) for a in avals])


def _assert_close(actual, expected):
  """Leafwise closeness; bfloat16 leaves to a few of their ulps."""
  def close(a, b):
    rtol = 2e-2 if jnp.asarray(b).dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(b, np.float64), rtol=rtol,
                               atol=rtol * 1e-2)
  chex.assert_trees_all_equal_structs(actual, expected)
  jax.tree.map(close, actual, expected)


def _counts(state):
  """Every ``count`` field in a state."""
  return [int(v) for _, v in optax.tree_utils.tree_get_all_with_path(
      state, 'count')]


def _cache_size(jitted):
  return jitted._cache_size()  # pylint: disable=protected-access


def _compilations(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith('Compiling ')]


# --------------------------------------------------------------------------
# The checks.


@pytest.mark.parametrize('case', _cases('jit'))
def test_init_and_update_under_jit_match_eager(case):
  tx, run, _ = _runner(case.name)
  params = _params()
  state = tx.init(params)
  chex.assert_trees_all_equal(jax.jit(tx.init)(params), state)
  _, (losses, updates, states) = run(params, state)
  for i in range(3):
    loss, eager_updates, state = _step(case, tx, params, state)
    np.testing.assert_allclose(losses[i], loss, rtol=1e-6)
    _assert_close(jax.tree.map(lambda x: x[i], updates), eager_updates)
    _assert_close(jax.tree.map(lambda x: x[i], states), state)
    params = optax.apply_updates(params, eager_updates)


@pytest.mark.parametrize('case', _cases('recompile'))
def test_no_recompilation_over_1000_steps(case, caplog):
  tx, run, traces = _runner(case.name)
  params = _params()
  state = first = tx.init(params)
  (params, state), (_, _, states) = run(params, state)
  all_states = [states]
  num_traces, cache_size = len(traces), _cache_size(run)
  caplog.set_level(logging.DEBUG)
  with jax.log_compiles():
    for _ in range(CHUNKS - 1):
      (params, state), (_, _, states) = run(params, state)
      all_states.append(states)
  assert _compilations(caplog) == []
  assert len(traces) == num_traces == 1
  assert _cache_size(run) == cache_size == 1
  assert _signature(state) == _signature(first)
  assert jax.tree.map(lambda p: p.dtype, params) == {
      'w': jnp.float32, 'h': jnp.bfloat16}
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  assert set(_counts(state)) == {CHUNKS * CHUNK}
  if case.check_run is not None:
    case.check_run(jax.tree.map(lambda *x: np.concatenate(x), *all_states))


@pytest.mark.parametrize('case', _cases('extra_kwargs'))
def test_extra_kwargs_value_and_unknown(case):
  tx = case.make()
  params = _params()
  state = tx.init(params)
  loss, grads = jax.value_and_grad(_loss)(params)
  kwargs = dict(value=loss, **case.extra_args(loss, grads))
  ref = optax.with_extra_args_support(tx).update(grads, state, params,
                                                 **kwargs)
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    chex.assert_trees_all_equal(
        tx.update(grads, state, params, unknown_kwarg=1, **kwargs), ref)
  else:  # A plain GradientTransformation: extra kwargs go through a chain.
    with pytest.raises(TypeError):
      tx.update(grads, state, params, **kwargs)
  chain = optax.chain(tx)
  updates, (inner,) = chain.update(grads, chain.init(params), params,
                                   unknown_kwarg=1, **kwargs)
  chex.assert_trees_all_equal((updates, inner), ref)


@pytest.mark.parametrize('case', _cases('needs'))
def test_needs_value_and_params(case):
  tx = optax.with_extra_args_support(case.make())
  params = _params()
  state = tx.init(params)
  loss, grads = jax.value_and_grad(_loss)(params)
  extra = case.extra_args(loss, grads)
  ref = tx.update(grads, state, params, value=loss, **extra)
  if case.needs_value:
    with pytest.raises(ValueError, match='value'):
      tx.update(grads, state, params, **extra)
  else:
    chex.assert_trees_all_equal(tx.update(grads, state, params, **extra), ref)
  if case.needs_params:
    with pytest.raises(ValueError, match='param'):
      tx.update(grads, state, None, value=loss, **extra)
  else:
    chex.assert_trees_all_equal(
        tx.update(grads, state, None, value=loss, **extra), ref)


# float32 leaves are in the mixed tree: a float32-only tree would cost AutoWU
# one more compilation and test nothing the mixed one does not.
@pytest.mark.parametrize('dtype', [None, jnp.bfloat16],
                         ids=['float32+bfloat16', 'bfloat16'])
@pytest.mark.parametrize('case', _cases('dtype'))
def test_updates_keep_param_dtype_and_state_is_stable(case, dtype):
  tx = optax.with_extra_args_support(case.make())
  params = _params(dtype)
  dtypes = jax.tree.map(lambda p: p.dtype, params)
  state = first = tx.init(params)
  for _ in range(3):
    _, updates, state = _step(case, tx, params, state)
    chex.assert_trees_all_equal_dtypes(updates, params)
    assert _signature(state) == _signature(first)
    params = optax.apply_updates(params, updates)
  assert jax.tree.map(lambda p: p.dtype, params) == dtypes
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize('case', _cases('chain'))
def test_inside_chain(case):
  tx = optax.with_extra_args_support(case.make())
  chain = optax.chain(optax.identity(), case.make())
  params = _params()
  state, chain_state = tx.init(params), chain.init(params)
  for _ in range(2):
    _, updates, state = _step(case, tx, params, state)
    _, chain_updates, chain_state = _step(case, chain, params, chain_state)
    chex.assert_trees_all_equal(chain_updates, updates)
    chex.assert_trees_all_equal(chain_state[1], state)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize('case', _cases('multisteps'))
def test_inside_multisteps(case):
  k = 2
  tx = optax.with_extra_args_support(case.make())
  multi = optax.MultiSteps(case.make(), every_k_schedule=k)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    _, updates, state = _step(case, multi, params, state,
                              unknown_kwarg=jnp.float32(1.0))
    chex.assert_trees_all_equal_dtypes(updates, params)
    return optax.apply_updates(params, updates), updates, state

  params = ref_params = _params()
  state, ref_state = multi.init(params), tx.init(params)
  for i in range(2 * k):
    params, updates, state = step(params, state)
    if i % k < k - 1:  # Accumulates at fixed params: zero updates.
      chex.assert_trees_all_equal(updates, optax.tree.zeros_like(updates))
    else:  # The mean of k equal gradients: one step of the inner optimizer.
      ref_params, ref_updates, ref_state = _run_eager(
          case, tx, ref_params, ref_state, 1)
      _assert_close(updates, ref_updates)
      _assert_close(state.inner_opt_state, ref_state)
  assert len(traces) == 1
  assert int(state.gradient_step) == 2
  assert set(_counts(state.inner_opt_state)) == {2}


@pytest.mark.parametrize('case', _cases('pytree'))
def test_state_survives_copy_device_put_and_flatten(case):
  tx, run, traces = _runner(case.name)
  params = _params()
  _, _, state = _run_eager(case, tx, params, tx.init(params), 2)
  (ref_params, ref_state), _ = run(params, state)
  num_traces, cache_size = len(traces), _cache_size(run)
  leaves, treedef = jax.tree.flatten(state)
  copies = {
      'tree.map(jnp.copy)': jax.tree.map(jnp.copy, state),
      'device_put': jax.device_put(state),
      'unflatten(flatten)': jax.tree.unflatten(treedef, leaves),
  }
  for how, copy in copies.items():
    assert type(copy) is type(state), how
    chex.assert_trees_all_equal(copy, state)
    (p, s), _ = run(params, copy)
    chex.assert_trees_all_equal((p, s), (ref_params, ref_state))
  assert len(traces) == num_traces == 1
  assert _cache_size(run) == cache_size == 1


@pytest.mark.parametrize('case', _cases('tree_get'))
def test_tree_get_finds_state_and_counts(case):
  tx = optax.with_extra_args_support(case.make())
  params = _params()
  state = tx.init(params)
  named = optax.tree_utils.tree_get(state, case.state_name)
  assert type(named).__name__ == case.state_name
  assert _counts(state) and set(_counts(state)) == {0}
  _, _, state = _run_eager(case, tx, params, state, 2)
  assert set(_counts(state)) == {2}
  assert type(optax.tree_utils.tree_get(state, case.state_name)) is type(
      named)


@pytest.mark.parametrize('case', _cases('inject'))
def test_inject_hyperparams(case):
  factory, kwargs = case.inject
  injected = optax.inject_hyperparams(factory)(**kwargs)
  params = _params()
  if case.inject_raises:
    with pytest.raises(TypeError, match='inject_hyperparams'):
      injected.init(params)
    return
  plain = optax.with_extra_args_support(factory(**kwargs))
  loss, grads = jax.value_and_grad(_loss)(params)
  extra = dict(value=loss, **case.extra_args(loss, grads))

  def update(tx, state):
    return jax.jit(lambda s: tx.update(grads, s, params, **extra))(state)

  updates, state = update(injected, jax.jit(injected.init)(params))
  ref_updates, ref_state = update(plain, plain.init(params))
  _assert_close(updates, ref_updates)
  _assert_close(state.inner_state, ref_state)
  for name, value in kwargs.items():
    assert float(state.hyperparams[name]) == pytest.approx(value), name
