"""User errors of the experiments' CLIs: two lines on stderr, exit status 2, no traceback."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optax_autolr
from experiments import cli, train
from experiments import data as data_lib

ROOT = Path(__file__).resolve().parent.parent
# A leading-underscore identifier (a private name such as _positive_int), not
# one inside a path or a snake_case name.
_PRIVATE = re.compile(r"(?<![\w/.-])_[A-Za-z]\w*")


def _library_rejects_test_every_beyond_warmup() -> bool:
    try:
        optax_autolr.autowu(280, 14, test_every=100_000)
    except ValueError:
        return True
    return False


def _write_tiny_fashion_mnist(directory: Path, n_train: int = 10, n_test: int = 4) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        data_lib.write_idx(directory / data_lib.IDX_FILES[f"{split}_x"], x)
        data_lib.write_idx(directory / data_lib.IDX_FILES[f"{split}_y"], y)


# (id, module, args, text the message must contain). "{tmp}" is a per-session
# temporary folder.
CASES = [
    ("data-dir-missing", "train", ["--data-dir", "/nonexistent"],
     ["--data-dir", "no such file or directory: /nonexistent"]),
    ("data-dir-no-files", "train", ["--data-dir", "{tmp}/empty"],
     ["--data-dir", "missing train-images-idx3-ubyte", "to get it:"]),
    ("dataset-unknown", "train", ["--dataset", "imagenet"],
     ["--dataset", "imagenet", "fashion_mnist, mnist, cifar10"]),
    ("subset-smaller-than-batch", "train", ["--subset", "64,64"],
     ["--batch-size", "4096", "--subset 64,64"]),
    ("data-smaller-than-batch", "train", ["--data-dir", "{tmp}/tiny", "--batch-size", "64"],
     ["--batch-size", "64", "10 training examples"]),
    ("max-warmup-fraction", "train", ["--max-warmup-fraction", "1.5"],
     ["--max-warmup-fraction", "(0, 1)", "1.5"]),
    ("library-warmup-under-one-step", "train",
     ["--max-warmup-fraction", "0.01", "--epochs", "10", "--subset", "1024,64",
      "--batch-size", "1024"],  # Full batch: half an epoch is under one step too.
     ["--max-warmup-fraction", "must be >= 1 step", "--epochs 10"]),
    ("library-test-every-beyond-warmup", "train", ["--test-every", "100000"],
     ["--test-every", "100000"]),
    ("compare-batch-over-quick-subset", "compare", ["--quick", "--batch-sizes", "4096"],
     ["--batch-sizes", "4096", "2048"]),
    ("compare-grid-peaks", "compare", ["--grid-peaks", "0.1,0"], ["--grid-peaks", "> 0"]),
    ("compare-from-jsonl-missing", "compare", ["--from-jsonl", "/nonexistent.jsonl"],
     ["--from-jsonl", "no such file"]),
    ("surge-max-minutes", "surge", ["--max-minutes", "0"], ["--max-minutes", "> 0", "got 0"]),
    ("bench-from-json-not-json", "bench", ["--from-json", "{tmp}/not.json"],
     ["--from-json", "not a bench json"]),
    ("warmup-cap-unknown-flag", "warmup_cap", ["--seeds", "3"],
     ["unrecognized arguments", "--seeds"]),
]
if not _library_rejects_test_every_beyond_warmup():  # Issue 15, point 5 (the library).
    CASES = [c for c in CASES if c[0] != "library-test-every-beyond-warmup"]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Runs every case in a subprocess (a few at a time); id -> CompletedProcess."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "empty").mkdir()
    _write_tiny_fashion_mnist(tmp / "tiny")
    (tmp / "not.json").write_text("not json\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")

    def run(case):
        cid, module, args, _ = case
        args = [a.replace("{tmp}", str(tmp)) for a in args]
        return cid, subprocess.run(
            [sys.executable, "-m", f"experiments.{module}", *args,
             "--out-dir", str(tmp / "out" / cid)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES))


def _assert_clean_usage_error(proc: subprocess.CompletedProcess, must_contain: list[str]):
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in err, err
    assert not _PRIVATE.search(err), err
    assert lines[0].startswith(f"python -m experiments.") and ": error: " in lines[0], err
    for text in must_contain:
        assert text in err, (text, err)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_user_error_is_two_lines_exit_2(cli_results, case):
    _assert_clean_usage_error(cli_results[case[0]], case[3])


# ---------------------------------------------------------------------------
# In-process: parse-time checks of every numeric flag, and nothing loaded first
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, flag, allowed", [
    (["--max-warmup-fraction", "0"], "--max-warmup-fraction", "(0, 1)"),
    (["--max-warmup-fraction", "x"], "--max-warmup-fraction", "(0, 1)"),
    (["--warmup-fraction", "1"], "--warmup-fraction", "[0, 1)"),
    (["--warmup-fraction", "-0.1"], "--warmup-fraction", "[0, 1)"),
    (["--peak-lr", "0"], "--peak-lr", "> 0"),
    (["--peak-lr", "nan"], "--peak-lr", "> 0"),
    (["--weight-decay", "-1"], "--weight-decay", ">= 0"),
    (["--weight-decay", "inf"], "--weight-decay", ">= 0"),
    (["--divergence-factor", "1"], "--divergence-factor", "> 1 or 'none'"),
    (["--test-every", "0"], "--test-every", ">= 1 or 'epoch'"),
    (["--test-every", "often"], "--test-every", ">= 1 or 'epoch'"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--batch-size", "x"], "--batch-size", ">= 1"),
    (["--batch-size", "-4"], "--batch-size", ">= 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size", ">= 1"),
    (["--seed", "1.5"], "--seed", "an integer"),
    (["--subset", "5"], "--subset", "N_TRAIN,N_TEST"),
    (["--subset", "0,5"], "--subset", "N_TRAIN,N_TEST"),
    (["--schedule", "sgd"], "--schedule", "autowu_lamb"),
    (["--decay", "step"], "--decay", "linear"),
    (["--resume"], "--resume", "--checkpoint-dir"),
])
def test_train_flag_errors_in_process(args, flag, allowed, capsys, monkeypatch):
    monkeypatch.setattr(data_lib, "load_dataset", _must_not_load)
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and flag in lines[0] and allowed in lines[0], err
    assert not _PRIVATE.search(err), err


def _must_not_load(*args, **kwargs):
    raise AssertionError("the data was loaded before the error was reported")


@pytest.mark.parametrize("args, flag", [
    (["--subset", "64,64"], "--batch-size"),
    (["--batch-size", "100000"], "--batch-size"),  # > the 60000 of Fashion-MNIST.
    (["--max-warmup-fraction", "0.01", "--epochs", "10", "--subset", "1024,64",
      "--batch-size", "1024"], "--max-warmup-fraction"),
])
def test_train_cross_flag_errors_before_loading(args, flag, capsys, monkeypatch):
    monkeypatch.setattr(data_lib, "load_dataset", _must_not_load)
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_checkpoint_dir_in_use_is_a_usage_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "ckpt" / "3").mkdir(parents=True)
    monkeypatch.setattr(data_lib, "load_dataset", _must_not_load)
    with pytest.raises(SystemExit) as exc:
        train.main(["--checkpoint-dir", str(tmp_path / "ckpt")])
    assert exc.value.code == 2
    assert "--checkpoint-dir" in capsys.readouterr().err


def test_internal_errors_still_raise(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "run", boom)
    monkeypatch.setattr(data_lib, "load_dataset", lambda *a, **k: _tiny_dataset())
    with pytest.raises(RuntimeError, match="a bug"):
        train.main(["--batch-size", "4"])
    # A ValueError that is not a UsageError is not hidden either.
    monkeypatch.setattr(data_lib, "load_dataset",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("corrupt")))
    with pytest.raises(ValueError, match="corrupt"):
        train.main(["--batch-size", "4"])


def _tiny_dataset() -> data_lib.Dataset:
    x = np.zeros((8, 28, 28, 1), np.uint8)
    y = np.zeros((8,), np.int32)
    return data_lib.Dataset(x, y, x, y, 10, "fashion_mnist", "test")


def test_compare_flag_errors_in_process(capsys):
    from experiments import compare  # noqa: PLC0415

    for args, flag in ((["--seeds", "a"], "--seeds"), (["--grid-warmups", "1"], "--grid-warmups"),
                       (["--short-epochs", "0"], "--short-epochs"),
                       (["--subset", "a,b"], "--subset"), (["--autowu", "x"], "--autowu"),
                       (["--long-batch-sizes", "512"], "--long-batch-sizes"),
                       (["--max-minutes", "-1"], "--max-minutes")):
        with pytest.raises(SystemExit) as exc:
            compare.main(args)
        assert exc.value.code == 2, args
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) <= 2, err
        assert not _PRIVATE.search(err), err


def test_type_callables_have_public_names():
    for fn in (cli.integer(1), cli.number(0, 1), cli.list_of(cli.integer()),
               cli.existing_file, cli.existing_dir, cli.output_dir):
        assert not fn.__name__.startswith("_")
    for action in train.build_parser()._actions:  # noqa: SLF001
        if action.type is not None:
            assert not getattr(action.type, "__name__", "x").startswith("_"), action.dest
