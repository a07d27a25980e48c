"""experiments.same_runs: equal runs counted, a differing or missing one reported."""

import json
import subprocess

import pytest

from experiments import bench_layout, same_runs


def _run(version, seed, acc, method="autowu"):
  return dict(case="c", method=method, seed=seed, library_version=version, status="ok",
              summary=dict(switch_step=10, restart_lr=0.01, final_test_accuracy=acc,
                           final_test_loss=0.3))


def test_same_and_different_runs(tmp_path, capsys):
  runs = [_run("new", 0, 0.9), _run("old", 0, 0.9), _run("new", 1, 0.9), _run("old", 1, 0.8),
          _run("new", 2, 0.9), _run("new", 0, 0.5, method="grid")]
  same, problems = same_runs.compare(runs, "new", "old")
  assert same == 1 and len(problems) == 2  # Seed 1 differs, seed 2 has no match.
  path = tmp_path / "runs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in runs))
  assert same_runs.main(["new", "old", "--runs", str(path)]) == 1
  assert "1 of 3 runs of new" in capsys.readouterr().out
  assert same_runs.main(["new", "new", "--runs", str(path)]) == 0
  with pytest.raises(SystemExit) as e:  # --old-rule is for --program.
    same_runs.main(["new", "old", "--runs", str(path), "--old-rule", "knee_slope=0.2"])
  assert e.value.code == 2 and "needs --program" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # Not a commit.
    same_runs.main(["new", "new", "--runs", str(path), "--program", "no-such-commit"])
  assert e.value.code == 2 and "argument --program: no-such-commit" in capsys.readouterr().err


def test_old_rule_errors_name_old_rule(tmp_path, capsys):
  """A keyword the commit's autowu does not take, or a value it rejects, is an
  --old-rule error (not a --program one)."""
  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=bench_layout.ROOT,
                    capture_output=True).returncode:
    pytest.skip("not a git checkout")
  path = tmp_path / "runs.jsonl"
  path.write_text(json.dumps(_run("new", 0, 0.9)) + "\n")
  for rule in ("no_such_knob=1", "knee_slope=-1.0"):
    with pytest.raises(SystemExit) as e:
      same_runs.main(["new", "new", "--runs", str(path), "--program", "HEAD",
                      "--old-rule", rule])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --old-rule" in err, err
    assert "Traceback" not in err


def test_same_program_tells_the_default_update_from_another():
  """HEAD's library lowers the default update to the checkout's program (run
  where the checkout's library is HEAD's, as in CI's clean clone); another rule
  does not."""
  import optax_autolr

  class Half:
    autowu_lamb = staticmethod(
        lambda total, spe: optax_autolr.autowu_lamb(total, spe, restart_fraction=0.5))

  assert same_runs._program(Half) != same_runs._program(optax_autolr)
  # --old-rule: the same rule given as keyword arguments lowers to the same program.
  assert same_runs._program(Half) == same_runs._program(optax_autolr, restart_fraction=0.5)
  clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "optax_autolr"],
                         cwd=bench_layout.ROOT, capture_output=True)
  if clean.returncode != 0:
    pytest.skip("the library differs from HEAD's (an uncommitted change, or no git)")
  assert same_runs.same_program("HEAD")


def test_load_commit_leaves_sys_path_alone_and_loads_once():
  """A commit's library loads by path from a temporary folder, once."""
  import sys

  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=bench_layout.ROOT,
                    capture_output=True).returncode:
    pytest.skip("not a git checkout")
  path = list(sys.path)
  lib = bench_layout.load_commit("HEAD", "optax_autolr_load_test")
  assert sys.path == path
  assert lib.__name__ == "optax_autolr_load_test" and callable(lib.autowu)
  assert lib._autowu.__name__ == "optax_autolr_load_test._autowu"  # Its own modules.
  assert bench_layout.load_commit("HEAD", "optax_autolr_load_test") is lib
