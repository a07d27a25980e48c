"""What the AutoWU scheduler costs: per-step overhead and minimum-test latency.

Run from the repository root::

  python -m experiments.bench            # full run (~12 min on 2 CPU cores)
  python -m experiments.bench --quick    # smoke check (< 1 min)

The full run writes ``experiments/results/bench.json`` (raw figures) and
``experiments/results/bench.md`` (tables); ``--quick`` writes
``bench_quick.json`` / ``.md`` to a temporary folder, so it never touches the
results; ``--out-dir`` changes the folder, ``--from-json PATH`` re-renders
the report of an earlier run. Runs on whatever backend JAX picks (CPU, GPU).

Sections:

1. **Per-step overhead.** A jitted Flax NNX train step (``nnx.Optimizer``
   inside ``jax.jit`` through ``nnx.split`` / ``nnx.merge``, state donated,
   softmax cross-entropy, random Fashion-MNIST-shaped batches
   ``(B, 28, 28, 1)`` already on the device) with ``optax.lamb(1e-3)``
   (constant LR) and with ``optax_autolr.autowu_lamb``, for the MLP and the
   small CNN of :mod:`experiments.models`. Variants, all in one process and
   interleaved one step each per round (order alternating): LAMB; AutoWU
   with the default ``test_every`` (``T_w // 40`` for a 30-epoch budget);
   AutoWU testing every 8 steps (to sample many test steps; the same
   computation); and a second, identical LAMB whose ratio to the first is
   the noise floor. The AutoWU loss window is pre-filled to capacity, so
   every minimum test fits a full window (the worst case), and ``patience``
   is huge so warmup never ends (the cost of warmup steps is the one that
   matters: after the switch the step does strictly less). Each step is
   timed alone, dispatch to ``block_until_ready``. The **epoch ratio** for a
   test every ``k`` steps is ``((k - 1) * nontest + test) / (k * lamb)``
   from the medians of the LAMB and non-test steps and the *mean* of the
   test steps; ``k`` = the default and ``k`` = steps per epoch (the
   authors' cadence).
2. **Zero host transfers.** All timed loops run under
   ``jax.transfer_guard('disallow')``; the compiled step is searched for
   host callbacks, infeed/outfeed/send/recv, while loops, and solver custom
   calls outside a ``conditional`` branch.
3. **The update alone.** ``tx.update`` of ``autowu`` alone, jitted, on a
   4-element parameter, against ``optax.scale`` (what a constant LR costs):
   microseconds per call, state leaves and entry-computation instructions.
4. **Minimum-test latency** of ``jax.jit(gp.minimum_test)`` on a full window
   of capacity W (64 .. 2048) and G grid points (64, 256, 512), the fitted
   exponent of ``latency ~ W^p``, and, for reference, ``jnp.linalg.eigh``
   of the dense W x W kernel matrix alone (the O(W^3) step a dense GP fit
   needs, and the one an earlier version of this library paid per test).
5. **Scheduler cost per epoch** as a fraction of the epoch for the MLP at
   B = 1024 / 4096 / 8192 on Fashion-MNIST (60000 examples, drop_last), with
   the default test cadence of 10-, 30- and 90-epoch budgets.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import cli, report

NUM_EXAMPLES = 60_000  # Fashion-MNIST training set.
BUDGET_EPOCHS = 30  # Budget that sets the default test cadence.
DENSE_TEST_EVERY = 8
TARGET = 1.02  # Issue #7: epoch ratio AutoWU / LAMB at most this.
# The settings (plain data): step rows are (model, batch, timed rounds,
# warm-up rounds); lat: windows / grids / repetitions of section 4.
FULL = dict(
    steps=[('mlp', 1024, 400, 5), ('mlp', 4096, 150, 3), ('mlp', 8192, 100, 2),
           ('cnn', 128, 300, 3), ('cnn', 256, 160, 2)],
    lat=dict(windows=[64, 128, 256, 512, 1024, 2048], grids=[64, 256, 512],
             reps=15, eigh_windows=[64, 128, 256, 512, 1024]),
    update_reps=3000,
)
QUICK = dict(
    steps=[('mlp', 1024, 16, 2)],
    lat=dict(windows=[64, 256], grids=[256], reps=3, eigh_windows=[64]),
    update_reps=200,
)


def _median(a):
  return float(np.median(np.asarray(a, float))) if len(a) else float('nan')


def _pct(a, q):
  return (float(np.percentile(np.asarray(a, float), q)) if len(a)
          else float('nan'))


def _loadavg():
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _machine_info(argv):
  import jax
  import jaxlib
  import scipy
  import optax_autolr
  from experiments.machine import machine_info
  info = machine_info()
  info.update(
      date_utc=datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M:%S UTC'),
      command=' '.join(['python -m experiments.bench', *argv]).strip(),
      jaxlib=jaxlib.__version__, numpy=np.__version__,
      scipy=scipy.__version__, optax_autolr=optax_autolr.__version__,
      devices=[str(d) for d in jax.devices()],
      gpu=any(d.platform == 'gpu' for d in jax.devices()),
      env={k: os.environ.get(k) for k in (
          'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'XLA_FLAGS',
          'JAX_PLATFORMS') if os.environ.get(k)},
      loadavg_start=_loadavg())
  return info


def _window_curve(n):
  """A warmup-like loss curve (a decrease, then the start of a rise)."""
  rng = np.random.default_rng(0)
  x = np.linspace(0.0, 1.0, n)
  return (2.3 * np.exp(-3.0 * x) + 2.0 * (x - 0.7) ** 2
          + rng.normal(0.0, 0.05, n)).astype(np.float32)


def _steps_per_epoch(batch):
  return NUM_EXAMPLES // batch


def _default_test_every(total_steps, steps_per_epoch):
  """The library's default cadence (one definition: the library's)."""
  import optax_autolr
  return optax_autolr.default_test_every(total_steps, steps_per_epoch)


def _entry(text):
  """Instruction lines of the entry computation of an HLO module."""
  body = text[text.index('\nENTRY'):]
  body = body[:body.index('\n}')]
  return [l for l in body.splitlines()[1:] if ' = ' in l]


def _fusions(lines):
  return sum(' fusion(' in l for l in lines)


def hlo_checks(text):
  """Host traffic, loops and solver calls outside a conditional branch."""
  comps, cur, entry = {}, None, None
  for line in text.splitlines():
    m = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if m and not line.startswith(' '):
      cur = m.group(2)
      comps[cur] = {'callees': set(), 'solver': False}
      if m.group(1):
        entry = cur
      continue
    if cur is None:
      continue
    if re.search(r'custom_call_target="[^"]*(lapack|cusolver|hipsolver)',
                 line, flags=re.I):
      comps[cur]['solver'] = True
    # Callees other than conditional branches.
    for key in ('calls', 'to_apply', 'body', 'condition'):
      for grp in re.findall(
          r'\b' + key + r'=\{?(%?[\w.\-]+(?:,\s*%?[\w.\-]+)*)\}?', line):
        comps[cur]['callees'].update(
            n.strip().lstrip('%') for n in grp.split(','))
  reach, todo = set(), [entry]
  while todo:
    c = todo.pop()
    if c in reach or c not in comps:
      continue
    reach.add(c)
    todo.extend(comps[c]['callees'])
  return {
      'host_callbacks': sorted(set(re.findall(
          r'custom_call_target="([^"]*(?:callback|host)[^"]*)"', text,
          flags=re.I))),
      'host_transfer_ops': sorted(set(re.findall(
          r'\b(outfeed|infeed|send|recv)\(', text))),
      'conditionals': len(re.findall(r'\bconditional\(', text)),
      'while_loops_outside_branches': sum(
          len(re.findall(r'\bwhile\(', _comp_text(text, c))) for c in reach),
      'solver_calls_in_step': any(c['solver'] for c in comps.values()),
      'solver_outside_branches': any(comps[c]['solver'] for c in reach),
  }


def _comp_text(text, name):
  m = re.search(r'^(?:ENTRY\s+)?%?' + re.escape(name) + r'\s.*\{\s*$', text,
                flags=re.M)
  if not m:
    return ''
  end = text.find('\n}', m.end())
  return text[m.end():end]


# --------------------------------------------------------------------------
# Sections 1-2: per-step overhead in a train step.


class _Variant:
  """One jitted train step, its donated state and its per-step records."""

  def __init__(self, name, model_name, batch, test_every, xs, ys):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    import optax_autolr
    from experiments.models import make_model

    self.name, self.test_every = name, test_every
    spe = _steps_per_epoch(batch)
    model = make_model(model_name, nnx.Rngs(0))

    def loss_fn(model, x, y):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    if test_every is None:
      tx = optax.lamb(1e-3)
    else:
      tx = optax_autolr.autowu_lamb(BUDGET_EPOCHS * spe, spe,
                                    test_every=test_every, patience=10**6)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.t = 0  # AutoWU's step count before the next update.
    if test_every is not None:
      # Full window (worst case), one epoch into warmup, the divergence
      # guard's EMA at the current loss (so the synthetic history cannot
      # fire it).
      loss0 = float(loss_fn(model, xs[0], ys[0]))
      s = optax_autolr.find_autowu_state(opt.opt_state)
      cap, bin_size = s.window.capacity, 2
      steps = np.linspace(0.0, spe - 1.0, cap, dtype=np.float32)
      curve = _window_curve(cap) - _window_curve(cap)[-1] + loss0
      w = s.window
      for field, v in (('num_bins', cap), ('bin_size', bin_size),
                       ('last_count', bin_size)):
        getattr(w, field).set_value(jnp.asarray(v, jnp.int32))
      stats = np.array(s.stats.get_value())
      for field in ('loss_ema', 'ema_min'):
        stats[optax_autolr.STATS.index(field)] = loss0
      s.stats.set_value(jnp.asarray(stats, jnp.float32))
      w.sums.set_value(jnp.asarray(np.stack([curve, steps]) * bin_size))
      self.t = spe
      s.count.set_value(jnp.asarray(self.t, jnp.int32))
    uses_value = test_every is not None
    graphdef, state = nnx.split((model, opt))

    def step(state, x, y):
      model, opt = nnx.merge(graphdef, state)
      loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
      if uses_value:
        opt.update(model, grads, value=loss)
      else:
        opt.update(model, grads)
      return nnx.state((model, opt)), loss

    self._graphdef = graphdef
    self._compiled = jax.jit(step, donate_argnums=0).lower(
        state, xs[0], ys[0]).compile()
    self.hlo = self._compiled.as_text()
    self.state = state
    self.times, self.is_test = [], []

  def run_step(self, x, y):
    import jax
    is_test = (self.test_every is not None
               and (self.t + 1) % self.test_every == 0)
    t0 = time.perf_counter()
    self.state, loss = self._compiled(self.state, x, y)
    jax.block_until_ready(loss)
    self.times.append(time.perf_counter() - t0)
    self.is_test.append(bool(is_test))
    self.t += 1

  def autowu_summary(self):
    import optax_autolr
    from flax import nnx
    if self.test_every is None:
      return None
    _, opt = nnx.merge(self._graphdef, self.state)
    s = optax_autolr.find_autowu_state(opt.opt_state)
    return {'phase': int(s.phase), 'count': int(s.count.get_value()),
            'switch_reason': optax_autolr.SWITCH_REASONS[
                int(s.switch_reason)]}


def bench_step(model_name, batch, num_steps, warmup_steps, log=print):
  """Per-step records of the LAMB and AutoWU variants, interleaved."""
  import jax
  import jax.numpy as jnp

  spe = _steps_per_epoch(batch)
  te = _default_test_every(BUDGET_EPOCHS * spe, spe)
  specs = [('lamb', None), ('autowu', te), ('autowu_every8', DENSE_TEST_EVERY),
           ('lamb_copy', None)]
  rng = np.random.default_rng(0)
  num_batches = 4
  xs = [jnp.asarray(rng.normal(size=(batch, 28, 28, 1)).astype(np.float32))
        for _ in range(num_batches)]
  ys = [jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
        for _ in range(num_batches)]
  jax.block_until_ready((xs, ys))

  t0 = time.perf_counter()
  variants = [_Variant(n, model_name, batch, k, xs, ys) for n, k in specs]
  compile_s = time.perf_counter() - t0
  for i in range(warmup_steps):
    for v in variants:
      v.run_step(xs[i % num_batches], ys[i % num_batches])
  for v in variants:
    v.times, v.is_test = [], []

  load0 = _loadavg()
  t_start = time.perf_counter()
  # Inputs and state are on the device: any implicit transfer raises here.
  with jax.transfer_guard('disallow'):
    for i in range(num_steps):
      for v in (variants if i % 2 == 0 else variants[::-1]):
        v.run_step(xs[i % num_batches], ys[i % num_batches])
  wall = time.perf_counter() - t_start

  lamb, auto, dense, copy = variants
  res = {
      'model': model_name, 'batch': batch, 'steps_per_epoch': spe,
      'test_every_default': te, 'window_size': _window_size(),
      'timed_rounds': num_steps, 'compile_s': compile_s, 'wall_s': wall,
      'loadavg_before': load0, 'loadavg_after': _loadavg(),
      # Raw per-round step times (s); round i of every variant is adjacent
      # in time. is_test marks the AutoWU test steps.
      'times': {v.name: v.times for v in variants},
      'is_test': {v.name: v.is_test for v in (auto, dense)},
      'transfer_guard_steps': num_steps * len(variants),
      'transfer_guard_test_steps': sum(auto.is_test) + sum(dense.is_test),
      'hlo': dict(hlo_checks(auto.hlo),
                  entry_instructions_lamb=len(_entry(lamb.hlo)),
                  entry_fusions_lamb=_fusions(_entry(lamb.hlo)),
                  entry_instructions_autowu=len(_entry(auto.hlo)),
                  entry_fusions_autowu=_fusions(_entry(auto.hlo))),
      'autowu_state_after': auto.autowu_summary(),
  }
  res.update(step_stats(res))
  log(f'  {model_name} B={batch}: LAMB {res["lamb_median_ms"]:.2f} ms, '
      f'non-test x{res["nontest_ratio"]:.4f}, test step '
      f'x{res["test_ratio"]:.4f} (+{res["test_extra_ms"]:.2f} ms, '
      f'n={res["test_steps"]}), epoch x{res["epoch_ratio_default"]:.4f} '
      f'(k={te}) x{res["epoch_ratio_epoch"]:.4f} (k={spe}); trimmed means '
      f'x{res["epoch_ratio_default_tmean"]:.4f}; noise floor '
      f'x{res["noise_floor_ratio"]:.4f}  [{wall:.0f} s, load '
      f'{res["loadavg_after"]}]')
  return res


def _tmean(a, cut=0.1):
  a = np.sort(np.asarray(a, float))
  k = int(cut * len(a))
  return float(np.mean(a[k:len(a) - k])) if len(a) else float('nan')


def step_stats(run):
  """Ratios from the raw times of :func:`bench_step` (also for --from-json).

  Primary (the issue's definition): medians over rounds of the paired ratio
  AutoWU step / LAMB step of the same round, separately for non-test and
  test steps (both AutoWU variants pooled); epoch ratio for a test every k
  steps ``((k - 1) * nontest + test) / k``. Secondary: the same from 10%
  trimmed means of the raw times (what an epoch pays, less the load spikes).
  """
  t = {k: np.asarray(v, float) for k, v in run['times'].items()}
  base = t['lamb']
  pairs = {True: [], False: []}
  raw = {True: [], False: []}
  for name in ('autowu', 'autowu_every8'):
    for ti, bi, it in zip(t[name], base, run['is_test'][name]):
      pairs[bool(it)].append(ti / bi)
      raw[bool(it)].append(ti)
  nt, ts = _median(pairs[False]), _median(pairs[True])
  tm_b, tm_nt, tm_t = _tmean(base), _tmean(raw[False]), _tmean(raw[True])
  out = {
      'lamb_median_ms': 1e3 * _median(base),
      'noise_floor_ratio': _median(t['lamb_copy'] / base),
      'noise_floor_ratio_tmean': _tmean(t['lamb_copy']) / tm_b,
      'nontest_ratio': nt, 'test_ratio': ts, 'test_steps': len(raw[True]),
      'nontest_median_ms': 1e3 * _median(raw[False]),
      'test_median_ms': 1e3 * _median(raw[True]),
      'test_p90_ms': 1e3 * _pct(raw[True], 90),
      'test_extra_ms': 1e3 * _median(base) * (ts - nt),
      'nontest_ratio_tmean': tm_nt / tm_b, 'test_ratio_tmean': tm_t / tm_b,
  }
  for key, k in (('default', run['test_every_default']),
                 ('epoch', run['steps_per_epoch'])):
    out[f'epoch_ratio_{key}'] = ((k - 1) * nt + ts) / k
    out[f'epoch_ratio_{key}_tmean'] = ((k - 1) * tm_nt + tm_t) / (k * tm_b)
  return out


def _window_size():
  import inspect
  import optax_autolr
  return inspect.signature(optax_autolr.autowu).parameters[
      'window_size'].default


# --------------------------------------------------------------------------
# Section 3: the update alone.


def bench_update(reps, log=print):
  import jax
  import jax.numpy as jnp
  import optax
  import optax_autolr

  spe = _steps_per_epoch(1024)
  txs = {'autowu': optax_autolr.autowu(BUDGET_EPOCHS * spe, spe,
                                       patience=10**6),
         'scale (constant LR)': optax.with_extra_args_support(
             optax.scale(-1e-3))}
  params = {'w': jnp.ones((4,), jnp.float32)}
  grads = {'w': jnp.full((4,), 0.5, jnp.float32)}
  rows = []
  for name, tx in txs.items():
    def step(state, loss, tx=tx):
      return tx.update(grads, state, params, value=loss)
    f = jax.jit(step, donate_argnums=0)
    state = tx.init(params)
    loss = jnp.float32(1.0)
    for _ in range(50):
      _, state = f(state, loss)
    jax.block_until_ready(state)
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      u, state = f(state, loss)
      jax.block_until_ready(u)
      times.append(time.perf_counter() - t0)
    lines = _entry(f.lower(tx.init(params), loss).compile().as_text())
    rows.append({'what': name, 'median_us': 1e6 * _median(times),
                 'p90_us': 1e6 * _pct(times, 90),
                 'state_leaves': len(jax.tree.leaves(tx.init(params))),
                 'entry_instructions': len(lines),
                 'entry_fusions': _fusions(lines),
                 'conditionals': sum('conditional(' in l for l in lines)})
    log(f'  {name}: {rows[-1]["median_us"]:.1f} us/call, '
        f'{rows[-1]["state_leaves"]} state leaves, '
        f'{rows[-1]["entry_instructions"]} entry instructions')
  return rows


# --------------------------------------------------------------------------
# Section 4: minimum-test latency.


def _full_window_inputs(capacity):
  import jax.numpy as jnp
  x = np.linspace(0.0, 1.0, capacity).astype(np.float32)
  return (jnp.asarray(x), jnp.asarray(_window_curve(capacity)),
          jnp.asarray(np.full(capacity, 4, np.int32)),
          jnp.ones(capacity, bool))


def _exponent(points):
  if len(points) < 2:
    return None
  w, t = np.log(np.asarray(points, float)).T
  return float(np.polyfit(w, t, 1)[0])


def bench_latency(windows, grids, reps, eigh_windows, log=print):
  import jax
  import jax.numpy as jnp
  from optax_autolr import gp

  fns = {}
  for w in windows:
    args = _full_window_inputs(w)
    for g in grids:
      fns[('minimum_test', w, g)] = (jax.jit(
          lambda x, y, c, m, g=g: gp.minimum_test(
              x, y, c, m, grid_size=g).probability), args)
    if w in eigh_windows:
      xa = np.asarray(args[0], np.float64)
      a = np.exp(-0.5 * ((xa[:, None] - xa[None]) / 0.2) ** 2)
      fns[('dense eigh', w, None)] = (jax.jit(jnp.linalg.eigh), (
          jnp.asarray((a + 1e-3 * np.eye(w)).astype(np.float32)),))
  for f, args in fns.values():
    jax.block_until_ready(f(*args))
  load0 = _loadavg()
  times = {k: [] for k in fns}
  for r in range(reps):  # Interleaved, order alternating.
    for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      f, args = fns[k]
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[k].append(time.perf_counter() - t0)
  table = [{'what': k[0], 'window': k[1], 'grid': k[2],
            'median_ms': 1e3 * _median(ts), 'min_ms': 1e3 * min(ts),
            'p90_ms': 1e3 * _pct(ts, 90), 'reps': len(ts)}
           for k, ts in times.items()]
  exps = {}
  for g in grids:
    exps[f'minimum_test G={g}'] = _exponent(
        [(r['window'], r['median_ms']) for r in table
         if r['what'] == 'minimum_test' and r['grid'] == g])
  exps['dense eigh'] = _exponent([(r['window'], r['median_ms'])
                                  for r in table if r['what'] == 'dense eigh'])
  for r in table:
    log(f'  {r["what"]:12s} W={r["window"]:5d} G={r["grid"] or "-":>4}: '
        f'{r["median_ms"]:9.3f} ms (min {r["min_ms"]:.3f}, p90 '
        f'{r["p90_ms"]:.3f})')
  log('  exponents: ' + ', '.join(f'{k}: {v:.2f}' for k, v in exps.items()
                                  if v is not None))
  return {'table': table, 'exponents': exps, 'reps': reps,
          'loadavg_before': load0, 'loadavg_after': _loadavg()}


# --------------------------------------------------------------------------
# Section 5 and the report.


def epoch_fractions(steps, latency):
  """Scheduler cost per epoch (MLP) for each batch and budget."""
  lat = {(r['window'], r['grid']): r['median_ms'] for r in latency['table']
         if r['what'] == 'minimum_test'}
  rows = []
  for s in steps:
    if s['model'] != 'mlp':
      continue
    spe = s['steps_per_epoch']
    for epochs in (10, BUDGET_EPOCHS, 90):
      k = _default_test_every(epochs * spe, spe)
      tests = spe / k
      epoch_ms = spe * s['lamb_median_ms']
      rows.append({
          'batch': s['batch'], 'epochs': epochs, 'steps_per_epoch': spe,
          'test_every': k, 'tests_per_epoch': tests, 'epoch_ms': epoch_ms,
          'fraction_measured': ((spe - tests) * s['nontest_ratio']
                                + tests * s['test_ratio']) / spe - 1,
          'fraction_test_latency': tests * lat.get(
              (s['window_size'], 256), float('nan')) / epoch_ms})
  return rows


def summarize(res):
  steps = res['steps']
  worst = max(s['epoch_ratio_default'] for s in steps)
  worst_ep = max(s['epoch_ratio_epoch'] for s in steps)
  over = [s for s in steps
          if max(s['epoch_ratio_default'], s['epoch_ratio_epoch']) > TARGET]
  lines = [
      'Epoch ratio LAMB + AutoWU / LAMB with the default test cadence (in '
      'parentheses: a test once an epoch): ' + ', '.join(
          f'{s["model"]} B={s["batch"]}: {s["epoch_ratio_default"]:.4f} '
          f'({s["epoch_ratio_epoch"]:.4f})' for s in steps)
      + f'; worst {worst:.4f} ({worst_ep:.4f}). Target <= {TARGET}: met in '
      f'{len(steps) - len(over)} of {len(steps)} rows' + (
          '.' if not over else '; not in ' + ', '.join(
              f'{s["model"]} B={s["batch"]} (noise floor of that row '
              f'{s["noise_floor_ratio"]:.4f}, trimmed '
              f'{s["noise_floor_ratio_tmean"]:.4f})' for s in over) + '.'),
      'The same from 10% trimmed means of the raw step times: ' + ', '.join(
          f'{s["model"]} B={s["batch"]}: {s["epoch_ratio_default_tmean"]:.4f}'
          f' ({s["epoch_ratio_epoch_tmean"]:.4f})' for s in steps) + '.',
      'Noise floor (an identical LAMB against LAMB, same interleaving; '
      'median paired ratio / trimmed means): ' + ', '.join(
          f'{s["model"]} B={s["batch"]}: {s["noise_floor_ratio"]:.4f} / '
          f'{s["noise_floor_ratio_tmean"]:.4f}' for s in steps) + '.',
      'Extra time of a test step over a non-test step (paired medians): '
      + ', '.join(f'{s["model"]} B={s["batch"]}: {s["test_extra_ms"]:.2f} '
                  f'ms (n={s["test_steps"]})' for s in steps) + '.',
  ]
  lat = {(r['what'], r['window'], r['grid']): r['median_ms']
         for r in res['latency']['table']}
  w = _window_size()
  if ('minimum_test', w, 256) in lat:
    lines.append(
        f'Minimum test at the default W = {w}, G = 256: '
        f'{lat[("minimum_test", w, 256)]:.2f} ms; dense `eigh` of the '
        f'{w} x {w} kernel matrix alone: '
        f'{lat.get(("dense eigh", w, None), float("nan")):.2f} ms. Fitted '
        'exponent of latency ~ W^p: ' + ', '.join(
            f'{k} {v:.2f}' for k, v in res['latency']['exponents'].items()
            if v is not None) + '.')
  u = {r['what']: r for r in res['update']}
  lines.append(
      f'The AutoWU update alone: {u["autowu"]["median_us"]:.0f} us per call '
      f'({u["autowu"]["state_leaves"]} state leaves, '
      f'{u["autowu"]["entry_instructions"]} entry instructions), against '
      f'{u["scale (constant LR)"]["median_us"]:.0f} us for `optax.scale`.')
  h = [s['hlo'] for s in steps]
  ok = all(not x['host_callbacks'] and not x['host_transfer_ops']
           and not x['solver_outside_branches']
           and not x['while_loops_outside_branches'] for x in h)
  lines.append(
      f'Host transfers: none in {sum(s["transfer_guard_steps"] for s in steps)}'
      f' steps under `transfer_guard("disallow")` '
      f'({sum(s["transfer_guard_test_steps"] for s in steps)} of them test '
      'steps); in the compiled steps: ' + (
          'no host callback, no infeed/outfeed/send/recv, no while loop '
          'outside the test branch, the solvers only inside it.' if ok else
          'SEE SECTION 2 (a check failed).'))
  if not res['machine']['gpu']:
    lines.append('No GPU in this run: all figures are CPU figures.')
  return lines


def _page_head(res: dict[str, Any]) -> list[str]:
  """Title, command, machine and the summary."""
  m = res['machine']
  out = report.header('AutoWU scheduler cost (`experiments/bench.py`)')
  add = out.append
  add(f'Command: `{m["command"]}` (repository root). Date: {m["date_utc"]}. '
      f'Wall time: {res["wall_s"]:.0f} s.' + (
          f' (Report re-rendered from the json on {res["rerendered_utc"]}; '
          'the figures are from the run.)' if res.get('rerendered_utc')
          else ''))
  add('')
  env = ', '.join(f'{k}={v}' for k, v in m['env'].items()) or 'none'
  add(f'Machine: {m["nproc"]} CPU cores ({m["cpu"]}); {m["platform"]}; '
      f'Python {m["python"]}; jax {m["jax"]} / jaxlib {m["jaxlib"]}, optax '
      f'{m["optax"]}, flax {m["flax"]}, numpy {m["numpy"]}, scipy '
      f'{m["scipy"]}; backend `{m["backend"]}` ({", ".join(m["devices"])}). '
      f'Environment variables set: {env}. Load average (1/5/15 min) at start '
      f'{m["loadavg_start"]}, at end {res["loadavg_end"]}.')
  add('')
  if res['quick']:
    add('**`--quick` smoke run: few steps, not the reference figures.**')
    add('')
  add('## Summary')
  add('')
  for line in summarize(res):
    add('* ' + line)
  add('')
  return out


def _steps_section(res: dict[str, Any]) -> list[str]:
  """Section 1: per-step overhead."""
  out: list[str] = []
  add = out.append
  add('## 1. Per-step overhead: LAMB (constant LR) vs LAMB + AutoWU')
  add('')
  add('Jitted NNX train step, variants interleaved step by step; the AutoWU '
      'window pre-filled to capacity (worst case). Ratios are medians over '
      'rounds of AutoWU step / LAMB step of the same round (non-test and '
      'test steps of both AutoWU variants pooled). Epoch ratio = ((k-1) x '
      'non-test + test) / k, k = default `test_every` for a 30-epoch budget, '
      'and k = steps per epoch (the authors\' cadence); "trimmed" = the same '
      'from 10% trimmed means of the raw times. Noise floor = the same '
      'paired median for a second, identical LAMB. Raw times are in '
      '`bench.json`.')
  add('')
  out += report.table(
      ['model', 'B', 'steps/epoch', 'LAMB ms (median)', 'noise floor',
       'non-test ratio', 'test-step ratio', 'test step ms: median / p90',
       'test extra ms', 'tests timed', 'k', '**epoch ratio, k**',
       '**epoch ratio, once an epoch**', 'trimmed: k / once an epoch',
       'load after'],
      [[s['model'], s['batch'], s['steps_per_epoch'],
        f'{s["lamb_median_ms"]:.2f}', f'{s["noise_floor_ratio"]:.4f}',
        f'{s["nontest_ratio"]:.4f}', f'{s["test_ratio"]:.4f}',
        f'{s["test_median_ms"]:.2f} / {s["test_p90_ms"]:.2f}',
        f'{s["test_extra_ms"]:.2f}', s['test_steps'],
        s['test_every_default'], f'**{s["epoch_ratio_default"]:.4f}**',
        f'**{s["epoch_ratio_epoch"]:.4f}**',
        f'{s["epoch_ratio_default_tmean"]:.4f} / '
        f'{s["epoch_ratio_epoch_tmean"]:.4f}',
        s['loadavg_after'][0] if s['loadavg_after'] else '?']
       for s in res['steps']])
  add('')
  return out


def _transfers_section(res: dict[str, Any]) -> list[str]:
  """Section 2: zero host transfers."""
  out: list[str] = []
  add = out.append
  add('## 2. Zero host transfers')
  add('')
  out += report.table(
      ['model', 'B', 'steps under transfer_guard', 'test steps',
       'host callbacks', 'infeed/outfeed/send/recv', 'conditionals',
       'while loops outside branches', 'solver calls outside branches',
       'entry instructions (fusions) LAMB / AutoWU'],
      [[s['model'], s['batch'], s['transfer_guard_steps'],
        s['transfer_guard_test_steps'],
        ', '.join(s['hlo']['host_callbacks']) or 'none',
        ', '.join(s['hlo']['host_transfer_ops']) or 'none',
        s['hlo']['conditionals'], s['hlo']['while_loops_outside_branches'],
        s['hlo']['solver_outside_branches'],
        f'{s["hlo"]["entry_instructions_lamb"]} '
        f'({s["hlo"]["entry_fusions_lamb"]}) / '
        f'{s["hlo"]["entry_instructions_autowu"]} '
        f'({s["hlo"]["entry_fusions_autowu"]})'] for s in res['steps']])
  add('')
  return out


def _update_section(res: dict[str, Any]) -> list[str]:
  """Section 3: the update alone."""
  out: list[str] = []
  add = out.append
  add('## 3. The update alone')
  add('')
  add('`jax.jit(tx.update)` with the state donated, 4-element parameter.')
  add('')
  out += report.table(
      ['transformation', 'us per call: median', 'p90', 'state leaves',
       'entry instructions', 'fusions', 'conditionals'],
      [[r['what'], f'{r["median_us"]:.1f}', f'{r["p90_us"]:.1f}',
        r['state_leaves'], r['entry_instructions'], r['entry_fusions'],
        r['conditionals']] for r in res['update']])
  add('')
  return out


def _latency_section(res: dict[str, Any]) -> list[str]:
  """Section 4: minimum-test latency."""
  out: list[str] = []
  add = out.append
  lat = res['latency']
  add('## 4. Minimum-test latency (`jax.jit(gp.minimum_test)`, full window)')
  add('')
  add(f'Median ms (min, p90) over {lat["reps"]} interleaved repetitions '
      f'(load {lat["loadavg_before"]} before, {lat["loadavg_after"]} after). '
      '"dense eigh" = `jnp.linalg.eigh` of the W x W kernel matrix alone, '
      'the O(W^3) step of a dense GP fit, for reference.')
  add('')
  windows = sorted({r['window'] for r in lat['table']})
  rows = sorted({(r['what'], r['grid'] or 0) for r in lat['table']})
  by = {(r['what'], r['grid'] or 0, r['window']): r for r in lat['table']}

  def cell(r):
    return (f'{r["median_ms"]:.3f} ({r["min_ms"]:.3f}, {r["p90_ms"]:.3f})'
            if r else '-')

  out += report.table(
      ['what', 'G'] + [f'W={w}' for w in windows],
      [[what, g or '-'] + [cell(by.get((what, g, w))) for w in windows]
       for what, g in rows])
  add('')
  add('Fitted exponent p of latency ~ W^p (least squares, log-log): ' + ', '.join(
      f'{k}: {v:.2f}' for k, v in lat['exponents'].items() if v is not None)
      + '.')
  add('')
  return out


def _epoch_section(res: dict[str, Any]) -> list[str]:
  """Section 5: scheduler cost per epoch."""
  out: list[str] = []
  add = out.append
  add('## 5. Scheduler cost per epoch (MLP, default cadence)')
  add('')
  add('Measured = (steps x non-test ratio + tests x test-step ratio) / '
      'steps - 1 (section 1); test latency = tests per epoch x section 4 latency at the '
      'default W, G / epoch time.')
  add('')
  out += report.table(
      ['B', 'budget (epochs)', 'steps/epoch', 'test_every', 'tests/epoch',
       'epoch ms (LAMB)', 'measured', 'test latency'],
      [[r['batch'], r['epochs'], r['steps_per_epoch'], r['test_every'],
        f'{r["tests_per_epoch"]:.2f}', f'{r["epoch_ms"]:.0f}',
        f'{100 * r["fraction_measured"]:+.2f}%',
        f'{100 * r["fraction_test_latency"]:.3f}%']
       for r in res['epoch_fractions']])
  add('')
  return out


def write_report(res: dict[str, Any], path_md: str | Path) -> None:
  """Writes ``bench.md`` from the results ``res`` (the contents of ``bench.json``)."""
  out: list[str] = []
  for section in (_page_head, _steps_section, _transfers_section, _update_section,
                  _latency_section, _epoch_section):
    out += section(res)
  report.write(path_md, out)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = cli.ArgumentParser(prog='python -m experiments.bench',
                         description=__doc__.split('\n')[0])
  cli.add_output_flags(
      p, quick='smoke run in < 1 min (few steps, small windows)',
      out_dir='default: experiments/results (full run), a temporary folder '
              '(--quick)',
      from_json='re-render the report of an earlier run from its json')
  args = p.parse_args(argv)
  if args.from_json:
    with cli.usage_errors(p):
      try:
        with open(args.from_json) as f:
          res = json.load(f)
        missing = {'steps', 'latency'} - set(res)
        if missing:
          raise KeyError(', '.join(sorted(missing)))
      except (ValueError, KeyError, TypeError) as e:
        raise cli.UsageError(
            f'argument --from-json: {args.from_json} is not a bench json of '
            f'this script ({type(e).__name__}: {e})') from None
    for run in res['steps']:
      run.update(step_stats(run))
    res['epoch_fractions'] = epoch_fractions(res['steps'], res['latency'])
    res['rerendered_utc'] = datetime.datetime.now(
        datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    write_report(res, os.path.splitext(args.from_json)[0] + '.md')
    return

  t_start = time.perf_counter()
  log = report.logger()
  res = {'quick': args.quick, 'machine': _machine_info(argv)}
  m = res['machine']
  log(f'machine: {m["nproc"]} cores, {m["cpu"]}, jax {m["jax"]}, backend '
      f'{m["backend"]}, load {m["loadavg_start"]}')
  cfg = QUICK if args.quick else FULL
  log('[1-2] per-step overhead (interleaved, under transfer_guard)')
  res['steps'] = [bench_step(mo, b, n, w, log=log)
                  for mo, b, n, w in cfg['steps']]
  log('[3] the update alone')
  res['update'] = bench_update(cfg['update_reps'], log=log)
  log('[4] minimum-test latency')
  res['latency'] = bench_latency(log=log, **cfg['lat'])
  res['epoch_fractions'] = epoch_fractions(res['steps'], res['latency'])
  res['loadavg_end'] = _loadavg()
  res['wall_s'] = time.perf_counter() - t_start

  args.out_dir = str(report.results_dir(args.out_dir, 'bench', args.quick))
  stem = 'bench_quick' if args.quick else 'bench'
  with open(os.path.join(args.out_dir, stem + '.json'), 'w') as f:
    json.dump(res, f, indent=1)
  write_report(res, os.path.join(args.out_dir, stem + '.md'))
  for line in summarize(res):
    log('* ' + line)
  log(f'wrote {args.out_dir}/{stem}.json and {stem}.md in '
      f'{res["wall_s"]:.0f} s')


if __name__ == '__main__':
  main()
