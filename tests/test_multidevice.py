"""AutoWU in data-parallel training over a device mesh (8 forced CPU devices).

The training runs in a subprocess, because the number of host devices is fixed
when JAX starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import optax_autolr as oa

    T, STEPS, B, D, H = 60, 66, 64, 4, 32
    tx = optax.chain(
        optax.lamb(1.0),
        oa.autowu(T, 10, min_lr=1e-4, max_lr=30.0, window_size=16,
                  grid_size=32))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params0 = {'w1': np.asarray(jax.random.normal(k1, (D, H))) / 2,
               'b1': np.zeros(H, np.float32),
               'w2': np.asarray(jax.random.normal(k2, (H, 1))) / 6,
               'b2': np.zeros(1, np.float32)}
    xs = np.asarray(jax.random.normal(k3, (STEPS, B, D)))
    ys = np.sin(2.0 * xs.sum(-1, keepdims=True))

    def loss_fn(p, x, y):
      h = jnp.tanh(x @ p['w1'] + p['b1'])
      return jnp.mean((h @ p['w2'] + p['b2'] - y) ** 2)  # global mean

    @jax.jit
    def step(p, s, x, y):
      loss, g = jax.value_and_grad(loss_fn)(p, x, y)
      u, s = tx.update(g, s, p, value=loss)
      return optax.apply_updates(p, u), s

    @jax.jit
    def step_with_gradients(p, s, x, y):  # The coherence rule on.
      loss, g = jax.value_and_grad(loss_fn)(p, x, y)
      u, s = tx.update(g, s, p, value=loss, gradients=g)
      return optax.apply_updates(p, u), s

    def train(param_sharding, batch_sharding, state_sharding, step=step):
      p = jax.device_put(params0, param_sharding)
      s = tx.init(p)  # LAMB's moments follow the params' sharding.
      # AutoWU's leaves do not depend on the params and are uncommitted:
      # place them (replicated), so that the loop compiles once.
      s = jax.tree.map(
          lambda a: a if a.committed else jax.device_put(a, state_sharding),
          s)
      lrs = []
      for i in range(STEPS):
        x = jax.device_put(xs[i], batch_sharding)
        y = jax.device_put(ys[i], batch_sharding)
        # One step in flight at a time: 8 CPU devices share 2 cores here.
        p, s = jax.block_until_ready(step(p, s, x, y))
        lrs.append(oa.get_lr(s))
      aw = oa.find_autowu_state(s)
      sample = aw.grad_sample  # One vector; XLA picks its sharding.
      snapshot = aw.snapshot  # The rollback's copy of the params.
      aw = aw._replace(grad_sample=None, snapshot=None)
      mu = s[0][0].mu  # LAMB's first moment, sharded like the params
      leaves = lambda t: jax.tree.leaves(t)
      return {
          'lrs': [float(v) for v in lrs],
          'switch': [int(aw.switch_step), int(aw.switch_reason)],
          'restart_lr': float(aw.restart_lr),
          'autowu_replicated': all(
              a.sharding.is_fully_replicated for a in leaves(aw)),
          'autowu_devices': sorted(
              {len(a.sharding.device_set) for a in leaves(aw)}),
          'params_replicated': [
              a.sharding.is_fully_replicated for a in leaves(p)],
          'mu_replicated': [
              a.sharding.is_fully_replicated for a in leaves(mu)],
          'snapshot_sharding': [
              a.sharding.is_equivalent_to(b.sharding, a.ndim)
              for a, b in zip(leaves(snapshot), leaves(p))],
          'snapshot_step': int(aw.snapshot_step),
          'coherence': float(aw.coherence_sum) / max(int(aw.coherence_count), 1),
          'coherence_count': int(aw.coherence_count),
          'sample_devices': sorted(
              {len(a.sharding.device_set) for a in leaves(sample)}),
      }

    mesh = Mesh(np.array(jax.devices()), ('data',))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P('data'))
    sharded_params = {'w1': NamedSharding(mesh, P(None, 'data')),
                      'b1': NamedSharding(mesh, P('data')),
                      'w2': NamedSharding(mesh, P('data')),
                      'b2': replicated}
    dev0 = jax.devices()[0]
    print(json.dumps({
        'device_count': jax.device_count(),
        'single': train(dev0, dev0, dev0),
        'replicated_params': train(replicated, batch, replicated),
        'sharded_params': train(sharded_params, batch, replicated),
        'num_compiles': step._cache_size(),
        'single_gradients': train(dev0, dev0, dev0, step_with_gradients),
        'sharded_gradients': train(sharded_params, batch, replicated,
                                   step_with_gradients),
    }))
''')


@pytest.fixture(scope='module')
def runs():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=8').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(
      [root] + [p for p in [env.get('PYTHONPATH')] if p])
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, cwd=root,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_on_eight_devices(runs):
  assert runs['device_count'] == 8
  # One compilation per placement (single device, replicated, sharded).
  assert runs['num_compiles'] == 3


@pytest.mark.parametrize('variant', ['replicated_params', 'sharded_params'])
def test_autowu_state_stays_replicated(runs, variant):
  run = runs[variant]
  assert run['autowu_replicated']
  assert run['autowu_devices'] == [8]
  if variant == 'sharded_params':
    # The params and LAMB's moments really are sharded: AutoWU's state is
    # replicated but for its copy of the params, sharded like them.
    assert not all(run['params_replicated'])
    assert not all(run['mu_replicated'])
    assert all(run['snapshot_sharding'])
  else:
    assert all(run['params_replicated'])


def test_coherence_rule_matches_single_device(runs):
  """With ``gradients=``, sharded gradients give the single-device decision."""
  single, run = runs['single_gradients'], runs['sharded_gradients']
  assert single['coherence_count'] == run['coherence_count'] > 0
  np.testing.assert_allclose(run['coherence'], single['coherence'], rtol=1e-4)
  assert run['switch'] == single['switch']
  np.testing.assert_allclose(run['lrs'], single['lrs'], rtol=1e-5, atol=0)
  # Every AutoWU leaf but the gradient sample stays replicated.
  assert run['autowu_replicated'] and run['autowu_devices'] == [8]
  assert run['sample_devices'] == [8]


@pytest.mark.parametrize('variant', ['replicated_params', 'sharded_params'])
def test_lr_trajectory_matches_single_device(runs, variant):
  single, run = runs['single'], runs[variant]
  # The run crosses the switch and reaches the end of the schedule.
  step, reason = single['switch']
  assert 0 < step < len(single['lrs']) - 1
  assert single['lrs'][step - 1] != single['lrs'][step]
  assert single['lrs'][-1] == 0.0
  assert run['switch'] == single['switch']
  assert run['snapshot_step'] == single['snapshot_step']
  np.testing.assert_allclose(run['restart_lr'], single['restart_lr'],
                             rtol=1e-5)
  np.testing.assert_allclose(run['lrs'], single['lrs'], rtol=1e-5, atol=0)
