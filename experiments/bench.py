"""What the AutoWU scheduler costs: per-step overhead and minimum-test latency.

Run from the repository root::

  python -m experiments.bench            # full run (~10 min on 2 CPU cores)
  python -m experiments.bench --quick    # smoke check (< 60 s)

The full run writes ``experiments/results/bench.json`` (raw figures) and
``experiments/results/bench.md`` (tables and notes); ``--quick`` writes
``bench_quick.json`` / ``bench_quick.md`` to a temporary folder, so it never
touches the results; ``--out-dir`` changes the folder, and
``--from-json PATH`` re-renders a report from a run's json.

Sections:

1. **Per-step overhead.** A jitted Flax NNX train step (``nnx.Optimizer``
   inside ``jax.jit`` through ``nnx.split`` / ``nnx.merge``, state donated;
   softmax cross-entropy; random Fashion-MNIST-shaped batches
   ``(B, 28, 28, 1)`` already on device) with ``optax.lamb(1e-3)`` (constant
   LR) and with ``optax_autolr.autowu_lamb(total_steps, steps_per_epoch)``,
   for the MLP and the small CNN of :mod:`experiments.models`. All variants
   live in one process and run interleaved, one step of each per round (the
   order alternates), so load changes hit them alike. AutoWU variants differ
   only in ``test_every`` -- the default (``T_w // 40`` for a 30-epoch
   budget), once an epoch (the authors'), or every 8 steps ("dense", to
   collect test-step samples where the real cadences are too sparse for a
   short run; same compiled computation) -- and in the thread count of the
   LAPACK eigensolver (see 4): the machine default, or one thread ("1t",
   set in-process before each of its steps). Their loss window is pre-filled
   to capacity, so every minimum test fits a *full* window (the worst case),
   and ``patience`` is huge so no variant leaves warmup (the cost of a step
   does not depend on it). Each step is timed alone (dispatch to
   ``block_until_ready``), with its process CPU time and minor page faults;
   a *test step* is one in which AutoWU runs its minimum test (known from the
   step count). Epoch ratios come from medians,
   ``((k - 1) * nontest + test) / (k * base)`` with ``k = test_every``, and
   directly as total AutoWU time / total LAMB time over the same steps.
2. **Zero host transfers.** The timed loops of section 1 run under
   ``jax.transfer_guard('disallow')`` over test and non-test steps; the
   compiled step is also checked for host callbacks and for the eigensolver
   being reachable only through a ``conditional`` branch.
3. **Minimum-test latency** of ``jax.jit(optax_autolr.gp.minimum_test)`` on a
   full window, capacity W x grid size G, with one LAPACK thread (all W, G)
   and with the default thread count (G = 256), interleaved over
   repetitions, and the fitted exponent of ``latency ~ W^p``.
4. **The eigensolver and its threads:** ``jnp.linalg.eigh`` alone and the
   minimum test, float32 / float64, default threads / one thread, in-process
   and interleaved; this explains non-monotone latencies in W.
5. **Scheduler cost per epoch** as a fraction of the epoch time for the MLP
   at B = 1024 / 4096 / 8192 on Fashion-MNIST (60000 examples, drop_last)
   with the default test cadence, for 10-, 30- and 90-epoch budgets.
6. **Clean environment** (full run only): section 1 again in a child
   process with ``OPENBLAS_NUM_THREADS=1`` and glibc's malloc told never to
   ``mmap`` (``GLIBC_TUNABLES``), which removes the two environment effects
   found here (section 4, and page faults that depend on the size of a
   step's temporary buffer), leaving the cost of the scheduler itself; an
   identical second LAMB variant there measures the noise floor.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

NUM_EXAMPLES = 60_000  # Fashion-MNIST training set.
BUDGET_EPOCHS = 30  # Budget that sets the default test cadence.
DENSE_TEST_EVERY = 8
HERE = os.path.dirname(os.path.abspath(__file__))
MALLOC_TUNABLES = ('glibc.malloc.mmap_max=0:'
                   'glibc.malloc.trim_threshold=4294967295')


# --------------------------------------------------------------------------
# Helpers.


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


def _minflt():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _Blas:
  """Thread count of SciPy's bundled OpenBLAS, jaxlib's LAPACK on CPU.

  jaxlib's CPU ``eigh`` (``lapack_ssyevd_ffi``) calls the LAPACK that SciPy
  exports through ``scipy.linalg.cython_lapack``; with SciPy's wheels that is
  ``scipy.libs/libscipy_openblas*.so``. Setting its thread count in-process
  is what ``OPENBLAS_NUM_THREADS`` does at start-up (and what threadpoolctl
  does at run time).
  """

  def __init__(self):
    self._set = self._get = None
    self.library = None
    try:
      import scipy
      import scipy.linalg  # noqa: F401  (loads the library jaxlib uses)
      root = os.path.join(os.path.dirname(scipy.__file__), os.pardir,
                          'scipy.libs')
      for path in sorted(glob.glob(os.path.join(root, '*openblas*'))):
        lib = ctypes.CDLL(path)
        for prefix in ('scipy_openblas', 'openblas'):
          if hasattr(lib, prefix + '_set_num_threads'):
            self._set = getattr(lib, prefix + '_set_num_threads')
            self._get = getattr(lib, prefix + '_get_num_threads')
            self.library = os.path.basename(path)
            break
        if self._set:
          break
    except (ImportError, OSError):
      pass
    self.default = int(self._get()) if self._get else None
    self._current = self.default

  @property
  def available(self):
    return self._set is not None

  def set(self, n):
    n = self.default if n is None else n
    if self._set and n != self._current:
      self._set(int(n))
      self._current = n


BLAS = None  # Set in main().


def _cpu_model():
  model = None
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True,
                         timeout=10).stdout
    info = dict((k.strip(), v.strip()) for k, v in (
        line.split(':', 1) for line in out.splitlines() if ':' in line))
    model = info.get('Model name')
    fam, mod = info.get('CPU family'), info.get('Model')
    hyp = info.get('Hypervisor vendor')
    extra = ', '.join(x for x in (
        f'family {fam} model {mod}' if fam else None,
        f'{hyp} guest' if hyp else None,
        'AVX-512' if 'avx512f' in info.get('Flags', '') else None) if x)
    if model and extra:
      model = f'{model} ({extra})'
  except (OSError, subprocess.SubprocessError, ValueError):
    pass
  return model or platform.processor() or 'unknown'


def _machine_info(argv):
  import flax
  import jax
  import jaxlib
  import optax
  import scipy
  import optax_autolr
  try:
    libc = ' '.join(platform.libc_ver())
  except OSError:
    libc = 'unknown'
  return {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M:%S UTC'),
      'command': ' '.join(['python -m experiments.bench', *argv]).strip(),
      'nproc': os.cpu_count(),
      'cpu_model': _cpu_model(),
      'python': platform.python_version(),
      'platform': platform.platform(),
      'libc': libc,
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'optax': optax.__version__,
      'flax': flax.__version__,
      'numpy': np.__version__,
      'scipy': scipy.__version__,
      'optax_autolr': optax_autolr.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'gpu': any(d.platform == 'gpu' for d in jax.devices()),
      'lapack_library': BLAS.library,
      'lapack_default_threads': BLAS.default,
      'env': {k: os.environ.get(k) for k in (
          'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'XLA_FLAGS',
          'JAX_PLATFORMS', 'GLIBC_TUNABLES')},
      'loadavg_start': _loadavg(),
  }


def _window_curve(n):
  """A warmup-like loss curve (a decrease, then the start of a rise)."""
  rng = np.random.default_rng(0)
  x = np.linspace(0.0, 1.0, n)
  return (2.3 * np.exp(-3.0 * x) + 2.0 * (x - 0.7) ** 2
          + rng.normal(0.0, 0.05, n)).astype(np.float32)


def _full_window_inputs(capacity, dtype=np.float32):
  """Inputs of ``gp.minimum_test`` for a full window (bins of 4 losses)."""
  import jax.numpy as jnp
  x = np.linspace(0.0, 1.0, capacity).astype(dtype)
  return (jnp.asarray(x), jnp.asarray(_window_curve(capacity).astype(dtype)),
          jnp.asarray(np.full(capacity, 4, np.int32)),
          jnp.ones(capacity, bool))


def _tlabel(threads):
  return '1t' if threads == 1 else 'default'


# --------------------------------------------------------------------------
# Sections 1-2: per-step overhead.


def _steps_per_epoch(batch):
  return NUM_EXAMPLES // batch


def _default_test_every(total_steps, steps_per_epoch):
  warmup_steps = int(math.floor(0.5 * total_steps))
  return max(1, min(steps_per_epoch, warmup_steps // 40))


class _Variant:
  """One jitted train step, its donated state and its per-step records."""

  def __init__(self, name, model_name, batch, test_every, threads, xs, ys):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    import optax_autolr
    from experiments.models import make_model

    self.name, self.test_every, self.threads = name, test_every, threads
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
    self.count0, self.window_size = 0, None
    if test_every is not None:
      # Full window (worst case), one epoch into warmup, the divergence
      # guard's EMA at the current loss (so the synthetic history cannot
      # fire it).
      loss0 = float(loss_fn(model, xs[0], ys[0]))
      s = optax_autolr.find_autowu_state(opt.opt_state)
      cap = s.window.counts.shape[0]
      bin_size = 2
      steps = np.linspace(0.0, spe - 1.0, cap, dtype=np.float32)
      curve = _window_curve(cap) - _window_curve(cap)[-1] + loss0
      self.count0 = spe
      s.window.loss_sums.set_value(jnp.asarray(curve * bin_size))
      s.window.step_sums.set_value(jnp.asarray(steps * bin_size))
      s.window.counts.set_value(jnp.full((cap,), bin_size, jnp.int32))
      s.window.num_bins.set_value(jnp.asarray(cap, jnp.int32))
      s.window.bin_size.set_value(jnp.asarray(bin_size, jnp.int32))
      s.count.set_value(jnp.asarray(self.count0, jnp.int32))
      s.loss_ema.set_value(jnp.asarray(loss0, jnp.float32))
      s.ema_min.set_value(jnp.asarray(loss0, jnp.float32))
      self.window_size = int(cap)
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
    mem = self._compiled.memory_analysis()
    self.temp_bytes = int(mem.temp_size_in_bytes) if mem else None
    self.state = state
    self.t = self.count0  # AutoWU's step count before the next update.
    self.clear()

  def clear(self):
    self.times, self.cpu, self.faults, self.is_test = [], [], [], []

  def entry_size(self):
    """(instructions, fusions) of the entry computation of the step."""
    text = self._compiled.as_text()
    body = text[text.index('\nENTRY'):]
    body = body[:body.index('\n}')]
    lines = [l for l in body.splitlines()[1:] if ' = ' in l]
    return len(lines), sum(' fusion(' in l for l in lines)

  def hlo_checks(self):
    """Host callbacks in the step; eigh reachable only through a cond."""
    text = self._compiled.as_text()
    callbacks = re.findall(
        r'custom_call_target="([^"]*(?:callback|host)[^"]*)"', text,
        flags=re.I)
    host_ops = re.findall(r'\b(outfeed|infeed|send|recv)\(', text)
    comps, cur, entry = {}, None, None
    for line in text.splitlines():
      m = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
      if m and not line.startswith(' '):
        cur = m.group(2)
        comps[cur] = {'plain': set(), 'eigh': False}
        if m.group(1):
          entry = cur
        continue
      if cur is None:
        continue
      if 'syevd' in line or 'heevd' in line:
        comps[cur]['eigh'] = True
      # Callees other than conditional branches.
      for key in ('calls', 'to_apply', 'body', 'condition'):
        for grp in re.findall(
            r'\b' + key + r'=\{?(%?[\w.\-]+(?:,\s*%?[\w.\-]+)*)\}?', line):
          comps[cur]['plain'].update(
              n.strip().lstrip('%') for n in grp.split(','))
    has_eigh = any(c['eigh'] for c in comps.values())
    reach, todo = set(), [entry]
    while todo:
      c = todo.pop()
      if c in reach or c not in comps:
        continue
      reach.add(c)
      todo.extend(comps[c]['plain'])
    return {
        'host_callbacks': sorted(set(callbacks)),
        'host_transfer_ops': sorted(set(host_ops)),
        'conditionals': len(re.findall(r'\bconditional\(', text)),
        'eigh_in_step': has_eigh,
        'eigh_only_inside_conditional_branch': bool(
            has_eigh and not any(comps[c]['eigh'] for c in reach)),
    }

  def run_step(self, x, y):
    import jax
    is_test = (self.test_every is not None
               and (self.t + 1) % self.test_every == 0)
    BLAS.set(self.threads)
    f0, c0, t0 = _minflt(), time.process_time(), time.perf_counter()
    self.state, loss = self._compiled(self.state, x, y)
    jax.block_until_ready(loss)
    t1, c1, f1 = time.perf_counter(), time.process_time(), _minflt()
    self.times.append(t1 - t0)
    self.cpu.append(c1 - c0)
    self.faults.append(f1 - f0)
    self.is_test.append(bool(is_test))
    self.t += 1

  def autowu_summary(self):
    import optax_autolr
    from flax import nnx
    if self.test_every is None:
      return None
    _, opt = nnx.merge(self._graphdef, self.state)
    s = optax_autolr.find_autowu_state(opt.opt_state)
    return {'phase': int(s.phase.get_value()),
            'count': int(s.count.get_value()),
            'switch_reason': optax_autolr.SWITCH_REASONS[
                int(s.switch_reason.get_value())],
            'lr': float(s.lr.get_value())}


def _specs(model_name, batch, mode):
  """(name, test_every, LAPACK threads) of the variants of one config.

  ``mode``: 'quick', 'main' (default and one-thread LAPACK variants) or
  'clean' (child process whose environment already sets one thread).
  """
  spe = _steps_per_epoch(batch)
  te = _default_test_every(BUDGET_EPOCHS * spe, spe)
  if mode == 'quick':
    return [('lamb', None, None), ('autowu_dense', 4, None),
            ('autowu_dense_1t', 4, 1)]
  one = [] if mode == 'clean' else [1]
  # In the clean run, an identical second LAMB measures the noise floor.
  copy = [('lamb_copy', None, None)] if mode == 'clean' else []
  if model_name == 'mlp':
    specs = [('lamb', None, None), ('autowu_default', te, None)]
    if spe != te:
      specs.append(('autowu_epoch', spe, None))
    specs += [('autowu_default_1t', te, 1) for _ in one]
    return specs + copy
  return [('lamb', None, None), ('autowu_dense', DENSE_TEST_EVERY, None)] + [
      ('autowu_dense_1t', DENSE_TEST_EVERY, 1) for _ in one] + copy


def bench_step(model_name, batch, num_steps, warmup_steps, specs, log=print):
  """Per-step records of the LAMB and AutoWU variants, interleaved."""
  import jax
  import jax.numpy as jnp

  if not BLAS.available:
    specs = [s for s in specs if s[2] is None]
  spe = _steps_per_epoch(batch)
  te_default = _default_test_every(BUDGET_EPOCHS * spe, spe)
  rng = np.random.default_rng(0)
  num_batches = 4
  xs = [jnp.asarray(rng.normal(size=(batch, 28, 28, 1)).astype(np.float32))
        for _ in range(num_batches)]
  ys = [jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
        for _ in range(num_batches)]
  jax.block_until_ready((xs, ys))

  t0 = time.perf_counter()
  variants = [_Variant(n, model_name, batch, te, th, xs, ys)
              for n, te, th in specs]
  compile_s = time.perf_counter() - t0
  hlo = variants[1].hlo_checks()
  (hlo['entry_instructions_lamb'], hlo['entry_fusions_lamb']) = (
      variants[0].entry_size())
  (hlo['entry_instructions_autowu'], hlo['entry_fusions_autowu']) = (
      variants[1].entry_size())

  for i in range(warmup_steps):
    for v in variants:
      v.run_step(xs[i % num_batches], ys[i % num_batches])
  for v in variants:
    v.clear()

  load0 = _loadavg()
  t_start = time.perf_counter()
  # Inputs and state are on device: any implicit transfer raises here.
  with jax.transfer_guard('disallow'):
    for i in range(num_steps):
      for v in (variants if i % 2 == 0 else variants[::-1]):
        v.run_step(xs[i % num_batches], ys[i % num_batches])
  wall = time.perf_counter() - t_start
  BLAS.set(None)

  base = variants[0]
  base_med = _median(base.times)
  res = {
      'model': model_name, 'batch': batch, 'steps_per_epoch': spe,
      'budget_epochs': BUDGET_EPOCHS, 'test_every_default': te_default,
      'test_every_epoch': spe, 'window_size': variants[1].window_size,
      'timed_steps_per_variant': num_steps, 'compile_s': compile_s,
      'wall_s': wall, 'loadavg_before': load0, 'loadavg_after': _loadavg(),
      'base_median_ms': 1e3 * base_med,
      'base_cpu_median_ms': 1e3 * _median(base.cpu),
      'base_faults_median': _median(base.faults),
      'base_temp_bytes': base.temp_bytes,
      'autowu_temp_bytes': variants[1].temp_bytes,
      'transfer_guard': {
          'mode': 'disallow', 'steps': num_steps * len(variants),
          'test_steps': sum(sum(v.is_test) for v in variants),
          'violations': 0},
      'hlo': hlo, 'by_threads': {}, 'variants': {},
  }
  for threads in (None, 1):
    vs = [v for v in variants[1:]
          if v.threads == threads and v.test_every is not None]
    if not vs:
      continue
    sel = lambda attr, want: [a for v in vs for a, it in zip(
        getattr(v, attr), v.is_test) if it == want]
    test_med = _median(sel('times', True))
    test_mean = float(np.mean(sel('times', True))) if sel(
        'times', True) else float('nan')
    nontest_med = _median(sel('times', False))

    def ratio(k, test=test_mean, nontest_med=nontest_med):
      # Test steps enter with their mean: their cost can be heavy-tailed
      # (section 4), and an epoch pays the mean, not the median.
      return ((k - 1) * nontest_med + test) / (k * base_med)

    res['by_threads'][_tlabel(threads)] = {
        'nontest_median_ms': 1e3 * nontest_med,
        'test_median_ms': 1e3 * test_med,
        'test_mean_ms': 1e3 * test_mean,
        'test_p90_ms': 1e3 * _pct(sel('times', True), 90),
        'num_test_samples': len(sel('times', True)),
        'nontest_ratio': nontest_med / base_med,
        'test_step_ratio': test_med / base_med,
        'test_extra_ms': 1e3 * (test_mean - nontest_med),
        'test_extra_median_ms': 1e3 * (test_med - nontest_med),
        'nontest_cpu_ratio': _median(sel('cpu', False)) / _median(base.cpu),
        'nontest_faults_median': _median(sel('faults', False)),
        'epoch_ratio_default': ratio(te_default),
        'epoch_ratio_epoch': ratio(spe),
        'epoch_ratio_default_medians': ratio(te_default, test_med),
        'epoch_ratio_epoch_medians': ratio(spe, test_med),
    }
  for v in variants[1:]:
    if v.name == 'lamb_copy':
      res['noise_floor_ratio'] = _median(v.times) / base_med
      res['noise_floor_cpu_ratio'] = _median(v.cpu) / _median(base.cpu)
  for v in variants:
    d = {'test_every': v.test_every, 'lapack_threads': _tlabel(v.threads),
         'steps': len(v.times), 'median_ms': 1e3 * _median(v.times),
         'p10_ms': 1e3 * _pct(v.times, 10), 'p90_ms': 1e3 * _pct(v.times, 90),
         'cpu_median_ms': 1e3 * _median(v.cpu),
         'faults_median': _median(v.faults),
         'total_s': float(np.sum(v.times)),
         'test_steps': int(sum(v.is_test)),
         'autowu_state_after': v.autowu_summary()}
    if v is not base:
      tt = [t for t, it in zip(v.times, v.is_test) if it]
      nt = [t for t, it in zip(v.times, v.is_test) if not it]
      d.update(test_median_ms=1e3 * _median(tt),
               nontest_median_ms=1e3 * _median(nt),
               direct_total_ratio=float(np.sum(v.times) / np.sum(base.times)))
    res['variants'][v.name] = d
  msg = [f'  {model_name} B={batch}: LAMB {1e3 * base_med:.1f} ms']
  for k, d in res['by_threads'].items():
    msg.append(f'[{k}] non-test x{d["nontest_ratio"]:.3f}, test +'
               f'{d["test_extra_ms"]:.1f} ms (n={d["num_test_samples"]}), '
               f'epoch x{d["epoch_ratio_default"]:.4f} (k={te_default}) '
               f'x{d["epoch_ratio_epoch"]:.4f} (k={spe})')
  log('; '.join(msg) + f'  [{wall:.0f} s, load {res["loadavg_after"]}]')
  return res


# --------------------------------------------------------------------------
# Section 3: minimum-test latency; section 4: the eigensolver.


def _time_interleaved(fns, reps):
  """fns: key -> (fn, args, threads, reps_or_None, x64). Returns key -> [s]."""
  import jax
  times = {k: [] for k in fns}
  for r in range(reps):
    keys = list(fns) if r % 2 == 0 else list(fns)[::-1]
    for k in keys:
      f, args, threads, nrep, x64 = fns[k]
      if nrep is not None and r >= nrep:
        continue
      BLAS.set(threads)
      with jax.enable_x64(x64):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times[k].append(time.perf_counter() - t0)
  BLAS.set(None)
  return times


def _exponent(points, wmin=0):
  pts = [(w, t) for w, t in points if w >= wmin]
  if len(pts) < 2:
    return None
  return float(np.polyfit(np.log([p[0] for p in pts]),
                          np.log([p[1] for p in pts]), 1)[0])


def bench_latency(windows, grids, reps, default_windows, default_reps,
                  log=print):
  import jax
  from optax_autolr import gp

  fns = {}
  for w in windows:
    args = _full_window_inputs(w)
    for g in grids:
      f = jax.jit(lambda x, y, c, m, g=g: gp.minimum_test(
          x, y, c, m, grid_size=g).probability)
      BLAS.set(1)
      jax.block_until_ready(f(*args))
      if BLAS.available:
        fns[(w, g, '1t')] = (f, args, 1, None, False)
      if w in default_windows and g == 256:
        fns[(w, g, 'default')] = (f, args, None, default_reps, False)
  BLAS.set(None)
  load0 = _loadavg()
  times = _time_interleaved(fns, reps)
  table = []
  for (w, g, th), ts in times.items():
    table.append({'window': w, 'grid': g, 'lapack_threads': th,
                  'median_ms': 1e3 * _median(ts), 'min_ms': 1e3 * min(ts),
                  'p90_ms': 1e3 * _pct(ts, 90), 'reps': len(ts)})
  fits = {}
  for th in ('1t', 'default'):
    for g in grids:
      pts = [(r['window'], r['median_ms']) for r in table
             if r['grid'] == g and r['lapack_threads'] == th]
      if len(pts) < 2:
        continue
      fits[f'{th} G={g} all W'] = _exponent(pts)
      if sum(w >= 256 for w, _ in pts) >= 2:
        fits[f'{th} G={g} W>=256'] = _exponent(pts, 256)
  for r in table:
    log(f'  W={r["window"]:5d} G={r["grid"]:4d} [{r["lapack_threads"]:7s}]: '
        f'{r["median_ms"]:9.2f} ms (min {r["min_ms"]:.2f}, p90 '
        f'{r["p90_ms"]:.2f}, n={r["reps"]})')
  log('  exponents: ' + ', '.join(
      f'{k}: {v:.2f}' for k, v in fits.items() if v is not None))
  return {'table': table, 'exponents': fits, 'reps': reps,
          'default_reps': default_reps, 'loadavg_before': load0,
          'loadavg_after': _loadavg()}


def bench_eigh(windows, reps, log=print):
  """eigh alone vs the minimum test; float32/64; default/one thread."""
  import jax
  import jax.numpy as jnp
  from optax_autolr import gp

  fns = {}
  for dtype in ('float32', 'float64'):
    x64 = dtype == 'float64'
    with jax.enable_x64(x64):
      for w in windows:
        x, y, c, m = _full_window_inputs(w, np.dtype(dtype))
        xa = np.asarray(x, np.float64)
        a = jnp.asarray(np.exp(-0.5 * ((xa[:, None] - xa[None]) / 0.2) ** 2)
                        .astype(dtype))
        eigh = jax.jit(jnp.linalg.eigh)
        mt = jax.jit(lambda x, y, c, m: gp.minimum_test(x, y, c, m)
                     .probability)
        for what, f, args in (('eigh', eigh, (a,)),
                              ('minimum_test', mt, (x, y, c, m))):
          jax.block_until_ready(f(*args))
          for th in ((None, 1) if BLAS.available else (None,)):
            fns[(what, dtype, w, _tlabel(th))] = (f, args, th, None, x64)
  load0 = _loadavg()
  times = _time_interleaved(fns, reps)
  table = [{'what': k[0], 'dtype': k[1], 'window': k[2],
            'lapack_threads': k[3], 'median_ms': 1e3 * _median(ts),
            'p10_ms': 1e3 * _pct(ts, 10), 'p90_ms': 1e3 * _pct(ts, 90),
            'max_ms': 1e3 * max(ts), 'n': len(ts)}
           for k, ts in times.items()]
  for th in ('default', '1t'):
    for what in ('eigh', 'minimum_test'):
      for dt in ('float32', 'float64'):
        rows = [r for r in table if (r['lapack_threads'], r['what'],
                                     r['dtype']) == (th, what, dt)]
        if rows:
          log(f'  [{th:7s}] {what:12s} {dt}: ' + '  '.join(
              f'W={r["window"]}: {r["median_ms"]:.2f} '
              f'[{r["p10_ms"]:.2f}-{r["p90_ms"]:.2f}]' for r in rows))
  return {'table': table, 'reps': reps, 'loadavg_before': load0,
          'loadavg_after': _loadavg()}


# --------------------------------------------------------------------------
# Section 5 and the report.


def epoch_fractions(steps, latency):
  """Scheduler cost per epoch (MLP) for each batch, budget and setting."""
  lat = {(r['window'], r['grid'], r['lapack_threads']): r['median_ms']
         for r in latency['table']}
  rows = []
  for s in steps:
    if s['model'] != 'mlp':
      continue
    spe = s['steps_per_epoch']
    for th, d in s['by_threads'].items():
      gp_ms = lat.get((s['window_size'], 256, '1t' if th == 'clean' else th),
                      float('nan'))
      for epochs in (10, BUDGET_EPOCHS, 90):
        k = _default_test_every(epochs * spe, spe)
        tests = spe / k
        epoch_ms = spe * s['base_median_ms']
        measured = ((spe - tests) * d['nontest_median_ms']
                    + tests * d['test_mean_ms']) / epoch_ms - 1.0
        rows.append({
            'batch': s['batch'], 'lapack_threads': th, 'epochs': epochs,
            'steps_per_epoch': spe, 'test_every': k,
            'tests_per_epoch': tests, 'epoch_ms': epoch_ms,
            'fraction_measured': measured,
            'fraction_test_steps': tests * d['test_extra_ms'] / epoch_ms,
            'fraction_gp_latency': tests * gp_ms / epoch_ms})
  return rows


def _row(cells):
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _step_tables(steps, add):
  add(_row(['model', 'B', 'steps/epoch', 'LAMB ms', 'LAPACK',
            'non-test ratio (wall / CPU)', 'test step ms: median / mean / '
            'p90', 'test extra ms (mean)', 'tests timed', 'k def.',
            '**epoch ratio, k def.**', '**epoch ratio, k ep.**',
            'epoch ratio from medians only, k def. / k ep.',
            'noise floor: LAMB copy / LAMB (wall / CPU)',
            'page faults/step LAMB / AutoWU', 'load after']))
  add('|---' * 16 + '|')
  for s in steps:
    for th, d in s['by_threads'].items():
      add(_row([
          s['model'], s['batch'], s['steps_per_epoch'],
          f'{s["base_median_ms"]:.1f}', th,
          f'{d["nontest_ratio"]:.3f} / {d["nontest_cpu_ratio"]:.3f}',
          f'{d["test_median_ms"]:.1f} / {d["test_mean_ms"]:.1f} / '
          f'{d["test_p90_ms"]:.1f}', f'{d["test_extra_ms"]:.1f}',
          d['num_test_samples'], s['test_every_default'],
          f'**{d["epoch_ratio_default"]:.4f}**',
          f'**{d["epoch_ratio_epoch"]:.4f}**',
          f'{d["epoch_ratio_default_medians"]:.4f} / '
          f'{d["epoch_ratio_epoch_medians"]:.4f}',
          f'{s["noise_floor_ratio"]:.3f} / {s["noise_floor_cpu_ratio"]:.3f}'
          if 'noise_floor_ratio' in s else '-',
          f'{s["base_faults_median"]:.0f} / {d["nontest_faults_median"]:.0f}',
          s['loadavg_after'][0] if s['loadavg_after'] else '?']))
  add('')
  add('<details><summary>Per variant (direct ratio = total AutoWU time / '
      'total LAMB time over the same interleaved steps; noisier, and a short '
      'run holds a whole number of tests, not steps/k)</summary>')
  add('')
  add(_row(['model', 'B', 'variant', 'test_every', 'LAPACK', 'steps',
            'test steps', 'median ms', 'p90 ms', 'CPU ms', 'faults/step',
            'direct ratio', 'state after']))
  add('|---' * 13 + '|')
  for s in steps:
    for name, v in s['variants'].items():
      st = v['autowu_state_after']
      add(_row([s['model'], s['batch'], name, v['test_every'] or '-',
                v['lapack_threads'], v['steps'], v['test_steps'],
                f'{v["median_ms"]:.1f}', f'{v["p90_ms"]:.1f}',
                f'{v["cpu_median_ms"]:.1f}', f'{v["faults_median"]:.0f}',
                f'{v["direct_total_ratio"]:.3f}' if 'direct_total_ratio' in v
                else '-',
                f'phase {st["phase"]}, {st["switch_reason"]}' if st else '-']))
  add('')
  add('</details>')
  add('')


def write_report(res, path_md):
  m = res['machine']
  out = []
  add = out.append
  add('# AutoWU scheduler cost (`experiments/bench.py`)')
  add('')
  add(f'Command: `{m["command"]}` (repository root). Date: {m["date_utc"]}. '
      f'Wall time: {res["wall_s"]:.0f} s.' + (
          f' (Text re-rendered from the same json with `--from-json` on '
          f'{res["rerendered_utc"]}; all figures are from the run.)'
          if res.get('rerendered_utc') else ''))
  add('')
  env = ', '.join(f'{k}={v}' for k, v in m['env'].items() if v) or 'none'
  add(f'Machine: {m["nproc"]} CPU cores, {m["cpu_model"]}; {m["platform"]} '
      f'({m["libc"]}); Python {m["python"]}; jax {m["jax"]} / jaxlib '
      f'{m["jaxlib"]}, optax {m["optax"]}, flax {m["flax"]}, numpy '
      f'{m["numpy"]}, scipy {m["scipy"]}; backend `{m["backend"]}` '
      f'({", ".join(m["devices"])}). LAPACK used by jaxlib on CPU: '
      f'`{m["lapack_library"]}` (SciPy\'s OpenBLAS), '
      f'{m["lapack_default_threads"]} threads by default. Environment '
      f'variables set: {env}.')
  add('')
  add(f'Load average (1/5/15 min) at start {m["loadavg_start"]}, at end '
      f'{res["loadavg_end"]}: the 2 cores are shared with other jobs and '
      'often oversubscribed, so absolute times are noisy; every comparison '
      'is interleaved in one process and reported with medians (per-section '
      'load averages below).')
  add('')
  if not m['gpu']:
    add('**No GPU in this session: all figures are CPU figures.** GPU rows '
        '(the same command on a GPU host) are still to be added.')
    add('')
  if res['quick']:
    add('**`--quick` smoke run (few steps, small windows): not the reference '
        'figures.**')
    add('')
  if res.get('summary'):
    add('## Summary')
    add('')
    for line in res['summary']:
      add(f'* {line}')
    add('')

  add('## 1. Per-step overhead: LAMB (constant LR) vs LAMB + AutoWU')
  add('')
  add('Jitted NNX train step, random `(B, 28, 28, 1)` batches on device, '
      'variants interleaved step by step; AutoWU window pre-filled to '
      'capacity (every test fits a full window: worst case); '
      f'`test_every` default = `T_w // 40` for a {BUDGET_EPOCHS}-epoch budget '
      '(k def.), per epoch = `steps_per_epoch` (k ep.). Epoch ratio = '
      '((k-1) x non-test + test) / (k x LAMB), with the medians of the LAMB '
      'and non-test steps and the *mean* of the test steps (their cost can '
      'be heavy-tailed, and an epoch pays the mean; it also picks up load '
      'spikes); the column "from medians only" uses the median test step. '
      'CPU = process CPU time (all threads), less sensitive to the load than '
      'wall time.')
  add('')
  if res.get('clean'):
    add('### 1a. Clean environment: one LAPACK thread, no allocator '
        'artefact')
    add('')
    add('A child process with `OPENBLAS_NUM_THREADS=1` and '
        f'`GLIBC_TUNABLES={MALLOC_TUNABLES}` (sections 4 and 6 explain why). '
        'This is the cost of the scheduler itself.')
    add('')
    _step_tables(res['clean'], add)
  add('### 1b. As installed (default environment of this process)' if
      res.get('clean') else '### As installed')
  add('')
  add('[default] = LAPACK with its default thread count; [1t] = one LAPACK '
      'thread, set in-process before each of that variant\'s steps.')
  add('')
  _step_tables(res['steps'], add)

  add('## 2. Zero host transfers; the GP is skipped on non-test steps')
  add('')
  add(_row(['run', 'model', 'B', 'steps under transfer_guard("disallow")',
            'of which test steps', 'host callbacks', 'send/recv/in-outfeed',
            'conditionals', 'eigh only inside a conditional branch',
            'entry instructions (fusions) LAMB / AutoWU']))
  add('|---' * 10 + '|')
  for run, steps in (('as installed', res['steps']),
                     ('clean', res.get('clean') or [])):
    for s in steps:
      g, h = s['transfer_guard'], s['hlo']
      add(_row([run, s['model'], s['batch'], g['steps'], g['test_steps'],
                ', '.join(h['host_callbacks']) or 'none',
                ', '.join(h['host_transfer_ops']) or 'none',
                h['conditionals'],
                h['eigh_only_inside_conditional_branch'],
                f'{h["entry_instructions_lamb"]} ({h["entry_fusions_lamb"]}) / '
                f'{h["entry_instructions_autowu"]} '
                f'({h["entry_fusions_autowu"]})']))
  add('')
  add('All timed loops of section 1 ran entirely under '
      '`jax.transfer_guard("disallow")` (inputs and state on device; the '
      'loss is only waited on with `block_until_ready`): no step, test or '
      'not, attempted a transfer (a transfer would have raised). In the '
      'compiled step the LAPACK eigensolver is unreachable from the entry '
      'computation except through a `conditional` branch, so a non-test '
      'step never runs the GP.')
  add('')

  lat = res['latency']
  add('## 3. Minimum-test latency (`jax.jit(gp.minimum_test)`, full window, '
      'float32, CPU)')
  add('')
  add(f'Median ms (min, p90): one LAPACK thread [1t], {lat["reps"]} '
      'interleaved repetitions; default thread count [default] (G = 256), '
      f'{lat["default_reps"]}. Load average before/after: '
      f'{lat["loadavg_before"]} / {lat["loadavg_after"]}.')
  add('')
  grids = sorted({r['grid'] for r in lat['table']})
  wins = sorted({r['window'] for r in lat['table']})
  by = {(r['window'], r['grid'], r['lapack_threads']): r
        for r in lat['table']}
  cols = [(g, '1t') for g in grids] + [(256, 'default')]
  add(_row(['W'] + [f'G={g} [{th}]' for g, th in cols]))
  add('|---' * (len(cols) + 1) + '|')
  for w in wins:
    cells = [w]
    for g, th in cols:
      r = by.get((w, g, th))
      cells.append(f'{r["median_ms"]:.2f} ({r["min_ms"]:.2f}, '
                   f'{r["p90_ms"]:.2f})' if r else '-')
    add(_row(cells))
  add('')
  add('Fitted exponent p of latency ~ W^p (least squares on log-log '
      'medians): ' + '; '.join(f'{k}: **{v:.2f}**' for k, v in
                               lat['exponents'].items() if v is not None)
      + '.')
  add('')
  for para in res.get('latency_note', []):
    add(para)
    add('')

  if res.get('eigh'):
    e = res['eigh']
    add('## 4. The eigensolver and its threads (the W = 256 anomaly)')
    add('')
    add(f'`jnp.linalg.eigh` alone (RBF Gram matrix) and the minimum test, '
        f'in-process, interleaved, {e["reps"]} repetitions each: median ms '
        f'[p10-p90]. Load average before/after: {e["loadavg_before"]} / '
        f'{e["loadavg_after"]}.')
    add('')
    wins = sorted({r['window'] for r in e['table']})
    by = {(r['lapack_threads'], r['what'], r['dtype'], r['window']): r
          for r in e['table']}
    add(_row(['LAPACK', 'what', 'dtype'] + [f'W={w}' for w in wins]))
    add('|---' * (3 + len(wins)) + '|')
    for th in ('default', '1t'):
      for what in ('eigh', 'minimum_test'):
        for dt in ('float32', 'float64'):
          if (th, what, dt, wins[0]) not in by:
            continue
          add(_row([th, what, dt] + [
              f'{by[(th, what, dt, w)]["median_ms"]:.2f} '
              f'[{by[(th, what, dt, w)]["p10_ms"]:.2f}-'
              f'{by[(th, what, dt, w)]["p90_ms"]:.2f}]' for w in wins]))
    add('')
    for para in res.get('anomaly_note', []):
      add(para)
      add('')

  add('## 5. Scheduler cost per epoch (MLP, Fashion-MNIST, 60000 examples)')
  add('')
  add('`test_every = max(1, min(steps_per_epoch, T_w // 40))` for a budget '
      'of E epochs (`T_w = E x steps_per_epoch / 2`). "measured": from the '
      'per-step figures of section 1 (median non-test and LAMB steps, mean '
      'test steps; carries their noise); "test steps": only the extra time '
      'of the test steps; "GP latency": tests per epoch x the standalone '
      'minimum-test latency of section 3 (W = 256, G = 256; one thread for '
      '[clean] and [1t]) over the LAMB epoch time.')
  add('')
  add(_row(['B', 'LAPACK', 'steps/epoch', 'E', 'test_every', 'tests/epoch',
            'LAMB epoch s', 'measured', 'test steps', 'GP latency']))
  add('|---' * 10 + '|')
  for r in res['epoch_fractions']:
    add(_row([r['batch'], r['lapack_threads'], r['steps_per_epoch'],
              r['epochs'], r['test_every'], f'{r["tests_per_epoch"]:.2f}',
              f'{r["epoch_ms"] / 1e3:.2f}',
              f'{100 * r["fraction_measured"]:+.2f}%',
              f'{100 * r["fraction_test_steps"]:+.2f}%',
              f'{100 * r["fraction_gp_latency"]:.2f}%']))
  add('')

  if res.get('malloc_note'):
    add('## 6. Non-test steps and the allocator (glibc page faults)')
    add('')
    for para in res['malloc_note']:
      add(para)
      add('')

  if res.get('notes'):
    add('## Notes')
    add('')
    for n in res['notes']:
      add(f'* {n}')
    add('')
  with open(path_md, 'w') as f:
    f.write('\n'.join(out))


def _by(table, **kw):
  for r in table:
    if all(r.get(k) == v for k, v in kw.items()):
      return r
  return None


def _interpret(res):
  """Summary and explanations, with the numbers of this run."""
  summary, anomaly, malloc, latnote = [], [], [], []

  def ratios(steps, th, medians=False):
    rows = [(s, s['by_threads'][th]) for s in steps if th in s['by_threads']]
    if not rows:
      return None
    sfx = '_medians' if medians else ''
    worst = max(max(d['epoch_ratio_default' + sfx],
                    d['epoch_ratio_epoch' + sfx]) for _, d in rows)
    return (', '.join(
        f'{s["model"]} B={s["batch"]}: {d["epoch_ratio_default" + sfx]:.3f} '
        f'(k={s["test_every_default"]}) / {d["epoch_ratio_epoch" + sfx]:.3f} '
        f'(k={s["steps_per_epoch"]})' for s, d in rows)
            + f'; worst {worst:.3f}: target <= 1.02 '
            f'{"met" if worst <= 1.02 else "NOT met"}')

  if res.get('clean'):
    r = ratios(res['clean'], 'clean')
    summary.append(f'**Clean environment** (one LAPACK thread, no allocator '
                   f'artefact), epoch ratio AutoWU / LAMB with the mean test '
                   f'step: {r}.')
    summary.append('Same, medians only (the definition of the issue): '
                   + ratios(res['clean'], 'clean', medians=True) + '.')
    summary.append(
        'Noise floor of these comparisons (an identical second LAMB, '
        'interleaved the same way; wall / CPU): ' + ', '.join(
            f'{s["model"]} B={s["batch"]}: '
            f'{s.get("noise_floor_ratio", float("nan")):.3f} / '
            f'{s.get("noise_floor_cpu_ratio", float("nan")):.3f}'
            for s in res['clean']) + '. Ratios within this of 1 are not '
        'resolved by this run.')
    nt = [(s['model'], s['batch'], s['by_threads']['clean'])
          for s in res['clean']]
    h = res['clean'][0]['hlo']
    summary.append(
        'Non-test steps (clean): wall / CPU ratio ' + ', '.join(
            f'{m} B={b}: {d["nontest_ratio"]:.3f} / '
            f'{d["nontest_cpu_ratio"]:.3f}' for m, b, d in nt) +
        '. The GP does not run there (section 2); what remains is the '
        'per-step bookkeeping of AutoWU (loss window push, divergence '
        'guard, LR schedule, the `cond` itself): the compiled MLP step has '
        f'{h["entry_instructions_autowu"]} top-level HLO instructions '
        f'({h["entry_fusions_autowu"]} fusions) against '
        f'{h["entry_instructions_lamb"]} ({h["entry_fusions_lamb"]}) for '
        'LAMB, each a separate small kernel on XLA:CPU, a few microseconds '
        'each: a fixed cost of a fraction of a millisecond per step, a '
        'percent or so of the 30 ms MLP B = 1024 step, proportionally less '
        'for longer steps.')
  for th, what in (('1t', 'as installed, one LAPACK thread'),
                   ('default', 'as installed, default LAPACK threads')):
    r = ratios(res['steps'], th)
    if r:
      summary.append(f'Epoch ratio, {what}: {r}.')
  lat = res['latency']
  r1, rd = (_by(lat['table'], window=256, grid=256, lapack_threads=t)
            for t in ('1t', 'default'))
  if r1:
    p = lat['exponents'].get('1t G=256 W>=256')
    summary.append(
        f'Minimum test at the default W = 256, G = 256: {r1["median_ms"]:.1f}'
        ' ms with one LAPACK thread' + (
            f', {rd["median_ms"]:.1f} ms with the default thread count '
            f'(load {lat["loadavg_before"][0] if lat["loadavg_before"] else "?"}'
            ')' if rd else '') + (
                f'. Fitted exponent (one thread, G = 256, W = 256..2048): '
                f'{p:.2f}' if p is not None else '') + '.')
  for s in res['steps']:
    h = s['hlo']
    if not (h['eigh_only_inside_conditional_branch'] and not
            h['host_callbacks'] and not h['host_transfer_ops']):
      summary.append(f'**HLO check failed for {s["model"]} B={s["batch"]}: '
                     f'{h}**')
  summary.append(
      'No host transfer in any timed step (all ran under '
      '`transfer_guard("disallow")`, ' + str(sum(
          s['transfer_guard']['test_steps'] for s in res['steps']
          + (res.get('clean') or []))) + ' of them test steps); the eigensolver'
      ' sits only inside the `lax.cond` branch.')

  # Section 3 note: local slopes and the default-thread column.
  one = {r['window']: r['median_ms'] for r in lat['table']
         if r['lapack_threads'] == '1t' and r['grid'] == 256}
  ws = sorted(one)
  if len(ws) >= 2:
    slopes = [(w0, w1, math.log(one[w1] / one[w0]) / math.log(w1 / w0))
              for w0, w1 in zip(ws[:-1], ws[1:])]
    latnote.append(
        'Local exponents (one thread, G = 256): ' + ', '.join(
            f'{w0}->{w1}: {p:.2f}' for w0, w1, p in slopes) + '. The '
        'eigensolver is O(W^3) in flops, but below W ~ 1024 the matrix '
        '(<= 4 MiB) stays in cache, the O(W^2 G) posterior and the fixed '
        'costs weigh, and the measured slope is lower; the W^3 regime shows '
        'at the top of the range.')
  dflt = sorted((r['window'], r['median_ms']) for r in lat['table']
                if r['lapack_threads'] == 'default')
  if dflt and one:
    mono = all(t1 >= t0 for (_, t0), (_, t1) in zip(dflt[:-1], dflt[1:]))
    latnote.append(
        'Default thread count: ' + ', '.join(
            f'W = {w}: {t:.1f} ms (x{t / one[w]:.0f} one thread)'
            for w, t in dflt if w in one) + '; '
        + ('monotone in W in this run, but far slower' if mono else
           '**not monotone in W** in this run') + '. See section 4.')

  e = res.get('eigh')
  if e:
    def q(th, what, dt, w, key='median_ms'):
      r = _by(e['table'], lapack_threads=th, what=what, dtype=dt, window=w)
      return r[key] if r else float('nan')

    ew = sorted({r['window'] for r in e['table']})
    worst_1t = max(q('1t', 'eigh', 'float32', w) / q('default', 'eigh',
                                                       'float32', w)
                   for w in ew)
    anomaly.append(
        'Why a quick measurement saw W = 256 (93 ms) slower than W = 512 '
        '(32 ms). On CPU, `jnp.linalg.eigh` lowers to LAPACK `ssyevd` '
        '(`dsyevd` in float64) through jaxlib\'s `lapack_ssyevd_ffi` custom '
        'call, and jaxlib takes that LAPACK from SciPy\'s bundled OpenBLAS '
        f'(`{res["machine"]["lapack_library"]}`), which runs its own pool of '
        f'{res["machine"]["lapack_default_threads"]} threads beside XLA\'s. '
        '`ssyevd` is a long sequence of BLAS calls (mostly the O(W) '
        'matrix-vector and rank-2 updates of the Householder '
        'tridiagonalisation `ssytrd`, then the divide-and-conquer merges); '
        'OpenBLAS splits each call that passes its size thresholds over its '
        'threads and makes the caller spin until the other thread has done '
        'its part. When other processes keep the cores busy, that thread is '
        'often not running, and each hand-off can cost a scheduler time '
        'slice. The time then follows the load of the moment and how many '
        'calls get split at that W (per-routine thresholds), not W^3, so '
        'medians taken at different moments need not be monotone in W.')
    anomaly.append(
        f'This run (load {e["loadavg_before"]}): float32 `eigh` with the '
        'default threads took ' + ', '.join(
            f'{q("default", "eigh", "float32", w):.1f}' for w in ew)
        + ' ms at W = ' + ' / '.join(str(w) for w in ew) + ', with one '
        'thread ' + ', '.join(f'{q("1t", "eigh", "float32", w):.1f}'
                              for w in ew)
        + ' ms; the minimum test (one thread) '
        + ', '.join(f'{q("1t", "minimum_test", "float32", w):.1f}'
                    for w in ew)
        + ' ms, so `eigh` is most of it. One thread was '
        + (f'never slower than the default here (at most x{worst_1t:.2f} of '
           'its time)' if worst_1t <= 1.0 else
           f'at worst x{worst_1t:.2f} slower than the default here')
        + ' (a 2-core machine has little to gain from splitting these '
        'calls) and far steadier. Observed '
        'separately in this session (not by this command): at load ~2.3 the '
        'default-thread minimum test took ~800 ms at W = 256 but 26-36 ms at '
        'W = 512 and ~220 ms at W = 1024, i.e. the reported inversion; at '
        'load ~1.9 it was within 2x of one thread at every W.')
    anomaly.append(
        'Not the cause: float64 (`dsyevd`; '
        f'{q("1t", "eigh", "float64", 256):.1f} / '
        f'{q("1t", "eigh", "float64", 512):.1f} ms at W = 256 / 512 with one '
        'thread) is slower, not faster, and changes nothing qualitatively; '
        '`jax.lax.linalg.eigh` has no other CPU path (`implementation=JACOBI` '
        'and `QDWH` raise NotImplementedError on CPU, `subset_by_index` is '
        'not supported on CPU). Profiling one default-thread W = 256 run '
        'separately with `perf` (not part of this command) put over half of '
        'the CPU samples in OpenBLAS\'s `blas_thread_server` and '
        '`exec_blas_async_wait`, i.e. threads spinning while they wait for '
        'each other. Known upstream: OpenMathLib/OpenBLAS#3801 (multithreaded '
        '`?sytrd` slower than single-threaded), #5517 (load-dependent '
        'slowness of eigensolvers from threaded level-2 calls), #4387.')
    anomaly.append(
        'Remedy: one OpenBLAS thread for that library, i.e. '
        '`OPENBLAS_NUM_THREADS=1` in the environment before Python starts, '
        'or `threadpoolctl.threadpool_limits(1, user_api="blas")` at run time '
        '(this benchmark calls the library\'s `*_set_num_threads` in-process).'
        ' The library cannot set it per call from inside `jit`. A window of '
        '64 bins is small enough to stay fast with the default threads too '
        '(section 3), but that changes the model, not the cause.')

  clean = {(s['model'], s['batch']): s for s in res.get('clean') or []}
  for s in res['steps']:
    if not (s['model'] == 'mlp' and s['batch'] == 1024):
      continue
    d = s['by_threads'].get('1t') or s['by_threads'].get('default')
    tb, ta = s['base_temp_bytes'], s['autowu_temp_bytes']
    text = (
        f'In the default environment the MLP B = 1024 AutoWU step (non-test '
        f'ratio {d["nontest_ratio"]:.3f}, CPU {d["nontest_cpu_ratio"]:.3f}) '
        f'took {d["nontest_faults_median"]:.0f} minor page faults per step, '
        f'LAMB {s["base_faults_median"]:.0f}. The compiled AutoWU step needs '
        f'a temporary buffer of {ta} bytes ({ta / 4096:.0f} pages of 4 KiB, '
        f'{ta % 4096} bytes into the last one), LAMB {tb} ({tb % 4096}): '
        'glibc\'s malloc hands the AutoWU buffer back to the kernel after '
        'every step and maps it again at the next, so every step zero-fills '
        'it page by page. Whether a program hits this depends on its buffer '
        'sizes (with its dynamic mmap threshold, set by what the process '
        'freed before); for this MLP the W = 256 and W = 512 steps hit it and '
        'W = 8, 64, 128, 1024 do not (checked separately), and the CNN '
        'steps, whose buffers (> 32 MiB) are always mapped, pay it for LAMB '
        'and AutoWU alike. It is an allocator artefact of this process, not '
        f'work done by the scheduler (whose step buffer is {ta - tb} bytes '
        'larger than LAMB\'s; non-test steps execute none of the GP).')
    c = clean.get(('mlp', 1024))
    if c:
      dc = c['by_threads']['clean']
      text += (
          f' With `GLIBC_TUNABLES={MALLOC_TUNABLES}` (section 1a) the faults '
          f'are {c["base_faults_median"]:.0f} / '
          f'{dc["nontest_faults_median"]:.0f} and the non-test ratio '
          f'{dc["nontest_ratio"]:.3f} (CPU {dc["nontest_cpu_ratio"]:.3f}). '
          'Users who see it can set that variable or preload another malloc '
          '(jemalloc, tcmalloc); it affects any jitted CPU program.')
    malloc.append(text)
  res['summary'] = summary
  res['anomaly_note'] = anomaly
  res['malloc_note'] = malloc
  res['latency_note'] = latnote


def _child_steps(spec):
  """Section 1 in a child process (the parent sets its environment)."""
  out = [bench_step(mo, b, n, w, _specs(mo, b, 'clean'), log=lambda *a: None)
         for mo, b, n, w in json.loads(spec)]
  print('BENCH_CHILD ' + json.dumps(out), flush=True)


def _clean_run(step_cfgs, log=print):
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES,
             OPENBLAS_NUM_THREADS='1')
  cmd = [sys.executable, '-m', 'experiments.bench', '--child-steps',
         json.dumps(step_cfgs)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        cwd=os.path.dirname(HERE), timeout=1200)
  line = [l for l in proc.stdout.splitlines() if l.startswith('BENCH_CHILD ')]
  if proc.returncode or not line:
    log('  child failed: ' + proc.stderr[-1500:])
    return None
  runs = json.loads(line[0][len('BENCH_CHILD '):])
  for r in runs:
    r['by_threads'] = {'clean': r['by_threads']['default']}
    for v in r['variants'].values():
      v['lapack_threads'] = 'clean'
    d = r['by_threads']['clean']
    log(f'  {r["model"]} B={r["batch"]}: LAMB {r["base_median_ms"]:.1f} ms, '
        f'non-test x{d["nontest_ratio"]:.3f} (CPU x'
        f'{d["nontest_cpu_ratio"]:.3f}), test +{d["test_extra_ms"]:.1f} ms '
        f'(n={d["num_test_samples"]}), epoch x{d["epoch_ratio_default"]:.4f}'
        f' (k={r["test_every_default"]}) x{d["epoch_ratio_epoch"]:.4f} '
        f'(k={r["steps_per_epoch"]}), noise floor x'
        f'{r.get("noise_floor_ratio", float("nan")):.3f}, faults '
        f'{r["base_faults_median"]:.0f} / '
        f'{d["nontest_faults_median"]:.0f}  [{r["wall_s"]:.0f} s, load '
        f'{r["loadavg_after"]}]')
  return runs


def main(argv=None):
  global BLAS
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='smoke run in < 60 s (few steps, small windows)')
  p.add_argument('--out-dir', default=None,
                 help='default: experiments/results (full run), a temporary '
                      'folder (--quick)')
  p.add_argument('--child-steps', default=None, help=argparse.SUPPRESS)
  p.add_argument('--from-json', default=None, metavar='PATH',
                 help='re-render the report of an earlier run from its json '
                      '(same figures, current wording); no measurement')
  args = p.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      res = json.load(f)
    _interpret(res)
    res['rerendered_utc'] = datetime.datetime.now(
        datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    with open(args.from_json, 'w') as f:
      json.dump(res, f, indent=1)
    write_report(res, os.path.splitext(args.from_json)[0] + '.md')
    return
  BLAS = _Blas()
  if args.child_steps:
    _child_steps(args.child_steps)
    return

  t_start = time.perf_counter()
  log = lambda *a: print(*a, flush=True)
  res = {'quick': args.quick, 'machine': _machine_info(argv)}
  m = res['machine']
  log(f'machine: {m["nproc"]} cores, {m["cpu_model"]}, jax {m["jax"]}, '
      f'LAPACK {m["lapack_library"]} ({m["lapack_default_threads"]} threads),'
      f' load {m["loadavg_start"]}')

  if args.quick:
    step_cfgs = [('mlp', 1024, 12, 2)]
    lat = dict(windows=[64, 256], grids=[256], reps=3,
               default_windows=[64, 256], default_reps=3)
  else:
    # (model, batch, timed steps per variant, warm-up steps)
    step_cfgs = [('mlp', 1024, 116, 3), ('mlp', 4096, 42, 2),
                 ('mlp', 8192, 28, 2), ('cnn', 128, 48, 2),
                 ('cnn', 256, 32, 2)]
    lat = dict(windows=[64, 128, 256, 512, 1024, 2048], grids=[64, 256, 512],
               reps=5, default_windows=[64, 128, 256, 512, 1024, 2048],
               default_reps=3)

  log('[1-2] per-step overhead (interleaved, under transfer_guard)')
  mode = 'quick' if args.quick else 'main'
  res['steps'] = [bench_step(mo, b, n, w, _specs(mo, b, mode), log=log)
                  for mo, b, n, w in step_cfgs]
  if not args.quick:
    log('[6] clean environment (child process: OPENBLAS_NUM_THREADS=1, '
        'GLIBC_TUNABLES)')
    res['clean'] = _clean_run(
        [(mo, b, 2 * n, w) for mo, b, n, w in step_cfgs], log=log)
  log('[3] minimum-test latency')
  res['latency'] = bench_latency(log=log, **lat)
  log('[4] eigensolver: eigh vs minimum test, float32/64, threads')
  res['eigh'] = bench_eigh([128, 256] if args.quick else [64, 128, 256, 512],
                           reps=3 if args.quick else 4, log=log)
  res['epoch_fractions'] = epoch_fractions(
      (res.get('clean') or []) + res['steps'], res['latency'])
  res['loadavg_end'] = _loadavg()
  res['wall_s'] = time.perf_counter() - t_start
  _interpret(res)

  if args.out_dir is None:
    args.out_dir = (os.path.join(tempfile.gettempdir(), 'optax_autolr_bench')
                    if args.quick else os.path.join(HERE, 'results'))
  os.makedirs(args.out_dir, exist_ok=True)
  stem = 'bench_quick' if args.quick else 'bench'
  with open(os.path.join(args.out_dir, stem + '.json'), 'w') as f:
    json.dump(res, f, indent=1)
  write_report(res, os.path.join(args.out_dir, stem + '.md'))
  for line in res['summary']:
    log('* ' + line)
  log(f'wrote {args.out_dir}/{stem}.json and {stem}.md in '
      f'{res["wall_s"]:.0f} s')


if __name__ == '__main__':
  main()
