"""The maximal warmup capped in epochs, with and without the decay guard.

``python -m experiments.warmup_cap`` (about 3 minutes on 2 CPU cores) writes
``experiments/results/warmup_cap.md``. The maximal warmup is ``max_warmup_fraction``
(0.25) of the budget, at most ``max_warmup_epochs`` (5, the 20-epoch runs' 0.25 x 20):
past 20 epochs a longer budget warms up exactly as a 20-epoch run does and only
lengthens the decay. The decay guard (``decay_guard``) returns the params to a copy at
the loss's lowest point and halves the rest of the decay when the loss leaves its basin
after the switch. Two measurements:

* Fashion-MNIST MLP, the suite's long cases (read from ``suite_runs.jsonl``, 3 seeds):
  the library's defaults now and, on library ``8f939b7102db`` (before the cap and the
  guard were defaults), its defaults and the candidates that capped the warmup
  (``max_warmup_fraction = 5 / epochs``, then ``mwf0125`` / ``mwf01875`` / ``mwf00625``)
  and the experiments-side guard that became ``decay_guard`` (``guard``,
  ``mwf0125guard``, ``mwf00625guard``); each row names its library version;
* the closed-loop toy of ``tests/test_closed_loop.py`` (a ReLU student of a ReLU
  teacher, LAMB, 16 steps an epoch), 12 seeds at 20 and 100 epochs, with and without
  the cap and the guard, against the best peak of a warmup + cosine grid (2 seeds).
"""

import importlib.util
import math
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

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 12
BEFORE = "8f939b7102db"  # The library before the cap and the guard were defaults.
# (case, its epochs, the candidates run on library BEFORE) in the suite.
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
  fraction, cap = oa.DEFAULTS["max_warmup_fraction"], oa.DEFAULTS["max_warmup_epochs"]
  rows = []
  for epochs in (20, 100):
    total = spe * epochs
    grid = np.mean([np.asarray(toy._cosine_grid(epochs, s)) for s in (0, 1)], axis=0)
    best = float(np.min(grid))
    for capped, guard in ((False, False), (True, False), (False, True), (True, True)):
      if capped and fraction * epochs <= cap:
        continue  # The cap does not bind.
      tx = oa.autowu_lamb(total, spe, max_warmup_epochs=cap if capped else math.inf,
                          decay_guard=oa.DEFAULTS["decay_guard"] if guard else math.inf)
      warmup_steps = int(min(fraction * epochs, cap if capped else math.inf) * spe)
      run = jax.jit(lambda s, tx=tx, total=total: toy._train(tx, total, s))
      finals, restarts, firings = [], [], 0
      for seed in range(SEEDS):
        final, state = run(seed)
        finals.append(float(final))
        restarts.append(oa.get_metrics(state)["restart_lr"])
        firings += int(oa.find_autowu_state(state).decay_scale < 1.0)
      finals = np.asarray(finals)
      far = int(np.sum(~(finals <= 100.0 * best)))
      name = (f"0.25 of the budget, at most {cap:g} epochs" if capped
              else "0.25 of the budget")
      name += " (default)" if guard and (capped or fraction * epochs <= cap) else ""
      log(f"  {epochs} epochs, {name}, guard {guard}: restart "
          f"{min(restarts):.3g}-{max(restarts):.3g}, {far} of {SEEDS} above 100x the "
          f"grid's best, guard fired in {firings}")
      rows.append([epochs, name, warmup_steps, "yes" if guard else "no",
                   f"{min(restarts):.3g} - {max(restarts):.3g}", f"{np.median(finals):.2e}",
                   f"{best:.2e}", f"{far} of {SEEDS}",
                   f"{firings} of {SEEDS}" if guard else "-"])
  return rows


def suite_rows(runs_path: Path) -> list[list[str]]:
  """The suite's long cases: the defaults now, and the defaults and the candidates on
  library ``BEFORE`` (3 seeds each)."""
  from experiments.compare import load_runs  # noqa: PLC0415
  from experiments.suite import VARIANTS, library_version  # noqa: PLC0415
  now = library_version()
  runs = load_runs(runs_path)
  default = oa.DEFAULTS["max_warmup_fraction"]
  rows = []
  for case, epochs, variants in SUITE:
    plan = [("autowu", now, min(default * epochs, oa.DEFAULTS["max_warmup_epochs"]), True),
            ("autowu", BEFORE, default * epochs, False)]
    # The candidates' keywords (suite.VARIANTS); on library BEFORE no guard but theirs.
    plan += [(f"autowu:{v}", BEFORE,
              VARIANTS[v].get("max_warmup_fraction", default) * epochs,
              "decay_guard" in VARIANTS[v]) for v in variants]
    for method, lib, warmup_epochs, guard in plan:
      got = [r["summary"] for r in runs if r["case"] == case and r["method"] == method
             and r.get("status") == "ok" and r.get("library_version") == lib]
      if not got:
        continue
      acc = [100 * s["final_test_accuracy"] for s in got]
      rows.append([case, method, f"`{lib}`" + (" (now)" if lib == now else ""),
                   f"{warmup_epochs:g}", "yes" if guard else "no", len(got),
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
  lines = report.header("The maximal warmup capped in epochs, and the decay guard "
                        "(`experiments/warmup_cap.py`)")
  lines += [report.command_line(report.invocation("experiments.warmup_cap")),
            report.machine_line(machine_info()), f"- Date: {report.date_now()}", ""]
  lines += ["## Fashion-MNIST MLP, the suite's long cases (3 seeds, test accuracy %)", ""]
  lines += report.table(["case", "method", "library", "maximal warmup, epochs",
                         "guard after the switch",
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
