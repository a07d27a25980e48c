"""Tests for experiments.data (IDX parsing, dataset lookup, batching) and experiments.models."""

from __future__ import annotations

import gzip
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import data
from experiments.data import (
    DatasetNotFoundError,
    epoch_batches,
    load_dataset,
    make_epoch_iterator,
    read_idx,
    write_idx,
)
from experiments.models import MLP, SmallCNN, make_model

DEBIAN = data.DEBIAN_DIRS["fashion_mnist"]


def _write_fake_idx_dir(directory, n_train=5, n_test=3, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for key, arr in arrays.items():
        write_idx(directory / (data.IDX_FILES[key] + (".gz" if gz else "")), arr)
    return arrays


@pytest.fixture
def no_system_sources(monkeypatch, tmp_path):
    """Hides the Debian path and TFDS so only data_dir can succeed."""
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion_mnist": tmp_path / "nope"})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import -> ImportError


# --- IDX ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "arr",
    [
        np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8),
        np.arange(7, dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    ],
    ids=["images", "labels", "int32", "float32"],
)
def test_idx_roundtrip(tmp_path, arr, suffix):
    path = tmp_path / ("f.idx" + suffix)
    write_idx(path, arr)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    out = read_idx(path)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_idx_header_bytes(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([1, 2, 3], np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_rejects_truncated(tmp_path, suffix):
    good = tmp_path / "good"
    write_idx(good, np.zeros((5, 28, 28), np.uint8))
    raw = good.read_bytes()
    for name, content in [("short", raw[:-1]), ("long", raw + b"\x00"), ("hdr", raw[:10])]:
        bad = tmp_path / (name + suffix)
        bad.write_bytes(gzip.compress(content) if suffix else content)
        with pytest.raises(ValueError, match=bad.name):
            read_idx(bad)


def test_idx_rejects_wrong_magic(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.zeros((2, 3), np.uint8))
    raw = bytearray(good.read_bytes())
    for i, value in [(0, 1), (2, 0x07), (3, 0)]:  # nonzero prefix, bad type code, ndim 0
        bad = tmp_path / f"bad{i}"
        corrupted = bytearray(raw)
        corrupted[i] = value
        bad.write_bytes(bytes(corrupted))
        with pytest.raises(ValueError, match=f"bad{i}.*not an IDX file"):
            read_idx(bad)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_idx(empty)


def test_idx_rejects_corrupt_gzip(tmp_path):
    src = tmp_path / "x.gz"
    write_idx(src, np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    raw = bytearray(src.read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(raw[: len(raw) // 2]))
    flipped = tmp_path / "flipped.gz"
    raw[len(raw) // 2] ^= 0xFF
    raw[len(raw) // 2 + 1] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"this is not gzip data")
    for path in (cut, flipped, notgz):
        with pytest.raises(ValueError, match=path.name):
            read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing.gz")


# --- load_dataset ---------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_from_data_dir(tmp_path, gz, no_system_sources):
    arrays = _write_fake_idx_dir(tmp_path, gz=gz)
    ds = load_dataset(data_dir=tmp_path)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.source == f"idx:{tmp_path}"
    assert ds.train_x.shape == (5, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (3, 28, 28, 1)
    assert ds.train_y.dtype == np.int32 and ds.test_y.dtype == np.int32
    np.testing.assert_array_equal(ds.train_x[..., 0], arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    sub = load_dataset("fashion-mnist", data_dir=str(tmp_path), subset=(2, None))
    assert len(sub.train_x) == len(sub.train_y) == 2 and len(sub.test_x) == 3


def test_load_dataset_missing_data_dir(tmp_path, no_system_sources):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(data_dir=tmp_path / "does-not-exist")
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert "does-not-exist" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "pip install tensorflow-datasets" in msg and "tfds.load('fashion_mnist')" in msg
    assert "--data-dir" in msg


def test_load_dataset_incomplete_or_corrupt_data_dir(tmp_path, no_system_sources):
    _write_fake_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset(data_dir=tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset(data_dir=tmp_path)
    # Image/label count mismatch is caught too.
    write_idx(bad, np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="3 images but"):
        load_dataset(data_dir=tmp_path)


def test_load_dataset_nothing_available(no_system_sources):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset()
    msg = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "tensorflow_datasets: not installed" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("imagenet")


def test_load_dataset_tfds_fallback(monkeypatch, tmp_path):
    calls = []

    def fake_load(name, batch_size, download):
        calls.append((name, batch_size, download))
        if name == "cifar10":
            shape, n = (32, 32, 3), 4
        else:
            shape, n = (28, 28, 1), 6
        split = lambda k: {"image": np.full((k, *shape), 7, np.uint8), "label": np.arange(k) % 10}
        return {"train": split(n), "test": split(2)}

    fake = types.ModuleType("tensorflow_datasets")
    fake.load = fake_load
    fake.as_numpy = lambda tree: tree
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion_mnist": tmp_path / "nope"})
    ds = load_dataset()
    assert ds.source == "tfds:fashion_mnist" and ds.train_x.shape == (6, 28, 28, 1)
    assert ds.train_y.dtype == np.int32
    cifar = load_dataset("cifar10")
    assert cifar.train_x.shape == (4, 32, 32, 3) and cifar.test_x.shape == (2, 32, 32, 3)
    assert calls == [("fashion_mnist", -1, False), ("cifar10", -1, False)]

    def failing_load(name, batch_size, download):
        raise AssertionError(f"Dataset {name}: could not find data")

    fake.load = failing_load
    with pytest.raises(DatasetNotFoundError, match="could not find data"):
        load_dataset()


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_load_cifar10_from_data_dir(tmp_path, fmt, no_system_sources):
    rng = np.random.default_rng(0)
    d = tmp_path / f"cifar-10-batches-{fmt}"
    d.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 2)
        batches[name] = (x, y)
        if fmt == "py":
            with open(d / name, "wb") as f:
                pickle.dump({b"data": x, b"labels": list(y)}, f)
        else:
            rec = np.concatenate([y[:, None].astype(np.uint8), x], axis=1)
            (d / (name + ".bin")).write_bytes(rec.tobytes())
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_x.shape == (10, 32, 32, 3) and ds.test_x.shape == (2, 32, 32, 3)
    x0, y0 = batches["data_batch_1"]
    np.testing.assert_array_equal(ds.train_x[0], x0[0].reshape(3, 32, 32).transpose(1, 2, 0))
    np.testing.assert_array_equal(ds.train_y[:2], y0)


@pytest.mark.skipif(
    not all(
        (DEBIAN / (f + ".gz")).is_file() or (DEBIAN / f).is_file()
        for f in data.IDX_FILES.values()
    ),
    reason="dataset-fashion-mnist not installed",
)
def test_load_fashion_mnist_debian():
    ds = load_dataset()
    assert ds.source == f"idx:{DEBIAN}"
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32
    assert ds.train_y.min() == 0 and ds.train_y.max() == 9
    assert set(np.unique(ds.test_y)) == set(range(10))
    assert abs(ds.train_x.mean() / 255 - data.FASHION_MNIST_MEAN) < 1e-3


# --- batch pipeline -------------------------------------------------------


def _indexed_dataset(n):
    """Images whose every pixel equals the example index; labels are the index."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 1)).copy()
    return x, np.arange(n, dtype=np.int32)


def _collect(batches):
    xs, ys = zip(*[(np.asarray(xb), np.asarray(yb)) for xb, yb in batches])
    return xs, ys


def test_epoch_batches_cover_each_example_once():
    x, y = _indexed_dataset(10)
    xs, ys = _collect(epoch_batches(0, x, y, 3, drop_last=False))
    assert [len(b) for b in ys] == [3, 3, 3, 1]
    labels = np.concatenate(ys)
    assert sorted(labels.tolist()) == list(range(10))
    assert labels.tolist() != list(range(10))  # shuffled
    for xb, yb in zip(xs, ys):
        assert xb.dtype == np.float32 and xb.shape[1:] == (4, 4, 1)
        np.testing.assert_allclose(xb[:, 0, 0, 0], yb / 255.0, rtol=1e-6)  # x/y stay paired
    _, ys_drop = _collect(epoch_batches(0, x, y, 3, drop_last=True))
    assert [len(b) for b in ys_drop] == [3, 3, 3]
    assert len(set(np.concatenate(ys_drop).tolist())) == 9


def test_epoch_batches_seeds():
    x, y = _indexed_dataset(64)
    order = lambda k: np.concatenate(_collect(epoch_batches(k, x, y, 16))[1]).tolist()
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(jax.random.key(3)) == order(3)
    assert order(jax.random.PRNGKey(5)) != order(0)
    in_order = _collect(epoch_batches(0, x, y, 16, shuffle=False))[1]
    assert np.concatenate(in_order).tolist() == list(range(64))


def test_epoch_batches_normalization():
    x = np.array([0, 51, 255], np.uint8).reshape(3, 1, 1, 1)
    y = np.zeros(3, np.int32)
    (xb, _), = epoch_batches(0, x, y, 3, shuffle=False)
    np.testing.assert_allclose(np.asarray(xb).ravel(), [0.0, 0.2, 1.0], rtol=1e-6)
    (xb, _), = epoch_batches(0, x, y, 3, shuffle=False, normalize="standardize")
    expected = (np.array([0.0, 0.2, 1.0]) - 0.2860) / 0.3530
    np.testing.assert_allclose(np.asarray(xb).ravel(), expected, rtol=1e-5)
    with pytest.raises(ValueError):
        epoch_batches(0, x, y, 3, normalize="bogus")
    with pytest.raises(ValueError):
        epoch_batches(0, x, y, 0)


def test_make_epoch_iterator():
    x, y = _indexed_dataset(50)
    it = make_epoch_iterator(x, y, 8, seed=1)
    assert isinstance(it.x, jax.Array) and it.x.dtype == jnp.uint8
    assert len(it) == 6 and it.num_examples == 50
    e0 = np.concatenate(_collect(it(0))[1]).tolist()
    e1 = np.concatenate(_collect(it(1))[1]).tolist()
    assert len(e0) == 48 and len(set(e0)) == 48
    assert e0 != e1
    assert e0 == np.concatenate(_collect(make_epoch_iterator(x, y, 8, seed=1)(0))[1]).tolist()
    full = make_epoch_iterator(x, y, 8, drop_last=False)
    assert len(full) == 7 and sorted(np.concatenate(_collect(full(0))[1]).tolist()) == list(range(50))


# --- models ---------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda r: make_model("mlp", r),
        lambda r: MLP(hidden=(32,), rngs=r),
        lambda r: make_model("cnn", r),
        lambda r: SmallCNN(use_batchnorm=False, dense=0, rngs=r),
    ],
    ids=["mlp", "mlp-small", "cnn-bn", "cnn-nonorm"],
)
def test_models_logits_shape(build):
    model = build(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1), np.float32))
    logits = model(x)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    model.eval()
    assert model(x).shape == (4, 10)


def test_make_model_options():
    model = make_model("small-cnn", nnx.Rngs(1), num_classes=5, in_shape=(32, 32, 3))
    assert model(jnp.zeros((2, 32, 32, 3))).shape == (2, 5)
    with pytest.raises(ValueError, match="Unknown model"):
        make_model("resnet", nnx.Rngs(0))
