"""Tests for experiments.schedules and the experiments.train CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import report, schedules, train
from experiments.data import DatasetNotFoundError, load_dataset
from experiments.models import make_model

# Small AutoWU sizes keep the compile time of the one-step tests low.
_SMALL_AUTOWU = {"window_size": 16, "grid_size": 16}


@pytest.fixture(scope="module")
def small_dataset():
    try:
        return load_dataset("fashion_mnist", subset=(2048, 512))
    except DatasetNotFoundError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_schedule_takes_a_jitted_step(name):
    kwargs = _SMALL_AUTOWU if name in schedules.AUTOWU_SCHEDULES else None
    tx, needs_value, info = schedules.make_optimizer(
        name, total_steps=20, steps_per_epoch=5, autowu_kwargs=kwargs)
    assert needs_value == (name in schedules.AUTOWU_SCHEDULES + ("reduce_on_plateau",))
    assert info.name == name and info.is_autowu == (name in schedules.AUTOWU_SCHEDULES)
    json.dumps(info.hparams)  # JSON-serializable.

    model = make_model("mlp", nnx.Rngs(0), hidden=(8,), in_shape=(4, 4, 1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, value=loss)
        return loss, info.lr_fn(nnx.as_pure(optimizer.opt_state), jnp.asarray(0))

    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 1))
    y = jnp.arange(16) % 10
    for _ in range(2):  # The first step of a warmup from 0 may not move.
        loss, (lr, phase, prob) = step(model, optimizer, x, y)
    assert np.isfinite(float(loss))
    assert lr.shape == phase.shape == prob.shape == ()
    if name != "cocob":
        assert np.isfinite(float(lr)) and float(lr) >= 0
    after = nnx.state(model, nnx.Param)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after))
    assert any(moved), f"{name}: parameters did not change"
    if info.eval_params_fn is not None:
        ev = info.eval_params_fn(nnx.as_pure(optimizer.opt_state),
                                 nnx.as_pure(nnx.state(model, nnx.Param)))
        assert jax.tree.structure(ev) == jax.tree.structure(nnx.as_pure(after))


def test_make_optimizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown schedule"):
        schedules.make_optimizer("sgd", total_steps=10, steps_per_epoch=2)
    with pytest.raises(ValueError, match="autowu_kwargs"):
        schedules.make_optimizer("prodigy", total_steps=10, steps_per_epoch=2,
                                 autowu_kwargs={"test_every": 2})
    with pytest.raises(ValueError, match="warmup_fraction"):
        schedules.make_optimizer("warmup_cosine_adamw", total_steps=10, steps_per_epoch=2,
                                 warmup_fraction=1.5)


def test_warmup_cosine_lr_fn_matches_schedule():
    _, _, info = schedules.make_optimizer(
        "warmup_cosine_adamw", total_steps=100, steps_per_epoch=10, peak_lr=0.1,
        warmup_fraction=0.1)
    lrs = [float(info.lr_fn(None, jnp.asarray(t))[0]) for t in (0, 10, 100)]
    phases = [int(info.lr_fn(None, jnp.asarray(t))[1]) for t in (5, 10)]
    np.testing.assert_allclose(lrs, [0.0, 0.1, 0.0], atol=1e-7)
    assert phases == [0, 1]
    assert info.hparams["warmup_steps"] == 10


def test_warmup_linear_decays_linearly_to_zero():
    _, _, info = schedules.make_optimizer(
        "warmup_linear_adamw", total_steps=100, steps_per_epoch=10, peak_lr=0.1,
        warmup_fraction=0.1)
    lrs = [float(info.lr_fn(None, jnp.asarray(t))[0]) for t in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_perplexity_of_a_diverged_run_is_inf_not_an_error():
  """A finite loss past exp's range (a diverged LM run) reports inf, not an OverflowError."""
  assert report.perplexity(None) is None
  assert report.perplexity(math.log(20.0)) == pytest.approx(20.0)
  assert report.perplexity(1e4) == math.inf


def test_parser_flags():
    p = train.build_parser()
    a = p.parse_args(["--test-every", "epoch", "--divergence-factor", "none",
                      "--subset", "100,50", "--schedule", "prodigy", "--no-plot"])
    cfg = train.config_from_args(a)
    assert cfg.test_every == "epoch" and cfg.divergence_factor is None
    assert cfg.subset == (100, 50) and cfg.schedule == "prodigy" and not cfg.plot
    assert cfg.autowu_kwargs(steps_per_epoch=7)["test_every"] == 7
    a = p.parse_args(["--test-every", "5", "--divergence-factor", "3"])
    assert a.test_every == 5 and a.divergence_factor == 3.0
    assert str(train.TrainConfig().resolved_out_dir()) == "runs/autowu_lamb_b4096_s0"
    for bad in (["--test-every", "0"], ["--divergence-factor", "1"], ["--subset", "5"],
                ["--schedule", "nope"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_smoke_run_main(tmp_path, small_dataset):
    del small_dataset  # Only checks that the data is there; main() loads it itself.
    out = tmp_path / "run"
    result = train.main([
        "--subset", "2048,512", "--batch-size", "256", "--epochs", "2",
        "--out-dir", str(out), "--quiet",
    ])
    for f in ("metrics.jsonl", "epochs.jsonl", "summary.json", "summary.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(16))
    assert set(rows[0]) >= {"step", "loss", "lr", "phase", "probability"}
    assert rows[0]["phase"] == 0 and math.isfinite(rows[0]["loss"])
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["final_test_accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert summary["args"]["batch_size"] == 256 and summary["total_steps"] == 16
    # Two epochs x 8 steps with the default max warmup (half the run): the
    # warmup ends by step 8 at the latest.
    assert summary["switch_step"] is not None and 0 <= summary["switch_step"] <= 8
    assert summary["switch_reason"] in schedules.optax_autolr.SWITCH_REASONS.values()
    assert summary["restart_lr"] > 0 and summary["wall_time_s"] > 0
    assert len(summary["test_accuracy_per_epoch"]) == 2
    assert result["final_test_accuracy"] == acc
    assert len(result["history"]["loss"]) == 16


def test_run_reuses_dataset_and_schedule_free(tmp_path, small_dataset):
    cfg = train.TrainConfig(schedule="schedule_free_adamw", batch_size=512, epochs=1,
                            subset=(1024, 256), out_dir=str(tmp_path / "sf"),
                            quiet=True, plot=False, tensorboard=False)
    result = train.run(cfg, dataset=small_dataset)
    assert result["n_train"] == 1024 and result["n_test"] == 256
    assert result["switch_step"] is None
    assert 0.0 <= result["final_test_accuracy"] <= 1.0
    # Better than chance after one epoch (eval uses the averaged parameters).
    assert result["final_test_accuracy"] > 0.3
    assert not (tmp_path / "sf" / "summary.png").exists()


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, small_dataset):
    pytest.importorskip("orbax.checkpoint")
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    cfg = train.TrainConfig(schedule="warmup_cosine_adamw", batch_size=256, epochs=2,
                            subset=(512, 128), quiet=True, plot=False, tensorboard=False,
                            out_dir=str(out), checkpoint_dir=str(ckpt))
    full = train.run(cfg, small_dataset)
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["1", "2"]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train.run(cfg, small_dataset)  # Would overwrite the run without resume=True.
    shutil.rmtree(ckpt / "2")  # Pretend the run stopped after epoch 1.
    resumed = train.run(dataclasses.replace(cfg, resume=True), small_dataset)
    np.testing.assert_allclose(resumed["history"]["loss"], full["history"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed["test_accuracy_per_epoch"],
                               full["test_accuracy_per_epoch"])
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(4))


def test_resume_into_another_budget_warns(tmp_path, small_dataset):
    pytest.importorskip("orbax.checkpoint")
    ckpt = tmp_path / "ckpt"
    cfg = train.TrainConfig(schedule="autowu_lamb", batch_size=256, epochs=2,
                            subset=(512, 128), quiet=True, plot=False, tensorboard=False,
                            out_dir=str(tmp_path / "run"), checkpoint_dir=str(ckpt))
    train.run(cfg, small_dataset)
    shutil.rmtree(ckpt / "2")
    longer = dataclasses.replace(cfg, resume=True, epochs=4)
    with pytest.warns(UserWarning, match="total_steps: state 4, transformation 8"):
        train.run(longer, small_dataset)
