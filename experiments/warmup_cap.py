"""A maximal warmup capped in epochs, with and without a guard after the switch.

``python -m experiments.warmup_cap`` (about 3 minutes on 2 CPU cores) writes
``experiments/results/warmup_cap.md``. The maximal warmup is ``max_warmup_fraction``
(0.25) of the budget, so a longer budget ramps more slowly. Capped at 5 epochs (the
20-epoch runs' 0.25 x 20), a longer budget would warm up exactly as a 20-epoch run does
and only lengthen the decay. Two measurements, both with the library as it is (the cap is
``max_warmup_fraction = 5 / epochs``; the guard is the experiments-side wrapper
:func:`experiments.post_switch_guard.post_switch_guard`):

* Fashion-MNIST MLP, the suite's long cases (read from ``suite_runs.jsonl``: the
  defaults against candidates ``mwf0125`` / ``mwf01875`` / ``mwf00625``, ``guard`` and
  ``mwf0125guard`` / ``mwf00625guard``, 3 seeds; run them with
  ``python -m experiments.suite --cases ... --methods autowu:mwf0125``);
* the closed-loop toy of ``tests/test_closed_loop.py`` (a ReLU student of a ReLU
  teacher, LAMB, 16 steps an epoch), 12 seeds at 20 and 100 epochs, with and without
  the cap and the guard, against the best peak of a warmup + cosine grid (2 seeds).
"""

import importlib.util
import sys
from pathlib import Path

if __package__ in (None, ''):  # `python experiments/warmup_cap.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

import optax_autolr as oa
from experiments import cli
from experiments import report
from experiments.machine import machine_info
from experiments.post_switch_guard import post_switch_guard

ROOT = Path(__file__).resolve().parent.parent
CAP_EPOCHS = 5.0
SEEDS = 12
# (case, its epochs, the candidates that cap its warmup) in the suite.
SUITE = [("mlp_lamb_b4096_e40", 40, ["mwf0125", "mwf01875", "guard", "mwf0125guard",
                                    "mwf00625guard"]),
         ("mlp_lamb_b4096_e80", 80, ["mwf00625", "guard", "mwf00625guard", "mwf0125guard"]),
         ("mlp_adamw_b4096_e40", 40, ["mwf0125", "guard", "mwf0125guard"])]


def _toy():
  """The closed-loop test's module (its data, model and train loop)."""
  spec = importlib.util.spec_from_file_location(
      "closed_loop_toy", ROOT / "tests" / "test_closed_loop.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def toy_rows(log=print) -> list[list[str]]:
  """Per budget, warmup and guard: restarts, final losses, runs far above the grid's best."""
  toy = _toy()
  spe = toy.STEPS_PER_EPOCH
  default = oa.DEFAULTS["max_warmup_fraction"]
  rows = []
  for epochs in (20, 100):
    total = spe * epochs
    grid = np.mean([np.asarray(toy._cosine_grid(epochs, s)) for s in (0, 1)], axis=0)
    best = float(np.min(grid))
    for capped, guard in ((False, False), (True, False), (False, True), (True, True)):
      fraction = min(default, CAP_EPOCHS / epochs) if capped else default
      if capped and fraction == default:
        continue  # The cap does not bind.
      tx = oa.autowu_lamb(total, spe, max_warmup_fraction=fraction)
      if guard:
        tx = post_switch_guard(tx)
      run = jax.jit(lambda s, tx=tx, total=total: toy._train(tx, total, s))
      finals, restarts, firings = [], [], 0
      for seed in range(SEEDS):
        final, state = run(seed)
        finals.append(float(final))
        restarts.append(oa.get_metrics(state)["restart_lr"])
        firings += int(state.firings > 0) if guard else 0
      finals = np.asarray(finals)
      far = int(np.sum(~(finals <= 100.0 * best)))
      name = (f"capped at {CAP_EPOCHS:g} epochs" if capped else "0.25 of the budget (default)")
      log(f"  {epochs} epochs, {name}, guard {guard}: restart "
          f"{min(restarts):.3g}-{max(restarts):.3g}, {far} of {SEEDS} above 100x the "
          f"grid's best, guard fired in {firings}")
      rows.append([epochs, name, int(fraction * total), "yes" if guard else "no",
                   f"{min(restarts):.3g} - {max(restarts):.3g}", f"{np.median(finals):.2e}",
                   f"{best:.2e}", f"{far} of {SEEDS}",
                   f"{firings} of {SEEDS}" if guard else "-"])
  return rows


def suite_rows(runs_path: Path) -> list[list[str]]:
  """The suite's long cases: defaults against the capped candidates (3 seeds each)."""
  from experiments.compare import load_runs  # noqa: PLC0415
  from experiments.suite import VARIANTS, library_version  # noqa: PLC0415
  lib = library_version()
  runs = load_runs(runs_path)
  rows = []
  for case, epochs, variants in SUITE:
    for method in ["autowu", *(f"autowu:{v}" for v in variants)]:
      got = [r["summary"] for r in runs if r["case"] == case and r["method"] == method
             and r.get("status") == "ok" and r.get("library_version") == lib]
      if not got:
        continue
      acc = [100 * s["final_test_accuracy"] for s in got]
      extra = VARIANTS[method.split(":")[1]] if ":" in method else {}
      fraction = extra.get("max_warmup_fraction", oa.DEFAULTS["max_warmup_fraction"])
      guard = "yes" if "post_switch_guard" in extra else "no"
      rows.append([case, method, f"{fraction * epochs:g}", guard, len(got),
                   f"{np.mean(acc):.2f}",
                   " / ".join(f"{a:.2f}" for a in acc),
                   " / ".join(f"{s['restart_lr']:.4f}" for s in got)])
  return rows


def main(argv: list[str] | None = None) -> Path:
  p = cli.ArgumentParser(prog="python -m experiments.warmup_cap",
                         description=__doc__.split("\n")[0])
  p.add_argument("--out-dir", type=cli.output_dir, default=None,
                 help="results folder (default: experiments/results)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  out = report.results_dir(args.out_dir, "warmup_cap", quick=False)
  log = report.logger("warmup_cap")
  lines = report.header("A maximal warmup capped in epochs (`experiments/warmup_cap.py`)")
  lines += [report.command_line(report.invocation("experiments.warmup_cap")),
            report.machine_line(machine_info()), f"- Date: {report.date_now()}", ""]
  lines += ["## Fashion-MNIST MLP, the suite's long cases (3 seeds, test accuracy %)", ""]
  lines += report.table(["case", "method", "maximal warmup, epochs", "guard after the switch",
                         "seeds", "mean",
                         "per seed", "restart LR"],
                        suite_rows(report.RESULTS_DIR / "suite_runs.jsonl"))
  lines += ["", "## The closed-loop toy (`tests/test_closed_loop.py`), 12 seeds", ""]
  lines += report.table(["epochs", "maximal warmup", "steps", "guard after the switch",
                         "restart LR", "median final loss", "grid's best (warmup + cosine)",
                         "runs > 100x the grid's best", "runs where the guard fired"],
                        toy_rows(log))
  path = report.write(out / "warmup_cap.md", lines, final_newline=True)
  log(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()
