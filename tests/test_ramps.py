"""Whole-ramp report: smoothing, the curve's features, the report and the CLI's errors."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ramps


def _ramp_trace(case="mlp_lamb_b4096_e20", total=260, spe=13, optimum=0.02, seed=0):
  """A U of loss vs log LR on the defaults' ramp (min_lr 1e-3 to 1 over T_w = T / 4)."""
  warmup = int(0.25 * total)
  t = np.arange(warmup)
  lr = 1e-3 * 1000.0 ** (t / warmup)
  noise = np.random.default_rng(seed).normal(0.0, 0.01, warmup)
  loss = 0.5 + 0.4 * (np.log10(lr) - math.log10(optimum)) ** 2 + noise
  return dict(case=case, seed=seed, total_steps=total, steps_per_epoch=spe,
              loss=loss.tolist(), lr=lr.tolist(), finished_at="2026-12-06T00:00:00+00:00",
              machine=dict(nproc=2))


def test_smooth_is_a_centered_mean_that_skips_non_finite_losses():
  x = np.array([1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0])
  s = ramps.smooth(x, 3)
  assert np.isnan(s[0]) and np.isnan(s[-1])
  assert s[1] == pytest.approx(2.0)
  assert s[3] == pytest.approx(4.0)  # (3 + 5) / 2: the NaN is left out.


def test_features_find_the_minimum_and_the_cliff_of_a_u():
  tr = _ramp_trace(optimum=0.02)
  f = ramps.features(tr, restart_lr=0.01)
  assert 0.014 < f["min_lr"] < 0.028
  assert f["min_loss"] == pytest.approx(0.5, abs=0.02)
  assert f["cliff_lr"] > f["min_lr"]
  # The first smoothed point is step 1 (LR 1.1e-3), the restart's step 22 (LR 0.0104).
  u = lambda lr: 0.4 * (math.log10(lr) - math.log10(0.02)) ** 2
  assert f["drop_left"] == pytest.approx(u(1e-3 * 1000 ** (22 / 65)) / u(1e-3 * 1000 ** (1 / 65)),
                                         abs=0.02)


def test_a_ramp_without_a_cliff_has_none():
  tr = _ramp_trace(optimum=10.0)  # Still descending at the end of the ramp.
  f = ramps.features(tr, restart_lr=0.5)
  assert math.isnan(f["cliff_lr"])
  tr["loss"][-1] = float("nan")  # A diverged last step is the cliff.
  assert ramps.features(tr, restart_lr=0.5)["cliff_lr"] == pytest.approx(tr["lr"][-1])


def test_render_writes_the_table_and_the_figure(tmp_path):
  path = ramps.render([_ramp_trace()], [], tmp_path)
  text = path.read_text()
  assert "| mlp_lamb_b4096_e20 | 0 | 65 |" in text
  assert (tmp_path / "ramps.png").stat().st_size > 0


def test_unknown_case_is_a_two_line_usage_error(capsys):
  with pytest.raises(SystemExit) as e:
    ramps.main(["--cases", "nope", "--report-only"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "unknown 'nope'" in err[0]


def test_grad_cosine_passes_updates_through_and_measures_their_coherence():
  tx = ramps.grad_cosine()
  g = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  state = tx.init(g)
  step = jax.jit(tx.update)
  out, state = step(g, state)
  assert state.cosine == 0.0  # No previous gradient yet.
  chex.assert_trees_all_equal(out, g)
  _, state = step(g, state)
  assert state.cosine == pytest.approx(1.0)
  _, state = step(jax.tree.map(jnp.negative, g), state)
  assert state.cosine == pytest.approx(-1.0)


def test_recording_chains_the_probe_and_restores_make_optimizer():
  from experiments import schedules

  make = schedules.make_optimizer
  with ramps._recording_cosine():
    tx, _, info = schedules.make_optimizer("warmup_cosine_lamb", total_steps=10,
                                           steps_per_epoch=5, peak_lr=0.01)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    lr, _, cosine = info.lr_fn(state, jnp.asarray(1))
  assert schedules.make_optimizer is make
  assert cosine == pytest.approx(1.0) and float(lr) > 0.0


def test_the_update_probe_sits_after_the_optimizer():
  from experiments import schedules

  with ramps._recording_cosine("updates"):
    tx, _, info = schedules.make_optimizer("warmup_cosine_lamb", total_steps=10,
                                           steps_per_epoch=5, peak_lr=0.01)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  assert isinstance(state[-1], ramps.GradCosineState)
  _, state = tx.update({"w": jnp.ones(3)}, state, params)
  _, state = tx.update({"w": jnp.ones(3)}, state, params)
  assert info.lr_fn(state, jnp.asarray(1))[2] == pytest.approx(1.0, abs=1e-5)
