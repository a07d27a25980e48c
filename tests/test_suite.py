"""The benchmark suite: plan, grid picked on validation, cache, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import suite
from experiments.data import DEBIAN_DIRS


def _rec(method, val, test, seed=0, peak=None, val_curve=None, steps=10):
  return dict(method=method, seed=seed, peak_lr=peak, warmup_fraction=0.05 if peak else None,
              summary=dict(final_val_accuracy=val, final_test_accuracy=test,
                           val_accuracy_per_epoch=val_curve or [val], steps_per_epoch=steps,
                           opt_state_bytes=100, restart_lr=None, switch_step=None))


def test_grid_cell_is_picked_on_validation_not_test():
  case = suite.CASES[0]
  records = [_rec("grid", 0.90, 0.80, peak=1e-2), _rec("grid", 0.85, 0.95, peak=1e-1),
             _rec("autowu", 0.89, 0.81, seed=0, val_curve=[0.5, 0.9]),
             _rec("autowu", 0.88, 0.79, seed=1, val_curve=[0.5, 0.6])]
  s = suite.summarize(case, records)
  assert s["grid_cell"] == (1e-2, 0.05)  # Not the cell with the best test accuracy.
  a = s["methods"]["autowu"]
  assert a["mean"] == pytest.approx(80.0) and a["worst"] == pytest.approx(79.0)
  assert a["gap"] == pytest.approx(0.0) and a["worst_gap"] == pytest.approx(-1.0)
  assert a["steps"] == [20, None]  # Reaches the grid's val 0.90 at epoch 2; never.


def test_a_diverged_grid_cell_is_never_picked():
  case = suite.CASES[0]
  diverged = dict(_rec("grid", None, None, peak=1e-1), case=case["name"])
  fine = dict(_rec("grid", 0.80, 0.79, peak=1e-2), case=case["name"])
  for records in ([diverged, fine], [fine, diverged]):  # NaN first: max() would keep it.
    assert suite.picked_cell(case, records) is fine


def test_grid_seeds_rerun_the_picked_cell_and_give_the_gap_to_its_mean():
  case = suite.CASES[0]
  grid = [dict(_rec("grid", 0.90, 0.80, peak=1e-2), case=case["name"],
               config=dict(schedule="warmup_cosine_lamb", seed=0, peak_lr=1e-2)),
          dict(_rec("grid", 0.85, 0.95, peak=1e-1), case=case["name"],
               config=dict(schedule="warmup_cosine_lamb", seed=0, peak_lr=1e-1))]
  assert suite.plan(case, ["grid_seeds"]) == []  # No grid yet: nothing to re-run.
  runs = suite.plan(case, ["grid_seeds"], records=grid)
  assert [(r["seed"], r["peak_lr"], r["config"]["seed"]) for r in runs] == [
      (1, 1e-2, 1), (2, 1e-2, 2)]
  assert suite.plan(case, ["grid_linear"]) == []
  (lin,) = suite.plan(case, ["grid_linear"], records=grid)  # The picked cell, linear decay.
  assert lin["config"] == dict(schedule="warmup_linear_lamb", seed=0, peak_lr=1e-2)
  records = grid + [_rec("grid_seeds", 0.9, 0.78, seed=1, peak=1e-2),
                    _rec("grid_seeds", 0.9, 0.82, seed=2, peak=1e-2),
                    _rec("grid_seeds", 0.9, 0.99, seed=1, peak=1e-1),  # Another cell.
                    _rec("autowu", 0.89, 0.81, seed=0)]
  s = suite.summarize(case, records)
  assert s["methods"]["grid_seeds"]["n"] == 3
  assert s["methods"]["grid_seeds"]["mean"] == pytest.approx(80.0)
  assert s["methods"]["autowu"]["gap_seeds"] == pytest.approx(1.0)
  # A linear-decay run of another cell (picked before the grid grew) is not the picked cell's.
  s = suite.summarize(case, grid + [_rec("grid_linear", 0.9, 0.85, peak=1e-1)])
  assert "grid_linear" not in s["methods"]
  s = suite.summarize(case, grid + [_rec("grid_linear", 0.9, 0.85, peak=1e-1),
                                    _rec("grid_linear", 0.9, 0.81, peak=1e-2)])
  assert s["methods"]["grid_linear"]["n"] == 1
  assert s["methods"]["grid_linear"]["gap"] == pytest.approx(1.0)


def test_grid_peaks_select_the_cases_own_cells_exactly():
  case = next(c for c in suite.CASES if c["family"] == "lamb")
  runs = suite.plan(case, ["grid"], grid_peaks=[0.0032, 0.03])
  assert sorted({r["peak_lr"] for r in runs}) == suite.GRID_PEAKS["lamb"][1:4:2]
  assert len(runs) == 2 * len(suite.GRID_WARMUPS)


def test_every_case_plans_its_methods():
  for case in suite.CASES:
    runs = suite.plan(case, suite.METHODS)
    by = {m: [r for r in runs if r["method"] == m] for m in suite.METHODS}
    assert [r["seed"] for r in by["autowu"]] == suite.AUTOWU_SEEDS
    assert len(by["grid"]) == 12 and all(len(by[m]) == 1 for m in suite.PEERS)
    assert by["grid_seeds"] == by["grid_linear"] == []  # From the grid's records only.
    if case["epochs"] >= 2:
      assert by["authors"][0]["config"]["test_every"] == "epoch"
    else:  # Once an epoch, within half the budget: no test in one epoch.
      assert by["authors"] == []
  with pytest.raises(ValueError, match="unknown method"):
    suite.plan(suite.CASES[0], ["sgd"])


def test_quick_suite_end_to_end_and_resume(tmp_path, capsys):
  if not (DEBIAN_DIRS["fashion_mnist"] / "train-images-idx3-ubyte.gz").exists():
    pytest.skip("Fashion-MNIST not installed")
  args = ["--quick", "--methods", "autowu,grid", "--out-dir", str(tmp_path)]
  suite.main(args)
  runs = [json.loads(line) for line in (tmp_path / "suite_runs.jsonl").read_text().splitlines()]
  assert [r["method"] for r in runs] == ["autowu", "grid", "grid"]
  assert runs[0]["library_version"] == suite.library_version()
  assert len(runs[0]["curve"]["loss"]) == runs[0]["summary"]["total_steps"]
  md = (tmp_path / "suite.md").read_text()
  assert "quick_mlp_lamb" in md and "picked on validation" in md
  assert (tmp_path / "suite.png").stat().st_size > 0
  suite.main(args)  # Cached: nothing is trained again.
  assert "0 runs to train" in capsys.readouterr().out


def test_cli_errors_are_two_lines(capsys):
  with pytest.raises(SystemExit) as exc:
    suite.main(["--cases", "nope"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--cases" in err and len(err.strip().splitlines()) <= 2


def test_replay_reproduces_a_recorded_decision():
  from experiments import replay  # noqa: PLC0415

  name, losses, total, spe, switch = replay.rule_search_traces()[1]  # LAMB B4096 E20.
  d = replay.replay(losses, total, spe, knee_slope=0.0)  # The rule the run was made with.
  assert d["switch_step"] == switch and replay.exact(d, switch), name


def test_targets_table_marks_each_target_from_the_summaries(tmp_path):
  by = {c["name"]: c for c in suite.CASES}
  cases = [by["mlp_lamb_b4096_e10"], by["mlp_lamb_b4096_e20"]]

  def row(mean, gap, worst_gap):
    return dict(mean=mean, gap=gap, worst_gap=worst_gap)

  summs = {"mlp_lamb_b4096_e10": {"methods": {
               "autowu": row(88.5, +0.2, -0.1), "prodigy": row(87.0, -1.3, -1.3)}},
           "mlp_lamb_b4096_e20": {"methods": {
               "autowu": row(88.1, -0.5, -1.2), "prodigy": row(88.0, -0.6, -0.6)}}}
  (tmp_path / "flat_start.json").write_text(json.dumps(
      dict(bad=0, total=160, library_version="v1")))
  (tmp_path / "authors_check.md").write_text(
      "# x\n\n- Target (same switch epoch, ...): **NOT met** (5/6 traces pass).\n")
  md = "\n".join(suite._target_lines(cases, summs, tmp_path, "v1"))
  rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines()
          if line.startswith("| ") and " | " in line}
  assert "mlp_lamb_b4096_e20 -0.50" in rows["every image case within 0.3 pp of the grid "
                                           "(mean of 3 seeds)"]
  assert "-0.150 pp over 2 cases | **not met**" in rows["ahead of the grid on the image average"]
  assert rows["ahead of Prodigy on average"].endswith("| met |")
  assert "-1.20 pp" in rows["no seed more than 1 pp below the grid"]
  assert "-0.40 pp" in md and "**not met**" in rows[
      "a longer budget never loses more than 0.2 pp to a shorter one"]
  flat = next(v for k, v in rows.items() if k.startswith("flat-noisy-start"))
  assert "0 of 160" in flat and flat.endswith("| met |")
  authors = next(v for k, v in rows.items() if k.startswith("authors' rule"))
  assert "5 of 6 traces | **not met**" in authors
  # A count made by another library version is stale: not met.
  md = "\n".join(suite._target_lines(cases, summs, tmp_path, "v2"))
  assert "not the current one" in md


@pytest.mark.parametrize("module", ["flat_start", "replay"])
@pytest.mark.parametrize("arg", ["min_descent", "min_descent=oops", "min_descent=-1.0"])
def test_rule_cli_errors_are_two_lines(module, arg, capsys):
  import importlib  # noqa: PLC0415

  with pytest.raises(SystemExit) as exc:
    importlib.import_module(f"experiments.{module}").main([arg])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "min_descent" in err and len(err.strip().splitlines()) <= 2


def test_held_out_cases_say_so_in_the_report():
  """A held-out case names the library it was added with; the others do not."""
  summ = {"grid_cell": None, "grid_cells": [], "methods": {}}
  held = [c for c in suite.CASES if c.get("held_out")]
  assert held and all(c["held_out"] in suite._case_lines(c, summ)[2] for c in held)
  assert "held out" not in suite._case_lines(suite.CASES[0], summ)[2]
