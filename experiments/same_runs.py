"""Whether two library versions made the same suite runs.

``python -m experiments.same_runs NEW OLD`` compares the AutoWU and authors' runs of
library versions ``NEW`` and ``OLD`` in ``experiments/results/suite_runs.jsonl`` (the
hashes of :func:`experiments.suite.library_version`), matched by case, method and seed:
a pair is the same when switch step, restart LR, final test accuracy and final test loss
are equal as stored (floats compared exactly). Prints one line per differing or unmatched
run and a count; exits 1 if any run of ``NEW`` differs or has no match.
"""

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ''):  # `python experiments/same_runs.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import cli
from experiments.compare import load_runs

RUNS = Path(__file__).resolve().parent / "results" / "suite_runs.jsonl"
KEYS = ("switch_step", "restart_lr", "final_test_accuracy", "final_test_loss")


def _by_run(runs: list[dict[str, Any]], version: str) -> dict[tuple, dict[str, Any]]:
  return {(r["case"], r["method"], r["seed"]): r["summary"] for r in runs
          if r.get("library_version") == version and r.get("status", "ok") == "ok"
          and (r["method"] == "autowu" or r["method"] == "authors")}


def compare(runs: list[dict[str, Any]], new: str, old: str
            ) -> tuple[int, list[str]]:
  """``(same, problems)``: the runs of ``new`` equal to ``old``'s, and one line per other."""
  a, b = _by_run(runs, new), _by_run(runs, old)
  same, problems = 0, []
  for key in sorted(a):
    got = tuple(a[key].get(k) for k in KEYS)
    want = tuple(b[key].get(k) for k in KEYS) if key in b else None
    if got == want:
      same += 1
    else:
      problems.append(f"{' '.join(map(str, key))}: {new} {got} vs {old} {want}")
  return same, problems


def main(argv: list[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m experiments.same_runs",
                         description=__doc__.split("\n")[0])
  p.add_argument("new", help="library version of the runs to check")
  p.add_argument("old", help="library version to compare them with")
  p.add_argument("--runs", default=str(RUNS), help="runs file")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  same, problems = compare(load_runs(args.runs), args.new, args.old)
  if same + len(problems) == 0:
    p.error(f"no AutoWU or authors' runs of library {args.new} in {args.runs}")
  for line in problems:
    print(line)
  print(f"{same} of {same + len(problems)} runs of {args.new} equal to {args.old}'s "
        f"({', '.join(KEYS)})")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
