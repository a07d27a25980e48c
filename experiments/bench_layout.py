"""Packed vs flat AutoWU state: what the layout of the state costs per step.

0.2.0 packed AutoWU's scalars into ``ints[7]`` / ``floats[6]`` arrays (four
leaves in all) on the argument that every leaf is a buffer in and out of
every train step; 0.3.0 uses a flat ``NamedTuple`` of named fields. This
measures, in one process, interleaved (rotating order), on the same inputs:

* the jitted AutoWU update alone (4-element params), and
* a full train step (LAMB + AutoWU, non-test steps) of the MLP at B = 1024 and
  the CNN at B = 128 / 256,

for three libraries: *packed* (commit ``PACKED_COMMIT``), *flat* (commit
``FLAT_COMMIT``: named fields, the same decision rule, so the layout alone)
and *current* (this checkout: named fields plus the rule-search stages). It
reports the medians, the median over rounds of the paired ratio to packed,
and, as the noise floor, the packed step against a second copy of itself.
The older libraries are read with ``git show`` into temporary packages, so
the command needs a git checkout::

    python -m experiments.bench_layout            # ~6-8 min on 2 CPU cores
    python -m experiments.bench_layout --quick    # smoke run, ~1 min

Writes ``experiments/results/bench_layout.md`` (``--quick``: a temporary
folder).

``--against LABEL=COMMIT`` (repeatable) measures the checkout against other
libraries instead, the first one the baseline, and writes
``bench_layout_<labels>.md``; e.g. the rollback's cost::

    python -m experiments.bench_layout --against before_rollback=36749f3 \
        --against rollback_cond=75ef673
"""

import argparse
import atexit
import functools
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ''):  # `python experiments/bench_layout.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import cli
from experiments import machine
from experiments import report

PACKED_COMMIT = '6dca3c2'  # The last commit with the packed state.
FLAT_COMMIT = 'ce53b00'  # The flat state with the same decision rule.
ROOT = Path(__file__).resolve().parent.parent
_MODULES = ('__init__', '_autowu', '_adamp', '_checks', 'gp', 'scaling',
            'window')
# The settings (plain data): interleaved rounds, steps per round, calls per
# round of the update alone, and the train-step cases (model, batch).
FULL = dict(rounds=40, steps=10, update_calls=50,
            cases=[('mlp', 1024), ('cnn', 128), ('cnn', 256)])
QUICK = dict(rounds=5, steps=5, update_calls=10, cases=[('mlp', 1024)])


@functools.cache
def load_commit(commit: str, package: str):
  """Imports the library of ``commit`` (read with ``git show``) as ``package``.

  The files go to a temporary folder removed at exit; the package is loaded
  from it by path (``sys.path`` is left as it was), once per ``(commit,
  package)``.
  """
  folder = Path(tempfile.mkdtemp(prefix=f'{package}_'))
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  pkg = folder / package
  pkg.mkdir()
  for name in _MODULES:
    shown = subprocess.run(
        ['git', 'show', f'{commit}:optax_autolr/{name}.py'], cwd=ROOT,
        capture_output=True, text=True)
    if shown.returncode and name != '__init__':
      continue  # A module that commit did not have yet.
    shown.check_returncode()
    (pkg / f'{name}.py').write_text(shown.stdout.replace('optax_autolr', package))
  spec = importlib.util.spec_from_file_location(
      package, pkg / '__init__.py', submodule_search_locations=[str(pkg)])
  module = importlib.util.module_from_spec(spec)
  sys.modules[package] = module  # Its modules import it by name.
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[package]
    raise
  return module


def _rotated(names, i):
  """The variants in an order that rotates every round (no position bias)."""
  k = i % len(names)
  return names[k:] + names[:k]


def _autowu(lib):
  """An AutoWU whose test never runs in the measured steps (5 epochs of 20000 steps: no
  library's cap on the maximal warmup binds)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # patience x test_every > warmup: wanted.
    return lib.autowu(100_000, 20_000, patience=10**6, test_every=10**4)


def _interleave(runners, rounds, steps, call):
  """Seconds per step of each runner ``[fn, state]``, ``{name: [per round]}``.

  ``call(fn, state)`` does one step and returns the new state.
  """
  import jax
  times = {name: [] for name in runners}
  for i in range(rounds):
    for name in _rotated(list(runners), i):
      r = runners[name]
      t0 = time.perf_counter()
      for _ in range(steps):
        r[1] = call(r[0], r[1])
      jax.block_until_ready(r[1])
      times[name].append((time.perf_counter() - t0) / steps)
  return times


def _paired(times_a, times_b):
  return float(np.median(np.asarray(times_a) / np.asarray(times_b)))


def bench_update(libs, rounds, steps):
  """Median seconds per jitted update, interleaved; ``{name: [per round]}``."""
  import jax
  import jax.numpy as jnp
  params = {'w': jnp.ones(4)}
  runners = {}
  for name, lib in libs.items():
    tx = _autowu(lib)
    step = jax.jit(lambda u, s, tx=tx: tx.update(u, s, u, value=jnp.float32(1.0)),
                   donate_argnums=1)
    state = tx.init(params)
    _, state = step(params, state)  # Compile.
    runners[name] = [step, state]
  return _interleave(runners, rounds, steps,
                     lambda fn, state: fn(params, state)[1])


def bench_train_step(libs, model_name, batch, rounds, steps):
  """Seconds per train step (LAMB + AutoWU, non-test), interleaved."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from experiments.models import make_model

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 28, 28, 1)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
  runners = {}
  for name, lib in libs.items():
    model = make_model(model_name, nnx.Rngs(0))
    tx = optax.chain(optax.lamb(1.0), _autowu(lib))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    def step(state, x, y, graphdef=graphdef):
      model, opt = nnx.merge(graphdef, state)
      loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(
          m(x), y).mean()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      opt.update(model, grads, value=loss)
      return nnx.state((model, opt)), loss

    compiled = jax.jit(step, donate_argnums=0).lower(state, x, y).compile()
    state, _ = compiled(state, x, y)
    runners[name] = [compiled, state]
  return _interleave(runners, rounds, steps,
                     lambda fn, state: fn(state, x, y)[0])


def _label_commit(text: str) -> tuple[str, str]:
  """``type=`` for ``LABEL=COMMIT``."""
  label, sep, commit = text.partition('=')
  if not sep or not label.isidentifier() or not commit or label in (
      'current', 'copy'):
    raise argparse.ArgumentTypeError(
        f'expected LABEL=COMMIT (LABEL a Python name other than current and '
        f'copy), e.g. before_rollback=36749f3; got {text!r}')
  return label, commit


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.bench_layout',
                              description=__doc__.splitlines()[0])
  cli.add_output_flags(
      parser, quick='smoke run',
      out_dir='default: experiments/results (a temporary folder with --quick)')
  parser.add_argument(
      '--against', type=_label_commit, action='append', metavar='LABEL=COMMIT',
      help='measure the checkout against the library at COMMIT (repeatable; '
      'the first is the baseline); default: the packed and flat layouts')
  args = parser.parse_args(argv)
  import optax_autolr
  against = args.against or [('packed', PACKED_COMMIT), ('flat', FLAT_COMMIT)]
  if len({label for label, _ in against}) < len(against):
    parser.error('--against: each LABEL once')
  try:
    libs = {label: load_commit(commit, f'optax_autolr_{label}')
            for label, commit in against}
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    parser.error(f'cannot read the library at commits '
                 f'{", ".join(c for _, c in against)} with git (a git '
                 f'checkout is needed): {e}')
  base = against[0][0]
  libs.update(current=optax_autolr, copy=libs[base])
  cfg = QUICK if args.quick else FULL
  rounds, steps = cfg['rounds'], cfg['steps']
  cases = [('update alone', None, None)] + [(m, m, b) for m, b in cfg['cases']]
  others = [name for name in libs if name not in (base, 'copy')]
  started = time.time()
  rows = []
  for label, model, batch in cases:
    if model is None:
      times = bench_update(libs, rounds, cfg['update_calls'])
    else:
      times = bench_train_step(libs, model, batch, rounds, steps)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    ratios = [_paired(times[k], times[base]) for k in others + ['copy']]
    rows.append([label + (f' B={batch}' if batch else ''), med[base],
                 *(med[k] for k in others), *ratios])
    print(f'{rows[-1][0]}: ' + ', '.join(
        f'{k} {med[k]:.3f} ms' for k in [base] + others) + '; ' + ', '.join(
            f'{k}/{base} {r:.4f}' for k, r in zip(others, ratios))
          + f' (noise floor {ratios[-1]:.4f})', flush=True)
  out = report.results_dir(args.out_dir, 'bench_layout', args.quick)
  stem = 'bench_layout' + ('' if args.against is None else '_' + '_'.join(
      label for label, _ in against))
  name = f'{stem}_quick.md' if args.quick else f'{stem}.md'
  flags = ''.join(f' --against {label}={commit}' for label, commit in
                  (args.against or [])) + (' --quick' if args.quick else '')
  if args.against is None:
    title = 'Packed vs flat AutoWU state'
    what = (f'- Packed: the library at commit `{PACKED_COMMIT}` (0.2.0 layout, '
            f'4 leaves); flat: commit `{FLAT_COMMIT}` (named fields, 20 '
            'leaves, the same decision rule: the layout alone); current: this '
            'checkout (named fields plus the rule-search stages: spike cap '
            'state and descent gate).')
  else:
    title = 'AutoWU step cost, library against library'
    what = ('- Libraries: ' + '; '.join(
        f'{label}: commit `{commit}`' for label, commit in against)
        + '; current: this checkout. Each with its defaults.')
  lines = report.header(title) + [
      report.command_line(f'python -m experiments.bench_layout{flags}', ''),
      f'- Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}; '
      f'{time.time() - started:.0f} s',
      report.machine_line(machine.machine_info()),
      what,
      f'- {rounds} interleaved rounds of {steps} steps (update alone: '
      f'{cfg["update_calls"]} calls) '
      'per variant, non-test steps; ratio = median over rounds of the paired '
      f'per-round ratio to {base}; noise floor = {base} against a second, '
      'identical copy of it, interleaved the same way.',
      '',
  ] + report.table(
      ['case', *(f'{k} ms' for k in [base] + others),
       *(f'{k} / {base}' for k in others), 'noise floor'],
      [[r[0], *(f'{v:.3f}' for v in r[1:2 + len(others)]),
        *(f'{v:.4f}' for v in r[2 + len(others):])] for r in rows])
  report.write(out / name, lines, final_newline=True)
  print(f'wrote {out / name}')


if __name__ == '__main__':
  main()
