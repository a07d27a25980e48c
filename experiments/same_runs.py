"""Whether two library versions made the same suite runs.

``python -m experiments.same_runs NEW OLD`` compares the AutoWU and authors' runs of
library versions ``NEW`` and ``OLD`` in ``experiments/results/suite_runs.jsonl`` (the
hashes of :func:`experiments.suite.library_version`), matched by case, method and seed:
a pair is the same when switch step, restart LR, final test accuracy and final test loss
are equal as stored (floats compared exactly). Prints one line per differing or unmatched
run and a count; exits 1 if any run of ``NEW`` differs or has no match.

``--program COMMIT`` also checks that the checkout's library compiles the default
AutoWU update (``autowu_lamb``, a small MLP's params) to the same program as the library
at ``COMMIT`` (read with ``git show``): lowered by ``jax.jit``, the texts equal. Equal
programs cost a step the same, so an internal change that passes needs no new benchmark.
``--old-rule NAME=VALUE ...`` builds ``COMMIT``'s update with those ``autowu`` keyword
arguments: a change of default values passes with the new values given there (the
programs then differ in no more than those values).
"""

import subprocess
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


def _program(lib: Any, **autowu_kwargs: Any) -> str:
  """The lowered text of ``lib``'s ``autowu_lamb`` update (its defaults, but for
  ``autowu_kwargs``) on a small MLP's params."""
  import jax  # noqa: PLC0415 - heavy.
  import jax.numpy as jnp  # noqa: PLC0415

  params = {"w1": jnp.ones((64, 32)), "b1": jnp.zeros(32), "w2": jnp.ones((32, 10)),
            "b2": jnp.zeros(10)}
  tx = lib.autowu_lamb(400, 20, **autowu_kwargs)
  update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
  return update.lower(params, tx.init(params), params, jnp.float32(1.0)).as_text()


def load_library(commit: str) -> Any:
  """The library at ``commit`` (read with ``git show``), as a module.

  Raises ``ValueError`` if ``commit`` is not a commit of the repository.
  """
  from experiments.bench_layout import ROOT, load_commit  # noqa: PLC0415

  found = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
                         cwd=ROOT, capture_output=True, text=True)
  if found.returncode:
    raise ValueError("not a commit of this repository")
  sha = found.stdout.strip()
  return load_commit(sha, f"optax_autolr_{sha[:12]}")  # One package name per commit.


def same_program(commit: str, **old_kwargs: Any) -> bool:
  """Whether the checkout's default update lowers to the same program as ``commit``'s
  (built with ``old_kwargs``).

  Raises ``ValueError`` if ``commit`` is not a commit of the repository, and the
  commit's own ``TypeError`` / ``ValueError`` for ``old_kwargs`` it does not take.
  """
  return _same_as(load_library(commit), **old_kwargs)


def _same_as(old: Any, **old_kwargs: Any) -> bool:
  """Whether the checkout's default update lowers to ``old``'s (built with ``old_kwargs``)."""
  import optax_autolr  # noqa: PLC0415

  return _program(optax_autolr) == _program(old, **old_kwargs)


def main(argv: list[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m experiments.same_runs",
                         description=__doc__.split("\n")[0])
  p.add_argument("new", help="library version of the runs to check")
  p.add_argument("old", help="library version to compare them with")
  p.add_argument("--runs", default=str(RUNS), help="runs file")
  p.add_argument("--program", metavar="COMMIT",
                 help="also check the default update's program against the library at COMMIT")
  p.add_argument("--old-rule", nargs="+", type=cli.keyword_literal, default=[],
                 metavar="NAME=VALUE",
                 help="with --program: autowu keyword arguments (Python literals) for "
                      "COMMIT's update, e.g. the new default values")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if args.old_rule and not args.program:
    p.error("argument --old-rule: needs --program")
  same, problems = compare(load_runs(args.runs), args.new, args.old)
  if same + len(problems) == 0:
    p.error(f"no AutoWU or authors' runs of library {args.new} in {args.runs}")
  for line in problems:
    print(line)
  print(f"{same} of {same + len(problems)} runs of {args.new} equal to {args.old}'s "
        f"({', '.join(KEYS)})")
  program = True
  if args.program:
    try:
      old = load_library(args.program)
    except ValueError as e:
      p.error(f"argument --program: {args.program}: {e}")
    except Exception as e:  # noqa: BLE001 - git or import: one line, not a traceback.
      p.error(f"argument --program: {args.program}: cannot load its library: {e}")
    try:
      program = _same_as(old, **dict(args.old_rule))
    except (TypeError, ValueError) as e:  # A name or a value the commit's autowu rejects.
      if not args.old_rule:
        raise
      p.error(f"argument --old-rule: {e}")
    rule = "".join(f", {k}={v!r}" for k, v in args.old_rule)
    print(f"the default update's program {'equals' if program else 'differs from'} "
          f"the one of the library at {args.program}{rule and ' (with' + rule[1:] + ')'}")
  return 1 if problems or not program else 0


if __name__ == "__main__":
  sys.exit(main())
