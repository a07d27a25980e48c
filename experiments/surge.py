"""Surge, tested: does the best Adam LR rise and then fall with the batch size?

Tests the two claims of Li et al. 2024 ("Surge Phenomenon", arXiv 2405.14578;
SPEC.md section 3) on Fashion-MNIST, with the paper's criterion: the number of
steps a constant learning rate needs to bring the training loss down to a
target. For Adam the best LR should follow

    lr*(B) = lr_max / (0.5 * (sqrt(B_noise / B) + sqrt(B / B_noise))),

rising like sqrt(B) below the noise scale B_noise and falling like 1/sqrt(B)
far above it (claim 1), with B_noise growing as training proceeds, so the
peak moves to larger batches for later targets (claim 2). For SGD the best LR
follows lr_max / (1 + B_noise / B): it only saturates (the control).

Protocol (the numbers are in :data:`FULL`; ``--quick`` runs :data:`QUICK`):

* MLP 784 -> 128 -> 10 (the paper's first workload is a small CNN; at full
  batch, 60000 images, a CNN step is too slow for 2 CPU cores, so the MLP),
  constant LR, no weight decay, cross-entropy. Optimizers: Adam (0.9, 0.999),
  sign-like Adam (b1 = b2 = 0, the limit the paper's derivation is built on)
  and plain SGD.
* Batch sizes 64 ... 16384 and the full training set (60000). Per batch size
  and seed, a log-spaced LR grid (4 per decade) centred on the previous batch
  size's best LR, extended when the best is at an edge. All LRs of a grid
  train together (one jitted ``lax.scan`` vmapped over the LRs, the update
  being :func:`experiments.train.make_step`, the step of every experiment),
  in chunks until the fastest LR has reached the last target and twice its
  steps have passed, or a step cap.
* The loss is measured on a fixed subset of 4096 training images every
  ``spc`` steps; the steps to a target are interpolated linearly between
  measurements. Targets: early, middle and late in training (``targets``).
* Best LR per (batch size, seed, target): the grid argmin of the steps,
  refined by the vertex of a parabola in log LR through it and its
  neighbours. Seeds (init and data order) give its uncertainty: the standard
  error of the mean log LR; a bootstrap over seeds (every batch size
  resampled) gives intervals for the fits and the verdicts.
* Fits per target: the surge law and the SGD forms (alpha 1 and 0.5) to the
  mean best LRs; B_noise also from (steps, examples) to the target
  (:func:`optax_autolr.scaling.b_noise_from_steps`).
* B_simple: along a reference run per optimizer (``ref_batch``, its best LR
  at the middle target), measured with
  :func:`optax_autolr.scaling.noise_scale_value_and_grad` and read where
  the run crosses each target.
* Transfer: the best LR at one batch size predicted from another by
  :func:`optax_autolr.scaling.transfer_lr` (with B_simple) and by the linear
  and square-root rules, scored on the measured best LRs.

Run ``python -m experiments.surge`` (about an hour on 2 CPU cores; the runs
are cached in ``surge_runs.jsonl``, so it resumes where it stopped) or
``--quick`` (a smoke test, < 1 min, in a temp folder); ``--from-json`` /
``--report-only`` re-render from the raw numbers.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python experiments/surge.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cli, report, train
from experiments.compare import append_run, load_runs
from experiments.data import DatasetNotFoundError, load_dataset, normalize_images
from experiments.machine import machine_info
from experiments.models import make_model
from optax_autolr import scaling

FULL = dict(
    batch_sizes=(64, 256, 1024, 4096, 16384, 60000),
    targets=(0.8, 0.55, 0.45),   # training loss: early, middle, late
    seeds=(0, 1, 2),
    seeds_by_opt={"sgd": (0, 1)},  # The control: 2 seeds (CPU time).
    hidden=(128,),
    n_lr=5,                      # LRs per grid (4 per decade: one decade)
    per_decade=4,
    max_ext=3,                   # grid extensions when the best is at an edge
    cap_examples=2 ** 19,        # step cap: cap_min + cap_examples // B
    cap_min=250,
    evals=150,                   # loss measurements per capped run (at most)
    chunk=25,                    # measurements per jitted chunk
    eval_size=4096,
    ref_batch=1024, ns_batch=1024, ns_k=8, ns_reps=4, ns_points=24,
    bootstrap=400,
    subset=None,
)
QUICK = dict(
    batch_sizes=(64, 256, 1024),
    targets=(1.6, 1.2),
    seeds=(0, 1),
    hidden=(32,),
    n_lr=3,
    per_decade=2,
    max_ext=1,
    cap_examples=2 ** 13,
    cap_min=20,
    evals=20,
    chunk=10,
    eval_size=512,
    ref_batch=256, ns_batch=256, ns_k=4, ns_reps=1, ns_points=4,
    bootstrap=20,
    subset=(4096, 1000),
)
# name -> (optax factory of the LR, log10 of the LR the first grid is centred on).
OPTIMIZERS = {
    "adam": (lambda lr: optax.adam(lr, b1=0.9, b2=0.999), -2.5),
    "sign_adam": (lambda lr: optax.adam(lr, b1=0.0, b2=0.0), -3.0),
    "sgd": (optax.sgd, -0.5),
}
OPT_LABELS = {"adam": "Adam (b1=0.9, b2=0.999)", "sign_adam": "sign-like Adam (b1=b2=0)",
              "sgd": "SGD (control)"}
TARGET_NAMES = ("early", "middle", "late")
RULES = ("surge law, B_simple", "square root", "linear", "constant")

log = report.logger("surge", stream=sys.stderr)


# ----------------------------------------------------------------------------
# Training: a grid of LRs at one batch size, vmapped, in chunks.
# ----------------------------------------------------------------------------


class Workload:
  """The MLP, the data on device, and the jitted chunk of a vmapped LR grid."""

  def __init__(self, cfg: dict[str, Any]):
    ds = load_dataset("fashion_mnist", subset=cfg["subset"])
    self.source = ds.source
    self.x = normalize_images(ds.train_x)
    self.y = jnp.asarray(ds.train_y, jnp.int32)
    self.n = int(self.x.shape[0])
    sub = np.random.default_rng(12345).permutation(self.n)[:cfg["eval_size"]]
    self.eval_set = (self.x[sub], self.y[sub])
    self.hidden = tuple(cfg["hidden"])
    gd, p = nnx.split(make_model("mlp", nnx.Rngs(0), hidden=self.hidden))
    self.graphdef = gd
    self.n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(p))

  def init(self, seed: int):
    return nnx.split(make_model("mlp", nnx.Rngs(seed), hidden=self.hidden))[1]

  def loss(self, params, x, y):
    logits = nnx.merge(self.graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def order(self, seed: int, batch_size: int, steps: int) -> np.ndarray:
    """Example indices, ``[steps, batch_size]``: one permutation per epoch."""
    rng = np.random.default_rng(1000 + seed)
    need = steps * batch_size
    idx = np.concatenate([rng.permutation(self.n) for _ in range(-(-need // self.n))])
    return idx[:need].reshape(steps, batch_size).astype(np.int32)

  def chunk(self, opt: str, carry, lrs, idx):
    """Trains every LR over ``idx`` ``[evals, spc, B]``; returns carry, eval losses."""
    return _chunk(self.graphdef, opt, carry, lrs, idx, self.x, self.y, self.eval_set)

  def start(self, opt: str, lrs, seed: int):
    params = self.init(seed)
    state = jax.vmap(lambda lr: OPTIMIZERS[opt][0](lr).init(params))(lrs)
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(lrs), *a.shape)), params)
    return params, state


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chunk(graphdef, opt, carry, lrs, idx, x, y, eval_set):
  """:meth:`Workload.chunk`, with the data as arguments (not constants baked
  into every compiled shape)."""
  make_tx = OPTIMIZERS[opt][0]

  def loss(params, xb, yb):
    logits = nnx.merge(graphdef, params)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def one(lr, params, opt_state):
    step = train.make_step(lambda p, xb, yb: (loss(p, xb, yb), None), make_tx(lr))

    def inner(c, i):
      p, s, _, _ = step(*c, jnp.take(x, i, axis=0), jnp.take(y, i, axis=0))
      return (p, s), None

    def outer(c, ii):
      c, _ = jax.lax.scan(inner, c, ii)
      return c, loss(c[0], *eval_set)

    return jax.lax.scan(outer, (params, opt_state), idx)

  return jax.vmap(one)(lrs, *carry)


def first_crossing(curve: np.ndarray, target: float) -> float:
  """Fractional index at which ``curve`` first reaches ``<= target`` (linear
  between its points); ``inf`` when it never does."""
  c = np.asarray(curve, np.float64)
  ok = np.isfinite(c) & (c <= target)
  if not ok.any():
    return math.inf
  j = int(np.argmax(ok))
  if j == 0:
    return 0.0
  frac = (c[j - 1] - target) / (c[j - 1] - c[j]) if np.isfinite(c[j - 1]) else 1.0
  return float(j - 1 + frac)


def steps_to_target(curve: np.ndarray, loss0: float, spc: int, target: float) -> float:
  """First (linearly interpolated) step at which the measured loss <= target."""
  return spc * first_crossing(np.concatenate([[loss0], np.asarray(curve, np.float64)]), target)


def schedule(cfg: dict[str, Any], batch_size: int) -> tuple[int, int]:
  """``(cap, spc)``: the step cap of a run and the steps between measurements."""
  cap = cfg["cap_min"] + cfg["cap_examples"] // batch_size
  spc = max(1, cap // cfg["evals"])
  return cap, spc


def train_grid(wl: Workload, cfg: dict[str, Any], opt: str, batch_size: int, seed: int,
               ks: list[int]) -> dict[int, dict[str, Any]]:
  """Trains the LRs ``10**(k / per_decade)`` until the stopping rule; per k its curve."""
  cap, spc = schedule(cfg, batch_size)
  lrs = jnp.asarray([10.0 ** (k / cfg["per_decade"]) for k in ks], jnp.float32)
  order = wl.order(seed, batch_size, cap)
  carry, curves, steps = wl.start(opt, lrs, seed), [], 0
  last = cfg["targets"][-1]
  while steps < cap:
    n = min(cfg["chunk"] * spc, cap - steps) // spc * spc
    if n == 0:
      break
    idx = order[steps:steps + n].reshape(n // spc, spc, batch_size)
    carry, ev = wl.chunk(opt, carry, lrs, jnp.asarray(idx))
    curves.append(np.asarray(ev, np.float64))
    steps += n
    curve = np.concatenate(curves, axis=1)
    done = [np.isfinite(c).all() and (c <= last).any() for c in curve]
    first = [int(np.argmax(c <= last)) + 1 for c, d in zip(curve, done) if d]
    if first and steps >= 2 * min(first) * spc + spc:
      break
  curve = np.concatenate(curves, axis=1)
  return {k: dict(lr=float(lrs[j]), curve=curve[j].tolist(), spc=spc, steps=steps)
          for j, k in enumerate(ks)}


def parabola_argmin(xs: np.ndarray, ys: np.ndarray) -> tuple[float, bool]:
  """Vertex (in x) of the parabola through the argmin of ``ys`` and its neighbours.

  The grid point itself when the argmin is at an edge, a neighbour is not
  finite or the parabola is not convex; the vertex is clipped to the
  neighbours.
  """
  i = int(np.argmin(ys))
  if i == 0 or i == len(xs) - 1 or not np.isfinite(ys[i - 1:i + 2]).all():
    return float(xs[i]), False
  a = np.polyfit(xs[i - 1:i + 2], ys[i - 1:i + 2], 2)
  if not a[0] > 0:
    return float(xs[i]), False
  return float(np.clip(-a[1] / (2 * a[0]), xs[i - 1], xs[i + 1])), True


def best_of(runs: dict[int, dict[str, Any]], loss0: float, target: float, per_decade: int
            ) -> dict[str, Any]:
  """Best LR (log10, parabola-refined) and its steps to ``target``; ``at_edge``."""
  ks = sorted(runs)
  st = np.array([steps_to_target(runs[k]["curve"], loss0, runs[k]["spc"], target) for k in ks])
  if not np.isfinite(st).any():
    return dict(log_lr=math.nan, steps=math.inf, at_edge=False, refined=False,
                steps_per_lr=st.tolist())
  i = int(np.argmin(st))
  x, refined = parabola_argmin(np.array(ks, float) / per_decade, np.log(np.maximum(st, 0.5)))
  return dict(log_lr=x, steps=float(st[i]), at_edge=i in (0, len(ks) - 1) and len(ks) > 1,
              refined=refined, steps_per_lr=st.tolist())


# ----------------------------------------------------------------------------
# The sweep: every optimizer x batch size x seed, cached in surge_runs.jsonl.
# ----------------------------------------------------------------------------


def sweep_point(wl, cfg, opt, batch_size, seed, centre_k, loss0) -> dict[str, Any]:
  """One (optimizer, batch size, seed): the grid around ``centre_k``, extended."""
  n = cfg["n_lr"]
  ks = list(range(centre_k - n // 2, centre_k - n // 2 + n))
  t0 = time.perf_counter()
  runs = train_grid(wl, cfg, opt, batch_size, seed, ks)
  for _ in range(cfg["max_ext"]):
    kk = sorted(runs)
    steps = [np.array(best_of(runs, loss0, t, cfg["per_decade"])["steps_per_lr"])
             for t in cfg["targets"]]
    # Extend on a side when a reached target's best is at it (towards lower
    # LRs when no LR reaches even the first target: they all diverged).
    edges = {kk[int(np.argmin(st))] for st in steps if np.isfinite(st).any()}
    lo = kk[0] in edges or not np.isfinite(steps[0]).any()
    hi = kk[-1] in edges
    new = (list(range(kk[0] - 2, kk[0])) if lo else []) + (
        list(range(kk[-1] + 1, kk[-1] + 3)) if hi else [])
    if not new:
      break
    log(f"  {opt} B={batch_size} s{seed}: best at the grid edge, adding k={new}")
    runs.update(train_grid(wl, cfg, opt, batch_size, seed, new))
  return dict(opt=opt, batch_size=batch_size, seed=seed, loss0=loss0,
              runs={str(k): v for k, v in sorted(runs.items())},
              seconds=time.perf_counter() - t0)


def reference_point(wl, cfg, opt, lr, seed) -> dict[str, Any]:
  """B_simple along a run at ``ref_batch`` and ``lr`` (``ns_points`` measurements)."""
  b = cfg["ref_batch"]
  cap, _ = schedule(cfg, b)
  spp = max(1, cap // cfg["ns_points"])
  vg = scaling.noise_scale_value_and_grad(lambda p, batch: wl.loss(p, *batch), cfg["ns_k"])
  tx = OPTIMIZERS[opt][0](lr)
  step = train.make_step(lambda p, x, y: (wl.loss(p, x, y), None), tx)
  order = jnp.asarray(wl.order(seed, b, spp * cfg["ns_points"]).reshape(
      cfg["ns_points"], spp, b))
  key = jax.random.key(seed)

  @jax.jit
  def run(params):
    def inner(c, i):
      p, s, _, _ = step(*c, jnp.take(wl.x, i, axis=0), jnp.take(wl.y, i, axis=0))
      return (p, s), None

    def outer(c, ii):
      c, _ = jax.lax.scan(inner, c, ii)

      def rep(k):
        i = jax.random.choice(k, wl.n, (cfg["ns_batch"],), replace=False)
        return vg(c[0], (jnp.take(wl.x, i, axis=0), jnp.take(wl.y, i, axis=0)))[1]

      st = jax.lax.map(rep, jax.random.split(key, cfg["ns_reps"]))
      return c, (wl.loss(c[0], *wl.eval_set), st.g2.mean(), st.trace_sigma.mean())

    p0 = wl.init(seed)
    return jax.lax.scan(outer, (p0, tx.init(p0)), order)[1]

  t0 = time.perf_counter()
  loss, g2, tr = (np.asarray(a, np.float64) for a in jax.device_get(run(wl.init(seed))))
  return dict(opt=opt, batch_size=b, lr=float(lr), seed=seed, steps_per_point=spp,
              loss=loss.tolist(), g2=g2.tolist(), trace=tr.tolist(),
              b_simple=(tr / np.where(g2 > 0, g2, np.nan)).tolist(),
              seconds=time.perf_counter() - t0)


def sweep(cfg: dict[str, Any], runs_path: Path, *, max_minutes: float | None = None
          ) -> bool:
  """Trains every missing point of ``cfg`` (cached); True when nothing is left."""
  done = {r["key"]: r for r in load_runs(runs_path) if r.get("status") == "ok"}
  wl, t0 = None, time.perf_counter()
  mid = len(cfg["targets"]) // 2
  for opt, (_, centre) in OPTIMIZERS.items():
    centre_k = int(round(centre * cfg["per_decade"]))
    ref_lr = None
    for b in cfg["batch_sizes"]:
      for seed in _seeds(cfg, opt):
        key = json.dumps(dict(kind="grid", opt=opt, batch_size=b, seed=seed,
                              cfg=_cfg_key(cfg)), sort_keys=True)
        if key not in done:
          if max_minutes is not None and (time.perf_counter() - t0) / 60 >= max_minutes:
            log(f"--max-minutes {max_minutes:g} reached; run again to resume")
            return False
          wl = wl or Workload(cfg)
          loss0 = float(wl.loss(wl.init(seed), *wl.eval_set))
          rec = sweep_point(wl, cfg, opt, b, seed, centre_k, loss0)
          done[key] = dict(key=key, status="ok", kind="grid", **rec,
                           finished_at=report.date_now(), machine=machine_info())
          append_run(runs_path, done[key])
          log(f"{opt} B={b} s{seed}: {len(rec['runs'])} LRs, {rec['seconds']:.0f}s; best LR "
              + ", ".join(_best_text(done[key], t, cfg) for t in cfg["targets"]))
      first = done[json.dumps(dict(kind="grid", opt=opt, batch_size=b, seed=cfg["seeds"][0],
                                   cfg=_cfg_key(cfg)), sort_keys=True)]
      best = best_of(_runs(first), first["loss0"], cfg["targets"][mid], cfg["per_decade"])
      if np.isfinite(best["log_lr"]):
        centre_k = int(round(best["log_lr"] * cfg["per_decade"]))
        if b == cfg["ref_batch"]:
          ref_lr = 10.0 ** best["log_lr"]
    key = json.dumps(dict(kind="reference", opt=opt, cfg=_cfg_key(cfg)), sort_keys=True)
    if key not in done and ref_lr is not None:
      wl = wl or Workload(cfg)
      rec = reference_point(wl, cfg, opt, ref_lr, cfg["seeds"][0])
      done[key] = dict(key=key, status="ok", kind="reference", **rec,
                       finished_at=report.date_now(), machine=machine_info())
      append_run(runs_path, done[key])
      log(f"{opt} reference B={rec['batch_size']} LR {ref_lr:.3g}: B_simple "
          + ", ".join(f"{v:.0f}" for v in rec["b_simple"]))
  return True


def _seeds(cfg: dict[str, Any], opt: str) -> tuple[int, ...]:
  return tuple(cfg.get("seeds_by_opt", {}).get(opt, cfg["seeds"]))


def _cfg_key(cfg: dict[str, Any]) -> dict[str, Any]:
  """What a cached point depends on (not the batch sizes, seeds or bootstrap)."""
  keep = ("targets", "hidden", "n_lr", "per_decade", "max_ext", "cap_examples", "cap_min",
          "evals", "chunk", "eval_size", "subset")
  return {k: cfg[k] for k in keep}


def _runs(rec: dict[str, Any]) -> dict[int, dict[str, Any]]:
  return {int(k): v for k, v in rec["runs"].items()}


def _best_text(rec, target, cfg) -> str:
  b = best_of(_runs(rec), rec["loss0"], target, cfg["per_decade"])
  return f"{target:g}: {10 ** b['log_lr']:.3g} ({b['steps']:.0f} steps)"


# ----------------------------------------------------------------------------
# Analysis: best LRs with their uncertainty, fits, bootstrap, verdicts.
# ----------------------------------------------------------------------------


def _quiet(fn, *args, **kw):
  """``fn(*args, **kw)`` with its warnings caught; ``(result, [messages])``."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = fn(*args, **kw)
  return out, [str(w.message) for w in caught]


def _surge_peak(bs: np.ndarray, log_lr: np.ndarray) -> tuple[float, float, float]:
  """``(B_noise, rmse surge, rmse sgd alpha=1)`` of the fits to mean log10 LRs."""
  ok = np.isfinite(log_lr)
  if ok.sum() < 3:
    return math.nan, math.nan, math.nan
  lrs = 10.0 ** log_lr[ok]
  s, _ = _quiet(scaling.fit_surge, bs[ok], lrs)
  g, _ = _quiet(scaling.fit_sgd_form, bs[ok], lrs, alpha=1.0)
  return s.b_noise, s.rmse_log, g.rmse_log


def _fall(bs: np.ndarray, log_lr: np.ndarray) -> tuple[float, float]:
  """``(peak B, log-log slope from it to the largest batch)``.

  The peak is the argmax over all but the largest batch size, so the slope
  always has two points or more: about 0 when the best LR saturates (however
  the noise orders the plateau), negative when it falls, positive when it
  still rises at the largest batch.
  """
  if len(bs) < 2 or not np.isfinite(log_lr[:-1]).any():
    return math.nan, math.nan
  i = int(np.nanargmax(log_lr[:-1]))
  x, y = np.log10(bs[i:]), log_lr[i:]
  ok = np.isfinite(y)
  slope = float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan
  return float(bs[i]), slope


def _ci(a, lo=2.5, hi=97.5) -> list[float]:
  a = np.asarray(a, float)
  a = a[np.isfinite(a)]
  return [float(np.percentile(a, lo)), float(np.percentile(a, hi))] if len(a) else [
      math.nan, math.nan]


def _crossing(loss: np.ndarray, values: np.ndarray, target: float) -> float:
  """``values`` where ``loss`` first reaches ``target`` (interpolated in log)."""
  x = first_crossing(loss, target)
  if math.isinf(x):
    return math.nan
  v = np.log(np.clip(np.asarray(values, np.float64), 1e-12, None))
  return float(np.exp(np.interp(x, np.arange(len(v)), v)))


def analyze(cfg: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
  """Per optimizer and target: best LRs, fits, B_noise estimates, verdicts, transfer."""
  rng = np.random.default_rng(0)
  out: dict[str, Any] = {}
  for opt in OPTIMIZERS:
    grid = {(r["batch_size"], r["seed"]): r for r in records
            if r["kind"] == "grid" and r["opt"] == opt}
    bs = np.array(sorted({b for b, _ in grid}), float)
    if len(bs) == 0:
      continue
    ref = next((r for r in records if r["kind"] == "reference" and r["opt"] == opt), None)
    per_target = []
    for t in cfg["targets"]:
      pts = {b: [best_of(_runs(grid[b, s]), grid[b, s]["loss0"], t, cfg["per_decade"])
                 for s in cfg["seeds"] if (b, s) in grid] for b in bs.astype(int)}
      logs = [np.array([p["log_lr"] for p in pts[b]]) for b in bs.astype(int)]
      mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in logs])
      se = np.array([np.nanstd(v, ddof=1) / math.sqrt(np.isfinite(v).sum())
                     if np.isfinite(v).sum() > 1 else np.nan for v in logs])
      steps = np.array([np.median([p["steps"] for p in pts[b]]) for b in bs.astype(int)])
      fits = {name: _fit_dict(fn, bs, mean, **kw) for name, fn, kw in (
          ("surge", scaling.fit_surge, {}), ("sgd_alpha1", scaling.fit_sgd_form, dict(alpha=1.0)),
          ("sgd_alpha0.5", scaling.fit_sgd_form, dict(alpha=0.5)))}
      ok = np.isfinite(steps)
      sf = (_quiet(scaling.b_noise_from_steps, steps[ok], steps[ok] * bs[ok])[0]
            if ok.sum() >= 2 else None)
      boot = []
      for _ in range(cfg["bootstrap"]):
        m = np.array([np.nanmean(rng.choice(v, len(v))) if np.isfinite(v).any() else np.nan
                      for v in logs])
        boot.append((*_surge_peak(bs, m), *_fall(bs, m)))
      boot = np.array(boot, float)
      peak_b, slope = _fall(bs, mean)
      row = dict(target=t, batch_sizes=bs.tolist(), log_lr=[p and [q["log_lr"] for q in p]
                                                              for p in pts.values()],
                 mean_log_lr=mean.tolist(), se_log_lr=se.tolist(), steps=steps.tolist(),
                 at_edge=[any(q["at_edge"] for q in p) for p in pts.values()],
                 fits=fits, b_noise_steps=sf and sf.b_noise, s_min=sf and sf.s_min,
                 peak_batch=peak_b, slope_above_peak=slope,
                 slope_ci=_ci(boot[:, 4]), peak_b_noise_ci=_ci(boot[:, 0]),
                 log_b_noise_boot=np.log10(boot[:, 0]).tolist(),
                 surge_beats_sgd=float(np.nanmean(boot[:, 1] < boot[:, 2])),
                 b_simple=_crossing(np.array(ref["loss"]), np.array(ref["b_simple"]), t)
                 if ref else math.nan)
      row["verdict_fall"] = _verdict_fall(row, bs)
      per_target.append(row)
    out[opt] = dict(per_target=per_target, reference=ref and {
        k: ref[k] for k in ("batch_size", "lr", "steps_per_point", "loss", "b_simple")},
                    verdict_moves=_verdict_moves(per_target), transfer=_transfer(per_target))
  return out


def _fit_dict(fn, bs, mean, **kw):
  ok = np.isfinite(mean)
  if ok.sum() < 3:
    return None
  f, warns = _quiet(fn, bs[ok], 10.0 ** mean[ok], **kw)
  return dict(lr_max=f.lr_max, b_noise=f.b_noise, rmse_log=f.rmse_log, warnings=warns)


RESOLUTION = 0.01
"""Slopes within this of 0 count as 0 (a best LR that does not move at all)."""
FLAT = -0.25
"""Claim 1's cut: the slope above the peak is -0.5 under the surge law far above
B_noise and 0 under the SGD law; a slope resolved above -0.25 is closer to 0."""


PARTLY = "partly (falls, flatter than the surge law)"


def _verdict_fall(row: dict[str, Any], bs: np.ndarray) -> str:
  lo, hi = row["slope_ci"]
  if not np.isfinite(row["slope_above_peak"]):
    return "not resolved (too few batch sizes reach the target)"
  if hi < -RESOLUTION:
    return "holds" if lo <= FLAT else PARTLY
  if lo > RESOLUTION:
    return "not resolved (the best LR still rises at the largest batch)"
  if lo > FLAT:
    return "does not hold"
  return "not resolved"


def _verdict_moves(per_target: list[dict[str, Any]]) -> dict[str, Any]:
  """Claim 2: does the fitted peak (surge B_noise) grow from the first target to the last?"""
  a, b = (np.array(per_target[i]["log_b_noise_boot"]) for i in (0, -1))
  d = b - a
  lo, hi = _ci(d)
  point = [r["fits"]["surge"] and r["fits"]["surge"]["b_noise"] for r in per_target]
  verdict = ("holds" if lo > RESOLUTION else "does not hold" if hi < -RESOLUTION
             else "not resolved")
  if not all(point):
    verdict = "not resolved (no fit)"
  return dict(verdict=verdict, log10_ratio_ci=[lo, hi], b_noise=point)


def _transfer(per_target: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean |error| (decades) of the LR predicted at each batch size from each other one."""
  errs: dict[str, list[float]] = {r: [] for r in RULES + ("surge law, fitted without B_to",)}
  for row in per_target:
    bs, m = np.array(row["batch_sizes"]), np.array(row["mean_log_lr"])
    for i, j in ((i, j) for i in range(len(bs)) for j in range(len(bs)) if i != j):
      if not (np.isfinite(m[i]) and np.isfinite(m[j])):
        continue
      lr, f, to = 10.0 ** m[i], bs[i], bs[j]
      pred = {"square root": lr * math.sqrt(to / f), "linear": lr * to / f, "constant": lr}
      if np.isfinite(row["b_simple"]) and row["b_simple"] > 0:
        pred["surge law, B_simple"] = float(scaling.transfer_lr(lr, f, to, row["b_simple"]))
      keep = np.isfinite(m) & (np.arange(len(bs)) != j)
      if keep.sum() >= 3:
        fit, _ = _quiet(scaling.fit_surge, bs[keep], 10.0 ** m[keep])
        pred["surge law, fitted without B_to"] = float(
            scaling.transfer_lr(lr, f, to, fit.b_noise))
      for rule, p in pred.items():
        errs[rule].append(abs(math.log10(p) - m[j]))
  return {r: dict(mean=float(np.mean(e)) if e else math.nan, n=len(e)) for r, e in errs.items()}


# ----------------------------------------------------------------------------
# Report: surge.md, surge.png, surge.json.
# ----------------------------------------------------------------------------


def _lr_text(mean: float, se: float) -> str:
  if not np.isfinite(mean):
    return "n/a"
  return f"{10 ** mean:.3g}" + (f" ×/÷ {10 ** se:.2f}" if np.isfinite(se) else "")


def _target_lines(opt: str, row: dict[str, Any], i: int) -> list[str]:
  name = TARGET_NAMES[i] if i < len(TARGET_NAMES) else f"target {i}"
  rows = []
  for j, b in enumerate(row["batch_sizes"]):
    seeds = row["log_lr"][j] or []
    rows.append([int(b), len(seeds), ", ".join(report.fmt(10 ** v) for v in seeds),
                 _lr_text(row["mean_log_lr"][j], row["se_log_lr"][j]),
                 report.fmt(row["steps"][j], ".0f"), "yes" if row["at_edge"][j] else ""])
  fits = [[name_, report.fmt(f["lr_max"]), report.fmt(f["b_noise"]), f"{f['rmse_log']:.3f}",
           "; ".join(sorted(set(f["warnings"]))) or ""]
          for name_, f in row["fits"].items() if f]
  lo, hi = row["slope_ci"]
  return [f"### {OPT_LABELS[opt]}: {name} target, loss {row['target']:g}", ""] + report.table(
      ["B", "seeds", "best LR per seed", "best LR (mean ×/÷ s.e.)", "steps to target (median)",
       "a seed's best at the grid edge"], rows) + [""] + report.table(
      ["fit to the mean best LRs", "lr_max", "B_noise", "RMSE (ln LR)", "note"], fits) + [
      "", f"- Peak of the measured best LR at B = {report.fmt(row['peak_batch'])}; log-log "
      f"slope from there to the largest batch {report.fmt(row['slope_above_peak'], '+.2f')} "
      f"(95 % bootstrap interval {report.fmt(lo, '+.2f')} .. {report.fmt(hi, '+.2f')}; "
      "surge law far above B_noise: -0.5, SGD law: 0). "
      f"Claim 1 here: **{row['verdict_fall']}**.",
      f"- B_noise: surge fit {report.fmt(row['fits']['surge'] and row['fits']['surge']['b_noise'])}"
      f" (95 % bootstrap {report.fmt(row['peak_b_noise_ci'][0])} .. "
      f"{report.fmt(row['peak_b_noise_ci'][1])}); from steps/examples "
      f"{report.fmt(row['b_noise_steps'])}; B_simple where the reference run reaches the "
      f"target {report.fmt(row['b_simple'])}. The surge law fits better than the SGD law "
      f"(alpha = 1) in {100 * row['surge_beats_sgd']:.0f} % of the bootstrap replicates.", ""]


def _verdict_table(an: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
  rows = []
  for opt, a in an.items():
    fall = ", ".join(f"{TARGET_NAMES[i]}: {r['verdict_fall']} "
                     f"({report.fmt(r['slope_above_peak'], '+.2f')})"
                     for i, r in enumerate(a["per_target"]))
    mv = a["verdict_moves"]
    moves = (f"{mv['verdict']} (B_noise {' → '.join(report.fmt(b) for b in mv['b_noise'])}; "
             f"log10 ratio last/first in {report.fmt(mv['log10_ratio_ci'][0], '+.2f')} .. "
             f"{report.fmt(mv['log10_ratio_ci'][1], '+.2f')})")
    simple = ", ".join(f"{report.fmt(r['b_simple'])} vs {report.fmt(r['fits']['surge'] and r['fits']['surge']['b_noise'])}"
                       for r in a["per_target"])
    rows.append([OPT_LABELS[opt], fall, moves, simple])
  return report.table(["optimizer", "claim 1: the best LR falls above the peak (slope)",
                       "claim 2: the peak moves right (surge-fit B_noise, early → late)",
                       "B_simple vs surge-fit B_noise, per target"], rows)


def _transfer_lines(an: dict[str, Any]) -> list[str]:
  rules = list(next(iter(an.values()))["transfer"])
  rows = [[OPT_LABELS[o], *(f"{a['transfer'][r]['mean']:.2f} ({a['transfer'][r]['n']})"
                           for r in rules)] for o, a in an.items()]
  return report.table(["optimizer", *(f"{r}" for r in rules)], rows)


def plot(an: dict[str, Any], path: Path) -> None:
  """Per optimizer: best LR vs B per target (s.e. bars, surge fits); B_noise per target."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(len(an), 3, figsize=(19, 4.2 * len(an)), squeeze=False)
  for (opt, a), (ax, bx, cx) in zip(an.items(), axes):
    ref = a["reference"]
    if ref:
      steps = ref["steps_per_point"] * np.arange(1, len(ref["b_simple"]) + 1)
      cx.plot(steps, np.where(np.array(ref["b_simple"], float) > 0, ref["b_simple"], np.nan),
              "k.-", label=f"B_simple (B={ref['batch_size']}, LR {ref['lr']:.2g})")
      loss = np.array(ref["loss"], float)
      for i, row in enumerate(a["per_target"]):
        cross = _crossing(loss, steps.astype(float), row["target"])
        f = row["fits"]["surge"]
        if f and np.isfinite(cross):
          cx.plot(cross, f["b_noise"], "o", color=f"C{i}", ms=8,
                  label=f"surge-fit B_noise, loss {row['target']:g}")
      cx.set(yscale="log", xlabel="step of the reference run", ylabel="batch size",
             title="B_simple along training; fitted peak at each target")
      cx.legend(fontsize=7)
    for i, row in enumerate(a["per_target"]):
      bs, m, se = (np.array(row[k], float) for k in ("batch_sizes", "mean_log_lr",
                                                        "se_log_lr"))
      err = np.nan_to_num(se)
      ax.errorbar(bs, 10 ** m, yerr=[10 ** m - 10 ** (m - err), 10 ** (m + err) - 10 ** m],
                  fmt="o", color=f"C{i}", capsize=3, label=f"loss {row['target']:g}")
      f = row["fits"]["surge"]
      if f:
        bb = np.geomspace(bs.min(), bs.max(), 100)
        ax.plot(bb, scaling.adam_optimal_lr(bb, lr_max=f["lr_max"], b_noise=f["b_noise"]),
                color=f"C{i}", lw=1)
      g = row["fits"]["sgd_alpha1"]
      if g:
        ax.plot(bb, scaling.sgd_optimal_lr(bb, lr_max=g["lr_max"], b_noise=g["b_noise"]),
                color=f"C{i}", lw=1, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="batch size",
           ylabel="best constant LR (steps to target)",
           title=f"{OPT_LABELS[opt]}: mean of seeds ± s.e.; surge fit (—), SGD fit (:)")
    ax.legend(fontsize=8)
    x = np.arange(len(a["per_target"]))
    for k, (key, label) in enumerate((("surge", "surge-fit B_noise (95 % bootstrap)"),
                                      ("steps", "B_noise from steps/examples"),
                                      ("simple", "B_simple at the target"))):
      for i, row in enumerate(a["per_target"]):
        if key == "surge" and row["fits"]["surge"]:
          v, (lo, hi) = row["fits"]["surge"]["b_noise"], row["peak_b_noise_ci"]
          bx.errorbar(i - 0.1, v, yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], fmt="o",
                      color="C0", capsize=3, label=label if i == 0 else None)
        elif key == "steps" and row["b_noise_steps"]:
          bx.plot(i, row["b_noise_steps"], "s", color="C1", label=label if i == 0 else None)
        elif key == "simple" and np.isfinite(row["b_simple"]):
          bx.plot(i + 0.1, row["b_simple"], "^", color="C2", label=label if i == 0 else None)
    bx.set(yscale="log", xticks=x, xticklabels=[f"loss {r['target']:g}" for r in
                                                 a["per_target"]],
           ylabel="batch size", title="where the peak is, per target")
    bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def render(cfg: dict[str, Any], records: list[dict[str, Any]], out: Path,
           meta: dict[str, Any]) -> Path:
  """Writes ``surge.md``, ``surge.png`` and ``surge.json`` (the analysis) to ``out``."""
  an = analyze(cfg, records)
  if not an:
    raise cli.UsageError(f"no surge runs in {out}: run the experiment first")
  plot(an, out / "surge.png")
  (out / "surge.json").write_text(json.dumps(dict(meta=meta, config=cfg, analysis=an),
                                             indent=1, default=float) + "\n")
  grids = [r for r in records if r["kind"] == "grid"]
  dates = sorted(r["finished_at"] for r in records)
  hours = sum(r["seconds"] for r in records) / 3600
  lines = report.header("Surge, tested: the best LR vs the batch size (Li et al. 2024)",
                        "quick smoke run" if meta.get("quick") else None) + [
      report.command_line(meta["command"]),
      report.machine_line(records[-1]["machine"], flax=True),
      f"- Dates: {dates[0]} .. {dates[-1]}; {len(grids)} grids (optimizer x batch size x "
      f"seed), {hours:.2f} h of training; raw curves in `surge_runs.jsonl`, the analysis in "
      "`surge.json`, the figure `surge.png`",
      f"- Workload: Fashion-MNIST ({meta['source']}), MLP 784-{'-'.join(map(str, cfg['hidden']))}"
      f"-10 ({meta['n_params']} parameters), constant LR from the first step, no weight "
      "decay. Not the paper's CNN: at full batch (60000 images) a CNN step is too slow on "
      "2 CPU cores.",
      f"- Criterion (the paper's): steps until the loss on a fixed subset of "
      f"{cfg['eval_size']} training images reaches a target; targets "
      f"{', '.join(f'{t:g}' for t in cfg['targets'])} (early, middle, late; the initial "
      "loss is 2.3). Best LR: argmin over a grid of 4 LRs per decade, refined by a "
      "parabola in log LR; seeds "
      f"{', '.join(map(str, cfg['seeds']))} (init and data order) at every batch size"
      + "".join(f" ({OPT_LABELS[o]}: {', '.join(map(str, v))})"
                for o, v in cfg.get("seeds_by_opt", {}).items()) + "; "
      "uncertainty = standard error of the mean log LR over seeds; intervals from "
      f"{cfg['bootstrap']} bootstrap replicates over seeds.",
      f"- B_simple: a reference run per optimizer at B={cfg['ref_batch']} with its best LR "
      f"(middle target); {cfg['ns_k']} micro-batches of a batch of {cfg['ns_batch']}, "
      f"{cfg['ns_reps']} batches per point, {cfg['ns_points']} points, read where the run "
      "crosses each target.", "",
      "## Verdicts", ""] + _verdict_table(an, cfg) + [
      "", "Claim 1 (the slope of log best LR vs log B from the peak to the largest batch, "
      "95 % bootstrap interval): holds where the interval lies below 0 and reaches "
      f"{FLAT} (halfway between the SGD law's 0 and the surge law's -0.5 far above B_noise); "
      "partly where it lies below 0 but above that; does not hold where it contains 0 and "
      f"lies above {FLAT} (the best LR saturates); not resolved otherwise. Claim 2 holds "
      "where the interval of log10(B_noise late / early) lies above 0, does not hold where "
      "it lies below 0. A target is measured only where a batch size reaches it within "
      "its step cap.", "",
      "## Using it: predicting the best LR at another batch size", "",
      "Mean |error| in decades (count of pairs) of the best LR predicted at each measured "
      "batch size from each other one, over all targets: "
      "`scaling.transfer_lr(lr, from_batch, to_batch, b_noise)` with B_simple of the "
      "reference run at that target, or with the surge fit of the other batch sizes, against "
      "the rules of thumb.", ""] + _transfer_lines(an) + ["", "## Per optimizer and target", ""]
  for opt, a in an.items():
    for i, row in enumerate(a["per_target"]):
      lines += _target_lines(opt, row, i)
  return report.write(out / "surge.md", lines, final_newline=True)


# ----------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> Path:
  """CLI entry point; a user error prints two lines and exits with status 2."""
  p = cli.ArgumentParser(prog="python -m experiments.surge",
                         description=__doc__.splitlines()[0])
  p.add_argument("--max-minutes", type=cli.number(0, low_open=True), default=None,
                 help="start no grid after this many minutes (run again to resume)")
  p.add_argument("--report-only", action="store_true",
                 help="no training: re-render from the cached runs")
  cli.add_output_flags(p, quick="a smoke run (< 1 min, a temp folder)",
                       out_dir="results folder (default: experiments/results)")
  args = p.parse_args(argv)
  with cli.usage_errors(p):
    cfg = dict(QUICK if args.quick else FULL)
    out = report.results_dir(args.out_dir, "surge", args.quick)
    runs_path = out / "surge_runs.jsonl"
    t0 = time.perf_counter()
    if not args.report_only:
      try:
        finished = sweep(cfg, runs_path, max_minutes=args.max_minutes)
      except DatasetNotFoundError as e:
        raise cli.UsageError(e.brief) from None
      log(f"sweep {'finished' if finished else 'paused'} in {time.perf_counter() - t0:.0f}s")
    records = [r for r in load_runs(runs_path) if r.get("status") == "ok"
               and r.get("key", "").find(json.dumps(_cfg_key(cfg), sort_keys=True)[1:-1]) >= 0]
    wl_meta = _meta(cfg, args.quick)
    path = render(cfg, records, out, wl_meta)
    log(f"wrote {path}")
    return path


def _meta(cfg: dict[str, Any], quick: bool) -> dict[str, Any]:
  sizes = [784, *cfg["hidden"], 10]
  n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))  # Dense layers with biases.
  source = "Debian dataset-fashion-mnist" if cfg["subset"] is None else "subset"
  return dict(command="python -m experiments.surge" + (" --quick" if quick else ""),
              quick=quick, n_params=n_params, source=source)


if __name__ == "__main__":
  main()
