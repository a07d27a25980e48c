"""Tests for experiments.compare (the AutoWU vs grid vs LR-free sweep)."""

from __future__ import annotations

import json
import os
import re

import pytest

from experiments import compare


def _fashion_mnist_missing() -> str | None:
    from experiments.data import DatasetNotFoundError, load_dataset  # noqa: PLC0415

    try:
        load_dataset("fashion_mnist", subset=(8, 8))
    except DatasetNotFoundError as e:
        return str(e).splitlines()[0]
    return None


def _table(md: str, heading_prefix: str) -> list[str]:
    """Rows (first column) of the first table after the line starting with heading_prefix."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_prefix))
    rows, in_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            in_table = True
            rows.append(line)
        elif in_table:
            break
    return [r.split("|")[1].strip() for r in rows[2:]]  # Skip header + separator.


# ---------------------------------------------------------------------------
# Plan (no training)
# ---------------------------------------------------------------------------


def test_plan_order_and_size():
    opts = dict(compare.FULL, long_epochs=60, long_batch_sizes=[4096])
    plan = compare.build_plan(opts, default_cell=(1e-2, 0.05))
    # short: 3 B x (4 + 6 + 12); long: 1 B x (4 + 6 + 12).
    assert len(plan) == 3 * 22 + 22
    phases = [s.phase for s in plan]
    assert phases == sorted(phases)  # AutoWU + LR-free short, grid short, long ...
    assert {s.method for s in plan if s.phase == 0} == set(compare.AUTOWU_METHODS) | set(
        compare.LR_FREE_METHODS)
    assert {s.batch_size for s in plan if s.phase == 0} == {1024, 4096, 8192}
    assert {s.method for s in plan if s.phase == 1} == {compare.GRID}
    assert {(s.epochs, s.batch_size) for s in plan if s.phase >= 2} == {(60, 4096)}
    grid = [s for s in plan if s.phase == 1 and s.batch_size == 1024]
    assert len({(s.peak_lr, s.warmup_fraction) for s in grid}) == 12
    # Centre-out: the first grid runs are the middle peaks, not the edges.
    peaks = sorted(opts["grid_peaks"])
    assert grid[0].peak_lr in peaks[2:4] and grid[-1].peak_lr in (peaks[0], peaks[-1])
    assert sum(s.is_default_cell for s in grid) == 1
    # The authors' rule is in the training config; ours keeps the library defaults.
    authors = next(s for s in plan if s.method == "autowu_lamb:authors")
    cfg = authors.train_config(dict(model="mlp", dataset="fashion_mnist", subset=None))
    assert cfg["test_every"] == "epoch" and cfg["divergence_factor"] is None
    ours = next(s for s in plan if s.method == "autowu_lamb")
    assert "test_every" not in ours.train_config(dict(model="mlp", dataset="fashion_mnist"))


def test_run_key_fills_defaults_and_ignores_output_fields():
    base = dict(schedule="autowu_lamb", batch_size=1024, epochs=20, seed=0)
    k = compare.run_key(base)
    assert k == compare.run_key(dict(base, out_dir="/x", quiet=True, plot=False))
    assert k != compare.run_key(dict(base, test_every="epoch"))
    assert "divergence_factor" in json.loads(k)
    assert k != compare.run_key(dict(base, decay="cosine"))
    # The AutoWU fields do not key other schedules: their cached runs survive a change of
    # AutoWU's defaults.
    grid = dict(base, schedule="warmup_cosine_lamb", peak_lr=0.01)
    assert compare.run_key(grid) == compare.run_key(dict(grid, decay="cosine", test_every=5))
    assert "decay" not in json.loads(compare.run_key(grid))
    # Spelled as train.run accepts it, an AutoWU schedule keeps its AutoWU fields.
    assert compare.run_key(dict(base, schedule="AutoWU-LAMB", test_every="epoch")) != \
        compare.run_key(dict(base, schedule="AutoWU-LAMB"))


# ---------------------------------------------------------------------------
# --from-jsonl on a synthetic runs file (no training)
# ---------------------------------------------------------------------------


def _record(method, bs, seed, acc, epochs=20, budget="short", peak=None, wu=None,
            default=False, status="ok", wall=100.0, switch=None):
    key = json.dumps(dict(m=method, b=bs, s=seed, e=epochs, p=peak, w=wu))
    rec = dict(key=key, status=status, method=method,
               schedule=compare.GRID_SCHEDULE if method == compare.GRID else method,
               budget=budget, epochs=epochs, batch_size=bs, seed=seed, peak_lr=peak,
               warmup_fraction=wu, is_default_cell=default, model="mlp",
               dataset="fashion_mnist", subset=None, code_version="abc",
               sweep=dict(command="python -m experiments.compare", started_at="2026-01-01"),
               machine=dict(nproc=2, cpu="test cpu", jax="0"), finished_at="2026-01-01",
               elapsed_s=wall)
    if status == "ok":
        steps_per_epoch = 60000 // bs
        rec["summary"] = dict(final_test_accuracy=acc, total_time_s=wall,
                              steps_per_epoch=steps_per_epoch,
                              total_steps=steps_per_epoch * epochs,
                              switch_step=switch, restart_lr=0.01 if switch else None,
                              switch_reason="confident minimum" if switch else None)
    else:
        rec["error"] = "RuntimeError: boom"
    return rec


def _synthetic_runs() -> list[dict]:
    recs = []
    peaks = [1e-3, 1e-2, 1e-1]
    for bs, shift in ((1024, 0.0), (4096, -0.01)):
        for seed in (0, 1):
            noise = 0.001 * seed
            for m, acc in (("autowu_lamb", 0.885), ("autowu_adamp", 0.880),
                           ("autowu_lamb:authors", 0.87), ("autowu_adamp:authors", 0.86),
                           ("prodigy", 0.875), ("cocob", 0.80)):
                recs.append(_record(m, bs, seed, acc + shift + noise, wall=100.0,
                                    switch=200 if m.startswith("autowu") else None))
            for p in peaks:
                for wu in (0.05, 0.2):
                    acc = 0.89 - 0.01 * abs(peaks.index(p) - 1) - (0.002 if wu == 0.2 else 0)
                    recs.append(_record(compare.GRID, bs, seed, acc + shift + noise, peak=p,
                                        wu=wu, default=(p == 1e-2 and wu == 0.05), wall=90.0))
    # A failed run, a rerun of a failed run, a partial long budget.
    recs.append(_record("dadapt_adamw", 1024, 0, None, status="error"))
    recs.append(_record("mechanize_lamb", 1024, 0, None, status="error"))
    recs.append(_record("mechanize_lamb", 1024, 0, 0.86))
    recs.append(_record("autowu_lamb", 4096, 0, 0.89, epochs=60, budget="long", switch=300))
    recs.append(_record(compare.GRID, 4096, 0, 0.895, epochs=60, budget="long", peak=1e-2,
                        wu=0.05, default=True))
    return recs


def test_from_jsonl_rerenders_without_training(tmp_path):
    runs = tmp_path / "runs.jsonl"
    runs.write_text("\n".join(json.dumps(r) for r in _synthetic_runs()) + "\n{truncated")
    out = tmp_path / "out"
    res = compare.main(["--from-jsonl", str(runs), "--out-dir", str(out)])
    md_path, png = out / "compare.md", out / "compare.png"
    assert res["md"] == md_path and md_path.exists() and png.exists()
    assert png.stat().st_size > 10_000
    md = md_path.read_text()
    assert "--from-jsonl" in md and "Re-rendered (no training)" in md

    rows = _table(md[md.index("## Short budget"):], "Final test accuracy")
    labels = compare.LABELS
    for m in compare.AUTOWU_METHODS + ("prodigy", "cocob", "mechanize_lamb", "dadapt_adamw"):
        assert labels[m] in rows
    assert labels[compare.GRID] in rows
    assert any(r.startswith(labels[compare.GRID_DEFAULT]) for r in rows)

    cells = res["cells"]
    g = cells[(20, 1024, compare.GRID)]
    assert g["best"] == (1e-2, 0.05) and g["runs"] == 12 and g["complete"]
    assert g["acc"] == pytest.approx(0.8905)  # Mean over the 2 seeds.
    assert g["wall_per_seed"] == pytest.approx(6 * 90.0)
    a = cells[(20, 1024, "autowu_lamb")]
    assert a["n"] == 2 and a["acc"] == pytest.approx(0.8855) and a["std"] > 0
    # The rerun replaces the failed record; the lone failure shows as an error.
    assert cells[(20, 1024, "mechanize_lamb")]["acc"] == pytest.approx(0.86)
    assert cells[(20, 1024, "dadapt_adamw")]["acc"] is None
    assert "| D-Adapt AdamW | error |" in md
    # Long budget: 1 batch size, cells not in the file are "not run", partial grid.
    long_md = md[md.index("## Long budget: 60 epochs"):]
    assert "not run" in long_md and "partial grid 1/6" in long_md
    assert "interior" in md and "5.4x" in md  # Best peak position; grid/AutoWU cost ratio.
    summary = md[md.index("## Summary"):]
    assert "B=1024: best **warmup-cosine LAMB, tuned" in summary
    assert "vs the tuned grid" in summary and "pooled seed-to-seed std" in summary


def test_max_minutes_zero_renders_all_not_run(tmp_path):
    out = tmp_path / "out"
    res = compare.main(["--quick", "--out-dir", str(out), "--max-minutes", "0",
                        "--lr-free", "cocob"])
    assert res["counts"]["trained"] == 0 and res["counts"]["not_run"] == 7
    md = (out / "compare.md").read_text()
    assert "Stopped early" in md and "not run" in md
    assert not (out / "compare_runs.jsonl").exists()


# ---------------------------------------------------------------------------
# --quick end to end (trains 8 tiny runs)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_sweep_end_to_end(tmp_path, capsys):
    missing = _fashion_mnist_missing()
    if missing is not None and os.environ.get("CI") != "true":
        pytest.skip(f"Fashion-MNIST unavailable (outside CI): {missing}")
    out = tmp_path / "quick"
    res = compare.main(["--quick", "--out-dir", str(out)])
    md_path, png, runs = out / "compare.md", out / "compare.png", out / "compare_runs.jsonl"
    assert md_path.exists() and png.exists() and runs.exists()
    assert res["counts"]["trained"] + res["counts"]["failed"] == 8
    records = compare.load_runs(runs)
    assert len(records) == 8
    assert all("history" not in (r.get("summary") or {}) for r in records)
    md = md_path.read_text()
    rows = _table(md, "Final test accuracy")
    labels = compare.LABELS
    expected = [labels[m] for m in compare.AUTOWU_METHODS] + [
        labels[compare.GRID], labels[compare.GRID_DEFAULT] + " (peak 0.01, warmup 0.05)",
        labels["dadapt_adamw"], labels["schedule_free_adamw"]]
    assert rows == expected
    assert re.search(r"\| 256 \| AutoWU LAMB \(ours\) \| 0 \| \d+ / 16 \|", md)
    assert "## Summary (generated from the numbers)" in md
    assert "Machine: " in md and "jax " in md and "Total wall time" in md
    # Run outputs stayed quiet: no per-run summary line from experiments.train.
    assert "final test accuracy" not in capsys.readouterr().out

    # Resume: a second call finds every run in the file and trains nothing.
    res2 = compare.main(["--quick", "--out-dir", str(out)])
    assert res2["counts"]["reused"] == 8 and res2["counts"]["trained"] == 0
    assert len(compare.load_runs(runs)) == 8
