"""The Surge experiment (experiments/surge.py): its criterion, its verdicts, its smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import surge
from optax_autolr import scaling

PER_DECADE = 4
TARGETS = (1.0, 0.6, 0.4)


def test_steps_to_target_interpolates_and_is_inf_when_never_reached():
  curve = [2.0, 1.0, 0.5]  # measured after 10, 20, 30 steps; loss0 = 3.
  assert surge.steps_to_target(curve, 3.0, 10, 1.5) == pytest.approx(15.0)
  assert surge.steps_to_target(curve, 3.0, 10, 3.0) == 0.0
  assert surge.steps_to_target(curve, 3.0, 10, 0.1) == math.inf
  assert surge.steps_to_target([2.0, np.nan, 0.5], 3.0, 10, 1.0) == pytest.approx(30.0)


def test_parabola_argmin_refines_inside_and_keeps_edges():
  xs = np.arange(5, dtype=float)
  x, refined = surge.parabola_argmin(xs, (xs - 2.3) ** 2)
  assert refined and x == pytest.approx(2.3)
  x, refined = surge.parabola_argmin(xs, (xs + 1.0) ** 2)  # Minimum left of the grid.
  assert not refined and x == 0.0


def _records(law, seeds=(0, 1, 2), noise=0.05, spread=None):
  """Grid records whose steps-to-target are smallest at ``law(B)`` (+ seed noise)."""
  rng = np.random.default_rng(0)
  recs = []
  for b in (64, 256, 1024, 4096, 16384, 65536):
    for s in seeds:
      best = math.log10(law(b)) + noise * rng.standard_normal()
      ks = range(int(np.floor(best * PER_DECADE)) - 3, int(np.floor(best * PER_DECADE)) + 4)
      runs = {}
      for k in ks:
        rate = 0.05 / (1.0 + 4.0 * (k / PER_DECADE - best) ** 2)  # Fastest at `best`.
        curve = 2.3 * np.exp(-rate * np.arange(1, 301))
        runs[str(k)] = dict(lr=10.0 ** (k / PER_DECADE), curve=curve.tolist(), spc=1, steps=300)
      recs.append(dict(kind="grid", opt="adam", batch_size=b, seed=s, loss0=2.3, runs=runs))
  return recs


CFG = dict(targets=TARGETS, seeds=(0, 1, 2), per_decade=PER_DECADE, bootstrap=60)


def test_analysis_says_holds_for_a_surge_law_and_recovers_its_peak():
  law = lambda b: scaling.adam_optimal_lr(b, lr_max=1e-2, b_noise=1000.0)
  an = surge.analyze(CFG, _records(law))["adam"]
  for row in an["per_target"]:
    assert row["verdict_fall"] == "holds"
    assert row["peak_batch"] == 1024
    assert row["fits"]["surge"]["b_noise"] == pytest.approx(1000.0, rel=0.5)
    assert row["surge_beats_sgd"] > 0.9
    np.testing.assert_allclose(10 ** np.array(row["mean_log_lr"]),
                               [law(b) for b in row["batch_sizes"]], rtol=0.25)
  # The same law at every target: the peak does not move, resolved or not.
  assert an["verdict_moves"]["verdict"] != "holds"


def test_analysis_says_partly_for_a_shallow_fall():
  law = lambda b: 1e-2 * (b / 1024.0) ** (-0.08 if b > 1024 else 0.3)
  an = surge.analyze(CFG, _records(law, noise=0.01))["adam"]
  assert [r["verdict_fall"] for r in an["per_target"]] == [surge.PARTLY] * len(TARGETS)


def test_analysis_says_does_not_hold_for_an_sgd_law():
  law = lambda b: scaling.sgd_optimal_lr(b, lr_max=1e-2, b_noise=300.0)
  an = surge.analyze(CFG, _records(law))["adam"]
  assert [r["verdict_fall"] for r in an["per_target"]] == ["does not hold"] * len(TARGETS)


def test_seed_noise_shows_in_the_error_bars_and_a_flat_law_never_holds():
  law = lambda b: scaling.sgd_optimal_lr(b, lr_max=1e-2, b_noise=300.0)
  an = surge.analyze(CFG, _records(law, noise=0.15))["adam"]
  for row in an["per_target"]:
    assert np.nanmean(row["se_log_lr"]) > 0.03
    assert row["verdict_fall"] != "holds"


def test_transfer_scores_the_surge_law_with_the_true_noise_scale_best():
  law = lambda b: scaling.adam_optimal_lr(b, lr_max=1e-2, b_noise=1000.0)
  rows = surge.analyze(CFG, _records(law, noise=0.0))["adam"]["per_target"]
  for row in rows:
    row["b_simple"] = 1000.0
  t = surge._transfer(rows)
  assert t["surge law, B_simple"]["mean"] < 0.05
  assert t["surge law, B_simple"]["mean"] < min(t[r]["mean"] for r in (
      "square root", "linear", "constant"))


def test_quick_run_writes_verdicts_and_resumes_from_its_cache(tmp_path):
  path = surge.main(["--quick", "--out-dir", str(tmp_path)])
  text = path.read_text()
  assert "## Verdicts" in text and "quick smoke run" in text
  for label in surge.OPT_LABELS.values():
    assert label in text
  an = json.loads((tmp_path / "surge.json").read_text())["analysis"]
  assert set(an) == set(surge.OPTIMIZERS)
  allowed = ("holds", "partly", "does not hold", "not resolved")
  for a in an.values():
    assert a["verdict_moves"]["verdict"].startswith(allowed)
    assert all(r["verdict_fall"].startswith(allowed) for r in a["per_target"])
  n = len((tmp_path / "surge_runs.jsonl").read_text().splitlines())
  surge.main(["--quick", "--out-dir", str(tmp_path)])  # Everything cached: no new run.
  assert len((tmp_path / "surge_runs.jsonl").read_text().splitlines()) == n
