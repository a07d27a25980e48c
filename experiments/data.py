"""Dataset loading and an on-device batch pipeline for the experiments.

Loading (:func:`load_dataset`) returns host numpy arrays: images ``uint8``
NHWC, labels ``int32``. Sources are tried in a fixed order and real data is
never replaced by random data:

1. ``data_dir`` if given (the four standard IDX files, ``.gz`` or raw; for
   CIFAR-10 the ``cifar-10-batches-py`` or ``-bin`` files). A missing or
   corrupt ``data_dir`` is an error; there is no fall-through.
2. The Debian package path (``/usr/share/datasets/fashion-mnist``, package
   ``dataset-fashion-mnist``), Fashion-MNIST only.
3. TensorFlow Datasets (imported lazily; ``download=False`` first, so a
   prepared dataset needs no internet).

Batching (:func:`epoch_batches`, :func:`make_epoch_iterator`) keeps the whole
dataset on device as ``uint8`` (4x smaller than float32) and, per step, runs a
single jitted gather that takes the next slice of a per-epoch permutation,
``jnp.take``-s the examples and normalizes them to float32. No image data is
copied host -> device after the first ``jax.device_put``.

Normalization (``normalize=``):

* ``"unit"``: ``x / 255`` -> float32 in ``[0, 1]`` (default).
* ``"standardize"``: ``(x / 255 - mean) / std``; defaults are the
  Fashion-MNIST training-set statistics ``mean=0.2860, std=0.3530``
  (:data:`NORM_STATS` holds MNIST and per-channel CIFAR-10 values too).
* ``"none"``: token ids (text), passed through as ``int32``.

Float inputs are not divided by 255 (they are assumed to be in ``[0, 1]``).
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DEBIAN_DIRS",
    "EpochIterator",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IDX_FILES",
    "NORM_STATS",
    "TEXT_DATASETS",
    "epoch_batches",
    "load_dataset",
    "load_text",
    "make_epoch_iterator",
    "normalize_images",
    "num_batches",
    "read_idx",
    "shard_batch",
    "split_validation",
    "to_device",
    "write_idx",
]

PathLike = str | os.PathLike

# ---------------------------------------------------------------------------
# IDX format
# ---------------------------------------------------------------------------

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {
    np.dtype(dt.newbyteorder("=")): code for code, dt in _IDX_DTYPES.items()
}


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file (as used by MNIST / Fashion-MNIST) into numpy.

  The file may be gzip-compressed (``.gz`` suffix or gzip magic bytes).

  Args:
    path: File to read.

  Returns:
    A writable, native-endian array with the shape stored in the header.

  Raises:
    FileNotFoundError: If ``path`` does not exist.
    ValueError: If the file is not valid IDX: corrupt gzip stream, wrong
      magic number, unknown type code, truncated header, or a payload whose
      size differs from the product of the dimensions. The message names
      the file.
  """
  path = Path(path)
  with open(path, "rb") as f:
    data = f.read()
  if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
  if len(data) < 4:
    raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
  zero, code, ndim = struct.unpack_from(">HBB", data, 0)
  if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
    raise ValueError(
        f"{path}: not an IDX file (magic number 0x{data[:4].hex()}; expected "
        f"0x0000 + type code in {{{', '.join(hex(c) for c in _IDX_DTYPES)}}}"
        " + ndim >= 1)"
    )
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header (ndim={ndim}, {len(data)} bytes)")
  dims = struct.unpack_from(f">{ndim}I", data, 4)
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  got = len(data) - header
  if got != expected:
    what = "truncated" if got < expected else "has trailing bytes"
    raise ValueError(
        f"{path}: IDX payload {what}: dims {tuple(dims)} x {dtype.itemsize} B "
        f"need {expected} bytes, file has {got}"
    )
  arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
  # Copy: frombuffer on bytes is read-only; also converts to native byte order.
  return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

  Args:
    path: Destination file.
    array: Array of dtype uint8, int8, int16, int32, float32 or float64 with
      at least one dimension.

  Raises:
    ValueError: For unsupported dtypes or 0-d arrays.
  """
  array = np.asarray(array)
  native = np.dtype(array.dtype.newbyteorder("="))
  if native not in _IDX_CODES:
    raise ValueError(f"write_idx: unsupported dtype {array.dtype}")
  if array.ndim == 0 or array.ndim > 255:
    raise ValueError(f"write_idx: need 1..255 dimensions, got {array.ndim}")
  code = _IDX_CODES[native]
  header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
  payload = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
  path = Path(path)
  if path.suffix == ".gz":
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
      f.write(header + payload)
  else:
    path.write_bytes(header + payload)


# ---------------------------------------------------------------------------
# Dataset loading
# ---------------------------------------------------------------------------

IDX_FILES: dict[str, str] = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
"""Standard (MNIST-style) IDX file names, without the optional ``.gz``."""

DEBIAN_DIRS: dict[str, Path] = {
    "fashion_mnist": Path("/usr/share/datasets/fashion-mnist"),
}
"""System locations searched after ``data_dir`` (Debian ``dataset-*`` packages)."""

_NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10}
_IDX_NAMES = ("fashion_mnist", "mnist")

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
NORM_STATS: dict[str, tuple[Any, Any]] = {
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "mnist": (0.1307, 0.3081),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
"""Training-set pixel mean/std (pixels scaled to [0, 1]) per dataset."""


class DatasetNotFoundError(FileNotFoundError):
  """No source for the requested dataset was found; the message says how to get it.

  ``brief``: the same in two lines (what was tried; how to get it), for
  command lines.
  """

  brief: str = ""


class Dataset(NamedTuple):
  """An in-memory dataset.

  Attributes:
    train_x: ``uint8`` images, shape ``(N, H, W, C)``.
    train_y: ``int32`` labels, shape ``(N,)``.
    test_x: ``uint8`` images, shape ``(M, H, W, C)``.
    test_y: ``int32`` labels, shape ``(M,)``.
    num_classes: Number of classes.
    name: Canonical dataset name, e.g. ``"fashion_mnist"``.
    source: Where the data came from, e.g. ``"idx:/usr/share/datasets/fashion-mnist"``
      or ``"tfds:fashion_mnist"``.
    val_x: Validation inputs held out from the training split (see
      :func:`split_validation`, :func:`load_text`), or None.
    val_y: Their labels, or None.

  For a text dataset (:func:`load_text`) ``*_x`` are ``uint8`` byte windows
  ``(N, context)`` and ``*_y`` the ``int32`` next bytes, same shape.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  name: str
  source: str
  val_x: np.ndarray | None = None
  val_y: np.ndarray | None = None

  @property
  def is_text(self) -> bool:
    """Whether this is a language-modelling dataset (see :func:`load_text`)."""
    return self.name in TEXT_DATASETS


def _canonical_name(name: str) -> str:
  canon = name.lower().replace("-", "_")
  canon = {"fmnist": "fashion_mnist", "cifar_10": "cifar10"}.get(canon, canon)
  if canon not in _NUM_CLASSES:
    raise ValueError(f"Unknown dataset {name!r}; supported: {sorted(_NUM_CLASSES)}")
  return canon


def _how_to_get(name: str) -> str:
  if name == "cifar10":
    return (
        "To get CIFAR-10, either\n"
        "  * pip install tensorflow-datasets && "
        "python -c \"import tensorflow_datasets as tfds; tfds.load('cifar10')\"\n"
        "  * or pass --data-dir pointing to the extracted cifar-10-batches-py "
        "(or cifar-10-batches-bin) directory from https://www.cs.toronto.edu/~kriz/cifar.html"
    )
  files = ", ".join(f + "[.gz]" for f in IDX_FILES.values())
  lines = [f"To get {name}, either"]
  if name == "fashion_mnist":
    lines.append("  * sudo apt-get install dataset-fashion-mnist")
  lines.append(
      "  * pip install tensorflow-datasets && "
      f"python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\""
  )
  lines.append(f"  * or pass --data-dir DIR with the 4 IDX files: {files}")
  return "\n".join(lines)


def _not_found(name: str, tried: list[str]) -> DatasetNotFoundError:
  msg = f"Dataset {name!r} not found. Tried:\n" + "\n".join(f"  - {t}" for t in tried)
  err = DatasetNotFoundError(msg + "\n" + _how_to_get(name))
  ways = [line.strip(" *") for line in _how_to_get(name).splitlines()[1:]]
  ways[-1] = ways[-1].removeprefix("or ")
  err.brief = (f"dataset {name!r} not found ({'; '.join(tried)})\n"
               f"to get it: {'; or '.join(ways)}")
  return err


def _find_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
  """Returns ``(found, missing)`` for the 4 IDX files (raw preferred over .gz)."""
  found, missing = {}, []
  for key, base in IDX_FILES.items():
    for candidate in (directory / base, directory / (base + ".gz")):
      if candidate.is_file():
        found[key] = candidate
        break
    else:
      missing.append(base + "[.gz]")
  return found, missing


def _load_idx_dir(files: dict[str, Path], num_classes: int) -> tuple[np.ndarray, ...]:
  out = []
  for split in ("train", "test"):
    xf, yf = files[f"{split}_x"], files[f"{split}_y"]
    x, y = read_idx(xf), read_idx(yf)
    if x.dtype != np.uint8 or x.ndim != 3:
      raise ValueError(f"{xf}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1:
      raise ValueError(f"{yf}: expected 1-d labels, got shape {y.shape}")
    if len(x) != len(y):
      raise ValueError(f"{xf} has {len(x)} images but {yf} has {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{yf}: labels outside [0, {num_classes})")
    out += [x[..., None], y.astype(np.int32)]
  return tuple(out)


def _load_cifar_dir(directory: Path) -> tuple[tuple[np.ndarray, ...], Path]:
  """Loads CIFAR-10 from the python (pickle) or binary distribution."""
  candidates = [directory, directory / "cifar-10-batches-py", directory / "cifar-10-batches-bin"]
  train_names = [f"data_batch_{i}" for i in range(1, 6)]
  for d in candidates:
    if all((d / n).is_file() for n in train_names + ["test_batch"]):
      # Python format (pickled dicts). Only load files you trust.
      def read(p: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
          with open(p, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
          x = np.asarray(batch[b"data"], dtype=np.uint8)
          y = np.asarray(batch[b"labels"], dtype=np.int32)
          x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except Exception as e:  # noqa: BLE001 - any parse failure is corrupt data.
          raise ValueError(f"{p}: not a CIFAR-10 python batch ({e})") from e
        return x, y

      break
    if all((d / (n + ".bin")).is_file() for n in train_names + ["test_batch"]):

      def read(p: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = np.fromfile(p.with_name(p.name + ".bin"), dtype=np.uint8)
        if raw.size % 3073:
          raise ValueError(f"{p}.bin: size {raw.size} is not a multiple of 3073")
        raw = raw.reshape(-1, 3073)
        x = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, raw[:, 0].astype(np.int32)

      break
  else:
    raise FileNotFoundError(
        f"no CIFAR-10 batches (data_batch_1..5, test_batch[.bin]) in {directory}"
    )
  parts = [read(d / n) for n in train_names]
  test_x, test_y = read(d / "test_batch")
  train_x = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
  train_y = np.concatenate([p[1] for p in parts])
  for y, where in ((train_y, "train"), (test_y, "test")):
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(f"{d}: {where} labels outside [0, 10)")
  return (train_x, train_y, np.ascontiguousarray(test_x), test_y), d


def _load_tfds(name: str, download: bool) -> tuple[tuple[np.ndarray, ...] | None, str]:
  """Tries TFDS. Returns ``(arrays or None, reason)``."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - optional, heavy.
  except ImportError:
    return None, "tensorflow_datasets: not installed"
  attempts = [False, True] if download else [False]
  reason = ""
  for dl in attempts:
    try:
      splits = tfds.as_numpy(tfds.load(name, batch_size=-1, download=dl))
      arrays = []
      for split in ("train", "test"):
        x = np.asarray(splits[split]["image"], dtype=np.uint8)
        y = np.asarray(splits[split]["label"]).astype(np.int32)
        if x.ndim == 3:
          x = x[..., None]
        arrays += [x, y]
      return tuple(arrays), ""
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; report them.
      reason = f"tfds.load({name!r}, download={dl}): {type(e).__name__}: {e}"
  return None, reason


def load_dataset(
    name: str = "fashion_mnist",
    data_dir: PathLike | None = None,
    subset: tuple[int | None, int | None] | None = None,
    *,
    tfds_download: bool = False,
) -> Dataset:
  """Loads a classification dataset into host memory.

  Search order: ``data_dir`` (if given; no fall-through), the Debian path
  in :data:`DEBIAN_DIRS`, then TFDS. Random data is never substituted.

  Args:
    name: ``"fashion_mnist"`` (default), ``"mnist"`` or ``"cifar10"``.
    data_dir: Directory with the 4 standard IDX files (``.gz`` or raw) for
      (Fashion-)MNIST, or the CIFAR-10 python/binary batches for ``cifar10``.
    subset: Optional ``(n_train, n_test)``; keeps the first ``n`` examples
      of each split (``None`` keeps the split whole). For smoke tests.
    tfds_download: If TFDS finds no prepared data, let it download (needs
      internet). Off by default.

  Returns:
    A :class:`Dataset` with ``uint8`` NHWC images and ``int32`` labels.

  Raises:
    DatasetNotFoundError: If no source has the data (or ``data_dir`` lacks
      the files); the message explains how to obtain it.
    ValueError: If a file found is corrupt, or for an unknown ``name``.
  """
  name = _canonical_name(name)
  num_classes = _NUM_CLASSES[name]
  arrays: tuple[np.ndarray, ...] | None = None
  source = ""
  tried: list[str] = []

  if data_dir is not None:
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
      raise _not_found(name, [f"--data-dir {directory}: no such directory"])
    if name == "cifar10":
      try:
        arrays, found_dir = _load_cifar_dir(directory)
      except FileNotFoundError as e:
        raise _not_found(name, [f"--data-dir: {e}"]) from None
      source = f"cifar:{found_dir}"
    else:
      files, missing = _find_idx_files(directory)
      if missing:
        raise _not_found(name, [f"--data-dir {directory}: missing {', '.join(missing)}"])
      arrays = _load_idx_dir(files, num_classes)
      source = f"idx:{directory}"
  else:
    debian = DEBIAN_DIRS.get(name)
    if debian is not None:
      files, missing = _find_idx_files(debian)
      if not missing:
        arrays = _load_idx_dir(files, num_classes)
        source = f"idx:{debian}"
      else:
        tried.append(f"{debian}: missing {', '.join(missing)}")
    if arrays is None:
      arrays, reason = _load_tfds(name, tfds_download)
      if arrays is None:
        tried.append(reason)
        raise _not_found(name, tried)
      source = f"tfds:{name}"

  train_x, train_y, test_x, test_y = arrays
  if subset is not None:
    n_train, n_test = subset
    for n in subset:
      if n is not None and n < 0:
        raise ValueError(f"subset sizes must be >= 0, got {subset}")
    train_x, train_y = train_x[:n_train], train_y[:n_train]
    test_x, test_y = test_x[:n_test], test_y[:n_test]
  return Dataset(train_x, train_y, test_x, test_y, num_classes, name, source)


def split_validation(dataset: Dataset, n_val: int, seed: int = 0) -> Dataset:
  """Holds ``n_val`` training examples out as a validation split.

  The held-out examples are fixed by ``seed`` (default 0, independent of a
  run's seed), so every run of a sweep is picked on the same split; the
  test split is untouched. ``n_val=0`` returns ``dataset`` unchanged.

  Args:
    dataset: A dataset without a validation split.
    n_val: Examples to hold out, in ``[0, len(train) - 1]``.
    seed: Seed of the fixed permutation that chooses them.

  Returns:
    The dataset with ``val_x`` / ``val_y`` set and those examples removed
    from ``train_x`` / ``train_y`` (the rest keep their order).
  """
  n = len(dataset.train_x)
  if not isinstance(n_val, (int, np.integer)) or not 0 <= n_val < n:
    raise ValueError(f"`n_val` must be an integer in [0, {n - 1}], got {n_val!r}")
  if n_val == 0:
    return dataset
  if dataset.val_x is not None:
    raise ValueError(f"{dataset.name} already has a validation split")
  held = np.zeros(n, bool)
  held[np.random.default_rng(seed).permutation(n)[:n_val]] = True
  return dataset._replace(
      train_x=dataset.train_x[~held], train_y=dataset.train_y[~held],
      val_x=dataset.train_x[held], val_y=dataset.train_y[held])


# ---------------------------------------------------------------------------
# Text (byte-level language modelling)
# ---------------------------------------------------------------------------

TEXT_DATASETS = ("fortunes", "tiny_shakespeare", "text")
"""Text sources of :func:`load_text` (``text``: a user's file or folder)."""

FORTUNES_DIR = Path("/usr/share/games/fortunes")
"""Debian package ``fortunes`` (and ``fortunes-min``): English quotations,
jokes and literature, ~2.5 MB of plain text, one file per collection."""

TEXT_FRACTIONS = (0.9, 0.05, 0.05)
"""Train / validation / test shares of the windows of a text corpus."""


def _read_text_files(paths: list[Path]) -> bytes:
  return b"\n".join(p.read_bytes() for p in sorted(paths))


def _text_files(directory: Path) -> list[Path]:
  """Regular text files under ``directory`` (fortune index ``.dat`` files skipped)."""
  return [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()
          and p.suffix not in (".dat", ".gz", ".zip")]


def _windows(corpus: bytes, context: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping ``context + 1`` byte windows -> (inputs, next bytes)."""
  arr = np.frombuffer(corpus, np.uint8)
  n = len(arr) // (context + 1)
  w = arr[: n * (context + 1)].reshape(n, context + 1)
  return np.ascontiguousarray(w[:, :-1]), w[:, 1:].astype(np.int32)


def _split_windows(corpus: bytes, context: int, seed: int = 0) -> tuple[np.ndarray, ...]:
  """Windows of one corpus, assigned to train / val / test by a fixed permutation."""
  x, y = _windows(corpus, context)
  n = len(x)
  n_val, n_test = (max(1, int(round(f * n))) for f in TEXT_FRACTIONS[1:])
  if n - n_val - n_test < 1:
    raise ValueError(f"text of {len(corpus)} bytes is too short for context {context}: "
                     f"{n} windows, need at least 3")
  perm = np.random.default_rng(seed).permutation(n)
  val, test, train = (np.sort(p) for p in np.split(perm, [n_val, n_val + n_test]))
  return x[train], y[train], x[val], y[val], x[test], y[test]


def _load_tfds_text(name: str, download: bool) -> tuple[dict[str, bytes] | None, str]:
  """Tries TFDS for a text dataset with train/validation/test splits of one string each."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - optional, heavy.
  except ImportError:
    return None, "tensorflow_datasets: not installed"
  reason = ""
  for dl in ([False, True] if download else [False]):
    try:
      splits = tfds.as_numpy(tfds.load(name, batch_size=-1, download=dl))
      return {k: b"".join(bytes(t) for t in v["text"]) for k, v in splits.items()}, ""
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; report them.
      reason = f"tfds.load({name!r}, download={dl}): {type(e).__name__}: {e}"
  return None, reason


def _text_not_found(name: str, tried: list[str]) -> DatasetNotFoundError:
  ways = {
      "fortunes": ["sudo apt-get install fortunes fortunes-min",
                   "or pass --data-dir with your own text file or folder"],
      "tiny_shakespeare": ["pip install tensorflow-datasets && python -c \"import "
                           "tensorflow_datasets as tfds; tfds.load('tiny_shakespeare')\"",
                           "or pass --data-dir with the text file"],
      "text": ["pass --data-dir with a text file or a folder of text files"],
  }[name]
  msg = f"Text dataset {name!r} not found. Tried:\n" + "\n".join(f"  - {t}" for t in tried)
  err = DatasetNotFoundError(msg + "\nTo get it, " + "\n  ".join(ways))
  err.brief = f"dataset {name!r} not found ({'; '.join(tried)})\nto get it: {'; '.join(ways)}"
  return err


def load_text(
    name: str = "fortunes",
    data_dir: PathLike | None = None,
    *,
    context: int = 128,
    tfds_download: bool = False,
) -> Dataset:
  """Loads a byte-level language-modelling dataset into host memory.

  Sources, in order (real text only; nothing is ever synthesized):

  1. ``data_dir``: a text file, or a folder whose files are concatenated
     (sorted by path; fortune ``.dat`` index files skipped). No fall-through.
  2. ``name="fortunes"``: Debian's ``fortunes`` / ``fortunes-min`` packages in
     :data:`FORTUNES_DIR`.
  3. ``name="tiny_shakespeare"``: TFDS (its own train / validation / test
     splits; ``download=False`` first, so a prepared copy needs no internet).

  The corpus is cut into non-overlapping windows of ``context + 1`` bytes
  (input: the first ``context``; target: the last ``context``). For sources
  without splits, a fixed permutation (seed 0) assigns 5 % of the windows
  to validation and 5 % to test (:data:`TEXT_FRACTIONS`).

  Args:
    name: ``"fortunes"`` (default), ``"tiny_shakespeare"`` or ``"text"``
      (needs ``data_dir``).
    data_dir: A text file or a folder of text files.
    context: Tokens (bytes) per training sequence, >= 1.
    tfds_download: Let TFDS download (needs internet). Off by default.

  Returns:
    A :class:`Dataset` with ``num_classes=256`` (the byte vocabulary) and a
    validation split.

  Raises:
    DatasetNotFoundError: If no source has the text.
    ValueError: For an unknown ``name``, a bad ``context`` or a text too short.
  """
  name = name.lower().replace("-", "_")
  if name not in TEXT_DATASETS:
    raise ValueError(f"Unknown text dataset {name!r}; supported: {list(TEXT_DATASETS)}")
  if not isinstance(context, (int, np.integer)) or context < 1:
    raise ValueError(f"`context` must be an integer >= 1, got {context!r}")
  tried: list[str] = []
  if data_dir is not None:
    path = Path(data_dir).expanduser()
    files = [path] if path.is_file() else _text_files(path) if path.is_dir() else []
    if not files:
      raise _text_not_found(name, [f"--data-dir {path}: no text files"])
    arrays = _split_windows(_read_text_files(files), context)
    source = f"text:{path}"
  elif name == "fortunes" and FORTUNES_DIR.is_dir() and _text_files(FORTUNES_DIR):
    arrays = _split_windows(_read_text_files(_text_files(FORTUNES_DIR)), context)
    source = f"text:{FORTUNES_DIR}"
  elif name == "tiny_shakespeare":
    splits, reason = _load_tfds_text(name, tfds_download)
    if splits is None:
      raise _text_not_found(name, [reason])
    (tx, ty), (vx, vy), (sx, sy) = (_windows(splits[k], context)
                                    for k in ("train", "validation", "test"))
    arrays, source = (tx, ty, vx, vy, sx, sy), f"tfds:{name}"
  else:
    tried.append(f"{FORTUNES_DIR}: no text files" if name == "fortunes"
                 else "no --data-dir given")
    raise _text_not_found(name, tried)
  tx, ty, vx, vy, sx, sy = arrays
  return Dataset(tx, ty, sx, sy, 256, name, source, val_x=vx, val_y=vy)


# ---------------------------------------------------------------------------
# On-device batch pipeline
# ---------------------------------------------------------------------------

Batch = tuple[jax.Array, jax.Array]


def to_device(x: Any, y: Any, device: Any = None) -> Batch:
  """Puts images (dtype kept, e.g. uint8) and int32 labels on device once.

  Arrays that already are ``jax.Array`` are not copied unless ``device`` is
  given.

  Args:
    x: Images, ``(N, ...)``.
    y: Labels, ``(N,)``.
    device: Optional ``jax.Device`` or ``Sharding``; default device if None.

  Returns:
    ``(x, y)`` as device arrays.
  """
  if not isinstance(x, jax.Array) or device is not None:
    x = jax.device_put(np.asarray(x) if not isinstance(x, jax.Array) else x, device)
  if isinstance(y, jax.Array):
    y = y.astype(jnp.int32)
    if device is not None:
      y = jax.device_put(y, device)
  else:
    y = jax.device_put(np.asarray(y, dtype=np.int32), device)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
  return x, y


def _norm_params(normalize: str, mean: Any, std: Any) -> tuple[Any, Any]:
  if normalize == "none":  # Token ids: passed through as int32.
    return None, None
  if normalize == "unit":
    return jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
  if normalize == "standardize":
    return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  raise ValueError(f"normalize must be 'unit', 'standardize' or 'none', got {normalize!r}")


def _normalize(x: jax.Array, mean: jax.Array | None, std: jax.Array | None) -> jax.Array:
  if mean is None:
    return x.astype(jnp.int32)
  scale = 1.0 / 255.0 if x.dtype == jnp.uint8 else 1.0
  return (x.astype(jnp.float32) * scale - mean) / std


def normalize_images(
    x: Any,
    normalize: str = "unit",
    mean: Any = FASHION_MNIST_MEAN,
    std: Any = FASHION_MNIST_STD,
) -> jax.Array:
  """Converts images to float32 exactly as the batch pipeline does.

  Args:
    x: Images; ``uint8`` are scaled by 1/255, floats are taken as-is.
    normalize: ``"unit"`` ([0, 1]) or ``"standardize"`` (``(x - mean) / std``).
    mean: Mean for ``"standardize"`` (scalar or per-channel).
    std: Std for ``"standardize"`` (scalar or per-channel).

  Returns:
    float32 array of the same shape.
  """
  m, s = _norm_params(normalize, mean, std)
  return _normalize(jnp.asarray(x), m, s)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _gather(x, y, perm, start, mean, std, *, batch_size):
  idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
  xb = jnp.take(x, idx, axis=0, mode="clip")
  yb = jnp.take(y, idx, axis=0, mode="clip")
  return _normalize(xb, mean, std), yb


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
  """Number of batches per epoch for ``n`` examples."""
  return n // batch_size if drop_last else -(-n // batch_size)


def _as_key(key_or_seed: Any) -> jax.Array:
  if isinstance(key_or_seed, (int, np.integer)):
    return jax.random.key(int(key_or_seed))
  return key_or_seed


def epoch_batches(
    key_or_seed: Any,
    x: Any,
    y: Any,
    batch_size: int,
    drop_last: bool = True,
    *,
    shuffle: bool = True,
    normalize: str = "unit",
    mean: Any = FASHION_MNIST_MEAN,
    std: Any = FASHION_MNIST_STD,
) -> Iterator[Batch]:
  """Yields one epoch of normalized ``(images, labels)`` batches on device.

  Pass device arrays (see :func:`to_device`) to avoid re-uploading the
  dataset on every call; numpy inputs are uploaded once per call.

  Args:
    key_or_seed: ``jax.random`` key or int seed for this epoch's permutation.
    x: Images ``(N, H, W, C)``, uint8 (scaled by 1/255) or float.
    y: Integer labels ``(N,)``.
    batch_size: Examples per batch.
    drop_last: Drop the final partial batch (keeps shapes static).
    shuffle: If False, batches follow dataset order (for evaluation).
    normalize: ``"unit"``, ``"standardize"`` or ``"none"`` (see module docstring).
    mean: Mean for ``"standardize"``.
    std: Std for ``"standardize"``.

  Returns:
    An iterator of ``(float32 images, int32 labels)``.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  x, y = to_device(x, y)
  m, s = _norm_params(normalize, mean, std)
  n = x.shape[0]
  if shuffle:
    perm = jax.random.permutation(_as_key(key_or_seed), n).astype(jnp.int32)
  else:
    perm = jnp.arange(n, dtype=jnp.int32)

  def gen() -> Iterator[Batch]:
    full = n // batch_size
    for i in range(full):
      yield _gather(x, y, perm, i * batch_size, m, s, batch_size=batch_size)
    rem = n - full * batch_size
    if rem and not drop_last:
      yield _gather(x, y, perm, full * batch_size, m, s, batch_size=rem)

  return gen()


class EpochIterator:
  """Re-iterable on-device loader: ``for xb, yb in it(epoch): ...``.

  The data is uploaded once at construction; epoch ``e`` is shuffled with
  ``fold_in(key(seed), e)``, so runs are reproducible per (seed, epoch).
  ``len(it)`` is the number of batches per epoch.
  """

  def __init__(
      self,
      x: Any,
      y: Any,
      batch_size: int,
      *,
      seed: int | jax.Array = 0,
      drop_last: bool = True,
      shuffle: bool = True,
      normalize: str = "unit",
      mean: Any = FASHION_MNIST_MEAN,
      std: Any = FASHION_MNIST_STD,
      device: Any = None,
  ):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.x, self.y = to_device(x, y, device)
    self.batch_size = batch_size
    self.drop_last = drop_last
    self.shuffle = shuffle
    self._key = _as_key(seed)
    self._kwargs = dict(shuffle=shuffle, normalize=normalize, mean=mean, std=std)
    _norm_params(normalize, mean, std)  # Validate early.

  @property
  def num_examples(self) -> int:
    """Examples in the dataset."""
    return int(self.x.shape[0])

  def __len__(self) -> int:
    return num_batches(self.num_examples, self.batch_size, self.drop_last)

  def __call__(self, epoch: int = 0) -> Iterator[Batch]:
    """Returns the batches of ``epoch``."""
    key = jax.random.fold_in(self._key, epoch)
    return epoch_batches(
        key, self.x, self.y, self.batch_size, self.drop_last, **self._kwargs
    )


def make_epoch_iterator(x: Any, y: Any, batch_size: int, **options: Any) -> EpochIterator:
  """Uploads ``(x, y)`` once and returns an :class:`EpochIterator`.

  ``options`` are the keyword-only arguments of :class:`EpochIterator`
  (``seed`` ... ``device`` below; defaults ``0, True, True, "unit"``, the
  Fashion-MNIST statistics, None).

  Args:
    x: Images ``(N, H, W, C)``.
    y: Integer labels ``(N,)``.
    batch_size: Examples per batch.
    seed: Int seed or key; epoch ``e`` uses ``fold_in(key, e)``.
    drop_last: Drop the final partial batch.
    shuffle: Shuffle each epoch (False for evaluation).
    normalize: ``"unit"``, ``"standardize"`` or ``"none"`` (tokens).
    mean: Mean for ``"standardize"``.
    std: Std for ``"standardize"``.
    device: Optional device or sharding for the resident dataset.

  Returns:
    The iterator; call it with the epoch number.
  """
  return EpochIterator(x, y, batch_size, **options)


def shard_batch(batch: Any, sharding: jax.sharding.Sharding) -> Any:
  """Places a batch (any pytree) with ``sharding``, e.g. a data-parallel one."""
  return jax.device_put(batch, sharding)
