"""Does the best Adam learning rate "surge" with the batch size?

Tests the claim of Li et al. 2024 (arXiv 2405.14578; SPEC.md section 3) on
Fashion-MNIST with a small MLP. For Adam the optimal learning rate should
follow

    lr*(B) = lr_max / (0.5 * (sqrt(B_noise / B) + sqrt(B / B_noise))),

rising like sqrt(B) below the noise scale B_noise and falling like
1/sqrt(B) above it, whereas the SGD law lr_max / (1 + B_noise / B) only
saturates. Sign descent (Adam with b1 = b2 = 0) is the limit the paper's
derivation is built on, so it is run too.

Protocol (see ``FULL`` / ``QUICK`` for the numbers):

* MLP 784 -> 128 -> 10 (``experiments.models.make_model("mlp", hidden=(128,))``),
  one fixed initialisation, constant learning rate (no warmup, no decay), no
  weight decay, cross-entropy.
* Batch sizes 32 ... 4096 (powers of two). Every batch size sees the SAME
  number of examples, ``examples`` (2**18 = 4.37 epochs), drawn in the same
  order: one seeded permutation of the training set per epoch, concatenated.
* Per batch size a log-spaced LR grid (``n_lr`` values, ``per_decade`` per
  decade) on a fixed lattice 10**(k / per_decade), centred on the previous
  batch size's best LR; if the best final loss is at an end of the grid the
  grid is extended on that side (up to ``max_ext`` times).
* All LRs of one batch size train in one jitted ``lax.scan`` over steps,
  ``jax.vmap``-ed over the LR grid, data resident on device. At ``n_ckpt``
  checkpoints the script records the block mean of the minibatch losses
  since the previous checkpoint (the smoothed training curve) and the loss on
  a fixed subset of ``eval_curve`` training examples; at the end the loss on
  a fixed subset of ``eval_final`` training examples (the "final loss") and
  on the test set.
* Best LR per batch size (a) by the final loss and (b) by the number of steps
  needed to reach a target loss (the paper's criterion) on the checkpoint
  curve (linear interpolation between checkpoints); the target is chosen so
  that all batch sizes but the worst reach it. The grid argmin is refined by
  the vertex of the parabola in log LR through it and its two neighbours
  (fitted to log loss, resp. log steps).
* Fits: ``fit_surge`` and ``fit_sgd_form(alpha=1, 0.5)`` to best LR vs B
  (log-space RMSE compared; all have two parameters);
  ``b_noise_from_steps`` on (steps, examples) to the target.
* ``B_simple``: ``noise_scale_value_and_grad`` (k micro-batches of a batch of
  ``ns_batch``) at ``ns_points`` points of a reference run at B = ``ref_batch``
  with its best LR, averaged over ``ns_reps`` random batches per point.
* AutoWU: per batch size ``optax.chain(optax.adam(1.0, b1, b2),
  autowu(total_steps, steps_per_epoch))`` (defaults otherwise) on the same
  example budget, except that ``total_steps`` is at least
  ``autowu_min_steps`` (so B >= 2048 get a longer budget); its restart LR is
  compared with the grid's best LR and fitted with the surge law as well.

Run ``python -m experiments.surge`` (about 20 min on 2 CPU cores) or
``python -m experiments.surge --quick`` (smoke test, < 1 min). Results go to
``experiments/results/surge.{md,png,json}`` (the quick run writes to
``$TMPDIR/optax_autolr_surge_quick/`` so it never overwrites them;
``--out-dir`` to change).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_autolr
from optax_autolr import scaling
from experiments import cli, report, train
from experiments.data import (DatasetNotFoundError, load_dataset,
                              normalize_images)
from experiments.machine import machine_info
from experiments.report import fmt
from experiments.models import make_model

FULL = dict(
    batch_sizes=(32, 64, 128, 256, 512, 1024, 2048, 4096),
    examples=2 ** 18,        # examples seen by every run (4.37 epochs)
    hidden=(128,),
    n_lr=9,                  # LRs per grid
    per_decade=4,            # grid spacing 10**(1/4) = 1.78x
    max_ext=2,               # grid extensions when the best is at an edge
    n_ckpt=64,               # checkpoints on each curve
    eval_curve=2048,         # training examples for the checkpoint losses
    eval_final=16384,        # training examples for the final loss
    autowu_min_steps=256,
    ref_batch=256,           # reference run for B_simple
    ns_batch=1024, ns_k=8, ns_reps=8, ns_points=8,
    n_test=None,             # test examples (None: all)
)
QUICK = dict(
    batch_sizes=(64, 256, 1024),
    examples=2 ** 13,
    hidden=(32,),
    n_lr=3,
    per_decade=1,
    max_ext=0,
    n_ckpt=8,
    eval_curve=512,
    eval_final=1024,
    autowu_min_steps=32,
    ref_batch=256,
    ns_batch=256, ns_k=4, ns_reps=2, ns_points=2,
    n_test=1000,
)
# name -> (b1, b2, log10 of the LR the first grid is centred on).
OPTIMIZERS = {
    'adam': (0.9, 0.999, -2.5),
    'sign_adam': (0.0, 0.0, -3.0),
}
OPT_LABELS = {'adam': 'Adam (b1=0.9, b2=0.999)',
              'sign_adam': 'sign-like Adam (b1=b2=0)'}
SEED = 0


log = report.logger('surge', stream=sys.stderr)


# ----------------------------------------------------------------------------
# Model and jitted runs.
# ----------------------------------------------------------------------------


def build_model(hidden):
  model = make_model('mlp', nnx.Rngs(SEED), hidden=tuple(hidden))
  graphdef, params = nnx.split(model)
  return graphdef, params


def make_runs(graphdef):
  """Jitted grid / AutoWU / reference runs for one model."""

  def logits_fn(params, x):
    return nnx.merge(graphdef, params)(x)

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(params, x), y).mean()

  def eval_fn(params, x, y):
    logits = logits_fn(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, acc

  def batch_at(data, t, batch_size):
    x, y, idx = data
    i = jax.lax.dynamic_slice_in_dim(idx, t * batch_size, batch_size)
    return jnp.take(x, i, axis=0), jnp.take(y, i, axis=0)

  def train_loop(params, opt_state, tx, data, batch_size, n_ckpt,
                 steps_per_ckpt, curve_set, extra=None):
    """Nested scan: checkpoints x steps; returns final carry and curves.

    Each step is :func:`experiments.train.make_step`, the update of every
    experiment (``value=loss`` passed; Adam ignores it).
    """
    xc, yc = curve_set
    update = train.make_step(lambda p, x, y: (loss_fn(p, x, y), None), tx)

    def step(carry, t):
      xb, yb = batch_at(data, t, batch_size)
      p, s, loss, _ = update(*carry, xb, yb)
      return (p, s), loss

    def ckpt(carry, c):
      carry, losses = jax.lax.scan(
          step, carry, c * steps_per_ckpt + jnp.arange(steps_per_ckpt))
      ev = eval_fn(carry[0], xc, yc)[0]
      out = (jnp.mean(losses), ev)
      if extra is not None:
        out = out + (extra(carry),)
      return carry, out

    return jax.lax.scan(ckpt, (params, opt_state), jnp.arange(n_ckpt))

  @functools.partial(jax.jit, static_argnames=('batch_size', 'n_ckpt',
                                               'steps_per_ckpt'))
  def grid_run(params0, lrs, b1, b2, data, curve_set, final_set, test_set, *,
               batch_size, n_ckpt, steps_per_ckpt):
    def one(lr):
      tx = optax.adam(lr, b1=b1, b2=b2)
      (p, _), (train_curve, eval_curve) = train_loop(
          params0, tx.init(params0), tx, data, batch_size, n_ckpt,
          steps_per_ckpt, curve_set)
      final_loss = eval_fn(p, *final_set)[0]
      test_loss, test_acc = eval_fn(p, *test_set)
      return train_curve, eval_curve, final_loss, test_loss, test_acc
    return jax.vmap(one)(lrs)

  @functools.partial(jax.jit, static_argnames=(
      'batch_size', 'n_ckpt', 'steps_per_ckpt', 'total_steps',
      'steps_per_epoch'))
  def autowu_run(params0, b1, b2, data, curve_set, final_set, test_set, *,
                 batch_size, n_ckpt, steps_per_ckpt, total_steps,
                 steps_per_epoch):
    tx = optax.chain(optax.adam(1.0, b1=b1, b2=b2),
                     optax_autolr.autowu(total_steps, steps_per_epoch))
    (p, s), (train_curve, eval_curve, lr_curve) = train_loop(
        params0, tx.init(params0), tx, data, batch_size, n_ckpt,
        steps_per_ckpt, curve_set,
        extra=lambda carry: optax_autolr.get_lr(carry[1]))
    switch_step, restart_lr, reason = optax_autolr.get_switch(s)
    final_loss = eval_fn(p, *final_set)[0]
    test_loss, test_acc = eval_fn(p, *test_set)
    return dict(train_curve=train_curve, eval_curve=eval_curve,
                lr_curve=lr_curve, switch_step=switch_step,
                restart_lr=restart_lr, reason=reason, final_loss=final_loss,
                test_loss=test_loss, test_acc=test_acc)

  ns_loss = lambda p, batch: loss_fn(p, batch[0], batch[1])

  @functools.partial(jax.jit, static_argnames=(
      'batch_size', 'n_points', 'steps_per_point', 'ns_batch', 'ns_k',
      'ns_reps'))
  def reference_run(params0, lr, b1, b2, data, curve_set, key, *, batch_size,
                    n_points, steps_per_point, ns_batch, ns_k, ns_reps):
    """Trains at one LR; measures the noise statistics after each segment."""
    x, y, _ = data
    vg = scaling.noise_scale_value_and_grad(ns_loss, ns_k)
    tx = optax.adam(lr, b1=b1, b2=b2)

    def measure(carry):
      p = carry[0]
      # Same batches at every point (fixed key): only the params change.
      def rep(k):
        i = jax.random.choice(k, x.shape[0], (ns_batch,), replace=False)
        _, stats = vg(p, (jnp.take(x, i, axis=0), jnp.take(y, i, axis=0)))
        return stats
      return jax.lax.map(rep, jax.random.split(key, ns_reps))

    _, (train_curve, eval_curve, stats) = train_loop(
        params0, tx.init(params0), tx, data, batch_size, n_points,
        steps_per_point, curve_set, extra=measure)
    return train_curve, eval_curve, stats

  return grid_run, autowu_run, reference_run, eval_fn


# ----------------------------------------------------------------------------
# Analysis helpers.
# ----------------------------------------------------------------------------


def parabola_argmin(xs, ys, i):
  """Vertex of the parabola through points i-1, i, i+1 (x = log10 LR).

  Returns ``(x_best, y_best, refined)``; the grid point when i is at an edge,
  a neighbour is not finite or the parabola is not convex. The vertex is
  clipped to [x[i-1], x[i+1]].
  """
  if i <= 0 or i >= len(xs) - 1 or not np.all(np.isfinite(ys[i - 1:i + 2])):
    return float(xs[i]), float(ys[i]), False
  x0, x1, x2 = xs[i - 1:i + 2]
  y0, y1, y2 = ys[i - 1:i + 2]
  a = np.polyfit([x0, x1, x2], [y0, y1, y2], 2)
  if not a[0] > 0:
    return float(xs[i]), float(ys[i]), False
  xv = float(np.clip(-a[1] / (2 * a[0]), x0, x2))
  return xv, float(np.polyval(a, xv)), True


def steps_to_target(eval_curve, loss0, steps_per_ckpt, target):
  """First (interpolated) step at which the checkpoint loss <= target."""
  curve = np.concatenate([[loss0], np.asarray(eval_curve, np.float64)])
  steps = np.arange(len(curve)) * steps_per_ckpt
  ok = np.isfinite(curve) & (curve <= target)
  if not ok.any():
    return math.inf
  c = int(np.argmax(ok))
  if c == 0:
    return 0.0
  l0, l1 = curve[c - 1], curve[c]
  frac = (l0 - target) / (l0 - l1) if np.isfinite(l0) and l0 > l1 else 1.0
  return float(steps[c - 1] + frac * (steps[c] - steps[c - 1]))


def finite_or_inf(a):
  a = np.asarray(a, np.float64)
  return np.where(np.isfinite(a), a, np.inf)


def run_fit(fn, bs, lrs, **kw):
  bs = np.asarray(bs, np.float64)
  lrs = np.asarray(lrs, np.float64)
  ok = np.isfinite(lrs) & (lrs > 0)
  if ok.sum() < 3:
    return None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fit = fn(bs[ok], lrs[ok], **kw)
  return dict(lr_max=fit.lr_max, b_noise=fit.b_noise, rmse_log=fit.rmse_log,
              r2_log=fit.r2_log, n=int(ok.sum()),
              warnings=[str(w.message) for w in caught])


def fit_models(bs, lrs):
  return {
      'surge': run_fit(scaling.fit_surge, bs, lrs),
      'sgd_alpha1': run_fit(scaling.fit_sgd_form, bs, lrs, alpha=1.0),
      'sgd_alpha0.5': run_fit(scaling.fit_sgd_form, bs, lrs, alpha=0.5),
  }


def loglog_slope(bs, lrs):
  bs, lrs = np.asarray(bs, float), np.asarray(lrs, float)
  ok = np.isfinite(lrs) & (lrs > 0)
  if ok.sum() < 2:
    return float('nan')
  return float(np.polyfit(np.log(bs[ok]), np.log(lrs[ok]), 1)[0])


# ----------------------------------------------------------------------------
# Experiment.
# ----------------------------------------------------------------------------


def _grid_search(cfg, opt_name, centre0, grid):
  """The LR grid at every batch size, each centred on the previous best.

  ``grid(lrs, batch_size=, n_ckpt=, steps_per_ckpt=)`` runs one grid (the
  jitted ``grid_run`` of :func:`make_runs` with the model and data bound).
  Returns ``{batch size: record}``.
  """
  n_lr, per_decade = cfg['n_lr'], cfg['per_decade']
  per_b = {}
  centre_k = int(round(centre0 * per_decade))
  for bsz in cfg['batch_sizes']:
    steps = cfg['examples'] // bsz
    n_ckpt = min(cfg['n_ckpt'], steps)
    spc = steps // n_ckpt
    assert spc * n_ckpt * bsz == cfg['examples'], (bsz, steps, n_ckpt)
    half = n_lr // 2
    ks = list(range(centre_k - half, centre_k - half + n_lr))
    recs = {}

    def do_grid(ks_now, bsz=bsz, n_ckpt=n_ckpt, spc=spc, recs=recs):
      lrs = jnp.asarray([10.0 ** (k / per_decade) for k in ks_now],
                        jnp.float32)
      t0 = time.time()
      out = jax.device_get(grid(lrs, batch_size=bsz, n_ckpt=n_ckpt,
                                steps_per_ckpt=spc))
      for j, k in enumerate(ks_now):
        recs[k] = dict(
            lr=float(10.0 ** (k / per_decade)),
            train_curve=np.asarray(out[0][j], float),
            eval_curve=np.asarray(out[1][j], float),
            final_loss=float(out[2][j]), test_loss=float(out[3][j]),
            test_acc=float(out[4][j]))
      return time.time() - t0

    dt = do_grid(ks)
    for _ in range(cfg['max_ext']):
      kk = sorted(recs)
      fl = finite_or_inf([recs[k]['final_loss'] for k in kk])
      i = int(np.argmin(fl))
      if not np.isfinite(fl[i]):
        break
      if i == 0:
        new = list(range(kk[0] - n_lr, kk[0]))
      elif i == len(kk) - 1:
        new = list(range(kk[-1] + 1, kk[-1] + 1 + n_lr))
      else:
        break
      log(f'  {opt_name} B={bsz}: best LR at the grid edge, extending')
      dt += do_grid(new)
    kk = sorted(recs)
    lr_grid = np.array([recs[k]['lr'] for k in kk])
    fl = finite_or_inf([recs[k]['final_loss'] for k in kk])
    i = int(np.argmin(fl))
    xv, yv, refined = parabola_argmin(np.log10(lr_grid), np.log(fl), i)
    yv = float(np.exp(yv))
    per_b[bsz] = dict(
        steps=steps, n_ckpt=n_ckpt, steps_per_ckpt=spc,
        lrs=lr_grid.tolist(), ks=kk, runs=[recs[k] for k in kk],
        best_idx_loss=i, best_lr_loss=10.0 ** xv,
        best_lr_loss_grid=float(lr_grid[i]), best_final_loss=float(fl[i]),
        best_final_loss_parabola=yv, loss_refined=refined,
        loss_at_edge=bool(i in (0, len(kk) - 1)), seconds=dt)
    centre_k = int(round(xv * per_decade))
    log(f'  {opt_name} B={bsz:5d}: {len(kk)} LRs, {dt:6.1f}s, best LR '
        f'{10 ** xv:.3g} (grid {lr_grid[i]:.3g}), final loss {fl[i]:.4f}')
  return per_b


def _steps_criterion(cfg, opt_name, per_b, loss0):
  """Best LR by the steps to a target loss; returns ``(target, reach, steps_fit)``."""
  bs_list = list(cfg['batch_sizes'])
  reach = {b: float(np.nanmin([np.nanmin(np.where(np.isfinite(r['eval_curve']),
                                                  r['eval_curve'], np.nan))
                               if np.isfinite(r['eval_curve']).any()
                               else np.nan for r in per_b[b]['runs']]))
           for b in bs_list}
  worst = sorted(reach.values(), reverse=True)
  target = float(worst[1] if len(worst) > 2 else worst[0]) * 1.02
  for bsz in bs_list:
    pb = per_b[bsz]
    st = np.array([steps_to_target(r['eval_curve'], loss0,
                                   pb['steps_per_ckpt'], target)
                   for r in pb['runs']])
    pb['steps_to_target'] = st.tolist()
    if np.isfinite(st).any() and np.all(st[np.isfinite(st)] > 0):
      logs = np.log(finite_or_inf(st))
      i = int(np.argmin(logs))
      xv, yv, refined = parabola_argmin(np.log10(pb['lrs']), logs, i)
      pb.update(best_idx_steps=i, best_lr_steps=10.0 ** xv,
                best_steps=float(min(np.exp(yv), st[i])),
                steps_refined=refined,
                steps_at_edge=bool(i in (0, len(st) - 1)))
    else:
      pb.update(best_idx_steps=None, best_lr_steps=float('nan'),
                best_steps=float('nan'), steps_refined=False,
                steps_at_edge=False)
  reached = [b for b in bs_list if np.isfinite(per_b[b]['best_steps'])]
  steps_fit = None
  if len(reached) >= 2:
    s_arr = np.array([per_b[b]['best_steps'] for b in reached])
    e_arr = s_arr * np.array(reached, float)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      sf = scaling.b_noise_from_steps(s_arr, e_arr)
    steps_fit = dict(b_noise=sf.b_noise, s_min=sf.s_min, e_min=sf.e_min,
                     batch_sizes=reached,
                     warnings=[str(w.message) for w in caught])
  log(f'  {opt_name}: target loss {target:.4f} reached by B={reached}; '
      f'B_noise from steps: '
      f'{steps_fit["b_noise"] if steps_fit else float("nan"):.4g}')
  return target, reach, steps_fit


def _autowu_at(cfg, opt_name, bsz, autowu, n_train, grid_best):
  """AutoWU at one batch size (``autowu(**static)``: the bound ``autowu_run``)."""
  total = max(cfg['examples'] // bsz, cfg['autowu_min_steps'])
  n_ckpt = min(cfg['n_ckpt'], total)
  spc = total // n_ckpt
  t0 = time.time()
  out = jax.device_get(autowu(
      batch_size=bsz, n_ckpt=n_ckpt, steps_per_ckpt=spc,
      total_steps=total, steps_per_epoch=min(n_train // bsz, total)))
  dt = time.time() - t0
  reason = int(out['reason'])
  a = dict(
      total_steps=total, examples=total * bsz, steps_per_ckpt=spc,
      switch_step=int(out['switch_step']),
      restart_lr=float(out['restart_lr']), reason=reason,
      reason_name=optax_autolr.SWITCH_REASONS[reason],
      final_loss=float(out['final_loss']),
      test_loss=float(out['test_loss']), test_acc=float(out['test_acc']),
      train_curve=np.asarray(out['train_curve'], float),
      eval_curve=np.asarray(out['eval_curve'], float),
      lr_curve=np.asarray(out['lr_curve'], float), seconds=dt)
  log(f'  {opt_name} B={bsz:5d} AutoWU: {total} steps, {dt:5.1f}s, '
      f'switch {a["switch_step"]} ({a["reason_name"]}), restart LR '
      f'{a["restart_lr"]:.3g} (grid best {grid_best:.3g})')
  return a


def _noise_scale(cfg, opt_name, per_b, reference):
  """B_simple along a reference run (``reference(lr, key, **static)``)."""
  rb = cfg['ref_batch'] if cfg['ref_batch'] in per_b else cfg['batch_sizes'][0]
  ref_lr = per_b[rb]['best_lr_loss']
  steps = cfg['examples'] // rb
  npts = cfg['ns_points']
  t0 = time.time()
  _, ev_c, stats = jax.device_get(reference(
      jnp.float32(ref_lr), jax.random.key(SEED + 2), batch_size=rb,
      n_points=npts, steps_per_point=steps // npts, ns_batch=cfg['ns_batch'],
      ns_k=cfg['ns_k'], ns_reps=cfg['ns_reps']))
  g2 = np.asarray(stats.g2, np.float64).mean(axis=1)
  tr = np.asarray(stats.trace_sigma, np.float64).mean(axis=1)
  b_pts = [float(scaling.b_simple(scaling.NoiseStats(g, t)))
           for g, t in zip(g2, tr)]
  b_pool = float(scaling.b_simple(scaling.NoiseStats(g2.mean(), tr.mean())))
  noise = dict(
      ref_batch=rb, ref_lr=ref_lr, ns_batch=cfg['ns_batch'],
      ns_k=cfg['ns_k'], ns_reps=cfg['ns_reps'],
      at_steps=[(p + 1) * (steps // npts) for p in range(npts)],
      eval_loss=np.asarray(ev_c, float).tolist(), g2=g2.tolist(),
      trace_sigma=tr.tolist(), b_simple=b_pts,
      b_simple_mean=float(np.mean(b_pts)),
      b_simple_min=float(np.min(b_pts)), b_simple_max=float(np.max(b_pts)),
      b_simple_pooled=b_pool, seconds=time.time() - t0)
  log(f'  {opt_name}: B_simple at {noise["at_steps"]}: '
      f'{np.round(b_pts, 1).tolist()}')
  return noise


def run_experiment(cfg):
  """Trains everything of ``cfg`` (``FULL`` / ``QUICK``); returns ``(results, meta)``."""
  t_start = time.time()
  ds = load_dataset('fashion_mnist')
  n_train = ds.train_x.shape[0]
  x = normalize_images(ds.train_x)
  y = jnp.asarray(ds.train_y, jnp.int32)
  xt = normalize_images(ds.test_x)
  yt = jnp.asarray(ds.test_y, jnp.int32)
  xt, yt = xt[:cfg['n_test']], yt[:cfg['n_test']]
  log(f'data: {ds.source}, train {tuple(x.shape)}, test {tuple(xt.shape)}')

  # Example order: one permutation of the training set per epoch.
  bs_list = list(cfg['batch_sizes'])
  max_examples = max(max(cfg['examples'], cfg['autowu_min_steps'] * b)
                     for b in bs_list)
  n_epochs = -(-max_examples // n_train)
  key = jax.random.key(SEED)
  idx = jnp.concatenate([
      jax.random.permutation(jax.random.fold_in(key, e), n_train)
      for e in range(n_epochs)]).astype(jnp.int32)
  data = (x, y, idx)
  sub = np.random.default_rng(SEED + 1).permutation(n_train)
  curve_set = (x[sub[:cfg['eval_curve']]], y[sub[:cfg['eval_curve']]])
  final_sel = sub[cfg['eval_curve']:cfg['eval_curve'] + cfg['eval_final']]
  final_set = (x[final_sel], y[final_sel])
  test_set = (xt, yt)

  graphdef, params0 = build_model(cfg['hidden'])
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params0))
  grid_run, autowu_run, reference_run, eval_fn = make_runs(graphdef)
  loss0 = float(eval_fn(params0, *curve_set)[0])
  log(f'MLP hidden={cfg["hidden"]} ({n_params} params), initial loss '
      f'{loss0:.4f}')
  sets = (data, curve_set, final_set, test_set)

  results = {}
  timings = {}
  for opt_name, (b1, b2, centre0) in OPTIMIZERS.items():
    t_opt = time.time()
    b1a, b2a = jnp.float32(b1), jnp.float32(b2)
    per_b = _grid_search(
        cfg, opt_name, centre0,
        lambda lrs, b1=b1a, b2=b2a, **kw: grid_run(params0, lrs, b1, b2, *sets,
                                                   **kw))
    target, reach, steps_fit = _steps_criterion(cfg, opt_name, per_b, loss0)
    for bsz in bs_list:
      per_b[bsz]['autowu'] = _autowu_at(
          cfg, opt_name, bsz, functools.partial(autowu_run, params0, b1a, b2a, *sets),
          n_train, per_b[bsz]['best_lr_loss'])
    noise = _noise_scale(
        cfg, opt_name, per_b,
        lambda lr, key, b1=b1a, b2=b2a, **kw: reference_run(
            params0, lr, b1, b2, data, curve_set, key, **kw))
    bl = [per_b[b]['best_lr_loss'] for b in bs_list]
    bsteps = [per_b[b]['best_lr_steps'] for b in bs_list]
    bauto = [per_b[b]['autowu']['restart_lr'] for b in bs_list]
    results[opt_name] = dict(
        b1=b1, b2=b2, per_batch=per_b, target=target, reach=reach,
        fits_loss=fit_models(bs_list, bl), fits_steps=fit_models(bs_list, bsteps),
        fits_autowu=fit_models(bs_list, bauto), steps_fit=steps_fit,
        noise=noise,
        slope_loss=loglog_slope(bs_list, bl),
        slope_steps=loglog_slope(bs_list, bsteps),
        slope_autowu=loglog_slope(bs_list, bauto))
    timings[opt_name] = time.time() - t_opt
    log(f'{opt_name} done in {timings[opt_name]:.0f}s')

  meta = dict(n_params=n_params, loss0=loss0, n_train=n_train,
              data_source=ds.source, timings=timings,
              wall_seconds=time.time() - t_start)
  return results, meta


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------



def to_jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return to_jsonable(obj.tolist())
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if math.isfinite(v) else str(v)
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def plot(results, cfg, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(results)
  fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 10),
                           squeeze=False)
  bs = np.array(cfg['batch_sizes'], float)
  bb = np.geomspace(bs.min() / 2, bs.max() * 2, 200)
  laws = {'surge': (scaling.adam_optimal_lr, '-', 'surge (Li et al.)'),
          'sgd_alpha1': (lambda b, **k: scaling.sgd_optimal_lr(b, **k), '--',
                         'SGD form, alpha=1'),
          'sgd_alpha0.5': (None, ':', 'SGD form, alpha=0.5')}
  for col, name in enumerate(names):
    r = results[name]
    pb = r['per_batch']
    ax = axes[0, col]
    bl = np.array([pb[b]['best_lr_loss'] for b in cfg['batch_sizes']])
    bst = np.array([pb[b]['best_lr_steps'] for b in cfg['batch_sizes']])
    ba = np.array([pb[b]['autowu']['restart_lr'] for b in cfg['batch_sizes']])
    near = np.array([pb[b]['near_opt'] for b in cfg['batch_sizes']])
    ax.errorbar(bs, bl, yerr=[np.maximum(bl - near[:, 0], 0),
                              np.maximum(near[:, 1] - bl, 0)],
                fmt='o', color='C0', ms=8, capsize=3,
                label=f'best LR, final loss (bars: loss within '
                      f'{NEAR_TOL:.0%} of best)')
    ax.plot(bs, bst, 's', mfc='none', color='C1', ms=8,
            label=f'best LR, steps to loss {r["target"]:.3f}')
    ax.plot(bs, ba, '^', color='C2', ms=8, label='AutoWU restart LR')
    for key, (fn, ls, label) in laws.items():
      f = r['fits_loss'][key]
      if f is None:
        continue
      if key == 'surge':
        yy = scaling.adam_optimal_lr(bb, lr_max=f['lr_max'],
                                     b_noise=f['b_noise'])
      else:
        alpha = 1.0 if key == 'sgd_alpha1' else 0.5
        yy = f['lr_max'] / (1 + f['b_noise'] / bb) ** alpha
      ax.plot(bb, yy, ls, color='C0',
              label=f'{label} fit: B_noise={f["b_noise"]:.3g}, '
                    f'RMSE={f["rmse_log"]:.3f}')
    fa = r['fits_autowu']['surge']
    if fa is not None:
      ax.plot(bb, scaling.adam_optimal_lr(bb, lr_max=fa['lr_max'],
                                          b_noise=fa['b_noise']),
              '-', color='C2', lw=1,
              label=f'surge fit to AutoWU: B_noise={fa["b_noise"]:.3g}')
    n = r['noise']
    ax.axvspan(max(n['b_simple_min'], bb[0]), min(n['b_simple_max'], bb[-1]),
               color='grey', alpha=0.15)
    ax.axvline(n['b_simple_mean'], color='grey', ls='-.',
               label=f'B_simple (mean {n["b_simple_mean"]:.3g}, range shaded)')
    sf = r['steps_fit']
    if sf is not None and sf['b_noise'] > 0:
      ax.axvline(sf['b_noise'], color='C1', ls=':',
                 label=f'B_noise from steps/examples: {sf["b_noise"]:.3g}')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlim(bb[0], bb[-1])
    ax.set_xlabel('batch size B')
    ax.set_ylabel('learning rate')
    ax.set_title(f'{OPT_LABELS[name]}: best LR vs B')
    ax.legend(fontsize=7, loc='best')
    ax.grid(True, which='both', alpha=0.3)

    ax = axes[1, col]
    cmap = plt.get_cmap('viridis')
    for j, b in enumerate(cfg['batch_sizes']):
      d = pb[b]
      fl = np.array([run['final_loss'] for run in d['runs']])
      c = cmap(j / max(1, len(cfg['batch_sizes']) - 1))
      ax.plot(d['lrs'], np.where(np.isfinite(fl), fl, np.nan), '.-', color=c,
              label=f'B={b}')
      ax.plot(d['best_lr_loss'], d['best_final_loss_parabola'], '*', color=c,
              ms=10)
    ax.set_xscale('log')
    ax.set_yscale('log')
    lo = min(min(run['final_loss'] for run in pb[b]['runs']
                 if math.isfinite(run['final_loss']))
             for b in cfg['batch_sizes'])
    ax.set_ylim(lo * 0.9, min(3.0, lo * 8))
    ax.set_xlabel('learning rate (constant)')
    ax.set_ylabel(f'training loss after {cfg["examples"]} examples')
    ax.set_title(f'{OPT_LABELS[name]}: final loss vs LR (* = parabola min)')
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


NEAR_TOL = 0.05  # "near-optimal" = final loss within 5% of the best


def near_optimal(d, tol=NEAR_TOL):
  """Smallest and largest grid LR whose final loss is within tol of the best."""
  fl = finite_or_inf([run['final_loss'] for run in d['runs']])
  lrs = np.asarray(d['lrs'], float)
  ok = fl <= fl.min() * (1 + tol)
  return [float(lrs[ok].min()), float(lrs[ok].max())]


def derive(results, cfg):
  """Render-time quantities (also valid on results re-read from JSON)."""
  bs = list(cfg['batch_sizes'])
  half = len(bs) // 2
  for r in results.values():
    pb = r['per_batch']
    for b in bs:
      pb[b]['near_opt'] = near_optimal(pb[b])
    bl = [pb[b]['best_lr_loss'] for b in bs]
    bst = [pb[b]['best_lr_steps'] for b in bs]
    r['slopes'] = dict(
        loss_low=loglog_slope(bs[:half], bl[:half]),
        loss_high=loglog_slope(bs[half:], bl[half:]),
        steps_low=loglog_slope(bs[:half], bst[:half]),
        steps_high=loglog_slope(bs[half:], bst[half:]),
        low_range=[bs[0], bs[half - 1]], high_range=[bs[half], bs[-1]])


def best_fit_name(fits):
  valid = {k: v for k, v in fits.items() if v is not None}
  if not valid:
    return None, valid
  return min(valid, key=lambda k: valid[k]['rmse_log']), valid


def fit_verdict(fits):
  best, valid = best_fit_name(fits)
  s = fits.get('surge')
  rel = [v['rmse_log'] for k, v in valid.items() if k != 'surge']
  if s is None or not rel:
    return 'not enough points to compare the laws'
  if s['rmse_log'] < 0.8 * min(rel):
    return 'the surge law fits clearly better than both SGD forms'
  if s['rmse_log'] > 1.25 * min(rel):
    return f'an SGD form ({best}) fits clearly better than the surge law'
  return ('the surge law and the SGD forms fit about equally well (RMSE '
          'within 25% of each other), so these points do not discriminate '
          'between them')


def decline_info(r, cfg):
  """Where the best LR (final loss) peaks and whether it falls after it."""
  bs = list(cfg['batch_sizes'])
  pb = r['per_batch']
  bl = np.array([pb[b]['best_lr_loss'] for b in bs])
  imax = int(np.nanargmax(bl))
  info = dict(imax=imax, b_peak=bs[imax], lr_peak=float(bl[imax]),
              lr_last=float(bl[-1]), factor=float(bl[imax] / bl[-1]),
              significant=False)
  if imax < len(bs) - 1:
    lo_peak = pb[bs[imax]]['near_opt'][0]
    hi_last = pb[bs[-1]]['near_opt'][1]
    info['significant'] = bool(hi_last < lo_peak)
  return info


def conclusion(name, r, cfg):
  """Plain-language summary computed from the numbers."""
  bs = list(cfg['batch_sizes'])
  pb = r['per_batch']
  sl = r['slopes']
  lines = []
  bl = np.array([pb[b]['best_lr_loss'] for b in bs])
  dec = decline_info(r, cfg)
  text = (f'Final-loss criterion: the best LR goes from {fmt(bl[0])} at '
          f'B={bs[0]} to a maximum of {fmt(dec["lr_peak"])} at '
          f'B={dec["b_peak"]}; log-log slope {sl["loss_low"]:+.2f} over '
          f'B={sl["low_range"][0]}-{sl["low_range"][1]} and '
          f'{sl["loss_high"]:+.2f} over B={sl["high_range"][0]}-'
          f'{sl["high_range"][1]} (surge law: +0.5 well below B_noise, -0.5 '
          f'well above; SGD law alpha=1: +1 then 0; alpha=0.5: +0.5 then 0).')
  if dec['imax'] == len(bs) - 1:
    text += (f' It is still highest at the largest batch size ({bs[-1]}): '
             f'no decrease (no surge) in the measured range.')
  else:
    n_after = len(bs) - 1 - dec['imax']
    text += (f' Beyond B={dec["b_peak"]} ({n_after} batch size'
             f'{"s" if n_after > 1 else ""}) it ends at {fmt(dec["lr_last"])} '
             f'at B={bs[-1]} ({dec["factor"]:.1f}x lower), ')
    if dec['significant']:
      text += ('and the near-optimal LR ranges (final loss within '
               f'{NEAR_TOL:.0%} of the best) of B={dec["b_peak"]} and '
               f'B={bs[-1]} do not overlap: a decrease larger than the '
               f'run-to-run flatness of the loss-vs-LR curves.')
    else:
      text += ('but the near-optimal LR ranges (final loss within '
               f'{NEAR_TOL:.0%} of the best) of B={dec["b_peak"]} and '
               f'B={bs[-1]} overlap, so this decrease is not resolved by a '
               f'single run.')
  lines.append(text)
  bst = np.array([pb[b]['best_lr_steps'] for b in bs], float)
  if np.isfinite(bst).sum() >= 2:
    j = int(np.nanargmax(bst))
    edges = [b for b in bs if pb[b].get('steps_at_edge')]
    lines.append(
        f'Steps-to-target criterion (target loss {r["target"]:.3f}): best LR '
        f'from {fmt(bst[0])} at B={bs[0]}, largest {fmt(bst[j])} at '
        f'B={bs[j]}; slopes {sl["steps_low"]:+.2f} / '
        f'{sl["steps_high"]:+.2f} over the same halves'
        + (f'; argmin at a grid edge for B={edges}' if edges else '') + '.')
  for label, fits in (('final-loss best LRs', r['fits_loss']),
                      ('steps-to-target best LRs', r['fits_steps'])):
    best, valid = best_fit_name(fits)
    if not valid:
      continue
    rm = ', '.join(f'{k} {v["rmse_log"]:.3f}' for k, v in valid.items())
    s = fits['surge']
    if s is None:
      where = ''
    elif s['b_noise'] > bs[-1]:
      where = (f'; the surge fit peaks at B_noise={fmt(s["b_noise"])}, beyond '
               f'the largest batch size')
    elif s['b_noise'] < bs[0]:
      where = (f'; the surge fit peaks at B_noise={fmt(s["b_noise"])}, below '
               f'the smallest batch size')
    else:
      n_beyond = sum(b > s['b_noise'] for b in bs)
      where = (f'; the surge fit peaks at B_noise={fmt(s["b_noise"])}, with '
               f'{n_beyond} measured batch size{"s" if n_beyond != 1 else ""} '
               f'beyond it')
    lines.append(f'Fits to the {label}: RMSE (ln) {rm}; '
                 f'{fit_verdict(fits)}{where}.')
  sf = r['steps_fit']
  n = r['noise']
  s = r['fits_loss']['surge']
  est = {'surge fit (final loss)': s['b_noise'] if s else float('nan'),
         'steps/examples': sf['b_noise'] if sf else float('nan'),
         'B_simple (mean)': n['b_simple_mean']}
  good = [v for v in est.values() if np.isfinite(v) and v > 0]
  spread = max(good) / min(good) if len(good) >= 2 else float('nan')
  lines.append(
      'Noise-scale estimates: ' + ', '.join(f'{k} {fmt(v)}'
                                          for k, v in est.items())
      + f' (B_simple range {fmt(n["b_simple_min"])}-{fmt(n["b_simple_max"])} '
      f'over {len(n["b_simple"])} points of the B={n["ref_batch"]} run); '
      f'largest/smallest = {fmt(spread, ".1f")}.')
  ratios = np.array([pb[b]['autowu']['restart_lr'] / pb[b]['best_lr_loss']
                     for b in bs])
  fa = r['fits_autowu']['surge']
  lines.append(
      f'AutoWU restart LR / grid-best LR: geometric mean '
      f'{fmt(np.exp(np.mean(np.log(ratios))))}, range {fmt(ratios.min())}-'
      f'{fmt(ratios.max())}; log-log slope of the restart LRs vs B '
      f'{r["slope_autowu"]:+.2f} against {r["slope_loss"]:+.2f} for the grid'
      + (f'; surge fit to the restart LRs: B_noise {fmt(fa["b_noise"])}, '
         f'RMSE {fa["rmse_log"]:.3f}' if fa else '') + '.')
  return lines


def write_markdown(results, meta, cfg, args, path, png_name):
  mi = meta['machine']
  cmd = meta['command']
  L = report.header(
      'Surge experiment: best learning rate vs batch size (Li et al. 2024)',
      'QUICK smoke run: tiny budget, numbers are not meaningful.'
      if args.quick else None)
  L.append(report.command_line(cmd))
  L.append(f'- Date: {meta["date"]}')
  L.append(report.machine_line(mi, 'shared with other jobs', flax=False))
  L.append(f'- Total wall time: {meta["wall_seconds"]:.0f} s '
           f'({meta["wall_seconds"] / 60:.1f} min)')
  if meta.get('rendered'):
    L.append(f'- Tables, figure and text re-rendered (no training) from the '
             f'raw numbers of that run with `{meta["rendered"]["command"]}` '
             f'on {meta["rendered"]["date"]}')
  L.append(f'- Figure: `{png_name}`; raw numbers: `surge.json`\n')
  L.append('## Setup\n')
  L.append(
      f'- Fashion-MNIST ({meta["data_source"]}), pixels scaled to [0, 1]; '
      f'MLP 784-{"-".join(map(str, cfg["hidden"]))}-10 (ReLU, '
      f'{meta["n_params"]} parameters), one fixed initialisation (seed '
      f'{SEED}), softmax cross-entropy, no weight decay.')
  L.append(
      f'- Constant learning rate from the first step (no warmup, no decay). '
      f'Every run sees the same {cfg["examples"]} examples '
      f'({cfg["examples"] / meta["n_train"]:.2f} epochs) in the same order '
      f'(one seeded permutation per epoch), so B={cfg["batch_sizes"][0]} '
      f'takes {cfg["examples"] // cfg["batch_sizes"][0]} steps and '
      f'B={cfg["batch_sizes"][-1]} takes '
      f'{cfg["examples"] // cfg["batch_sizes"][-1]}.')
  L.append(
      f'- LR grid: {cfg["n_lr"]} values, {cfg["per_decade"]} per decade, on '
      f'the lattice 10^(k/{cfg["per_decade"]}), centred on the previous '
      f'batch size\'s best LR, extended (up to {cfg["max_ext"]}x) when the '
      f'best final loss is at an edge. All LRs of a batch size train in one '
      f'jitted lax.scan, vmapped over the grid.')
  L.append(
      f'- "Final loss": loss on a fixed subset of {cfg["eval_final"]} '
      f'training examples after the budget. Curves: {cfg["n_ckpt"]} '
      f'checkpoints (or one per step when fewer steps), loss on another fixed '
      f'subset of {cfg["eval_curve"]} training examples, plus the block mean '
      f'of the minibatch losses (in the JSON).')
  L.append(
      '- Best LR (a) = argmin of the final loss, (b) = argmin of the steps '
      'needed for the checkpoint loss to reach a target (linear '
      'interpolation between checkpoints); target = 1.02 x the second-worst '
      'best-reachable loss over batch sizes, so all but (at most) one batch '
      'size reach it. Both argmins are refined by the vertex of the parabola '
      'in log10 LR through the grid argmin and its two neighbours '
      '(of log loss, resp. log steps).')
  L.append(
      '- Fits: `fit_surge`, `fit_sgd_form(alpha=1)`, `fit_sgd_form(alpha=0.5)`'
      ' (each 2 parameters, least squares in log LR; RMSE in natural log). '
      '`b_noise_from_steps` on (S, E=S*B) at the steps-criterion optimum.')
  L.append(
      f'- B_simple: reference run at B={cfg["ref_batch"]} with its best LR; '
      f'after each of {cfg["ns_points"]} equal segments, '
      f'`noise_scale_value_and_grad` with k={cfg["ns_k"]} micro-batches of '
      f'a batch of {cfg["ns_batch"]}, g2 and tr(Sigma) averaged over '
      f'{cfg["ns_reps"]} random batches, then `b_simple`.')
  L.append(
      f'- AutoWU: `optax.chain(optax.adam(1.0, b1, b2), autowu(total_steps, '
      f'steps_per_epoch=60000//B))` with the library defaults (exp warmup '
      f'1e-5 -> 1, max warmup 0.5 T, divergence guard, cosine decay); '
      f'total_steps = max(examples/B, {cfg["autowu_min_steps"]}), i.e. '
      f'B >= {cfg["examples"] // cfg["autowu_min_steps"] * 2} get a longer '
      f'budget than the grid (too few steps otherwise for the warmup test). '
      f'Ratio = AutoWU restart LR / grid-best LR (final-loss criterion).\n')

  for name, r in results.items():
    pb = r['per_batch']
    L.append(f'## {OPT_LABELS[name]}\n')
    L.append(f'Target loss for the steps criterion: {r["target"]:.4f}.\n')
    L += report.table(
        ['B', 'steps', 'LRs tried', 'best LR (final loss)',
         f'near-optimal LRs (loss within {NEAR_TOL:.0%})',
         'best LR (steps to target)', 'steps to target', 'final loss at best',
         'test acc at best', 'AutoWU restart LR (switch step, reason)',
         'AutoWU final loss', 'ratio AutoWU/grid'],
        [_batch_row(b, pb[b]) for b in cfg['batch_sizes']])
    L.append('')
    L.append('Fits (lr_max, B_noise, RMSE of log LR, R^2 of log LR):\n')
    L += report.table(
        ['data', 'model', 'lr_max', 'B_noise', 'RMSE (ln)', 'R^2', 'note'],
        [_fit_row(data_name, model, f)
         for data_name, fits in (('best LR, final loss', r['fits_loss']),
                                 ('best LR, steps to target', r['fits_steps']),
                                 ('AutoWU restart LR', r['fits_autowu']))
         for model, f in fits.items()])
    L.append('')
    sf = r['steps_fit']
    if sf:
      note = ('; warning: ' + '; '.join(sf['warnings'])) if sf['warnings'] else ''
      L.append(f'B_noise from steps/examples (`b_noise_from_steps`, B in '
               f'{sf["batch_sizes"]}): **{fmt(sf["b_noise"])}** (S_min '
               f'{fmt(sf["s_min"])}, E_min {fmt(sf["e_min"])}){note}.\n')
    n = r['noise']
    pts = ', '.join(f'{s}: {fmt(v)}' for s, v in zip(n['at_steps'],
                                                    n['b_simple']))
    L.append(f'B_simple along the reference run (B={n["ref_batch"]}, LR '
             f'{fmt(n["ref_lr"])}; step: value): {pts}. Mean '
             f'**{fmt(n["b_simple_mean"])}**, range {fmt(n["b_simple_min"])}'
             f'-{fmt(n["b_simple_max"])}, ratio of pooled averages '
             f'{fmt(n["b_simple_pooled"])}.\n')
    L.append('Summary (generated from the numbers):\n')
    for line in conclusion(name, r, cfg):
      L.append(f'- {line}')
    L.append('')
  L.append('## Conclusion\n')
  L.append(overall_conclusion(results, cfg))
  L.append('')
  report.write(path, L)


def _batch_row(b, d):
  """The cells of one batch size in the per-optimizer table."""
  a = d['autowu']
  flag_l = ' (edge)' if d['loss_at_edge'] else ''
  flag_s = ' (edge)' if d.get('steps_at_edge') else ''
  return [
      b, d['steps'], f'{fmt(min(d["lrs"]))}-{fmt(max(d["lrs"]))} ({len(d["lrs"])})',
      f'{fmt(d["best_lr_loss"])}{flag_l}',
      f'{fmt(d["near_opt"][0])}-{fmt(d["near_opt"][1])}',
      f'{fmt(d["best_lr_steps"])}{flag_s}', fmt(d['best_steps'], '.0f'),
      fmt(d['best_final_loss'], '.4f'),
      fmt(d['runs'][d['best_idx_loss']]['test_acc'], '.4f'),
      f'{fmt(a["restart_lr"])} ({a["switch_step"]}/{a["total_steps"]}, '
      f'{a["reason_name"]})', fmt(a['final_loss'], '.4f'),
      fmt(a['restart_lr'] / d['best_lr_loss'], '.2f')]


def _fit_row(data_name, model, f):
  if f is None:
    return [data_name, model, '-', '-', '-', '-', '<3 points']
  note = '; '.join(w.split(':')[0] for w in f['warnings'])
  return [data_name, model, fmt(f['lr_max']), fmt(f['b_noise']),
          f'{f["rmse_log"]:.3f}', fmt(f['r2_log'], '.2f'), note]


def overall_conclusion(results, cfg):
  bs = list(cfg['batch_sizes'])
  parts = []
  for name, r in results.items():
    s = r['fits_loss']['surge']
    if s is None:
      parts.append(f'**{OPT_LABELS[name]}**: not enough data to fit.')
      continue
    dec = decline_info(r, cfg)
    sl = r['slopes']
    best, _ = best_fit_name(r['fits_loss'])
    if dec['imax'] == len(bs) - 1:
      shape = (f'the best LR keeps growing up to B={bs[-1]} (no surge in the '
               f'range)')
    elif dec['significant']:
      shape = (f'the best LR grows up to B={dec["b_peak"]} and then falls '
               f'{dec["factor"]:.1f}x by B={bs[-1]}, beyond the '
               f'near-optimal range: a surge')
    else:
      shape = (f'the best LR grows up to about B={dec["b_peak"]} and then '
               f'levels off (B={bs[-1]} is {dec["factor"]:.1f}x lower, within '
               f'the near-optimal range): a decrease is suggested but not '
               f'resolved')
    surge_seen = dec['significant'] and best == 'surge'
    parts.append(
        f'**{OPT_LABELS[name]}**: {shape}; slope {sl["loss_low"]:+.2f} for '
        f'small B, {sl["loss_high"]:+.2f} for large B. Best-fitting law: '
        f'{best}; {fit_verdict(r["fits_loss"])}. Verdict: the surge '
        + ('**is** observed.' if surge_seen else
           '**is not** clearly observed in this setting.'))
  caveat = (
      'Caveats: one seed and one initialisation, and the final loss of a '
      'constant-LR run is a single noisy iterate (see the near-optimal '
      'ranges: many loss-vs-LR curves are flat within a few % over a factor '
      '3-10 in LR); a fixed budget of examples (not steps) gives large '
      f'batches few steps ({cfg["examples"] // bs[-1]} at B={bs[-1]}), so '
      'their optimum mixes the noise-scale effect with the short horizon; '
      'the steps-to-target criterion can only use a loose target (the loss '
      'the second-worst batch size reaches), i.e. early training; the grid '
      f'spacing is 10^(1/{cfg["per_decade"]}) refined by a parabola; all '
      'three laws have 2 parameters, so their RMSEs are directly comparable.')
  return '\n\n'.join(parts + [caveat])


def _from_json_value(obj):
  if isinstance(obj, dict):
    return {k: _from_json_value(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_from_json_value(v) for v in obj]
  if obj in ('inf', '-inf', 'nan'):
    return float(obj)
  return obj


def load_results(path):
  """Reads a surge.json back into (results, meta) as the run produced them."""
  d = _from_json_value(json.loads(Path(path).read_text()))
  results = d['results']
  for r in results.values():
    r['per_batch'] = {int(b): v for b, v in r['per_batch'].items()}
  return results, d['meta']


def main(argv=None):
  """CLI entry point; a user error prints two lines and exits with status 2."""
  p = cli.ArgumentParser(prog='python -m experiments.surge',
                         description=__doc__.splitlines()[0])
  cli.add_output_flags(
      p, quick='tiny smoke run (3 batch sizes, 3 LRs, < 60 s)',
      out_dir='default: experiments/results (full run) or '
              '$TMPDIR/optax_autolr_surge_quick (--quick)',
      from_json='no training: re-render md/png/json from the raw numbers of '
                'a previous run (its surge.json)')
  args = p.parse_args(argv)
  with cli.usage_errors(p):
    return _main(args)


def _main(args):
  if args.from_json:
    try:
      results, meta = load_results(args.from_json)
      missing = {'config', 'command'} - set(meta)
      if missing:
        raise KeyError(', '.join(sorted(missing)))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise cli.UsageError(
          f'argument --from-json: {args.from_json} is not a surge.json of '
          f'this script ({type(e).__name__}: {e})') from None
  out = report.results_dir(args.out_dir, 'surge', args.quick)
  t0 = time.time()
  if args.from_json:
    cfg = meta['config']
    args.quick = '--quick' in meta['command']
    meta['rendered'] = dict(
        command=f'python -m experiments.surge --from-json {args.from_json}',
        date=report.date_now())
  else:
    cfg = dict(QUICK if args.quick else FULL)
    try:
      results, meta = run_experiment(cfg)
    except DatasetNotFoundError as e:
      raise cli.UsageError(e.brief) from None
    meta['machine'] = machine_info()
    meta['date'] = report.date_now()
    meta['command'] = 'python -m experiments.surge' + (
        ' --quick' if args.quick else '')
    meta['config'] = cfg
  derive(results, cfg)
  stem = 'surge'
  png = out / f'{stem}.png'
  plot(results, cfg, png)
  if not args.from_json:
    meta['wall_seconds'] = time.time() - t0
  with open(out / f'{stem}.json', 'w') as f:
    json.dump(to_jsonable(dict(meta=meta, results=results)), f, indent=1)
  write_markdown(results, meta, cfg, args, out / f'{stem}.md', png.name)
  log(f'wrote {out / stem}.{{md,png,json}} in {time.time() - t0:.0f}s')
  return results, meta


if __name__ == '__main__':
  main()
