"""Whole warmup ramps of the suite's cases: where the restart sits on each loss-vs-LR curve.

``python -m experiments.ramps [--cases ...] [--seeds 0] [--probe gradients|updates]
[--report-only]`` trains each
case of :mod:`experiments.suite` once with the library's warmup ramp (``min_lr``,
``max_lr``, ``max_warmup_fraction`` of the defaults) but no decision before the
end of the maximal warmup (``patience=10**6``, knee rule and divergence guard
off), and keeps the per-step losses and LRs up to ``T_w`` (cached in
``results/ramp_traces.jsonl``). Until a rule switches, the LR depends only on
the step, so every rule with this ramp, the defaults included, would have seen
exactly these losses: :func:`experiments.replay.replay` gives each rule's
decision on the whole ramp exactly (the MLP runs are bit-reproducible; the
report checks the replayed defaults against the suite's own run of the seed).

Each recording also keeps, per step, the cosine between successive minibatch
gradients (:func:`grad_cosine`, chained in front of the optimizer for the
recording only; it passes the gradients through unchanged, so the losses are
those of the plain run): near 1 while the gradient signal dominates its noise,
near 0 (or below, when the iterate oscillates) once it does not. ``--probe
updates`` records instead the cosine of successive updates after the whole chain (the
same as of the updates AutoWU receives: its LR is a positive scalar; the
optimizer's momentum is in them), as separate traces.

The report (``results/ramps.md``, ``ramps.png``) puts three LRs on each curve:
the defaults' restart, the minimum of the smoothed ramp loss, and the peak of
the grid's cell picked on validation (``suite.md``). Their ratios say which
restart each case needs, and the curve's features next to them say whether
anything on the ramp tells the cases apart.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # `python experiments/ramps.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli, report, schedules, suite
from experiments.compare import append_run, code_version, load_runs
from experiments.machine import machine_info

__all__ = ["RECORD_RULE", "features", "grad_cosine", "main", "record", "smooth"]

TRACES = report.RESULTS_DIR / "ramp_traces.jsonl"
RECORD_RULE = dict(patience=10**6, knee_slope=0.0)
"""The ``autowu`` arguments of a recording (with ``divergence_factor=None``): no
decision before ``T_w``, the defaults' ramp."""
SMOOTH_STEPS = 30
"""The smoothing window is ``T_w / SMOOTH_STEPS`` steps (at least 3)."""
log = report.logger("ramps")


def smooth(losses: Any, width: int) -> np.ndarray:
  """Centered moving mean of the finite losses over ``width`` steps (NaN near the ends)."""
  x = np.asarray(losses, np.float64)
  ok = np.isfinite(x)
  kernel = np.ones(width)
  num = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
  den = np.convolve(ok.astype(np.float64), kernel, mode="same")
  out = np.where(den > width / 2, num / np.maximum(den, 1.0), np.nan)
  half = width // 2
  out[:half] = np.nan
  out[len(out) - half:] = np.nan
  return out


def features(trace: dict[str, Any], restart_lr: float, cosine: str = "grad_cosine"
             ) -> dict[str, float]:
  """The smoothed ramp's minimum and the curve around ``restart_lr``.

  Returns ``min_lr`` (the LR at the smoothed minimum), ``min_loss``,
  ``cliff_lr`` (the first LR after the minimum whose smoothed loss is 1.5x
  the minimum; NaN if none), ``loss_at_restart``, ``drop_left`` (the share
  of the ramp's whole drop still ahead of the restart:
  ``(L(restart) - L_min) / (L_start - L_min)``), and, if the trace has
  the field ``cosine`` (``grad_cosine`` or ``update_cosine``), ``cosine_start``
  (its mean over the first tenth of the ramp) and ``cosine_restart``
  (smoothed, at the restart); NaN otherwise.
  """
  loss = np.asarray(trace["loss"], np.float64)
  lr = np.asarray(trace["lr"], np.float64)
  width = max(3, len(loss) // SMOOTH_STEPS)
  s = smooth(loss, width)
  i = int(np.nanargmin(s))
  start = float(s[np.flatnonzero(np.isfinite(s))[0]])
  # Past the minimum: smoothed 1.5x above it, or a non-finite loss (the NaN ends of the
  # smoothing are neither).
  past = np.arange(len(s)) > i
  later = np.flatnonzero(past & ((s >= 1.5 * s[i]) | ~np.isfinite(loss)))
  j = min(int(np.searchsorted(lr, restart_lr)), len(s) - 1)
  at_restart = float(s[j]) if np.isfinite(s[j]) else float(loss[j])
  out = dict(min_lr=float(lr[i]), min_loss=float(s[i]),
             cliff_lr=float(lr[later[0]]) if len(later) else math.nan,
             loss_at_restart=at_restart,
             drop_left=(at_restart - float(s[i])) / max(start - float(s[i]), 1e-12),
             cosine_start=math.nan, cosine_restart=math.nan)
  if trace.get(cosine) is not None:
    cos = np.asarray([math.nan if c is None else c for c in trace[cosine]], np.float64)
    cos[0] = math.nan  # No previous gradient at the first step.
    out["cosine_start"] = float(np.nanmean(cos[: max(2, len(cos) // 10)]))
    out["cosine_restart"] = float(smooth(cos, width)[min(max(j, width // 2),
                                                         len(cos) - 1 - width // 2)])
  return out


class GradCosineState(NamedTuple):
  """The last gradient and the cosine between it and the one before."""
  previous: Any
  cosine: jax.Array


def grad_cosine() -> optax.GradientTransformation:
  """Identity on the updates; its state keeps their cosine with the previous step's.

  Chained in front of an optimizer it measures the coherence of successive
  minibatch gradients (0 at the first step).
  """
  def init_fn(params):
    return GradCosineState(optax.tree.zeros_like(params), jnp.zeros((), jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    dot = optax.tree.vdot(updates, state.previous)
    norms = optax.tree.norm(updates) * optax.tree.norm(state.previous)
    cosine = jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)
    return updates, GradCosineState(updates, cosine.astype(jnp.float32))

  return optax.GradientTransformation(init_fn, update_fn)


PROBES = {"gradients": "grad_cosine", "updates": "update_cosine"}
"""What a recording's cosine is taken of, and the trace field that keeps it."""


@contextlib.contextmanager
def _recording_cosine(probe: str = "gradients"):
  """``schedules.make_optimizer`` chains :func:`grad_cosine` and reports its cosine.

  ``probe="gradients"``: in front of the optimizer (successive minibatch
  gradients); ``"updates"``: after it (successive updates of the whole chain,
  whose cosine is that of the updates AutoWU receives: the LR scales them).
  The cosine takes the place of AutoWU's past-minimum probability in the
  run's per-step history (a recording never ends warmup by a test).
  """
  make = schedules.make_optimizer
  first = probe == "gradients"

  def make_with_probe(name, **kwargs):
    tx, needs_value, info = make(name, **kwargs)
    probe_tx = optax.with_extra_args_support(grad_cosine())

    def lr_fn(opt_state, step):
      inner, probe_state = (opt_state[1], opt_state[0]) if first else opt_state
      lr, phase, _ = info.lr_fn(inner, step)
      return lr, phase, probe_state.cosine

    return (optax.chain(probe_tx, tx) if first else optax.chain(tx, probe_tx), needs_value,
            dataclasses.replace(info, lr_fn=lr_fn))

  schedules.make_optimizer = make_with_probe
  try:
    yield
  finally:
    schedules.make_optimizer = make


def record(case: dict[str, Any], seed: int, cache: dict, probe: str = "gradients"
           ) -> dict[str, Any]:
  """Trains ``case`` with :data:`RECORD_RULE`; the ramp's losses, LRs and cosines
  (of ``probe``, see :func:`_recording_cosine`) up to ``T_w``."""
  from experiments import train  # noqa: PLC0415 - heavy (jax, flax).

  r = suite.plan(case, ["autowu"], seeds=[seed])[0]
  cfg = dict(r["config"], quiet=True, plot=False, tensorboard=False, divergence_factor=None,
             autowu=dict(RECORD_RULE),
             out_dir=str(Path("runs") / "ramps" / f"{case['name']}_{seed}_{probe}"))
  t = time.perf_counter()
  with (contextlib.redirect_stdout(io.StringIO()), _no_patience_warning(),
        _recording_cosine(probe)):
    s = train.run(cfg, dataset=suite._load(case, cache))
  h = s["history"]
  end = s["switch_step"] if s.get("switch_step") is not None else len(h["loss"])
  return dict(case=case["name"], seed=seed, probe=probe, config=cfg, total_steps=s["total_steps"],
              steps_per_epoch=s["steps_per_epoch"], switch_step=s.get("switch_step"),
              switch_reason=s.get("switch_reason"), loss=h["loss"][:end], lr=h["lr"][:end],
              **{PROBES[probe]: h["probability"][:end]}, elapsed_s=time.perf_counter() - t,
              finished_at=report.date_now(), command=report.invocation("experiments.ramps"), machine=machine_info(),
              code_version=code_version(), library_version=suite.library_version())


@contextlib.contextmanager
def _no_patience_warning():
  """Silences autowu's warning that ``patience`` outlasts the warmup (the point here)."""
  import warnings  # noqa: PLC0415

  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*never by a confident minimum.*")
    yield


def analyse(trace: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
  """The defaults' replayed decision on ``trace``, its features and the grid's picked peak."""
  from experiments import replay  # noqa: PLC0415

  case = next(c for c in suite.CASES if c["name"] == trace["case"])
  d = replay.replay(trace["loss"], trace["total_steps"], trace["steps_per_epoch"])
  restart = d["restart_lr"]
  cell = suite.picked_cell(case, [r for r in runs if r.get("status") == "ok"])
  ours = [r["summary"] for r in runs if r.get("status") == "ok" and r["case"] == case["name"]
          and r["method"] == "autowu" and r["seed"] == trace["seed"]
          and r.get("library_version") == suite.library_version()]
  return dict(case=case, decision=d, features=features(trace, restart),
              grid_peak=cell["config"]["peak_lr"] if cell else None,
              suite_run=ours[-1] if ours else None)


def render(traces: list[dict[str, Any]], runs: list[dict[str, Any]], out_dir: Path) -> Path:
  """Writes ``ramps.md`` and ``ramps.png`` into ``out_dir`` from ``traces`` and the suite's ``runs``.

  The gradient traces make the main table and the figure; the ``--probe updates``
  ones a second table next to the gradients' cosine of the same case and seed.
  """
  rows, plots = [], []
  of_updates = [t for t in traces if t.get("probe") == "updates"]
  traces = [t for t in traces if t.get("probe", "gradients") == "gradients"]
  for t in traces:
    a = analyse(t, runs)
    f, d, g = a["features"], a["decision"], a["grid_peak"]
    sr = a["suite_run"]
    rows.append([
        t["case"], t["seed"], len(t["loss"]), f"{d['restart_lr']:.3g} ({d['switch_reason']})",
        f"{sr['restart_lr']:.3g}" if sr else "-", report.fmt(g),
        report.fmt(g / d["restart_lr"] if g else None, ".2f"),
        report.fmt(f["min_lr"] / d["restart_lr"], ".2f"),
        report.fmt(f["cliff_lr"] / d["restart_lr"], ".1f"),
        report.fmt(f["drop_left"], ".3f"), report.fmt(f["min_loss"], ".2f"),
        report.fmt(f["cosine_start"], ".2f"), report.fmt(f["cosine_restart"], ".2f")])
    plots.append((t, a))
  first = min((t["finished_at"] for t in traces), default="-")
  last = max((t["finished_at"] for t in traces), default="-")
  mi = traces[-1]["machine"] if traces else machine_info()
  lines = report.header("Whole warmup ramps: where the restart sits on the loss-vs-LR curve") + [
      report.command_line("python -m experiments.ramps [--cases ...] [--seeds ...] "
                          "[--probe gradients|updates]"),
      report.machine_line(mi), f"- Dates: {first} .. {last}; traces in `ramp_traces.jsonl`",
      f"- Ramp: the library defaults' (`optax_autolr.DEFAULTS`), recorded with `{RECORD_RULE}` "
      "and the guard off, so no rule ended it before `T_w`; every rule with this ramp is "
      "replayed on it exactly (`experiments.replay`).",
      "- Defaults' restart: the replay of `autowu(T, spe)` on the trace; the suite's own run of "
      "the same seed next to it (equal for the bit-reproducible MLP runs).",
      f"- Ramp minimum: the minimum of the loss smoothed over `T_w / {SMOOTH_STEPS}` steps; "
      "cliff: the first LR after it where the smoothed loss is 1.5x the minimum; drop left: "
      "`(L(restart) - L_min) / (L_start - L_min)`.",
      "- Grid's peak: the suite's grid cell picked on validation (resolution 10^0.5 = 3.2x).",
      "- Grad cosine: between successive minibatch gradients (`ramps.grad_cosine`, chained in "
      "front of the optimizer for the recording); ramp start: its mean over the first tenth of "
      "`T_w`; at restart: smoothed like the loss.",
      "",
      *report.table(["case", "seed", "T_w", "defaults' restart (replayed)", "suite run's restart",
                     "grid's peak", "grid peak / restart", "ramp min / restart",
                     "cliff / restart", "drop left at restart", "min loss",
                     "grad cosine, ramp start", "grad cosine at restart"], rows),
      "", "![ramps](ramps.png)", "",
      "Black: the smoothed ramp loss (left axis); purple: the smoothed gradient cosine "
      "(right axis, -1 to 1).", "", *_update_lines(of_updates, traces)]
  _plot(plots, out_dir / "ramps.png")
  return report.write(out_dir / "ramps.md", lines, final_newline=True)


def _update_lines(of_updates: list[dict[str, Any]], traces: list[dict[str, Any]]) -> list[str]:
  """The cosine of successive updates (what AutoWU receives) next to the gradients' one."""
  if not of_updates:
    return []
  from experiments import replay  # noqa: PLC0415

  grads = {(t["case"], t["seed"]): t for t in traces}
  rows = []
  for u in of_updates:
    restart = replay.replay(u["loss"], u["total_steps"], u["steps_per_epoch"])["restart_lr"]
    fu = features(u, restart, "update_cosine")
    g = grads.get((u["case"], u["seed"]))
    fg = features(g, restart) if g else dict(cosine_start=None, cosine_restart=None)
    rows.append([u["case"], u["seed"], report.fmt(fg["cosine_start"], ".2f"),
                 report.fmt(fu["cosine_start"], ".2f"), report.fmt(fg["cosine_restart"], ".2f"),
                 report.fmt(fu["cosine_restart"], ".2f")])
  return ["## The cosine of successive updates", "",
          "Recorded with `--probe updates` (the probe after the whole chain: the cosine of "
          "the updates AutoWU receives, since its LR is a positive scalar; the optimizer's "
          "momentum is in them), next to the gradients' cosine.", "",
          *report.table(["case", "seed", "gradients, ramp start", "updates, ramp start",
                         "gradients at restart", "updates at restart"], rows), ""]


def _plot(plots: list[tuple[dict, dict]], path: Path) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  n = len(plots)
  cols = min(4, max(n, 1))
  rows = max(1, math.ceil(n / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  for ax, (t, a) in zip(axes.flat, plots):
    s = smooth(t["loss"], max(3, len(t["loss"]) // SMOOTH_STEPS))
    ax.semilogx(t["lr"], s, color="k", lw=1)
    lo, hi = np.nanmin(s), np.nanmax(s[: int(np.nanargmin(s)) + 1])
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
    for x, c, label in [(a["decision"]["restart_lr"], "C0", "defaults' restart"),
                        (a["features"]["min_lr"], "C1", "ramp minimum"),
                        (a["grid_peak"], "C2", "grid's peak (val)")]:
      if x:
        ax.axvline(x, color=c, ls="--", lw=1, label=label)
    if t.get("grad_cosine") is not None:
      cos = np.asarray([math.nan if c is None else c for c in t["grad_cosine"]], np.float64)
      twin = ax.twinx()
      twin.semilogx(t["lr"], smooth(cos, max(3, len(cos) // SMOOTH_STEPS)), color="C4",
                    lw=0.8, alpha=0.7)
      twin.set_ylim(-1.0, 1.0)
      twin.tick_params(labelsize=6, colors="C4")
    ax.set_title(f"{t['case']} s{t['seed']}", fontsize=8)
    ax.set_xlabel("LR", fontsize=7)
    ax.tick_params(labelsize=6)
  axes.flat[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m experiments.ramps", description=__doc__.split("\n")[0])
  names = [c["name"] for c in suite.CASES]
  p.add_argument("--cases", type=cli.list_of(str), default=None,
                 help=f"comma-separated case names (default: all): {', '.join(names)}")
  p.add_argument("--seeds", type=cli.list_of(cli.integer(0)), default=[0],
                 help="seeds to record (default: 0)")
  p.add_argument("--probe", choices=list(PROBES), default="gradients",
                 help="the cosine recorded: of successive minibatch gradients, or of the "
                      "updates AutoWU receives")
  p.add_argument("--report-only", action="store_true", help="only re-render the report")
  return p


def main(argv: list[str] | None = None) -> Path:
  """The CLI: records the missing traces of ``--cases`` x ``--seeds``, then the report."""
  p = build_parser()
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  names = [c["name"] for c in suite.CASES]
  with cli.usage_errors(p):
    unknown = [c for c in args.cases or [] if c not in names]
    if unknown:
      raise cli.UsageError(f"argument --cases: unknown {', '.join(map(repr, unknown))}; "
                           f"choose from {', '.join(names)}")
    return _run(args, names)


def _run(args: argparse.Namespace, names: list[str]) -> Path:
  """Records the missing traces (of the current library's ramp), then the report."""
  cases = [c for c in suite.CASES if args.cases is None or c["name"] in args.cases]
  lib = suite.library_version()
  current = [t for t in load_runs(TRACES) if t.get("library_version") == lib]
  have = {(t["case"], t["seed"], t.get("probe", "gradients")) for t in current}
  cache: dict = {}
  if not args.report_only:
    for case in cases:
      for seed in args.seeds:
        if (case["name"], seed, args.probe) not in have:
          t = record(case, seed, cache, args.probe)
          append_run(TRACES, t)
          current.append(t)
          log(f"{case['name']} s{seed} ({args.probe}): T_w {len(t['loss'])} "
              f"({t['elapsed_s']:.0f}s)")
  runs = load_runs(report.RESULTS_DIR / "suite_runs.jsonl")
  order = {n: i for i, n in enumerate(names)}
  traces = sorted(current, key=lambda t: (order.get(t["case"], 99), t["seed"]))
  path = render(traces, runs, report.RESULTS_DIR)
  log(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()
