"""AutoWU vs a tuned warmup-cosine grid vs the LR-free methods of Optax.

Run as ``python -m experiments.compare [options]`` from the repository root::

    python -m experiments.compare                      # short budget, B=1024,4096,8192
    python -m experiments.compare --long-epochs 60 --long-batch-sizes 4096
    python -m experiments.compare --max-minutes 240    # stop launching runs after 4 h
    python -m experiments.compare --dry-run            # print the ordered plan only
    python -m experiments.compare --from-jsonl experiments/results/compare_runs.jsonl
    python -m experiments.compare --quick --out-dir /tmp/cmp   # smoke test (< 1 min)

For every batch size and epoch budget (MLP on Fashion-MNIST, through
:func:`experiments.train.run`, one dataset load shared by all runs):

(a) AutoWU with LAMB and with AdamP, untuned: our defaults (the library's
    ``test_every`` and divergence guard) and the authors' rule
    (``test_every="epoch"``, ``divergence_factor=None``): 4 runs;
(b) ``warmup_cosine_lamb`` over a grid of peak LRs x warmup fractions
    (default 6 peaks 10^-3 .. 10^-0.5, 0.5 decade apart, x warmup 0.05 / 0.2 =
    12 runs); the best cell (chosen on the final *test* accuracy, so an
    optimistic baseline) and its position in the grid are reported, plus the
    untuned default cell (peak 0.01, warmup 0.05) when the grid holds it;
(c) the LR-free methods of :mod:`experiments.schedules` with their defaults.

Every finished run is appended at once to a JSON-lines file (default
``<out-dir>/compare_runs.jsonl``), keyed by its training configuration. With
``--resume`` (default) runs already in the file with the same key *and the same
code version* (a hash of ``optax_autolr/*.py`` and the experiment modules it
depends on) are not trained again; ``--reuse-other-code`` also reuses runs made
by other code. Runs go in order of information: all AutoWU + LR-free runs of the
short budget (all batch sizes), then the short grid, then the long budget.
``--max-minutes`` stops launching new runs after that wall time; Ctrl-C stops
too; either way the tables are written from what is there ("not run" cells).

Outputs (``--out-dir``, default ``experiments/results``): ``compare.md``
(command, machine, date, wall time, tables, generated summary),
``compare.png`` (final test accuracy vs batch size, one panel per budget) and
the runs file. Per-run training outputs (``metrics.jsonl`` etc.) go to
``--run-dir`` (default ``runs/compare``, ignored by git).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python experiments/compare.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import cli, report  # noqa: E402
from experiments.machine import machine_info  # noqa: E402
from experiments.report import fmt  # noqa: E402

__all__ = ["RunSpec", "build_parser", "build_plan", "load_runs", "main", "render"]

REPO_ROOT = Path(__file__).resolve().parent.parent

AUTOWU_METHODS: tuple[str, ...] = (
    "autowu_lamb", "autowu_adamp", "autowu_lamb:authors", "autowu_adamp:authors")
LR_FREE_METHODS: tuple[str, ...] = (
    "prodigy", "dadapt_adamw", "schedule_free_adamw", "mechanize_lamb", "cocob",
    "reduce_on_plateau")
GRID = "grid"  # warmup_cosine_lamb over the grid (the tuned baseline).
GRID_DEFAULT = "grid:default"  # The grid cell at the schedule's default peak / warmup.
GRID_SCHEDULE = "warmup_cosine_lamb"

LABELS: dict[str, str] = {
    "autowu_lamb": "AutoWU LAMB (ours)",
    "autowu_adamp": "AutoWU AdamP (ours)",
    "autowu_lamb:authors": "AutoWU LAMB (authors' rule)",
    "autowu_adamp:authors": "AutoWU AdamP (authors' rule)",
    GRID: "warmup-cosine LAMB, tuned (best grid cell)",
    GRID_DEFAULT: "warmup-cosine LAMB, untuned default cell",
    "prodigy": "Prodigy",
    "dadapt_adamw": "D-Adapt AdamW",
    "schedule_free_adamw": "Schedule-Free AdamW",
    "mechanize_lamb": "Mechanic (LAMB)",
    "cocob": "COCOB",
    "reduce_on_plateau": "AdamW + reduce-on-plateau",
}
METHOD_ORDER: tuple[str, ...] = AUTOWU_METHODS + (GRID, GRID_DEFAULT) + LR_FREE_METHODS

# TrainConfig fields that do not change what is trained (not part of the run key).
_NON_KEY_FIELDS = frozenset(
    {"data_dir", "out_dir", "plot", "tensorboard", "quiet", "checkpoint_dir", "resume"})
# Sources whose change changes the results (hashed into the code version).
_CODE_FILES = ("experiments/train.py", "experiments/schedules.py", "experiments/data.py",
               "experiments/models.py")

FULL = dict(
    batch_sizes=[1024, 4096, 8192],
    short_epochs=20,
    long_epochs=None,
    long_batch_sizes=None,  # None: all of batch_sizes.
    seeds=[0],
    grid_peaks=[10.0 ** (-3 + 0.5 * k) for k in range(6)],
    grid_warmups=[0.05, 0.2],
    autowu=list(AUTOWU_METHODS),
    lr_free=list(LR_FREE_METHODS),
    subset=None,
)
QUICK = dict(
    FULL,
    batch_sizes=[256],
    short_epochs=2,
    grid_peaks=[1e-2, 1e-1],
    grid_warmups=[0.05],
    lr_free=["dadapt_adamw", "schedule_free_adamw"],
    subset=(2048, 512),
)


log = report.logger("compare")


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the sweep (``phase`` only orders the runs)."""

  phase: int
  budget: str  # "short" or "long".
  epochs: int
  batch_size: int
  seed: int
  method: str  # One of AUTOWU_METHODS, LR_FREE_METHODS or GRID.
  peak_lr: float | None = None
  warmup_fraction: float | None = None
  is_default_cell: bool = False

  @property
  def schedule(self) -> str:
    return GRID_SCHEDULE if self.method == GRID else self.method.split(":")[0]

  def train_config(self, setting: dict[str, Any]) -> dict[str, Any]:
    """Fields of :class:`experiments.train.TrainConfig` (output fields excluded)."""
    cfg: dict[str, Any] = dict(
        schedule=self.schedule, model=setting["model"], dataset=setting["dataset"],
        batch_size=self.batch_size, epochs=self.epochs, seed=self.seed,
        subset=tuple(setting["subset"]) if setting.get("subset") else None)
    if self.method.endswith(":authors"):
      cfg.update(test_every="epoch", divergence_factor=None)
    if self.method == GRID:
      cfg.update(peak_lr=self.peak_lr, warmup_fraction=self.warmup_fraction)
    return cfg

  def describe(self) -> str:
    s = f"{self.method} B={self.batch_size} {self.epochs}ep seed={self.seed}"
    if self.method == GRID:
      s += f" peak={self.peak_lr:.3g} warmup={self.warmup_fraction:g}"
    return s


def _center_out(values: list[float]) -> list[float]:
  """Grid values from the middle outwards (a cut-off grid keeps the likely best)."""
  vals = sorted(values)
  mid = (len(vals) - 1) / 2
  return sorted(vals, key=lambda v: (abs(vals.index(v) - mid), -vals.index(v)))


def build_plan(opts: dict[str, Any], default_cell: tuple[float, float] | None = None
               ) -> list[RunSpec]:
  """All runs, most informative first.

  Phases: 0 short-budget AutoWU + LR-free (all batch sizes), 1 short grid,
  2 long-budget AutoWU + LR-free, 3 long grid. Within a phase: seed, batch
  size, method (grid peaks centre-out, both warmups per peak).
  """
  budgets = [("short", opts["short_epochs"], list(opts["batch_sizes"]))]
  if opts.get("long_epochs"):
    budgets.append(("long", opts["long_epochs"],
                    list(opts.get("long_batch_sizes") or opts["batch_sizes"])))
  grid = [(p, w) for p in _center_out(opts["grid_peaks"]) for w in opts["grid_warmups"]]
  plan: list[RunSpec] = []
  for b_idx, (budget, epochs, batch_sizes) in enumerate(budgets):
    singles = list(opts["autowu"]) + list(opts["lr_free"])
    for seed in opts["seeds"]:
      for bs in batch_sizes:
        plan += [RunSpec(2 * b_idx, budget, epochs, bs, seed, m) for m in singles]
    if budget == "long" and not opts.get("long_grid", True):
      continue
    for seed in opts["seeds"]:
      for bs in batch_sizes:
        for p, w in grid:
          is_def = default_cell is not None and math.isclose(
              p, default_cell[0], rel_tol=1e-9) and math.isclose(
              w, default_cell[1], rel_tol=1e-9)
          plan.append(RunSpec(2 * b_idx + 1, budget, epochs, bs, seed, GRID,
                              float(p), float(w), is_def))
  return plan


# ---------------------------------------------------------------------------
# Runs file
# ---------------------------------------------------------------------------


def load_runs(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Records of a runs file (a truncated or corrupt line is skipped with a warning)."""
  path = Path(path)
  if not path.exists():
    return []
  out = []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      log(f"warning: {path}:{i} is not valid JSON (interrupted write?); skipped")
  return out


def _json_default(o: Any) -> Any:
  try:
    import numpy as np  # noqa: PLC0415

    if isinstance(o, np.generic):
      return o.item()
    if isinstance(o, np.ndarray):
      return o.tolist()
  except ImportError:  # pragma: no cover
    pass
  return str(o)


def append_run(path: Path, record: dict[str, Any]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")
    f.flush()
    os.fsync(f.fileno())


def run_key(train_config: dict[str, Any]) -> str:
  """Canonical JSON of every TrainConfig field that affects training (defaults filled).

  The AutoWU fields (``decay``, ``test_every``, ...) count for the AutoWU schedules only.
  """
  from experiments import train  # noqa: PLC0415

  cfg = dataclasses.asdict(train.TrainConfig(**train_config))
  lib, schedule = train.schedules_lib, train.schedules_lib.canonical(cfg["schedule"])
  other = schedule in lib.SCHEDULES and schedule not in lib.AUTOWU_SCHEDULES
  # Not in other runs' keys: a change of AutoWU's defaults leaves cached grids valid.
  skip = _NON_KEY_FIELDS | (set(train.TrainConfig.AUTOWU_FIELDS) if other else set())
  key = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k not in skip}
  return json.dumps(key, sort_keys=True, default=str)


def code_version() -> str:
  """Short hash of the package and experiment sources a run depends on."""
  h = hashlib.sha256()
  files = sorted((REPO_ROOT / "optax_autolr").glob("*.py")) + [REPO_ROOT / f
                                                               for f in _CODE_FILES]
  for f in files:
    if f.exists():
      h.update(f.relative_to(REPO_ROOT).as_posix().encode())
      h.update(f.read_bytes())
  return h.hexdigest()[:12]


_SUMMARY_DROP = ("history",)


def _make_record(spec: RunSpec, key: str, setting: dict[str, Any], status: str,
                 summary: dict[str, Any] | None, error: str | None, meta: dict[str, Any],
                 elapsed: float) -> dict[str, Any]:
  rec: dict[str, Any] = {
      "key": key,
      "key_hash": hashlib.sha1(key.encode()).hexdigest()[:12],
      "status": status,
      "method": spec.method,
      "schedule": spec.schedule,
      "budget": spec.budget,
      "epochs": spec.epochs,
      "batch_size": spec.batch_size,
      "seed": spec.seed,
      "peak_lr": spec.peak_lr,
      "warmup_fraction": spec.warmup_fraction,
      "is_default_cell": spec.is_default_cell,
      "model": setting["model"],
      "dataset": setting["dataset"],
      "subset": list(setting["subset"]) if setting.get("subset") else None,
      "code_version": meta["code_version"],
      "sweep": {"command": meta["command"], "started_at": meta["date"]},
      "machine": meta["machine"],
      "finished_at": report.date_now(),
      "elapsed_s": elapsed,
  }
  if summary is not None:
    rec["summary"] = {k: v for k, v in summary.items() if k not in _SUMMARY_DROP}
  if error is not None:
    rec["error"] = error
  return rec


# ---------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------


def _run_dir_name(spec: RunSpec, key: str) -> str:
  h = hashlib.sha1(key.encode()).hexdigest()[:8]
  return (f"{spec.method.replace(':', '-')}_b{spec.batch_size}_e{spec.epochs}"
          f"_s{spec.seed}_{h}")


def sweep(plan: list[RunSpec], setting: dict[str, Any], runs_path: Path, run_dir: Path,
          meta: dict[str, Any], *, resume: bool, reuse_other_code: bool,
          max_minutes: float | None, t0: float, data_dir: str | None = None
          ) -> dict[str, Any]:
  """Trains the plan's missing runs in order; returns counts."""
  from experiments import data as data_lib  # noqa: PLC0415
  from experiments import train  # noqa: PLC0415

  keys = [run_key(s.train_config(setting)) for s in plan]
  done_same, done_other = set(), set()
  if resume:
    for r in load_runs(runs_path):
      if r.get("status") != "ok":
        continue
      (done_same if r.get("code_version") == meta["code_version"] else done_other).add(
          r["key"])
  skip = done_same | (done_other if reuse_other_code else set())
  todo = [(s, k) for s, k in zip(plan, keys) if k not in skip]
  redo = sum(k in done_other and k not in done_same for k in keys)
  log(f"{len(plan)} runs planned; {len(plan) - len(todo)} already in {runs_path}; "
      f"{len(todo)} to train")
  if redo and not reuse_other_code:
    log(f"note: {redo} planned runs are in the runs file from other code versions and "
        "will be trained again (--reuse-other-code to reuse them)")
  counts = dict(planned=len(plan), reused=len(plan) - len(todo), trained=0, failed=0,
                not_run=0, stopped=None)
  dataset = None
  times: list[float] = []
  for i, (spec, key) in enumerate(todo):
    elapsed_min = (time.perf_counter() - t0) / 60
    if max_minutes is not None and elapsed_min >= max_minutes:
      counts["not_run"] = len(todo) - i
      counts["stopped"] = f"--max-minutes {max_minutes:g} reached"
      log(f"wall budget of {max_minutes:g} min reached: {len(todo) - i} runs not started")
      break
    if dataset is None:
      dataset = data_lib.load_dataset(setting["dataset"], data_dir)
      log(f"loaded {dataset.name} from {dataset.source}: {len(dataset.train_x)} train "
          f"/ {len(dataset.test_x)} test")
    cfg = dict(spec.train_config(setting), data_dir=data_dir, quiet=True, plot=False,
               tensorboard=False, out_dir=str(run_dir / _run_dir_name(spec, key)))
    t_run = time.perf_counter()
    summary, error = None, None
    try:
      with contextlib.redirect_stdout(io.StringIO()):  # run()'s summary line.
        summary = train.run(cfg, dataset=dataset)
      status = "ok"
    except KeyboardInterrupt:
      counts["not_run"] = len(todo) - i
      counts["stopped"] = "interrupted (Ctrl-C)"
      log(f"interrupted: {len(todo) - i} runs not finished")
      break
    except Exception as e:  # noqa: BLE001 - record it, go on with the sweep.
      status, error = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"
    dt = time.perf_counter() - t_run
    append_run(runs_path, _make_record(spec, key, setting, status, summary, error, meta, dt))
    if status == "ok":
      counts["trained"] += 1
      times.append(dt)
      acc = summary.get("final_test_accuracy")
      extra = ""
      if summary.get("switch_reason") is not None:
        extra = (f" | switch {summary['switch_step']}/{summary['total_steps']} "
                 f"LR {fmt(summary['restart_lr'])} ({summary['switch_reason']})")
      res = f"acc {fmt(acc, '.4f')}{extra}"
    else:
      counts["failed"] += 1
      res = f"FAILED {error}"
    left = len(todo) - i - 1
    eta = f", ~{left * sum(times) / len(times) / 60:.0f} min left" if times and left else ""
    log(f"[{i + 1}/{len(todo)}] {spec.describe()}: {res} | {dt:.1f}s "
        f"(total {(time.perf_counter() - t0) / 60:.1f} min{eta})")
  return counts


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------


def _latest_by_key(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The last record of each key (a later rerun replaces an earlier one); ok beats error."""
  best: dict[str, dict[str, Any]] = {}
  for r in records:
    k = r.get("key")
    if k is None:
      continue
    old = best.get(k)
    if old is None or r.get("status") == "ok" or old.get("status") != "ok":
      best[k] = r
  return list(best.values())


def layout_from_plan(plan: list[RunSpec], opts: dict[str, Any], setting: dict[str, Any]
                     ) -> dict[str, Any]:
  budgets: dict[int, dict[str, Any]] = {}
  for s in plan:
    b = budgets.setdefault(s.epochs, dict(label=s.budget, epochs=s.epochs, batch_sizes=[],
                                          methods=[], grid=False))
    if s.batch_size not in b["batch_sizes"]:
      b["batch_sizes"].append(s.batch_size)
    if s.method == GRID:
      b["grid"] = True
    elif s.method not in b["methods"]:
      b["methods"].append(s.method)
  for b in budgets.values():
    b["batch_sizes"].sort()
  return dict(budgets=[budgets[e] for e in sorted(budgets)], seeds=list(opts["seeds"]),
              grid_peaks=sorted(opts["grid_peaks"]), grid_warmups=sorted(opts["grid_warmups"]),
              setting=setting)


def _setting_of(r: dict[str, Any]) -> tuple:
  return (r.get("model"), r.get("dataset"), tuple(r["subset"]) if r.get("subset") else None)


def layout_from_records(records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict]]:
  """Layout inferred from a runs file; keeps the most frequent (model, data, subset)."""
  if not records:
    raise ValueError("the runs file holds no runs")
  settings = collections.Counter(_setting_of(r) for r in records)
  (model, dataset, subset), _ = settings.most_common(1)[0]
  if len(settings) > 1:
    log(f"warning: runs of {len(settings)} settings in the file; rendering "
        f"model={model} dataset={dataset} subset={subset} "
        f"({settings.most_common(1)[0][1]} of {len(records)} records)")
  records = [r for r in records if _setting_of(r) == (model, dataset, subset)]
  budgets: dict[int, dict[str, Any]] = {}
  peaks, warmups, seeds = set(), set(), set()
  for r in records:
    e = int(r["epochs"])
    b = budgets.setdefault(e, dict(label=r.get("budget", "short"), epochs=e,
                                   batch_sizes=[], methods=[], grid=False))
    if r["batch_size"] not in b["batch_sizes"]:
      b["batch_sizes"].append(r["batch_size"])
    seeds.add(r["seed"])
    if r["method"] == GRID:
      b["grid"] = True
      peaks.add(r["peak_lr"])
      warmups.add(r["warmup_fraction"])
    elif r["method"] not in b["methods"]:
      b["methods"].append(r["method"])
  for b in budgets.values():
    b["batch_sizes"].sort()
    b["methods"].sort(key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
  setting = dict(model=model, dataset=dataset, subset=list(subset) if subset else None)
  return dict(budgets=[budgets[e] for e in sorted(budgets)], seeds=sorted(seeds),
              grid_peaks=sorted(peaks), grid_warmups=sorted(warmups),
              setting=setting), records


def _acc(r: dict[str, Any]) -> float | None:
  v = (r.get("summary") or {}).get("final_test_accuracy")
  return float(v) if v is not None and math.isfinite(float(v)) else None


def _wall(r: dict[str, Any]) -> float:
  s = r.get("summary") or {}
  v = s.get("total_time_s", s.get("wall_time_s"))
  return float(v) if v is not None else float(r.get("elapsed_s") or 0.0)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
  if not values:
    return None, None
  m = sum(values) / len(values)
  if len(values) < 2:
    return m, None
  return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def aggregate(records: list[dict[str, Any]], layout: dict[str, Any]) -> dict[tuple, dict]:
  """cells[(epochs, batch_size, method)] -> numbers of that table cell."""
  by = collections.defaultdict(list)
  for r in _latest_by_key(records):
    by[(int(r["epochs"]), int(r["batch_size"]), r["method"])].append(r)
  seeds = layout["seeds"]
  cells: dict[tuple, dict] = {}
  for b in layout["budgets"]:
    e = b["epochs"]
    for bs in b["batch_sizes"]:
      for m in b["methods"]:
        rs = [r for r in by.get((e, bs, m), []) if r["seed"] in seeds]
        ok = [r for r in rs if r.get("status") == "ok" and _acc(r) is not None]
        accs = [_acc(r) for r in ok]
        mean, std = _stats(accs)
        cells[(e, bs, m)] = dict(
            acc=mean, std=std, n=len(ok), n_expected=len(seeds),
            runs=len(ok), runs_per_seed=1 if ok else 0,
            wall_total=sum(_wall(r) for r in ok),
            wall_per_seed=(sum(_wall(r) for r in ok) / len(ok)) if ok else None,
            errors=[r.get("error") for r in rs if r.get("status") != "ok"],
            records=sorted(ok, key=lambda r: r["seed"]))
      if not b["grid"]:
        continue
      rs = [r for r in by.get((e, bs, GRID), []) if r["seed"] in seeds]
      ok = [r for r in rs if r.get("status") == "ok" and _acc(r) is not None]
      grid_cells: dict[tuple[float, float], dict] = {}
      for r in ok:
        c = grid_cells.setdefault((r["peak_lr"], r["warmup_fraction"]),
                                  dict(accs=[], default=False))
        c["accs"].append(_acc(r))
        c["default"] = c["default"] or bool(r.get("is_default_cell"))
      for c in grid_cells.values():
        c["acc"], c["std"] = _stats(c["accs"])
        c["n"] = len(c["accs"])
      n_cells = len(layout["grid_peaks"]) * len(layout["grid_warmups"])
      best = max(grid_cells, key=lambda k: (grid_cells[k]["acc"], -k[0]), default=None)
      seeds_run = {r["seed"] for r in ok}
      wall_total = sum(_wall(r) for r in ok)
      g = dict(runs=len(ok), wall_total=wall_total,
               runs_per_seed=len(ok) / len(seeds_run) if seeds_run else 0,
               wall_per_seed=wall_total / len(seeds_run) if seeds_run else None,
               n_expected=len(seeds), cells=grid_cells, n_cells=n_cells,
               n_cells_run=len(grid_cells),
               complete=len(ok) == n_cells * len(seeds),
               errors=[r.get("error") for r in rs if r.get("status") != "ok"],
               best=best)
      if best is not None:
        bc = grid_cells[best]
        g.update(acc=bc["acc"], std=bc["std"], n=bc["n"])
        idx = layout["grid_peaks"].index(best[0]) if best[0] in layout["grid_peaks"] \
            else None
        g["peak_index"] = idx
      else:
        g.update(acc=None, std=None, n=0)
      cells[(e, bs, GRID)] = g
      dflt = [k for k, c in grid_cells.items() if c["default"]]
      if dflt:
        c = grid_cells[dflt[0]]
        cells[(e, bs, GRID_DEFAULT)] = dict(
            acc=c["acc"], std=c["std"], n=c["n"], n_expected=len(seeds),
            runs=0, wall_total=0.0, wall_per_seed=None, errors=[], cell=dflt[0])
  return cells


def _methods_of(b: dict[str, Any], cells: dict[tuple, dict]) -> list[str]:
  ms = list(b["methods"])
  if b["grid"]:
    ms.append(GRID)
    if any((b["epochs"], bs, GRID_DEFAULT) in cells for bs in b["batch_sizes"]):
      ms.append(GRID_DEFAULT)
  return sorted(ms, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _fmt_acc_cell(c: dict | None, grid: bool = False) -> str:
  if c is None:
    return "not run"
  if c.get("acc") is None:
    return "error" if c.get("errors") else "not run"
  s = f"{c['acc']:.4f}"
  if c.get("std") is not None:
    s += f" ± {c['std']:.4f}"
  s += f" (n={c['n']})"
  if c["n"] < c["n_expected"]:
    s += f" (of {c['n_expected']})"
  if grid and not c.get("complete", True):
    s += f" partial grid {c['n_cells_run']}/{c['n_cells']}"
  return s


def _pp(d: float) -> str:
  return f"{100 * d:+.2f} pp"


def _label(m: str) -> str:
  return LABELS.get(m, m)


def _grid_position(g: dict, layout: dict) -> str:
  if g.get("best") is None:
    return "-"
  peaks = layout["grid_peaks"]
  i = g.get("peak_index")
  if i is None:
    return "peak not on the grid"
  n = len(peaks)
  if n == 1:
    return "the only peak"
  where = ("interior" if 0 < i < n - 1 else
           "EDGE: smallest peak" if i == 0 else "EDGE: largest peak")
  return f"peak {i + 1}/{n} ({where})"


def plot(cells: dict[tuple, dict], layout: dict[str, Any], path: Path) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # noqa: PLC0415

  budgets = layout["budgets"]
  fig, axes = plt.subplots(1, len(budgets), figsize=(7.5 * len(budgets) + 3.5, 5.2),
                           squeeze=False)
  styles = {
      "autowu_lamb": dict(color="C3", marker="o", lw=2.4),
      "autowu_adamp": dict(color="C1", marker="s", lw=2.4),
      "autowu_lamb:authors": dict(color="C3", marker="o", lw=1.4, ls="--", mfc="none"),
      "autowu_adamp:authors": dict(color="C1", marker="s", lw=1.4, ls="--", mfc="none"),
      GRID: dict(color="k", marker="D", lw=2.4),
      GRID_DEFAULT: dict(color="0.45", marker="D", lw=1.2, ls=":", mfc="none"),
  }
  for m, color in zip(LR_FREE_METHODS, ("C0", "C2", "C4", "C5", "C6", "C9")):
    styles[m] = dict(color=color, marker="^", lw=1.1, alpha=0.85)
  for ax, b in zip(axes[0], budgets):
    # Zoom on the competitive range (at most 15 points below the best); results
    # below it are drawn as arrows on the lower edge, labelled with their value.
    accs = [c["acc"] for (e, _, _), c in cells.items()
            if e == b["epochs"] and c.get("acc") is not None]
    top = max(accs) if accs else 1.0
    floor = max(min(accs), top - 0.15) - 0.01 if accs else 0.0
    for j, m in enumerate(_methods_of(b, cells)):
      st = styles.get(m) or dict(color="C8", marker="x", lw=1.0)
      xs, ys, es = [], [], []
      for bs in b["batch_sizes"]:
        c = cells.get((b["epochs"], bs, m))
        if c is not None and c.get("acc") is not None:
          xs.append(bs)
          ys.append(max(c["acc"], floor))
          es.append(c.get("std") or 0.0)
          if c["acc"] < floor:
            ax.annotate(f"{c['acc']:.3f}", (bs, floor), color=st["color"],
                        xytext=(6, 4 + 9 * (j % 4)), textcoords="offset points",
                        fontsize=7)
      if not xs:
        continue
      ax.errorbar(xs, ys, yerr=es if any(es) else None, label=_label(m), ms=6,
                  capsize=3, **st)
      low = [(x, y) for x, y in zip(xs, ys) if y <= floor]
      if low:
        ax.plot(*zip(*low), ls="none", marker="v", ms=9, color=st["color"])
    if accs:
      ax.set_ylim(floor - 0.005, top + 0.01)
    ax.set_xscale("log", base=2)
    ax.set_xticks(b["batch_sizes"])
    ax.set_xticklabels([str(x) for x in b["batch_sizes"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"{b['label']} budget: {b['epochs']} epochs "
                 f"({layout['setting']['model']}, {layout['setting']['dataset']})"
                 + ("\n(▼ on the lower edge: below the axis, value written)"
                    if accs and min(accs) < floor else ""))
    ax.grid(alpha=0.3)
  handles, labels = [], []
  for ax in axes[0]:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in labels:
        handles.append(h)
        labels.append(lab)
  fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0, 1 - 3.4 / fig.get_figwidth(), 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _ranked(b: dict, bs: int, cells: dict, methods: list[str]) -> list[tuple[float, str]]:
  out = [(cells[(b["epochs"], bs, m)]["acc"], m) for m in methods
         if (b["epochs"], bs, m) in cells and cells[(b["epochs"], bs, m)].get("acc") is not None]
  return sorted(out, reverse=True)


def generated_summary(cells: dict, layout: dict, tie_pp: float) -> list[str]:
  """Plain-text findings computed from the numbers (one bullet per line)."""
  tie = tie_pp / 100
  L: list[str] = []
  tally = collections.Counter()
  n_cmp = 0
  gaps, ratios = [], []
  within = 0
  for b in layout["budgets"]:
    e = b["epochs"]
    # The untuned default cell is one of the grid's runs: reported, not ranked.
    methods = [m for m in _methods_of(b, cells) if m != GRID_DEFAULT]
    for bs in b["batch_sizes"]:
      ranked = _ranked(b, bs, cells, methods)
      if not ranked:
        L.append(f"- {b['label']} ({e} ep), B={bs}: no finished runs.")
        continue
      (a1, m1), rest = ranked[0], ranked[1:]
      s = f"- {b['label']} ({e} ep), B={bs}: best **{_label(m1)}** {a1:.4f}"
      if rest:
        a2, m2 = rest[0]
        verdict = "a tie within" if a1 - a2 < tie else "ahead by more than"
        s += (f", {_pp(a1 - a2)} over {_label(m2)} ({a2:.4f}; {verdict} "
              f"{tie_pp:g} pp)")
      worst_a, worst_m = ranked[-1]
      if len(ranked) > 2:
        s += f"; worst {_label(worst_m)} {worst_a:.4f}"
      s += "."
      aw = [(a, m) for a, m in ranked if m in AUTOWU_METHODS]
      lf = [(a, m) for a, m in ranked if m in LR_FREE_METHODS]
      g = cells.get((e, bs, GRID))
      parts = []
      if aw:
        a_aw, m_aw = aw[0]
        parts.append(f"Best AutoWU variant {_label(m_aw)} {a_aw:.4f}")
        if g is not None and g.get("acc") is not None:
          parts.append(f"{_pp(a_aw - g['acc'])} vs the tuned grid")
        if lf:
          parts.append(f"{_pp(a_aw - lf[0][0])} vs the best LR-free method "
                       f"({_label(lf[0][1])} {lf[0][0]:.4f})")
      d = cells.get((e, bs, GRID_DEFAULT))
      if (d and d.get("acc") is not None and g and g.get("acc") is not None
              and g.get("best") != d.get("cell")):
        parts.append(f"the untuned default grid cell {d['acc']:.4f} "
                     f"({_pp(d['acc'] - g['acc'])} vs the tuned cell)")
      ours = cells.get((e, bs, "autowu_lamb"))
      if ours and ours.get("acc") is not None and g and g.get("acc") is not None:
        gap = ours["acc"] - g["acc"]
        if g.get("complete"):  # A partial grid's best is only a lower bound.
          n_cmp += 1
          gaps.append(gap)
          within += gap > -tie
        if ours.get("wall_per_seed") and g.get("wall_per_seed"):
          r = g["wall_per_seed"] / ours["wall_per_seed"]
          if g.get("complete"):
            ratios.append(r)
          parts.append(f"AutoWU LAMB (ours) {_pp(gap)} vs the grid, which took "
                       f"{r:.1f}x its wall time ({g['runs']} grid "
                       f"run{'s' if g['runs'] != 1 else ''}"
                       + ("" if g.get("complete") else ", partial grid") + ")")
      for base in ("lamb", "adamp"):
        o = cells.get((e, bs, f"autowu_{base}"))
        a = cells.get((e, bs, f"autowu_{base}:authors"))
        if o and a and o.get("acc") is not None and a.get("acc") is not None:
          parts.append(f"{base.upper()}: ours {_pp(o['acc'] - a['acc'])} vs the "
                       "authors' rule")
      if parts:
        s += " " + "; ".join(parts) + "."
      L.append(s)
      if m1 == GRID or m1 == GRID_DEFAULT:
        tally["warmup-cosine grid"] += 1
      elif m1 in AUTOWU_METHODS:
        tally["AutoWU"] += 1
      else:
        tally["LR-free"] += 1
  if tally:
    tot = sum(tally.values())
    L.append(f"- Winners over the {tot} (budget, batch size) cells: "
             + ", ".join(f"{k} {v}" for k, v in tally.most_common()) + ".")
  if n_cmp:
    L.append(f"- AutoWU LAMB (ours) vs the tuned grid (complete grids only): within "
             f"{tie_pp:g} pp or better in {within}/{n_cmp} cells; "
             f"mean difference {_pp(sum(gaps) / len(gaps))} "
             f"(range {_pp(min(gaps))} to {_pp(max(gaps))})"
             + (f"; the grid costs {min(ratios):.1f}-{max(ratios):.1f}x the wall time of "
                "one AutoWU run" if ratios else "") + ".")
  return L


def render(records: list[dict[str, Any]], layout: dict[str, Any], out_dir: Path,
           meta: dict[str, Any], *, tie_pp: float = 0.5, stem: str = "compare") -> Path:
  """Writes ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; returns the md path."""
  out_dir.mkdir(parents=True, exist_ok=True)
  cells = aggregate(records, layout)
  png = out_dir / f"{stem}.png"
  plot(cells, layout, png)
  ok = [r for r in _latest_by_key(records) if r.get("status") == "ok"]
  L = _header_lines(records, meta, png.name) + _setup_lines(layout, ok)
  for b in layout["budgets"]:
    L += _budget_lines(b, cells, layout)
  L += ["## Summary (generated from the numbers)", ""]
  L += generated_summary(cells, layout, tie_pp)
  L += ["",
        f"Ties: differences under {tie_pp:g} pp (`--tie-pp`) are called ties"
        + (f"; the pooled seed-to-seed std of the final accuracy here is "
           f"{100 * _pooled_std(cells):.2f} pp." if _pooled_std(cells) is not None else
           "; with one seed the seed-to-seed spread is not measured, so read differences of "
           "a few tenths of a point as unresolved."),
        "Caveats: the tuned grid is selected on the test set (optimistic for the baseline); "
        "the LR-free methods run with their Optax defaults, none tuned; wall times come from "
        "a shared CPU machine and include compilation.", ""]
  return report.write(out_dir / f"{stem}.md", L)


def _header_lines(records: list[dict[str, Any]], meta: dict[str, Any], png: str) -> list[str]:
  """Title, command, sweeps, machine, date, wall time, runs, code versions."""
  used = _latest_by_key(records)
  L = report.header(
      "AutoWU vs a tuned warmup-cosine grid vs LR-free optimizers",
      "QUICK smoke run: tiny subset and budget, the numbers are not meaningful."
      if meta.get("quick") else None)
  L.append(report.command_line(meta["command"]))
  for c, started in meta.get("sweeps", []):
    L.append(f"- Sweep that made (some of) the runs: `{c}`, started {started}")
  fin = sorted(r["finished_at"] for r in used if r.get("finished_at"))
  if meta.get("sweeps") and fin:
    L.append(f"- Runs finished between {fin[0]} and {fin[-1]}")
  if meta.get("machine"):
    L.append(report.machine_line(meta["machine"]))
  L.append(f"- {meta.get('date_label', 'Date')}: {meta['date']}")
  if meta.get("wall_s") is not None:
    L.append(f"- Total wall time: {meta['wall_s']:.0f} s ({meta['wall_s'] / 60:.1f} min)"
             + (f"; {meta['counts']['trained']} runs trained now, "
                f"{meta['counts']['reused']} reused from the runs file, "
                f"{meta['counts']['failed']} failed, {meta['counts']['not_run']} not run"
                if meta.get("counts") else ""))
  if meta.get("counts", {}).get("stopped"):
    L.append(f"- **Stopped early: {meta['counts']['stopped']}** (missing cells say "
             "\"not run\")")
  ok = [r for r in used if r.get("status") == "ok"]
  L.append(f"- Runs in the tables: {len(ok)} ok, {len(used) - len(ok)} failed; sum of their "
           f"wall times {sum(_wall(r) for r in ok):.0f} s "
           f"({sum(_wall(r) for r in ok) / 3600:.2f} h)")
  versions = collections.Counter(r.get("code_version") for r in used)
  L.append("- Code version(s) of these runs (hash of optax_autolr/*.py and the experiment "
           "modules): " + ", ".join(f"`{v}` ({n} runs)" for v, n in versions.most_common())
           + (" — **runs from several code versions are mixed**" if len(versions) > 1 else ""))
  L.append(f"- Raw runs: `{meta['runs_file']}`; figure: `{png}`")
  L.append("")
  return L


def _setup_lines(layout: dict[str, Any], ok: list[dict[str, Any]]) -> list[str]:
  st = layout["setting"]
  subset = (f"first {st['subset'][0]} train / {st['subset'][1]} test examples"
            if st.get("subset") else "full 60000 train / 10000 test")
  defaults = _autowu_defaults(ok)
  lr_free = [f"{_label(m)} (`{m}`)" for m in LR_FREE_METHODS
             if any(m in b["methods"] for b in layout["budgets"])]
  n_grid = len(layout["grid_peaks"]) * len(layout["grid_warmups"])
  return [
      "## Setup", "",
      f"- {st['dataset']}, {subset}, model `{st['model']}`; softmax cross-entropy; "
      "decoupled weight decay 1e-4 where the optimizer has one "
      "(see `experiments/schedules.py`); the last partial batch of an epoch is dropped.",
      f"- Seeds: {', '.join(map(str, layout['seeds']))} (initialisation and data order); "
      "accuracies are means over seeds (± sample std when n > 1).",
      "- Budgets: " + "; ".join(
          f"{b['label']} = {b['epochs']} epochs at B = "
          f"{', '.join(map(str, b['batch_sizes']))}" for b in layout["budgets"]),
      "- AutoWU, no tuning: *ours* = the library defaults"
      + (f" ({defaults})" if defaults else "")
      + "; *authors' rule* = `test_every='epoch'`, `divergence_factor=None` "
      "(minimum test once per epoch, no divergence guard).",
      "- Tuned baseline: `warmup_cosine_lamb` (linear warmup from 0, cosine decay to 0) "
      f"over peak LRs {', '.join(fmt(p) for p in layout['grid_peaks'])} x warmup "
      f"fractions {', '.join(fmt(w) for w in layout['grid_warmups'])} "
      f"({n_grid} run{'s' if n_grid != 1 else ''} per batch size and seed); the best "
      "cell is picked on the mean final **test** accuracy (there is no "
      "validation split), so this baseline is optimistic. The *untuned default cell* is "
      "the grid cell at the schedule's default peak / warmup, when the grid holds it.",
      *([("- LR-free methods with their defaults (`experiments/schedules.py`): "
          + ", ".join(lr_free) + ".")] if lr_free else []),
      "- Wall time: `total_time_s` of `experiments.train.run` (model/optimizer setup, "
      "compilation, training, evaluation after every epoch; no plots), one run at a "
      "time on the machine above.",
      ""]


def _budget_lines(b: dict[str, Any], cells: dict[tuple, dict], layout: dict[str, Any]
                  ) -> list[str]:
  """The section of one budget: accuracy, cost, key figure, switches, grid, failures."""
  e, bss = b["epochs"], b["batch_sizes"]
  methods = _methods_of(b, cells)
  L = [f"## {b['label'].capitalize()} budget: {e} epochs", "",
       "Final test accuracy (mean over seeds, n = seeds):", ""]
  L += report.table(["method", *(f"B={bs}" for bs in bss)],
                    [_accuracy_row(m, b, cells, methods) for m in methods])
  L += ["", "Cost: runs used and wall time (s) per seed for each result (the grid: all its "
        "runs; the untuned cell is one of them):", ""]
  L += report.table(["method", *(h for bs in bss for h in (f"B={bs} runs", f"B={bs} wall s"))],
                    [[_label(m), *_cost_cells(e, bss, m, cells)]
                     for m in methods if m != GRID_DEFAULT])
  L.append("")
  if b["grid"]:
    L += ["**Key figure: the tuned grid's wall time vs one AutoWU run** (per seed):", ""]
    L += report.table(["B", "grid runs", "grid wall s", "AutoWU LAMB (ours) s", "ratio",
                       "AutoWU AdamP (ours) s", "ratio"],
                      [_key_figure_row(e, bs, cells) for bs in bss])
    L.append("")
  aw = [m for m in methods if m in AUTOWU_METHODS]
  if aw:
    L += ["AutoWU switch (per run): step of the switch to the decay / total steps, "
          "restart (peak) LR, reason:", ""]
    L += report.table(["B", "method", "seed", "switch step / total", "switch epoch",
                       "restart LR", "reason", "final test acc"],
                      [r for bs in bss for m in aw for r in _switch_rows(e, bs, m, cells)])
    L.append("")
  if b["grid"]:
    L += _grid_lines(e, bss, cells, layout)
  errs = [(bs, m, err) for bs in bss for m in methods
          for err in (cells.get((e, bs, m)) or {}).get("errors", []) if err]
  if errs:
    L += ["Failed runs:", ""]
    L += [f"- B={bs} {_label(m)}: `{err}`" for bs, m, err in errs]
    L.append("")
  return L


def _accuracy_row(m: str, b: dict, cells: dict, methods: list[str]) -> list[str]:
  e, bss = b["epochs"], b["batch_sizes"]
  row = []
  for bs in bss:
    c = cells.get((e, bs, m))
    s = _fmt_acc_cell(c, grid=m == GRID)
    best = _ranked(b, bs, cells, methods)
    if c and c.get("acc") is not None and best and c["acc"] == best[0][0]:
      s = f"**{s}**"
    row.append(s)
  name = _label(m)
  if m == GRID_DEFAULT:
    cell = next((cells[(e, bs, m)]["cell"] for bs in bss if (e, bs, m) in cells), None)
    if cell:
      name += f" (peak {fmt(cell[0])}, warmup {fmt(cell[1])})"
  return [name, *row]


def _cost_cells(e: int, bss: list[int], m: str, cells: dict) -> list[str]:
  row = []
  for bs in bss:
    c = cells.get((e, bs, m))
    if c is None or not c.get("runs"):
      row += ["error" if c and c.get("errors") else "not run", "-"]
    else:
      row += [f"{c['runs_per_seed']:g}", f"{c['wall_per_seed']:.0f}"]
  return row


def _key_figure_row(e: int, bs: int, cells: dict) -> list[str]:
  g = cells.get((e, bs, GRID))
  if not g or not g.get("runs"):
    return [str(bs), "not run", "-", "-", "-", "-", "-"]
  row = [str(bs), f"{g['runs']}" + ("" if g["complete"] else " (partial)"),
         f"{g['wall_per_seed']:.0f}"]
  for m in ("autowu_lamb", "autowu_adamp"):
    c = cells.get((e, bs, m))
    if c and c.get("wall_per_seed"):
      row += [f"{c['wall_per_seed']:.0f}", f"{g['wall_per_seed'] / c['wall_per_seed']:.1f}x"]
    else:
      row += ["not run", "-"]
  return row


def _switch_rows(e: int, bs: int, m: str, cells: dict) -> list[list[Any]]:
  c = cells.get((e, bs, m))
  if not c or not c.get("records"):
    return [[bs, _label(m), "-", "not run", "-", "-", "-", "-"]]
  rows = []
  for r in c["records"]:
    s = r["summary"]
    spe = s.get("steps_per_epoch")
    sw = s.get("switch_step")
    rows.append([bs, _label(m), r["seed"],
                 f"{int(sw) if sw is not None else 'none'} / {s.get('total_steps')}",
                 fmt(sw / spe, ".1f") if sw is not None and spe else "-",
                 fmt(s.get("restart_lr")), s.get("switch_reason"), fmt(_acc(r), ".4f")])
  return rows


def _grid_lines(e: int, bss: list[int], cells: dict, layout: dict[str, Any]) -> list[str]:
  """The best grid cell per batch size, then the whole grid."""
  n_grid = len(layout["grid_peaks"]) * len(layout["grid_warmups"])
  best_rows = []
  for bs in bss:
    g = cells.get((e, bs, GRID))
    if not g or g.get("best") is None:
      best_rows.append([bs, "not run", "-", "-", "-", f"0/{n_grid}"])
      continue
    p, w = g["best"]
    best_rows.append([bs, fmt(p), fmt(w), f"{g['acc']:.4f}", _grid_position(g, layout),
                      f"{g['n_cells_run']}/{g['n_cells']}"])
  grid_rows = []
  for bs in bss:
    g = cells.get((e, bs, GRID))
    for w in layout["grid_warmups"]:
      row = []
      for p in layout["grid_peaks"]:
        c = g["cells"].get((p, w)) if g else None
        if c is None:
          row.append("not run")
        else:
          s = f"{c['acc']:.4f}"
          row.append(f"**{s}**" if g["best"] == (p, w) else s)
      grid_rows.append([bs, fmt(w), *row])
  return ["Best grid cell (mean final test accuracy over seeds):", "",
          *report.table(["B", "best peak LR", "best warmup", "test acc",
                         "position in the grid", "cells run"], best_rows), "",
          "Whole grid (mean final test accuracy; rows: batch size x warmup fraction, "
          "columns: peak LR; best per batch size in bold):", "",
          *report.table(["B", "warmup", *(fmt(p) for p in layout["grid_peaks"])],
                        grid_rows), ""]


def _pooled_std(cells: dict) -> float | None:
  num, den = 0.0, 0
  for c in cells.values():
    if c.get("std") is not None and c.get("n", 0) > 1:
      num += c["std"] ** 2 * (c["n"] - 1)
      den += c["n"] - 1
  return math.sqrt(num / den) if den else None


def _autowu_defaults(records: list[dict[str, Any]]) -> str:
  for r in records:
    if r.get("method") in ("autowu_lamb", "autowu_adamp"):
      kw = ((r.get("summary") or {}).get("schedule_hparams") or {}).get("autowu_kwargs")
      if kw:
        return ", ".join(f"`{k}={v}`" for k, v in sorted(kw.items())) + \
            ", `test_every` = the library default"
  return ""


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _subset(s: str) -> tuple[int, ...]:
  if s.strip().lower() == "none":
    return ()  # Explicitly no subset.
  want = "N_TRAIN,N_TEST (integers >= 1) or 'none'"
  parts = s.split(",")
  try:
    out = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}") from None
  if len(out) != 2 or min(out) < 1:
    raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}")
  return out


_subset.__name__ = _subset.__qualname__ = "subset"


def _names(choices: tuple[str, ...]):
  def parse(s: str) -> list[str]:
    vals = [v for v in s.replace(",", " ").split() if v]
    if vals == ["none"]:
      return []
    bad = [v for v in vals if v not in choices]
    if bad:
      raise argparse.ArgumentTypeError(
          f"unknown {', '.join(bad)} (choose from {', '.join(choices)})")
    return vals

  parse.__name__ = parse.__qualname__ = "names"
  return parse


_positive_ints = cli.list_of(cli.integer(1))


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m experiments.compare",
      description="AutoWU vs a tuned warmup-cosine LAMB grid vs Optax's LR-free methods "
                  "(MLP, Fashion-MNIST). List options take one or more values, space- or "
                  "comma-separated (--seeds 0 1 2 or --seeds 0,1,2).",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  g = p.add_argument_group("sweep (defaults: the full sweep; --quick changes them)")
  g.add_argument("--batch-sizes", type=_positive_ints, nargs="+", default=None,
                 help="short-budget batch sizes (default 1024,4096,8192; quick 256)")
  g.add_argument("--short-epochs", type=cli.integer(1), default=None,
                 help="default 20 (quick 2)")
  g.add_argument("--long-epochs", type=cli.integer(1), default=None,
                 help="long budget in epochs (default: no long budget), e.g. 60")
  g.add_argument("--long-batch-sizes", type=_positive_ints, nargs="+", default=None,
                 help="batch sizes of the long budget (default: --batch-sizes)")
  g.add_argument("--long-grid", action=argparse.BooleanOptionalAction, default=True,
                 help="run the grid at the long budget too (default: yes)")
  g.add_argument("--seeds", type=cli.list_of(cli.integer()), nargs="+", default=None,
                 help="default 0")
  g.add_argument("--grid-peaks", type=cli.list_of(cli.number(0, low_open=True)), nargs="+",
                 default=None,
                 help="peak LRs of the grid (default 10^-3 .. 10^-0.5 every 0.5 decade; "
                      "quick 0.01,0.1)")
  g.add_argument("--grid-warmups",
                 type=cli.list_of(cli.number(0, 1, high_open=True)), nargs="+", default=None,
                 help="warmup fractions of the grid (default 0.05,0.2; quick 0.05)")
  g.add_argument("--no-grid", action="store_true", help="skip the grid")
  g.add_argument("--autowu", type=_names(AUTOWU_METHODS), nargs="+", default=None,
                 help="AutoWU variants (default all: " + ", ".join(AUTOWU_METHODS) + ")")
  g.add_argument("--lr-free", type=_names(LR_FREE_METHODS), nargs="+", default=None,
                 help="LR-free methods, or 'none' (default all: " + ", ".join(LR_FREE_METHODS)
                      + "; quick dadapt_adamw,schedule_free_adamw)")
  g.add_argument("--subset", type=_subset, default=None, metavar="N_TRAIN,N_TEST|none",
                 help="use the first examples only (default none; quick 2048,512)")
  g.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  g.add_argument("--data-dir", type=cli.existing_dir, default=None,
                 help="dataset directory (default: system path)")
  g.add_argument("--quick", action="store_true",
                 help="smoke test (< 1 min): 2048/512 examples, B=256, 2 epochs, grid 2x1, "
                      "2 LR-free methods")
  r = p.add_argument_group("running")
  r.add_argument("--max-minutes", type=cli.number(0), default=None,
                 help="stop launching new runs after this wall time; tables from what is there")
  r.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                 help="skip runs already in the runs file (same key and code version)")
  r.add_argument("--reuse-other-code", action="store_true",
                 help="with --resume, also reuse runs made by another code version")
  r.add_argument("--dry-run", action="store_true",
                 help="print the ordered plan and what the runs file holds; no training")
  o = p.add_argument_group("output")
  o.add_argument("--out-dir", type=cli.output_dir, default=None,
                 help="where compare.md/.png (and the runs file) go (default "
                      "experiments/results; quick: $TMPDIR/optax_autolr_compare_quick)")
  o.add_argument("--runs-file", default=None,
                 help="JSON-lines runs file (default <out-dir>/compare_runs.jsonl)")
  o.add_argument("--run-dir", type=cli.output_dir, default=None,
                 help="per-run training outputs (default runs/compare; quick <out-dir>/runs)")
  o.add_argument("--from-jsonl", type=cli.existing_file, default=None, metavar="PATH",
                 help="no training: re-render compare.md/.png from a runs file")
  o.add_argument("--tie-pp", type=cli.number(0), default=0.5,
                 help="accuracy differences below this many percentage points are ties in "
                      "the generated summary")
  return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
  base = QUICK if args.quick else FULL
  opts = dict(base)
  for k in ("batch_sizes", "short_epochs", "long_epochs", "long_batch_sizes", "seeds",
            "grid_peaks", "grid_warmups", "autowu", "lr_free"):
    v = getattr(args, k)
    if isinstance(v, list):  # nargs="+" of comma-separated lists: flatten.
      v = [x for part in v for x in part]
    if v is not None:
      opts[k] = v
  if args.subset is not None:
    opts["subset"] = args.subset or None
  if args.no_grid:
    opts["grid_peaks"], opts["grid_warmups"] = [], []
  opts["long_grid"] = args.long_grid
  opts["model"] = args.model
  return opts


def _check_options(opts: dict[str, Any], args: argparse.Namespace) -> None:
  """The checks that need more than one flag (before any import of JAX)."""
  if args.long_batch_sizes and not args.long_epochs:
    raise cli.UsageError("argument --long-batch-sizes: needs --long-epochs")
  subset = opts["subset"]
  if subset:
    sizes = list(opts["batch_sizes"]) + (
        list(opts["long_batch_sizes"] or []) if opts["long_epochs"] else [])
    big = sorted({b for b in sizes if b > subset[0]})
    if big:
      flag = "--long-batch-sizes" if set(big) - set(opts["batch_sizes"]) else "--batch-sizes"
      given = "--subset" if args.subset else "--subset of --quick"
      raise cli.UsageError(
          f"argument {flag}: {', '.join(map(str, big))} larger than the {subset[0]} "
          f"training examples that {given} {subset[0]},{subset[1]} keeps")


def _check_plan(plan: list[RunSpec], setting: dict[str, Any], data_dir: str | None) -> None:
  """Builds each planned run's optimizer from its flags, as the train CLI checks them."""
  from experiments import train  # noqa: PLC0415  (imports jax)

  n_train = None
  if data_dir is None:  # The standard copy: its size is known without loading it.
    n_train = train.STANDARD_TRAIN_SIZES[setting["dataset"]]
    if setting.get("subset"):
      n_train = min(n_train, setting["subset"][0])
  seen = set()
  for spec in plan:
    cfg = train.TrainConfig(**spec.train_config(setting), data_dir=data_dir)
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if key in seen:
      continue
    seen.add(key)
    try:
      train.check_config(cfg, n_train)
    except cli.UsageError as e:
      raise cli.UsageError(
          f"planned run {spec.describe()}: {e}\nchange the sweep's flags, or leave the "
          "method out (--autowu, --lr-free, --no-grid)") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """CLI entry point; returns paths, counts and the aggregated cells.

  A user error prints two lines to stderr and exits with status 2 (see
  :mod:`experiments.cli`), before any training where the flags alone show it.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  with cli.usage_errors(parser):
    return _main(args, argv)


def _main(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
  if not args.from_jsonl:
    _check_options(_options(args), args)
  t0 = time.perf_counter()
  command = "python -m experiments.compare" + (" " + shlex.join(argv) if argv else "")
  out_dir = report.results_dir(args.out_dir, "compare", args.quick)

  if args.from_jsonl:
    records = [r for r in load_runs(args.from_jsonl) if isinstance(r, dict)
               and {"method", "budget", "epochs", "batch_size", "seed"} <= set(r)]
    if not records:
      raise cli.UsageError(f"argument --from-jsonl: no run records of this script in "
                           f"{args.from_jsonl}")
    layout, records = layout_from_records(records)
    machines = [r["machine"] for r in records if r.get("machine")]
    sweeps = collections.OrderedDict()
    for r in records:
      s = r.get("sweep") or {}
      sweeps.setdefault(s.get("command"), s)
    meta = dict(command=command, date=report.date_now(), date_label="Re-rendered (no training)",
                machine=machines[-1] if machines else None,
                sweeps=[(c, s.get("started_at")) for c, s in sweeps.items() if c],
                runs_file=str(args.from_jsonl),
                quick=any("--quick" in (c or "") for c in sweeps))
    md = render(records, layout, out_dir, meta, tie_pp=args.tie_pp)
    log(f"re-rendered {md} and {md.with_suffix('.png')} from {len(records)} runs")
    return dict(md=md, png=md.with_suffix(".png"), runs_file=Path(args.from_jsonl),
                cells=aggregate(records, layout), counts=None)

  opts = _options(args)
  runs_path = Path(args.runs_file) if args.runs_file else out_dir / "compare_runs.jsonl"
  run_dir = Path(args.run_dir) if args.run_dir else (
      out_dir / "runs" if args.quick else Path("runs") / "compare")
  setting = dict(model=opts["model"], dataset="fashion_mnist",
                 subset=list(opts["subset"]) if opts["subset"] else None)
  from experiments import schedules  # noqa: PLC0415  (imports jax)
  from experiments import train  # noqa: PLC0415

  default_cell = (schedules.DEFAULT_PEAK_LR[GRID_SCHEDULE], train.TrainConfig().warmup_fraction)
  plan = build_plan(opts, default_cell)
  _check_plan(plan, setting, args.data_dir)
  layout = layout_from_plan(plan, opts, setting)
  meta = dict(command=command, date=report.date_now(), machine=machine_info(),
              code_version=code_version(), runs_file=str(runs_path), quick=args.quick)

  if args.dry_run:
    keys = [run_key(s.train_config(setting)) for s in plan]
    have = {r["key"]: r for r in load_runs(runs_path) if r.get("status") == "ok"}
    for i, (s, k) in enumerate(zip(plan, keys)):
      r = have.get(k)
      tag = ("" if r is None else " [in runs file" + (
          "" if r.get("code_version") == meta["code_version"] else ", other code") + "]")
      print(f"{i + 1:4d}. phase {s.phase} {s.describe()}{tag}")
    print(f"{len(plan)} runs; code version {meta['code_version']}; runs file {runs_path}")
    return dict(plan=plan, counts=None)

  from experiments import data as data_lib  # noqa: PLC0415

  try:
    counts = sweep(plan, setting, runs_path, run_dir, meta, resume=args.resume,
                   reuse_other_code=args.reuse_other_code, max_minutes=args.max_minutes,
                   t0=t0, data_dir=args.data_dir)
  except data_lib.DatasetNotFoundError as e:
    raise cli.UsageError(f"argument --data-dir: {e.brief}") from None
  keys = {run_key(s.train_config(setting)) for s in plan}
  records = [r for r in load_runs(runs_path) if r.get("key") in keys and (
      args.reuse_other_code or r.get("code_version") == meta["code_version"])]
  meta.update(wall_s=time.perf_counter() - t0, counts=counts)
  md = render(records, layout, out_dir, meta, tie_pp=args.tie_pp)
  log(f"wrote {md}, {md.with_suffix('.png')} ({len(records)} runs; runs file {runs_path}) "
      f"in {time.perf_counter() - t0:.0f} s")
  return dict(md=md, png=md.with_suffix(".png"), runs_file=runs_path,
              cells=aggregate(records, layout), counts=counts)


if __name__ == "__main__":
  res = main()
  if (res.get("counts") or {}).get("stopped", "") == "interrupted (Ctrl-C)":
    sys.exit(130)
