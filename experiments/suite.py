"""The AutoWU benchmark suite: one run with the defaults against a tuned grid.

Run as ``python -m experiments.suite`` (all cases, all methods), or a chunk::

    python -m experiments.suite --cases mlp_lamb_b4096_e20 --methods autowu,grid
    python -m experiments.suite --max-minutes 9     # resumable: cached runs are skipped
    python -m experiments.suite --report-only        # re-render suite.md / suite.png

A case (:data:`CASES`) is plain data: a workload (model, dataset, optimizer
family), a batch size and a budget. Every case runs the same methods
(:func:`plan`):

* ``autowu``: the library defaults (``autowu_<family>``), seeds 0-2;
* ``authors``: the authors' rule (test once an epoch, no guard), seed 0, on
  the cases of two epochs or more (its warmup is at most half the budget);
* ``grid``: warmup + cosine with the same optimizer, :data:`GRID_PEAKS` x
  :data:`GRID_WARMUPS`, seed 0; the cell is **picked on the validation
  split** (held out from the training set) and reported on test;
* ``grid_seeds``: the picked grid cell again with seeds 1-2 (after ``grid``),
  so the grid's best cell is also known as a mean of 3 seeds, like AutoWU;
* ``grid_linear``: the picked grid cell (seed 0) with a linear decay to 0
  instead of the cosine (after ``grid``): how much of AutoWU's linear decay a
  tuned grid would get too;
* the LR-free peers (:data:`PEERS`), seed 0, Optax defaults.

Each run goes through the one train loop (:func:`experiments.train.run`) and
is appended to ``suite_runs.jsonl`` keyed by its full train config (a run in
the file is never trained again, so a sweep can be stopped and resumed).
The report (:func:`render`) writes ``suite.md`` and ``suite.png``: per case
the test metric of each method (mean ± std, worst seed), the gap to the
grid, the steps until the run first reaches the grid cell's final
validation metric, and the optimizer-state bytes; then the averages over
cases and a performance profile.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python experiments/suite.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import cli, report
from experiments.compare import append_run, code_version, load_runs, run_key
from experiments.machine import machine_info

__all__ = ["CASES", "METHODS", "PEERS", "main", "plan", "render", "summarize"]

GRID_PEAKS = {
    "lamb": [10.0 ** (-3 + 0.5 * k) for k in range(6)],  # 1e-3 .. 0.316
    "adamw": [10.0 ** (-3.5 + 0.5 * k) for k in range(6)],  # 3.2e-4 .. 0.1
}
GRID_WARMUPS = [0.05, 0.2]
AUTOWU_SEEDS = [0, 1, 2]
PEERS = ["schedule_free_adamw", "prodigy", "dadapt_adamw", "mechanize_lamb",
         "reduce_on_plateau"]
METHODS = ["autowu", "authors", "grid", "grid_seeds", "grid_linear", *PEERS]
VARIANTS: dict[str, dict[str, Any]] = {
    "valley03": {"valley_level": 0.3},
    "restart03": {"restart_fraction": 0.3},
    "noknee": {"knee_slope": 0.0},
    "knee05": {"knee_slope": 0.5},
    "valley05": {"valley_level": 0.5},
    "minlr1e4": {"min_lr": 1e-4},
    "minlr1e5": {"min_lr": 1e-5},
    "minlr3e4": {"min_lr": 3e-4},
    "mwf05": {"max_warmup_fraction": 0.5},
    "kneex2": {"knee_ratio": 2.0},  # The default since library 634cb34046b5.
    "lr3e4after10": {"min_lr": 3e-4, "minimum_after": 10.0},
    "lr3e4after30": {"min_lr": 3e-4, "minimum_after": 30.0},
    "restart14": {"restart_fraction": 1.4},
    "knee02": {"knee_slope": 0.2},
    "knee15": {"knee_ratio": 1.5},
    "linear": {"decay": "linear"},  # The default since library 328f8bd4b512.
    "restart05": {"restart_fraction": 0.5},  # The LAMB transformer: LR or excursion?
    "knee15restart05": {"knee_ratio": 1.5, "restart_fraction": 0.5},  # A smaller excursion.
    "restart3": {"restart_fraction": 3.0},  # The AdamW image cases: the grid's 2-10x.
    "mwf035": {"max_warmup_fraction": 0.35},  # Between the defaults' ramp and mwf05's.
    # Since library 1d68fb0a6122 (min_warmup_epochs=0.5 and knee_slope=0.2 are defaults):
    # without the short-budget floor.
    "nofloor": {"min_warmup_epochs": 0.0},
    # The second, linear warmup after a noise-dominated start (the default over 20 % of the
    # budget since library abb8b29c1618): over 10 %, and none. Before that library,
    # rewarm10 / rewarm20 were an experiments-side wrapper that ramped after every switch.
    "rewarm10": {"rewarm_fraction": 0.1},
    "rewarm20": {"rewarm_fraction": 0.2},
    "norewarm": {"rewarm_fraction": 0.0},
    # The params rolled back at the switch to where the warmup's LR was the restart's (the
    # default since library 3de296bac13c); with a halved restart; and none. On library
    # 37f37e9c000d, rollback / rollback05 / rollback2 were an experiments-side wrapper around
    # the chain that kept the params at every 2^(1/4) of LR (the last 12; rollback2: at every
    # doubling, the last 2) and went back to the newest one at most the restart LR.
    "rollback": {"rollback": True},
    "rollback05": {"rollback": True, "restart_fraction": 0.5},
    "rollback2": {"rollback": True},
    "norollback": {"rollback": False},
    # Library 8f939b7102db, before the 5-epoch cap (max_warmup_epochs) and the decay
    # guard were defaults: the maximal warmup capped at 5 epochs on the longer budgets
    # (at 40 epochs 0.25 -> 0.125, or 7.5 epochs: 0.1875; at 80 epochs 0.0625), and the
    # decay guard as an experiments-side wrapper (guard*; it is the library's decay_guard
    # now). experiments/warmup_cap.py reports their runs.
    "mwf0125": {"max_warmup_fraction": 0.125},
    "mwf01875": {"max_warmup_fraction": 0.1875},
    "mwf00625": {"max_warmup_fraction": 0.0625},
    "guard": {"decay_guard": 2.0},
    "mwf0125guard": {"max_warmup_fraction": 0.125, "decay_guard": 2.0},
    "mwf00625guard": {"max_warmup_fraction": 0.0625, "decay_guard": 2.0},
    # Since library 97031c38a247 (the cap and the guard are defaults; on it, guard and
    # mwf*guard above equal the defaults or a tighter cap): the defaults without the cap,
    # without the guard.
    "nocap": {"max_warmup_epochs": math.inf},
    "noguard": {"decay_guard": math.inf},
    # The LAMB transformer restarts at 0.0185 and stays on its plateau; the grid's 0.01 leaves
    # it. How low must a uniform restart go, and what does that cost the MLP at batch 4096
    # (restart 0.011, grid 0.01)? restart05 above, and restart07. On library 6c72eb403983
    # neither rolls back: the snapshot takes a test step's params only while its LR is at most
    # 1.25x that test's restart estimate, which a fraction of at most 0.8 keeps under the LR, so
    # both restart after the full excursion (the LAMB transformer: 3.42 / 3.68 bits/byte; an
    # experiments-side rollback to 0.0092 once gave 2.89, rollback05 above). Fixed in
    # e0674d7252c3 (the margin divides by the fraction): restart05 there, 2.92 bits/byte.
    "restart07": {"restart_fraction": 0.7},
    # The slower ramp fixes both LAMB transformers (mwf05, library e0674d7252c3) but leaves the
    # AdamW transformer's seed 1 on its plateau: the knee rule (slope 0.3 per decade) never fires
    # on its slower ramp. With a gentler knee too?
    "mwf05knee02": {"max_warmup_fraction": 0.5, "knee_slope": 0.2},
}
"""Decision-rule candidates, run as method ``autowu:<name>`` (extra ``autowu`` kwargs)."""
ALL_METHODS = METHODS + [f"autowu:{v}" for v in VARIANTS]
IMAGE_HOLDOUT = 5000  # Fashion-MNIST: 55000 train / 5000 validation / 10000 test.


def _case(name: str, model: str, family: str, batch_size: int, epochs: int,
          **extra: Any) -> dict[str, Any]:
  text = model == "transformer"
  return dict(dict(name=name, model=model, family=family, batch_size=batch_size, epochs=epochs,
                   dataset="fortunes" if text else "fashion_mnist",
                   holdout=0 if text else IMAGE_HOLDOUT), **extra)


_FROZEN = "1d68fb0a6122"  # The library the held-out cases were added with.

CASES: list[dict[str, Any]] = [
    _case("mlp_lamb_b1024_e20", "mlp", "lamb", 1024, 20),
    _case("mlp_lamb_b4096_e20", "mlp", "lamb", 4096, 20),
    _case("mlp_lamb_b8192_e20", "mlp", "lamb", 8192, 20),
    _case("mlp_lamb_b4096_e10", "mlp", "lamb", 4096, 10),
    _case("mlp_lamb_b4096_e40", "mlp", "lamb", 4096, 40),
    _case("mlp_lamb_b4096_e80", "mlp", "lamb", 4096, 80),
    _case("mlp_adamw_b1024_e20", "mlp", "adamw", 1024, 20),
    _case("mlp_adamw_b4096_e20", "mlp", "adamw", 4096, 20),
    _case("mlp_adamw_b4096_e40", "mlp", "adamw", 4096, 40),
    _case("cnn_lamb_b512_e10", "cnn", "lamb", 512, 10, subset=(20000, None)),
    _case("cnn_adamw_b512_e10", "cnn", "adamw", 512, 10, subset=(20000, None)),
    _case("mlp_lamb_b512_e1", "mlp", "lamb", 512, 1),
    _case("mlp_adamw_b512_e1", "mlp", "adamw", 512, 1),
    _case("cnn_lamb_b512_e1", "cnn", "lamb", 512, 1),
    _case("lm_adamw_b16", "transformer", "adamw", 16, 1),
    _case("lm_adamw_b128", "transformer", "adamw", 128, 1),
    _case("lm_lamb_b16", "transformer", "lamb", 16, 1),
    _case("lm_lamb_b128", "transformer", "lamb", 128, 1),
    # Held out (``held_out``: the library frozen when they were added): run once with its
    # defaults and used to choose nothing: AdamW at the largest batch, a smaller batch than any
    # above, the AdamW CNN at one epoch, and the LAMB transformer at batch 64.
    _case("mlp_adamw_b8192_e20", "mlp", "adamw", 8192, 20, held_out=_FROZEN),
    _case("mlp_lamb_b256_e5", "mlp", "lamb", 256, 5, held_out=_FROZEN),
    _case("cnn_adamw_b512_e1", "cnn", "adamw", 512, 1, held_out=_FROZEN),
    # Between the LAMB transformer's batch 16 (+0.6 % against its grid) and 128 (-3.0 %).
    _case("lm_lamb_b64", "transformer", "lamb", 64, 1, held_out=_FROZEN),
]
"""The suite. CNN: the first 20000 training images (15000 after the holdout),
so a run takes minutes here (the one-epoch cases: all of them). LM: one pass
over fortunes (2.3M bytes). The one-epoch image cases (added with library
``1d68fb0a6122``) check the short-budget warmup (``min_warmup_epochs``) off
the transformer it was measured on. A case with ``held_out`` (a library
version) was added with that library frozen and chose nothing; the report
says so."""

QUICK_CASES: list[dict[str, Any]] = [
    _case("quick_mlp_lamb", "mlp", "lamb", 256, 2, subset=(3000, 1000), holdout=500),
]


def _is_text(case: dict[str, Any]) -> bool:
  return case["model"] == "transformer"


def picked_cell(case: dict[str, Any], records: Iterable[dict[str, Any]]
                ) -> dict[str, Any] | None:
  """The grid run (seed 0) with the best final validation metric, or None.

  A diverged cell (no finite validation metric) is never picked over a finite one.
  """
  grid = [r for r in records
          if r["method"] == "grid" and r.get("case", case["name"]) == case["name"]]

  def score(r: dict[str, Any]) -> float:
    v = _val(case, r)
    return v if math.isfinite(v) else -math.inf

  return max(grid, key=score) if grid else None


def plan(case: dict[str, Any], methods: Iterable[str], *, quick: bool = False,
         records: list[dict[str, Any]] = (), grid_peaks: list[float] | None = None,
         seeds: list[int] | None = None) -> list[dict[str, Any]]:
  """The runs of ``case`` for ``methods``: dicts with ``method`` and ``config``.

  ``grid_seeds`` and ``grid_linear`` need the case's grid ``records`` (its
  cell is picked on them); without them they plan nothing. ``seeds``: the
  AutoWU seeds (default :data:`AUTOWU_SEEDS`; one seed screens a candidate,
  the report needs three).
  """
  autowu_seeds = AUTOWU_SEEDS[:1] if quick else (AUTOWU_SEEDS if seeds is None else seeds)
  base = dict(model=case["model"], dataset=case["dataset"], batch_size=case["batch_size"],
              epochs=case["epochs"], holdout=case["holdout"], subset=case.get("subset"))
  fam = case["family"]
  runs = []
  for m in methods:
    if m == "autowu" or m.split(":")[0] == "autowu" and m.split(":")[-1] in VARIANTS:
      extra = VARIANTS[m.split(":")[1]] if ":" in m else {}
      runs += [dict(method=m, seed=s, config=dict(base, schedule=f"autowu_{fam}", seed=s,
                                                   **({"autowu": extra} if extra else {})))
               for s in autowu_seeds]
    elif m == "authors":  # Tests once an epoch: a 1-epoch budget has no test.
      runs += [dict(method=m, seed=0, config=dict(
          base, schedule=f"autowu_{fam}", seed=0, test_every="epoch", divergence_factor=None)
      )] if case["epochs"] >= 2 else []
    elif m == "grid":
      peaks = GRID_PEAKS[fam][2:4] if quick else [  # The case's peaks, exactly.
          p for p in GRID_PEAKS[fam]
          if grid_peaks is None or any(abs(p / q - 1.0) < 0.1 for q in grid_peaks)]
      runs += [dict(method=m, seed=0, peak_lr=p, warmup_fraction=w, config=dict(
          base, schedule=f"warmup_cosine_{fam}", seed=0, peak_lr=p, warmup_fraction=w))
          for p in peaks for w in (GRID_WARMUPS[:1] if quick else GRID_WARMUPS)]
    elif m == "grid_seeds":
      best = picked_cell(case, records)
      runs += [dict(method=m, seed=s, peak_lr=best["peak_lr"],
                    warmup_fraction=best["warmup_fraction"], config=dict(best["config"], seed=s))
               for s in AUTOWU_SEEDS[1:]] if best else []
    elif m == "grid_linear":
      best = picked_cell(case, records)
      runs += [dict(method=m, seed=0, peak_lr=best["peak_lr"],
                    warmup_fraction=best["warmup_fraction"], config=dict(
                        best["config"], schedule=f"warmup_linear_{fam}"))] if best else []
    elif m in PEERS:
      runs.append(dict(method=m, seed=0, config=dict(base, schedule=m, seed=0)))
    else:
      raise ValueError(f"unknown method {m!r}; choose from {ALL_METHODS}")
  return runs


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

log = report.logger("suite")
_KEEP = ("final_test_accuracy", "final_val_accuracy", "final_test_loss", "final_val_loss",
         "test_accuracy_per_epoch", "val_accuracy_per_epoch", "val_loss_per_epoch",
         "test_loss_per_epoch", "switch_step", "restart_lr", "switch_reason", "total_steps",
         "steps_per_epoch", "wall_time_s", "opt_state_bytes", "schedule_hparams")


def _is_rule(method: str) -> bool:
  """AutoWU's runs depend on the library's code (keyed and reported by its version)."""
  return method.split(":")[0] in ("autowu", "authors")


DECISION_FILES = ("_autowu.py", "gp.py", "window.py", "_checks.py", "_adamp.py")
"""The library files AutoWU's runs depend on (its rule, the GP, the chains)."""


def _code_only(source: str) -> str:
  """The syntax tree of ``source`` without docstrings (comments are never in it)."""
  tree = ast.parse(source)
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  return ast.dump(tree)


def library_version() -> str:
  """Hash of the code of :data:`DECISION_FILES` (docstrings and comments left out).

  AutoWU runs are keyed and reported by it, so a change of the decision code
  re-runs them, and a change of its documentation does not.
  """
  root = Path(__file__).resolve().parent.parent / "optax_autolr"
  h = hashlib.sha256()
  for name in DECISION_FILES:
    h.update(name.encode() + _code_only((root / name).read_text()).encode())
  return h.hexdigest()[:12]


def _key(r: dict[str, Any], lib: str) -> str:
  key = run_key(r["config"])
  return f"{key}@{lib}" if _is_rule(r["method"]) else key


def _load(case: dict[str, Any], cache: dict[tuple, Any]):
  from experiments import train  # noqa: PLC0415 - heavy (jax, flax).

  key = (case["dataset"], case["model"])
  if key not in cache:
    cache[key] = train.load_data(train.TrainConfig(model=case["model"],
                                                   dataset=case["dataset"]))
  return cache[key]


def sweep(cases: list[dict[str, Any]], methods: list[str], runs_path: Path, *,
          quick: bool = False, max_minutes: float | None = None,
          grid_peaks: list[float] | None = None, seeds: list[int] | None = None) -> int:
  """Trains the missing runs of ``cases`` x ``methods``; returns how many it trained."""
  from experiments import train  # noqa: PLC0415

  lib = library_version()
  old = [r for r in load_runs(runs_path) if r.get("status") == "ok"]
  done = {r["key"] for r in old}
  todo = [(c, r) for c in cases
          for r in plan(c, methods, quick=quick, records=old, grid_peaks=grid_peaks,
                        seeds=seeds)
          if _key(r, lib) not in done]
  log(f"{len(todo)} runs to train ({runs_path})")
  meta = dict(command=report.invocation("experiments.suite"),
              machine=machine_info(), code_version=code_version(), library_version=lib)
  t0, cache, trained = time.perf_counter(), {}, 0
  for i, (case, r) in enumerate(todo):
    if max_minutes is not None and (time.perf_counter() - t0) / 60 >= max_minutes:
      log(f"--max-minutes {max_minutes:g} reached: {len(todo) - i} runs left")
      break
    cfg = dict(r["config"], quiet=True, plot=False, tensorboard=False,
               out_dir=str(Path("runs") / "suite" / f"{case['name']}_{r['method']}_"
                            f"{hashlib.sha1(_key(r, lib).encode()).hexdigest()[:8]}"))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      s = train.run(cfg, dataset=_load(case, cache))
    rec = dict(key=_key(r, lib), status="ok", case=case["name"],
               **{k: v for k, v in r.items() if k != "config"}, config=r["config"],
               summary={k: s.get(k) for k in _KEEP}, curve=_curve(s["history"]),
               elapsed_s=time.perf_counter() - t,
               finished_at=report.date_now(), **meta)
    append_run(runs_path, rec)
    trained += 1
    log(f"[{i + 1}/{len(todo)}] {case['name']} {r['method']} s{r['seed']} "
        f"{r.get('peak_lr') or ''}: {_metric_text(case, rec)} ({rec['elapsed_s']:.0f}s)")
  return trained


def _curve(history: dict[str, list], points: int = 200) -> dict[str, list]:
  """The training loss and LR, averaged over at most ``points`` equal bins of steps."""
  loss, lr = (np.asarray(history[k], np.float64) for k in ("loss", "lr"))
  bins = np.array_split(np.arange(len(loss)), min(points, len(loss)))
  mean = lambda a, b: float(np.nanmean(a[b])) if np.isfinite(a[b]).any() else None
  return dict(step=[int(b[-1]) + 1 for b in bins], loss=[mean(loss, b) for b in bins],
              lr=[mean(lr, b) for b in bins])


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


def _test(case: dict[str, Any], rec: dict[str, Any]) -> float:
  """The reported metric: test accuracy (%), or test bits per byte for text."""
  s = rec["summary"]
  if _is_text(case):
    return _nan_if_none(s["final_test_loss"]) / math.log(2)
  return 100 * _nan_if_none(s["final_test_accuracy"])


def _val(case: dict[str, Any], rec: dict[str, Any]) -> float:
  """Validation score, higher is better (accuracy, or minus the loss)."""
  s = rec["summary"]
  if _is_text(case):
    return -_nan_if_none(s["final_val_loss"])
  return _nan_if_none(s["final_val_accuracy"])


def _nan_if_none(v: Any) -> float:
  return math.nan if v is None else float(v)


def _metric_text(case: dict[str, Any], rec: dict[str, Any]) -> str:
  unit = " bits/byte" if _is_text(case) else " % test"
  return f"{_test(case, rec):.3f}{unit}"


def _steps_to(rec: dict[str, Any], target: float, text: bool) -> int | None:
  """Steps until the run's validation metric first reaches ``target`` (per epoch)."""
  s = rec["summary"]
  vals = s["val_loss_per_epoch"] if text else s["val_accuracy_per_epoch"]
  for e, v in enumerate(vals):
    if v is not None and ((-v if text else v) >= target - 1e-12):
      return (e + 1) * s["steps_per_epoch"]
  return None


def summarize(case: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
  """Per method: test mean / std / worst seed, gap to the grid, time-to-result, bytes."""
  text = _is_text(case)
  sign = -1.0 if text else 1.0  # Higher is better after the sign.
  best = picked_cell(case, records)
  target = _val(case, best) if best else None
  out: dict[str, Any] = {"grid_cell": best and (best["peak_lr"], best["warmup_fraction"]),
                         "grid_cells": sorted({(r["peak_lr"], r["warmup_fraction"])
                                               for r in records if r["method"] == "grid"}),
                         "methods": {}}
  for m in ALL_METHODS:
    rs = [best] if m == "grid" and best else [r for r in records if r["method"] == m]
    if m in ("grid_seeds", "grid_linear") and best and rs:  # The picked cell only.
      rs = [r for r in rs if (r["peak_lr"], r["warmup_fraction"])
            == (best["peak_lr"], best["warmup_fraction"])]
      rs = [best] + rs if m == "grid_seeds" else rs  # Seeds 0-2.
    if not rs:
      continue
    vals = np.array([_test(case, r) for r in rs])
    worst = float(vals.min() if not text else vals.max())
    steps = [_steps_to(r, target, text) for r in rs] if target is not None else []
    row = dict(n=len(rs), mean=float(vals.mean()), std=float(vals.std()), worst=worst,
               steps=steps, bytes=rs[0]["summary"]["opt_state_bytes"],
               restart=[r["summary"].get("restart_lr") for r in rs],
               switch=[r["summary"].get("switch_step") for r in rs])
    if best is not None:
      g = _test(case, best)
      row["gap"] = sign * (row["mean"] - g) + 0.0  # + 0.0: no "-0.00".
      row["worst_gap"] = sign * (worst - g) + 0.0
      if text:  # Relative, in % of the grid's bits per byte.
        row["gap"], row["worst_gap"] = (100 * row["gap"] / g, 100 * row["worst_gap"] / g)
    out["methods"][m] = row
  seeds = out["methods"].get("grid_seeds")
  if seeds and seeds["n"] == len(AUTOWU_SEEDS):  # Gaps to the cell's mean of 3 seeds.
    for row in out["methods"].values():
      g = seeds["mean"]
      row["gap_seeds"] = (100 * (g - row["mean"]) / g if text else row["mean"] - g) + 0.0
  return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def _order(method: str) -> int:
  return METHODS.index(method) if method in METHODS else len(METHODS) + list(VARIANTS).index(
      method.split(":")[1])


def _label(method: str) -> str:
  return LABELS.get(method) or f"AutoWU + {method.split(':')[1]} (candidate)"


LABELS = {"autowu": "AutoWU defaults (ours)", "authors": "AutoWU, authors' rule",
          "grid": "tuned grid (picked on val)", "grid_seeds": "grid's cell, seeds 0-2",
          "grid_linear": "grid's cell, linear decay",
          "schedule_free_adamw": "Schedule-Free AdamW",
          "prodigy": "Prodigy", "dadapt_adamw": "D-Adapt AdamW",
          "mechanize_lamb": "Mechanic (LAMB)", "reduce_on_plateau": "reduce-on-plateau"}


def _case_lines(case: dict[str, Any], summ: dict[str, Any]) -> list[str]:
  text = _is_text(case)
  unit = "test bits/byte (lower is better)" if text else "test accuracy %"
  gap_unit = "% of grid bpb (+ = better)" if text else "pp vs grid"
  cell, cells = summ["grid_cell"], summ["grid_cells"]
  held_out = (f"held out (added with library `{case['held_out']}` frozen; it chose nothing); "
              if case.get("held_out") else "")
  lines = [f"### {case['name']}", "",
           f"{held_out}{case['model']} + {case['family']}, batch {case['batch_size']}, "
           f"{case['epochs']} epoch(s); grid cell picked on validation: "
           + (f"peak {cell[0]:.3g}, warmup {cell[1]:g}" if cell else "- (no grid yet)")
           + (f" (of {len(cells)} cells: peaks "
              f"{', '.join(f'{p:.2g}' for p in sorted({c[0] for c in cells}))})"
              if cells else ""), ""]
  rows = []
  for m, r in summ["methods"].items():
    restart = [x for x in r["restart"] if x is not None]
    rows.append([_label(m), r["n"], f"{r['mean']:.3f} ± {r['std']:.3f}", f"{r['worst']:.3f}",
                 report.fmt(r.get("gap"), "+.2f"), report.fmt(r.get("worst_gap"), "+.2f"),
                 ", ".join("-" if s is None else str(s) for s in r["steps"]) or "-",
                 f"{r['bytes'] / 1e6:.2f}",
                 ", ".join(report.fmt(x) for x in restart) or ""])
  return lines + report.table(
      ["method", "seeds", unit, "worst seed", gap_unit, "worst seed gap",
       "steps to grid's val", "state MB", "restart LR"], rows) + [""]


def _overview(cases: list[dict[str, Any]], summs: dict[str, dict]) -> list[str]:
  methods = [m for m in ALL_METHODS if any(m in s["methods"] for s in summs.values())]
  rows = []
  for c in cases:
    s = summs.get(c["name"])
    if s is None:
      continue
    rows.append([c["name"], *(report.fmt(s["methods"].get(m, {}).get("gap"), "+.2f")
                              for m in methods),
                 report.fmt(s["methods"].get("autowu", {}).get("gap_seeds"), "+.2f")])
  means = []
  for text, what in ((False, "image cases, pp"), (True, "text cases, % bpb")):
    names = [c["name"] for c in cases if c["name"] in summs and _is_text(c) == text]
    row = [f"**mean over {what}**"]
    for m, key in [(m, "gap") for m in methods] + [("autowu", "gap_seeds")]:
      gaps = [summs[n]["methods"][m][key] for n in names
              if key in summs[n]["methods"].get(m, {})]
      row.append(f"**{np.mean(gaps):+.2f}** ({len(gaps)})" if gaps else "-")
    means += [row] if names else []
  return report.table(["case (gap to grid: pp, or % bpb for text; + = better)",
                       *(_label(m) for m in methods),
                       "AutoWU vs the grid's cell, seeds 0-2"], rows + means)


def _target_lines(cases: list[dict[str, Any]], summs: dict[str, dict], out_dir: Path,
                  lib: str) -> list[str]:
  """Issue 12's targets, each with what the runs measure and whether it is met."""
  img = [c for c in cases if not _is_text(c) and "autowu" in summs.get(c["name"], {}).get(
      "methods", {}) and "gap" in summs[c["name"]]["methods"]["autowu"]]
  if not img:
    return []
  ours = {c["name"]: summs[c["name"]]["methods"]["autowu"] for c in img}
  rows = []

  def add(target: str, measured: str, met: bool) -> None:
    rows.append([target, measured, "met" if met else "**not met**"])

  far = {n: r["gap"] for n, r in ours.items() if r["gap"] < -0.3}
  add("every image case within 0.3 pp of the grid (mean of 3 seeds)",
      f"{len(img) - len(far)} of {len(img)}" + (
          "; not: " + ", ".join(f"{n} {g:+.2f}" for n, g in far.items()) if far else ""),
      not far)
  mean = float(np.mean([r["gap"] for r in ours.values()]))
  add("ahead of the grid on the image average", f"{mean:+.3f} pp over {len(img)} cases",
      mean > 0)
  for m in PEERS:
    names = [n for n in ours if "gap" in summs[n]["methods"].get(m, {})]
    if names:
      a = float(np.mean([ours[n]["gap"] for n in names]))
      b = float(np.mean([summs[n]["methods"][m]["gap"] for n in names]))
      add(f"ahead of {_label(m)} on average", f"{a:+.2f} vs {b:+.2f} pp ({len(names)} cases)",
          a > b)
  worst = min(ours.items(), key=lambda kv: kv[1]["worst_gap"])
  add("no seed more than 1 pp below the grid",
      f"worst seed {worst[1]['worst_gap']:+.2f} pp ({worst[0]})", worst[1]["worst_gap"] >= -1.0)
  losses = []
  for a in img:
    for b in img:
      same = all(a.get(k) == b.get(k) for k in ("model", "family", "batch_size", "subset"))
      if same and b["epochs"] > a["epochs"]:
        losses.append((ours[b["name"]]["mean"] - ours[a["name"]]["mean"], a["name"], b["name"]))
  if losses:
    d, a, b = min(losses)
    add("a longer budget never loses more than 0.2 pp to a shorter one",
        f"worst {d:+.2f} pp ({b} vs {a})", d >= -0.2)
  flat = out_dir / "flat_start.json"
  if flat.exists():
    f = json.loads(flat.read_text())
    stale = "" if f.get("library_version") == lib else (
        f" (library `{f.get('library_version')}`, not the current one: re-run it)")
    add("flat-noisy-start streams: at most 1 bad restart in 160 "
        "(`python -m experiments.flat_start`)", f"{f['bad']} of {f['total']}{stale}",
        f["bad"] <= max(1, f["total"] // 160) and not stale)
  check = out_dir / "authors_check.md"
  found = re.search(r"^- Target .*?\*\*(NOT met|met)\*\* \((\d+)/(\d+) traces pass\)",
                    check.read_text() if check.exists() else "", re.M)
  if found:
    add("authors' rule against the authors' code: same switch epoch, restart within 2x, "
        "on every recorded trace ([`authors_check.md`](authors_check.md))",
        f"{found[2]} of {found[3]} traces", found[1] == "met")
  text = [c["name"] for c in cases if _is_text(c) and "gap" in summs.get(c["name"], {}).get(
      "methods", {}).get("autowu", {})]
  lines = ["## Targets (issue 12)", "", "Image cases in test-accuracy points; the text cases "
           "(bits per byte) are not in these rows: "
           + (", ".join(f"{n} {summs[n]['methods']['autowu']['gap']:+.1f} %" for n in text)
              or "none yet") + ".", ""]
  return lines + report.table(["target", "measured", ""], rows) + [""]


def plot(cases: list[dict[str, Any]], summs: dict[str, dict], path: Path) -> None:
  """Gap to the grid per case, and a performance profile (Dolan-Moré) over cases."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # noqa: PLC0415

  names = [c["name"] for c in cases if c["name"] in summs]
  methods = [m for m in ALL_METHODS
             if m != "grid" and any(m in summs[n]["methods"] for n in names)]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 4.8))
  w = 0.8 / max(1, len(methods))
  for j, m in enumerate(methods):
    gaps = [summs[n]["methods"].get(m, {}).get("gap", np.nan) for n in names]
    a1.bar(np.arange(len(names)) + j * w, np.clip(gaps, -5, None), w, label=_label(m))
  a1.axhline(0, color="k", lw=0.8)
  a1.axhline(-0.3, color="k", lw=0.6, ls=":")
  a1.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names, rotation=30, ha="right", fontsize=8)
  a1.set_ylabel("gap to tuned grid (pp; % bpb for text), clipped at -5")
  a1.legend(fontsize=7)
  # Performance profile on the error ratio to the best method of each case.
  ratios = {m: [] for m in methods + ["grid"]}
  for n, c in zip(names, [c for c in cases if c["name"] in summs]):
    err = {m: (r["mean"] if _is_text(c) else 100 - r["mean"])
           for m, r in summs[n]["methods"].items()}
    best = min(err.values())
    for m in ratios:
      ratios[m].append(err[m] / best if m in err else np.inf)
  taus = np.linspace(1, 1.3, 200)
  for m, rs in ratios.items():
    a2.plot(taus, [np.mean(np.array(rs) <= t) for t in taus], label=_label(m),
            lw=2 if m in ("autowu", "grid") else 1)
  a2.set_xlabel("tau: error (100 - acc %, or bpb) within tau x the best method's")
  a2.set_ylabel("fraction of cases")
  a2.set_title("performance profile")
  a2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _lm_lines(case: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
  """The transformer page's tables for one case: the summary, then every run."""
  bpb = lambda v: report.fmt(None if v is None else v / math.log(2), ".4f")
  summ = summarize(case, records)
  head = [[_label(m), r["n"], f"{r['mean']:.4f} ± {r['std']:.4f}", f"{r['worst']:.4f}",
           report.fmt(r.get("gap"), "+.1f")] for m, r in summ["methods"].items()]
  picked = summ["grid_cell"]
  rows = []
  for r in sorted(records, key=lambda r: (_order(r["method"]), r["seed"],
                                          r.get("peak_lr") or 0, r.get("warmup_fraction") or 0)):
    s = r["summary"]
    what = _label(r["method"])
    if r["method"] == "grid":
      what = f"grid cell: peak {r['peak_lr']:.2g}, warmup {r['warmup_fraction']:g}"
      if (r["peak_lr"], r["warmup_fraction"]) == picked:
        what = f"**{what} (picked on val)**"
    sw = ("" if s.get("switch_step") is None else
          f"{s['switch_step']} / {report.fmt(s['restart_lr'])} ({s['switch_reason']})")
    rows.append([what, r["seed"], bpb(s["final_val_loss"]), bpb(s["final_test_loss"]),
                 report.fmt(report.perplexity(s["final_test_loss"]), ".3f"), sw,
                 f"{r['elapsed_s']:.0f}", r["finished_at"]])
  return [f"## {case['name']}: batch {case['batch_size']} x 128 bytes, "
          f"{records[0]['summary']['total_steps']} steps", ""] + report.table(
      ["method", "runs", "test bits/byte (mean ± std)", "worst run",
       "gap to the grid, % (+ = better)"], head) + [""] + report.table(
      ["run", "seed", "val bits/byte", "test bits/byte", "test perplexity",
       "switch step / restart LR", "wall s", "finished"], rows) + [""]


def plot_lm(cases: list[dict[str, Any]], by_case: dict[str, list], path: Path) -> None:
  """Training-loss and LR curves of the transformer runs (binned means)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(2, len(cases), figsize=(7 * len(cases), 8), squeeze=False)
  for j, case in enumerate(cases):
    rs = [r for r in by_case[case["name"]] if r.get("curve")]
    grid = [r for r in rs if r["method"] == "grid"]
    best = picked_cell(case, grid)
    show = [r for r in rs if r["method"] != "grid"] + ([best] if best else [])
    for k, r in enumerate(show):
      c = r["curve"]
      label = _label(r["method"]) + (f" s{r['seed']}" if _is_rule(r["method"]) else "")
      style = dict(color=f"C{_order(r['method'])}", lw=1.2,
                   ls=["-", "--", ":"][r["seed"] % 3])
      axes[0, j].plot(c["step"], np.array(c["loss"], float) / math.log(2), label=label, **style)
      if any(v is not None for v in c["lr"]):
        axes[1, j].plot(c["step"], np.array(c["lr"], float), label=label, **style)
    axes[0, j].set_ylim(None, 4.5)
    axes[0, j].set_title(f"{case['name']}: training loss (bits/byte, binned)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_title("learning rate (D for Prodigy / D-Adapt)")
    axes[1, j].set_xlabel("step")
    axes[0, j].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def render_transformer(records: list[dict[str, Any]], out_dir: Path) -> Path | None:
  """Writes ``transformer.md`` and ``transformer.png`` from the suite's LM runs."""
  cases = [c for c in CASES if _is_text(c)]
  by_case = {c["name"]: [r for r in records if r["case"] == c["name"]] for c in cases}
  cases = [c for c in cases if by_case[c["name"]]]
  if not cases:
    return None
  lines = report.header("A byte-level transformer language model, trained with AutoWU") + [
      report.command_line("python -m experiments.suite --cases "
                          + ",".join(c["name"] for c in cases)),
      "- One run by hand: `python -m experiments.train --model transformer --dataset fortunes "
      "--schedule autowu_adamw --batch-size 16 --epochs 1`",
      report.machine_line(records[-1]["machine"]),
      f"- Dates: {min(r['finished_at'] for c in cases for r in by_case[c['name']])} .. "
      f"{max(r['finished_at'] for c in cases for r in by_case[c['name']])}",
      "- Model: decoder-only transformer (`experiments/models.py`), 2 pre-LayerNorm blocks, "
      "width 128, 4 heads, context 128, learned positions, tied embedding, 446k parameters. "
      "Data: Debian's `fortunes` (+ `fortunes-min`), 2.5 MB of English, cut into 128+1-byte "
      "windows: 17976 train / 999 validation / 999 test (a fixed permutation). Budget: one "
      "pass over the training windows (2.3M bytes) in every case.",
      "- Metric: bits per byte (the mean next-byte cross-entropy / ln 2), and perplexity "
      "per byte. The grid cell is picked on validation. AutoWU and the grid use the case's "
      "optimizer (AdamW, or LAMB for `lm_lamb_*`) with decoupled weight decay 1e-4 on the "
      "matrices; the peers are the same runs in every case at a batch size (Schedule-Free "
      "AdamW at Optax's LR 0.0025, Prodigy with Optax's defaults).",
      "- Cost: a step at batch 16 takes about 80 ms here, 0.65 s at batch 128 (a run "
      "~90 s alone); the wall times below are longer where up to 3 jobs shared the "
      "2 cores.",
      "- AutoWU rows are the current library's (see `suite.md` for the version); the "
      "rule before the knee rule ended at 3.730 / 3.803 / 3.757 (batch 16) and 4.674 / "
      "3.940 / 4.766 (batch 128) bits/byte (AdamW).", ""]
  for c in cases:
    lines += _lm_lines(c, by_case[c["name"]])
  png = out_dir / "transformer.png"
  plot_lm(cases, by_case, png)
  lines += [f"Figure: `{png.name}` (training loss and LR of every run but the "
            "grid's other cells).", ""]
  return report.write(out_dir / "transformer.md", lines, final_newline=True)


def _candidate_lines(cases: list[dict[str, Any]], runs: list[dict[str, Any]], lib: str
                     ) -> list[str]:
  """Decision-rule candidates measured with an earlier library version, next to
  that version's defaults on the same case (the record of what was tried)."""
  ok = [r for r in runs if r.get("status") == "ok" and r["method"] in ALL_METHODS
        and _is_rule(r["method"]) and r.get("library_version") != lib]
  tried = {(r["case"], r.get("library_version")) for r in ok if ":" in r["method"]}
  rows = []
  for c in cases:
    for version in sorted({v for n, v in tried if n == c["name"]}):
      same = [r for r in ok if r["case"] == c["name"] and r.get("library_version") == version]
      base = [_test(c, r) for r in same if r["method"] == "autowu"]
      for m in sorted({r["method"] for r in same if ":" in r["method"]}, key=_order):
        vals = [_test(c, r) for r in same if r["method"] == m]
        rows.append([c["name"], f"`{version}`",
                     f"{np.mean(base):.3f} ({len(base)})" if base else "-",
                     _label(m), f"{np.mean(vals):.3f} ± {np.std(vals):.3f} ({len(vals)})",
                     ", ".join(report.fmt(r["summary"].get("restart_lr")) for r in same
                               if r["method"] == m)])
  if not rows:
    return []
  return ["## Candidates tried with earlier library versions", "",
          "Test metric (accuracy %, or bits/byte for text), mean ± std (seeds); the "
          "defaults of the same version on the same case for comparison.", ""] + report.table(
      ["case", "library version", "defaults of that version", "candidate", "candidate",
       "restart LRs"], rows) + [""]


def render(runs_path: Path, out_dir: Path, cases: list[dict[str, Any]]) -> Path:
  """Writes ``suite.md`` and ``suite.png`` from the runs file."""
  lib = library_version()  # AutoWU runs of the current library only.
  records = [r for r in load_runs(runs_path) if r.get("status") == "ok" and (
      not _is_rule(r["method"]) or r.get("library_version") == lib)
      and r["method"] in ALL_METHODS]
  by_case = {c["name"]: [r for r in records if r["case"] == c["name"]] for c in cases}
  peers = {r["key"]: r for r in records if r["method"] in PEERS}
  for c in cases:  # A peer run serves every case with its config (LAMB's and AdamW's MLP).
    have = {r["key"] for r in by_case[c["name"]]}
    if not have:
      continue
    by_case[c["name"]] += [dict(peers[k], case=c["name"]) for k in (
        _key(r, lib) for r in plan(c, PEERS)) if k in peers and k not in have]
  summs = {n: summarize(c, by_case[n]) for c, n in zip(cases, by_case) if by_case[n]}
  if not records:
    raise cli.UsageError(f"no runs in {runs_path}: run the suite first")
  machines = {r["machine"].get("cpu") for r in records}
  dates = sorted(r["finished_at"] for r in records)
  lines = report.header("AutoWU suite: one run with the defaults vs a tuned grid") + [
      report.command_line("python -m experiments.suite [--cases ...] [--methods ...]") +
      "; the runs of every chunk are in `suite_runs.jsonl`, each with its command",
      report.machine_line(records[-1]["machine"]) + f" ({len(machines)} CPU model(s))",
      f"- Dates: {dates[0]} .. {dates[-1]}; {len(records)} runs, "
      f"{sum(r['elapsed_s'] for r in records) / 3600:.1f} h of training",
      "- Grid: warmup + cosine with the case's optimizer, peaks "
      f"{', '.join(f'{p:.2g}' for p in GRID_PEAKS['lamb'])} (LAMB) / "
      f"{', '.join(f'{p:.2g}' for p in GRID_PEAKS['adamw'])} (AdamW) x warmup "
      f"{GRID_WARMUPS}, seed 0; the cell with the best final **validation** metric "
      f"({IMAGE_HOLDOUT} training images held out; 5 % of the text windows) is reported "
      "on **test**.",
      f"- AutoWU: library defaults (library version `{lib}`, the hash of the code of "
      f"`optax_autolr/{{{','.join(DECISION_FILES)}}}`), seeds 0-2; the other methods seed 0; "
      "`AutoWU + <name> (candidate)`: a decision-rule candidate (`suite.VARIANTS`).",
      "- Steps to grid's val: the first epoch end at which the run's validation metric "
      "reaches the chosen grid cell's final one (`-`: never).", "",
      "## Gap to the grid per case", ""] + _overview(cases, summs) + [""] + _target_lines(
          cases, summs, out_dir, lib) + ["## Cases", ""]
  for c in cases:
    if c["name"] in summs:
      lines += _case_lines(c, summs[c["name"]])
  png = out_dir / "suite.png"
  plot(cases, summs, png)
  lines += [f"Figure: `{png.name}` (gap per case; performance profile).", ""]
  lines += _candidate_lines(cases, load_runs(runs_path), lib)
  render_transformer(records, out_dir)
  return report.write(out_dir / "suite.md", lines, final_newline=True)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m experiments.suite", description=__doc__.split("\n")[0])
  names = [c["name"] for c in CASES]
  p.add_argument("--cases", type=cli.list_of(str), default=names,
                 help="comma-separated case names (default: all): " + ", ".join(names))
  p.add_argument("--methods", type=cli.list_of(str), default=METHODS,
                 help="comma-separated methods (default: all): " + ", ".join(METHODS))
  p.add_argument("--grid-peaks", type=cli.list_of(cli.number(0, low_open=True)), default=None,
                 help="run only the grid peaks within 10%% of these (default: the case's 6); "
                      "the report lists the cells each case has")
  p.add_argument("--seeds", type=cli.list_of(int), default=None,
                 help="AutoWU seeds to run, e.g. 0 to screen a candidate (default: 0,1,2; the "
                      "report's gaps need all three)")
  p.add_argument("--max-minutes", type=cli.number(0, low_open=True), default=None,
                 help="start no run after this many minutes (the rest stays for a later call)")
  p.add_argument("--report-only", action="store_true", help="only re-render the report")
  cli.add_output_flags(p, quick="a 2-epoch smoke run on a data subset (a temp folder)",
                       out_dir="results folder (default: experiments/results)")
  return p


def main(argv: list[str] | None = None) -> Path:
  parser = build_parser()
  args = parser.parse_args(argv)
  with cli.usage_errors(parser):
    pool = QUICK_CASES if args.quick else CASES
    known = {c["name"]: c for c in pool}
    bad = [n for n in args.cases if n not in known] if not args.quick else []
    if bad:
      raise cli.UsageError(f"argument --cases: unknown {bad}; choose from {list(known)}")
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
      raise cli.UsageError(f"argument --methods: unknown {bad}; choose from {ALL_METHODS}")
    cases = pool if args.quick else [known[n] for n in args.cases]
    out_dir = report.results_dir(args.out_dir, "suite", args.quick)
    runs_path = out_dir / "suite_runs.jsonl"
    if not args.report_only:
      sweep(cases, args.methods, runs_path, quick=args.quick, max_minutes=args.max_minutes,
            grid_peaks=args.grid_peaks, seeds=args.seeds)
    path = render(runs_path, out_dir, pool)
    log(f"wrote {path}")
    return path


if __name__ == "__main__":
  main()
