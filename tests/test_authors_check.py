"""The authors'-code reference of experiments/authors_check.py (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import authors_check as ac

# One (T, spe) for every stream: the replay compiles once.
T, SPE = 1000, 25
TW = T // 2


def _u_stream(seed: int, jump: bool = False) -> np.ndarray:
  """Loss vs u = log-LR fraction of the ramp: flat, descent, minimum at u = 0.65, rise."""
  u = np.arange(TW + 1) / TW
  loss = 2.3 - 1.8 * np.sin(0.5 * np.pi * np.clip((u - 0.2) / 0.45, 0.0, 1.0)) ** 2
  loss = loss + np.where(u > 0.65, 20.0 * (u - 0.65) ** 2, 0.0)
  if jump:  # An abrupt step up at u = 0.7, far above the noise.
    loss = loss + np.where(u >= 0.7, 0.6, 0.0)
  return loss + 0.03 * np.random.default_rng(seed).normal(size=len(u))


@pytest.mark.parametrize("jump", [False, True])
def test_reference_and_ours_agree_on_a_u_shaped_stream(jump):
  losses = _u_stream(1, jump=jump)
  r = ac.compare(losses, T, SPE, seeds=(0,))
  assert r["ours"]["switch_reason"] == r["theirs"]["switch_reason"] == "confident minimum"
  assert r["same_epoch"], (r["ours"]["switch_epoch"], r["theirs"]["switch_epoch"])
  assert 0.5 <= r["ratio"] <= 2.0
  assert r["passed"]
  assert r["has_jumps"] == jump
  # The restart lies near the true optimum (u = 0.65 of the ramp, or before the jump).
  lr_opt = ac.MIN_LR * (ac.MAX_LR / ac.MIN_LR) ** 0.65
  assert lr_opt / 3 <= r["theirs"]["restart_lr"] <= 3 * lr_opt


def test_reference_never_switches_on_a_decreasing_stream():
  u = np.arange(TW + 1) / TW
  losses = 2.3 * np.exp(-2.0 * u) + 0.02 * np.random.default_rng(0).normal(size=len(u))
  d = ac.reference_decision(losses, T, SPE)
  assert d["switch_reason"] == "max warmup reached"
  assert d["switch_epoch"] == TW / SPE
  # No positive test; the LR of the last warmup update is the restart.
  assert not any(t["positive"] for t in d["tests"])
  assert len(d["tests"]) == TW // SPE - 1  # No test at k = T_w (theirs checks T_w first).
  assert d["restart_lr"] == pytest.approx(ac.MIN_LR * (ac.MAX_LR / ac.MIN_LR) ** ((TW - 1) / TW))


def test_past_minimum_prob():
  grid = np.linspace(0.0, 1.0, 50)
  var = np.full(50, 1e-6)
  cov = np.full(50, 0.0)
  assert ac.past_minimum_prob(10.0 * (1.0 - grid), var, cov) < 0.01  # Still falling.
  assert ac.past_minimum_prob((grid - 0.5) ** 2, var, cov) > 0.99  # Minimum passed.
  # Their 1e-4 jitter (loss units): a rise of 0.005 is not confident.
  assert ac.past_minimum_prob(0.005 * grid, np.zeros(50), cov) < 0.7


def test_gp_objective_and_gradient():
  gp = ac._AuthorsGP(0)  # noqa: SLF001
  p0 = np.array([0.5, 0.3, -3.0])
  x = np.linspace(0.0, 0.99, 40)
  y = np.sin(3.0 * x) + 0.1 * np.random.default_rng(0).normal(size=40)
  eig = gp.eig(x)
  gp.params = p0.copy()
  value, grad = gp.loss_and_grad(eig, y)
  s, noise = math.log1p(math.exp(0.3)), math.log1p(math.exp(-3.0)) + 1e-4
  k = s * ac._rbf(x, x, 0.2) + noise * np.eye(40)  # noqa: SLF001
  r = y - 0.5
  dense = (0.5 * r @ np.linalg.solve(k, r) + 0.5 * np.linalg.slogdet(k)[1]
           + 20.0 * math.log(2.0 * math.pi)) / 40
  assert value == pytest.approx(dense, rel=1e-9)
  for i in range(3):
    e = np.zeros(3)
    e[i] = 1e-6
    gp.params = p0 + e
    up, _ = gp.loss_and_grad(eig, y)
    gp.params = p0 - e
    down, _ = gp.loss_and_grad(eig, y)
    assert grad[i] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)


def test_jump_ratio():
  y = 1.0 + 0.01 * np.random.default_rng(0).normal(size=200)
  assert ac.jump_ratio(y) < ac.JUMP_SIGMAS
  y[120:] += 0.5
  assert ac.jump_ratio(y) > ac.JUMP_SIGMAS
