"""Train a small classifier on Fashion-MNIST with AutoWU or a baseline schedule.

Run as ``python -m experiments.train`` or ``python experiments/train.py``::

    python -m experiments.train --schedule autowu_lamb --batch-size 4096
    python -m experiments.train --schedule warmup_cosine_lamb --peak-lr 1e-2
    python -m experiments.train --schedule autowu_lamb --test-every epoch \\
        --divergence-factor none          # the authors' rule

Outputs in ``--out-dir`` (default ``runs/<schedule>_b<batch>_s<seed>``):

* ``metrics.jsonl``: one row per step: ``step, epoch, loss, lr, phase,
  probability`` (``null`` where a schedule has no such quantity).
* ``epochs.jsonl``: one row per epoch: test accuracy / loss, mean train loss.
* ``summary.json``: final test accuracy, AutoWU switch (step, restart LR,
  reason), wall time, the schedule's hyperparameters and all arguments.
* ``summary.png``: LR, training loss (with AutoWU's GP posterior over the
  warmup) and test accuracy.
* ``tb/``: TensorBoard events (if ``tensorboardX`` is installed).

From Python, :func:`run` takes a :class:`TrainConfig` (or a dict) and an
optional already-loaded :class:`~experiments.data.Dataset`, and returns the
summary dict plus the per-step history; :func:`main` parses CLI arguments.
The pieces every experiment shares: :func:`make_step` (the update, a pure
function), :func:`setup` (optimizer, model, jitted steps, data of a config)
and :func:`fit` (the train loop, with an ``on_epoch`` callback).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # `python experiments/train.py`
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_autolr
from experiments import cli
from experiments import data as data_lib
from experiments import models as models_lib
from experiments import report
from experiments import schedules as schedules_lib

__all__ = [
    "DATASETS",
    "DEFAULT_EPOCHS",
    "STANDARD_TRAIN_SIZES",
    "EpochResult",
    "Setup",
    "TrainConfig",
    "build_parser",
    "check_config",
    "config_from_args",
    "fit",
    "main",
    "make_step",
    "run",
    "setup",
]

DEFAULT_EPOCHS = 20
"""Default epochs: the MLP run at batch 4096 takes ~2-3 min on 2 busy CPU cores."""

_AUTOWU_DEFAULTS = {
    k: p.default for k, p in inspect.signature(optax_autolr.autowu).parameters.items()
    if p.default is not inspect.Parameter.empty
}
PHASE_NAMES = {0: "warmup", 1: "decay"}


@dataclasses.dataclass
class TrainConfig:
  """Everything a run depends on (the CLI flags, one field each).

  ``test_every``: an int, ``"epoch"`` (once an epoch, the authors' rule) or
  None (the library default). ``divergence_factor``: a float > 1 or None
  (guard off). ``subset``: ``(n_train, n_test)`` or None. ``holdout``:
  training examples held out as a fixed validation split
  (:func:`experiments.data.split_validation`; text datasets always have
  one). ``context``: tokens per sequence of a text dataset. ``autowu``:
  further keyword arguments of :func:`optax_autolr.autowu` (a decision-rule
  variant; they win over the AutoWU flags above).
  """

  schedule: str = "autowu_lamb"
  model: str = "mlp"
  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  batch_size: int = 4096
  eval_batch_size: int = 2500
  epochs: int = DEFAULT_EPOCHS
  seed: int = 0
  peak_lr: float | None = None
  warmup_fraction: float = 0.05
  weight_decay: float = schedules_lib.DEFAULT_WEIGHT_DECAY
  subset: tuple[int | None, int | None] | None = None
  normalize: str = "standardize"
  holdout: int = 0
  context: int = 128
  # AutoWU.
  autowu: dict[str, Any] = dataclasses.field(default_factory=dict)
  test_every: int | str | None = None
  divergence_factor: float | None = _AUTOWU_DEFAULTS["divergence_factor"]
  max_warmup_fraction: float = _AUTOWU_DEFAULTS["max_warmup_fraction"]
  decay: str | None = _AUTOWU_DEFAULTS["decay"]
  # Output.
  out_dir: str | None = None
  plot: bool = True
  tensorboard: bool = True
  quiet: bool = False
  checkpoint_dir: str | None = None
  resume: bool = False

  def resolved_out_dir(self) -> Path:
    if self.out_dir:
      return Path(self.out_dir)
    return Path("runs") / f"{self.schedule}_b{self.batch_size}_s{self.seed}"

  AUTOWU_FIELDS = ("max_warmup_fraction", "decay", "divergence_factor", "test_every", "autowu")
  """The fields only the AutoWU schedules read (through :meth:`autowu_kwargs`)."""

  def autowu_kwargs(self, steps_per_epoch: int) -> dict[str, Any]:
    """Keyword arguments for :func:`optax_autolr.autowu` (from :data:`AUTOWU_FIELDS`)."""
    kw: dict[str, Any] = {
        "max_warmup_fraction": self.max_warmup_fraction,
        "decay": self.decay,
        "divergence_factor": self.divergence_factor,
    }
    if self.test_every == "epoch":
      kw["test_every"] = steps_per_epoch
    elif self.test_every is not None:
      kw["test_every"] = int(self.test_every)
    return {**kw, **self.autowu}


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _subset(s: str) -> tuple[int | None, int | None]:
  want = "N_TRAIN,N_TEST (integers >= 1; one may be empty: the whole split)"
  parts = s.split(",")
  if len(parts) != 2:
    raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}")
  try:
    out = tuple(int(p) if p.strip() else None for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}") from None
  if any(n is not None and n < 1 for n in out):
    raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}")
  return out  # type: ignore[return-value]


_subset.__name__ = _subset.__qualname__ = "subset"


def _dataset(s: str) -> str:
  if s.lower().replace("-", "_") in data_lib.TEXT_DATASETS:
    return s.lower().replace("-", "_")
  try:
    return data_lib._canonical_name(s)  # noqa: SLF001 - accepts the aliases too.
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"unknown dataset {s!r} (choose from {', '.join(DATASETS)})") from None


_dataset.__name__ = _dataset.__qualname__ = "dataset"

DATASETS = ("fashion_mnist", "mnist", "cifar10") + data_lib.TEXT_DATASETS
"""The ``--dataset`` choices (see :func:`experiments.data.load_dataset`)."""

STANDARD_TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000}
"""Training-set sizes of the system / TFDS copies (a --data-dir may differ)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows defaults, except for on/off flags and None."""

  def _get_help_string(self, action):
    if action.default is None or isinstance(action.default, bool):
      return action.help
    return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
  d = TrainConfig()
  p = cli.ArgumentParser(
      prog="python -m experiments.train",
      description="Train an MLP/CNN on Fashion-MNIST, or a transformer language model on "
                  "text, with AutoWU or a baseline schedule.",
      formatter_class=_HelpFormatter,
  )
  g = p.add_argument_group("run")
  g.add_argument("--schedule", default=d.schedule, choices=schedules_lib.SCHEDULES,
                 metavar="NAME", help="one of: " + ", ".join(schedules_lib.SCHEDULES))
  g.add_argument("--model", default=d.model, choices=("mlp", "cnn", "transformer"),
                 help="MLP (512-256), small CNN with BatchNorm, or a byte-level decoder-only "
                      "transformer (2 layers, width 128; text datasets)")
  g.add_argument("--dataset", type=_dataset, default=d.dataset,
                 help="fashion_mnist, mnist, cifar10, or text: fortunes (Debian package), "
                      "tiny_shakespeare (TFDS), text (--data-dir) (see experiments/data.py)")
  g.add_argument("--data-dir", type=cli.existing_path, default=d.data_dir,
                 help="directory with the dataset files, or a text file / folder for text "
                      "(default: system path, then TFDS)")
  g.add_argument("--batch-size", type=cli.integer(1), default=d.batch_size,
                 help="training batch size (the last partial batch is dropped)")
  g.add_argument("--eval-batch-size", type=cli.integer(1), default=d.eval_batch_size,
                 help="test-set batch size")
  g.add_argument("--epochs", type=cli.integer(1), default=d.epochs, help="training epochs")
  g.add_argument("--seed", type=cli.integer(), default=d.seed,
                 help="seed of the initialization and the data order")
  g.add_argument("--peak-lr", type=cli.number(0, low_open=True), default=d.peak_lr,
                 help="peak LR of the warmup_cosine_* / warmup_linear_* schedules, LR of "
                      "schedule_free_adamw "
                      "and reduce_on_plateau, base LR of mechanize_lamb "
                      "(default: per schedule, see experiments/schedules.py)")
  g.add_argument("--warmup-fraction", type=cli.number(0, 1, high_open=True),
                 default=d.warmup_fraction,
                 help="linear warmup fraction of warmup_cosine_*, warmup_linear_* and "
                      "schedule_free_adamw, in [0, 1)")
  g.add_argument("--weight-decay", type=cli.number(0), default=d.weight_decay,
                 help="decoupled weight decay (kernels only where the optimizer takes a mask)")
  g.add_argument("--subset", type=_subset, default=None, metavar="N_TRAIN,N_TEST",
                 help="use only the first examples (smoke tests)")
  g.add_argument("--normalize", default=d.normalize, choices=("unit", "standardize"),
                 help="input scaling: [0, 1] or standardized with the dataset statistics")
  g.add_argument("--holdout", type=cli.integer(0), default=d.holdout,
                 help="training examples held out as a fixed validation split (images)")
  g.add_argument("--context", type=cli.integer(2), default=d.context,
                 help="tokens (bytes) per sequence of a text dataset")
  a = p.add_argument_group("AutoWU (autowu_* schedules)")
  a.add_argument("--test-every", type=cli.integer(1, words=("epoch",)), default=d.test_every,
                 help="steps between minimum tests, or 'epoch' (the authors' rule); "
                      "default: the library's (1/40 of the max warmup, at most an epoch)")
  a.add_argument("--divergence-factor",
                 type=cli.number(1, low_open=True, none=True),
                 default=d.divergence_factor, help="float > 1, or 'none' to disable the guard")
  a.add_argument("--max-warmup-fraction",
                 type=cli.number(0, 1, low_open=True, high_open=True),
                 default=d.max_warmup_fraction,
                 help="longest warmup, as a fraction of the total steps, in (0, 1)")
  a.add_argument("--decay", default=d.decay, choices=("cosine", "constant_cosine", "linear"),
                 help="decay after the switch (default: the library's, linear; under the "
                      "authors' rule: cosine)")
  o = p.add_argument_group("output")
  o.add_argument("--out-dir", type=cli.output_dir, default=None,
                 help="output directory (default: runs/<schedule>_b<batch-size>_s<seed>)")
  o.add_argument("--no-plot", dest="plot", action="store_false", help="skip summary.png")
  o.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                 help="skip the TensorBoard events in <out-dir>/tb")
  o.add_argument("--quiet", action="store_true",
                 help="no progress bars or per-epoch lines (the summary line is printed)")
  o.add_argument("--checkpoint-dir", type=cli.output_dir, default=None,
                 help="save model + optimizer state (orbax) after every epoch")
  o.add_argument("--resume", action="store_true",
                 help="resume from the latest checkpoint in --checkpoint-dir")
  return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


# Arguments of optax_autolr.autowu / schedules.make_optimizer -> the flag that sets them.
_FLAG_OF = {
    "test_every": "--test-every",
    "max_warmup_fraction": "--max-warmup-fraction",
    "divergence_factor": "--divergence-factor",
    "decay": "--decay",
    "warmup_fraction": "--warmup-fraction",
    "weight_decay": "--weight-decay",
    "peak_lr": "--peak-lr",
}


def check_config(cfg: TrainConfig, n_train: int | None = None) -> None:
  """Raises :class:`~experiments.cli.UsageError` if the flags cannot make a run.

  The checks that need more than one flag: ``--resume`` without
  ``--checkpoint-dir``, a batch larger than the training set and, given
  ``n_train`` (the training examples after ``--subset``), the optimizer
  built from the flags (its own validation, e.g. a warmup shorter than one
  step). The message names the flags.
  """
  if cfg.resume and not cfg.checkpoint_dir:
    raise cli.UsageError("argument --resume: needs --checkpoint-dir")
  if (cfg.dataset in data_lib.TEXT_DATASETS) != (cfg.model == "transformer"):
    raise cli.UsageError(
        f"argument --model: {cfg.model} does not fit --dataset {cfg.dataset}: the "
        "transformer trains on text (fortunes, tiny_shakespeare, text), mlp/cnn on images")
  if cfg.dataset == "text" and cfg.data_dir is None:
    raise cli.UsageError("argument --data-dir: --dataset text needs a text file or folder")
  sub_train = cfg.subset[0] if cfg.subset is not None else None
  if sub_train is not None and cfg.batch_size > sub_train:
    raise cli.UsageError(
        f"argument --batch-size: {cfg.batch_size} is larger than the {sub_train} training "
        f"examples that --subset {sub_train},{cfg.subset[1] or ''} keeps; pass "
        f"--batch-size {sub_train} or less, or a larger --subset")
  if cfg.checkpoint_dir and not cfg.resume:
    ckpt_dir = Path(cfg.checkpoint_dir).expanduser()
    if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
      raise cli.UsageError(  # The same check as in run(), before loading anything.
          f"argument --checkpoint-dir: {cfg.checkpoint_dir} already holds checkpoints: "
          "pass --resume to continue that run, or choose another --checkpoint-dir")
  if n_train is None:
    return
  if cfg.batch_size > n_train:
    where = f"--data-dir {cfg.data_dir}" if cfg.data_dir is not None else cfg.dataset
    raise cli.UsageError(
        f"argument --batch-size: {cfg.batch_size} is larger than the {n_train} training "
        f"examples of {where}; pass --batch-size {n_train} or less")
  steps_per_epoch = data_lib.num_batches(n_train, cfg.batch_size)
  total_steps = steps_per_epoch * cfg.epochs
  schedule = schedules_lib.canonical(cfg.schedule)
  try:
    schedules_lib.make_optimizer(
        schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        peak_lr=cfg.peak_lr, warmup_fraction=cfg.warmup_fraction,
        weight_decay=cfg.weight_decay,
        autowu_kwargs=(cfg.autowu_kwargs(steps_per_epoch)
                       if schedule in schedules_lib.AUTOWU_SCHEDULES else None))
  except (ValueError, TypeError) as e:
    msg = " ".join(str(e).split())
    flags = [f for name, f in _FLAG_OF.items()  # `name`, or a bare snake_case name.
             if f"`{name}`" in msg or ("_" in name and re.search(rf"\b{name}\b", msg))]
    raise cli.UsageError(
        f"argument {'/'.join(flags) or '--epochs/--batch-size'}: {msg} (--schedule "
        f"{schedule}: {total_steps} total steps = --epochs {cfg.epochs} x "
        f"{steps_per_epoch} steps per epoch of --batch-size {cfg.batch_size})") from None


def load_data(cfg: TrainConfig) -> data_lib.Dataset:
  """The dataset of ``cfg``, before its subset and holdout (see :func:`run`)."""
  if cfg.dataset in data_lib.TEXT_DATASETS:
    return data_lib.load_text(cfg.dataset, cfg.data_dir, context=cfg.context)
  return data_lib.load_dataset(cfg.dataset, cfg.data_dir)


def _load_for_cli(cfg: TrainConfig) -> data_lib.Dataset:
  try:
    return _prepare(load_data(cfg), cfg)
  except data_lib.DatasetNotFoundError as e:
    flag = "--data-dir" if cfg.data_dir is not None else "--dataset"
    raise cli.UsageError(f"argument {flag}: {e.brief}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """CLI entry point; returns the result dict of :func:`run`.

  A user error (see :mod:`experiments.cli`) prints two lines to stderr and
  exits with status 2; those detectable from the flags alone (and the
  standard dataset sizes) before loading the data or compiling anything.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  with cli.usage_errors(parser):
    cfg = config_from_args(args)
    known = None
    if cfg.data_dir is None and cfg.dataset in STANDARD_TRAIN_SIZES:
      known = STANDARD_TRAIN_SIZES[cfg.dataset]
      if cfg.subset is not None and cfg.subset[0] is not None:
        known = min(known, cfg.subset[0])
    check_config(cfg, known)
    dataset = _load_for_cli(cfg)
    check_config(cfg, len(dataset.train_x))
    return run(cfg, dataset=dataset, prepared=True)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_step(loss_fn: Callable[..., tuple[jax.Array, Any]],
              tx: optax.GradientTransformation) -> Callable[..., tuple[Any, Any, jax.Array, Any]]:
  """The update every experiment applies, as a pure function of arrays.

  Args:
    loss_fn: ``(params, *batch) -> (loss, aux)``; ``aux`` is whatever the
      forward pass changes besides the parameters (BatchNorm statistics), or
      None.
    tx: the optimizer.

  Returns:
    ``step(params, opt_state, *batch) -> (params, opt_state, loss, aux)``:
    the gradient, ``tx.update(grads, opt_state, params, value=loss)`` (the
    loss always passed: AutoWU and reduce-on-plateau need it, the other
    transformations ignore extra keyword arguments), ``optax.apply_updates``.
    Not jitted: :func:`fit`'s NNX step and the scans of
    :mod:`experiments.surge` (vmapped over learning rates) trace it.
  """

  def step(params, opt_state, *batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return step


def _make_steps(gd_model, gd_model_eval, gd_opt, lr_fn, eval_params_fn):
  """Jitted train step, eval-params preparation and eval step (split NNX state)."""

  def train_step(model_state, opt_state, x, y):
    model = nnx.merge(gd_model, model_state)
    optimizer = nnx.merge(gd_opt, opt_state)
    step = optimizer.step[...].astype(jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.as_pure(rest)

    def loss_fn(p, x, y):
      m = nnx.merge(graphdef, p, rest)
      return _cross_entropy(m(x), y), nnx.as_pure(nnx.state(m, nnx.Not(nnx.Param)))

    # What nnx.Optimizer.update(model, grads, value=loss) does, through make_step.
    params, pure_opt, loss, rest = make_step(loss_fn, optimizer.tx)(
        nnx.as_pure(params), nnx.as_pure(optimizer.opt_state), x, y)
    nnx.update(model, params, rest)
    nnx.update(optimizer.opt_state, nnx.state(pure_opt))
    optimizer.step[...] += 1
    lr, phase, prob = lr_fn(pure_opt, step)
    row = jnp.stack([
        loss.astype(jnp.float32), lr.astype(jnp.float32),
        phase.astype(jnp.float32), prob.astype(jnp.float32),
    ])
    return nnx.state(model), nnx.state(optimizer), row

  def eval_model_state(model_state, opt_state):
    if eval_params_fn is None:
      return model_state
    model = nnx.merge(gd_model, model_state)
    optimizer = nnx.merge(gd_opt, opt_state)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    nnx.update(model, eval_params_fn(nnx.as_pure(optimizer.opt_state), params))
    return nnx.state(model)

  def eval_step(model_state, x, y):
    model = nnx.merge(gd_model_eval, model_state)
    logits = model(x)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return correct, loss_sum

  return (
      jax.jit(train_step, donate_argnums=(0, 1)),
      jax.jit(eval_model_state),
      jax.jit(eval_step),
  )


def _evaluate(eval_step, model_state, test_it) -> tuple[float, float]:
  """Accuracy and mean loss per label (per token for a language model)."""
  correct, loss_sum = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
  for xb, yb in test_it(0):
    c, s = eval_step(model_state, xb, yb)
    correct, loss_sum = correct + c, loss_sum + s
  n = test_it.num_examples * math.prod(test_it.y.shape[1:])
  correct, loss_sum = jax.device_get((correct, loss_sum))
  return float(correct) / n, float(loss_sum) / n


def _state_bytes(opt_state: Any) -> int:
  """Bytes of the optimizer's state (the optimizer's own pytree, step counter excluded)."""
  return int(sum(x.nbytes for x in jax.tree.leaves(opt_state.get("opt_state", opt_state))))


def _finite_or_none(v: float) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None


def _fmt_phase(v: float) -> str:
  return PHASE_NAMES.get(int(v), "-") if math.isfinite(v) else "-"


class _TB:
  """tensorboardX writer, or a no-op if unavailable / disabled."""

  def __init__(self, logdir: Path | None):
    self.writer = None
    if logdir is None:
      return
    try:
      from tensorboardX import SummaryWriter  # noqa: PLC0415
    except ImportError:
      warnings.warn("tensorboardX is not installed; skipping TensorBoard logging",
                    stacklevel=3)
      return
    self.writer = SummaryWriter(str(logdir))

  def scalar(self, tag: str, value: float | None, step: int) -> None:
    if self.writer is not None and value is not None and math.isfinite(value):
      self.writer.add_scalar(tag, value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _progress(total: int, desc: str, disable: bool):
  try:
    from tqdm.auto import tqdm  # noqa: PLC0415
  except ImportError:  # pragma: no cover - tqdm is an experiments dependency.
    return None
  return tqdm(total=total, desc=desc, leave=False, disable=disable, dynamic_ncols=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
  if not path.is_file():
    return []
  rows = []
  with open(path) as f:
    for line in f:
      if line.strip():
        rows.append(json.loads(line))
  return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]], mode: str = "a") -> None:
  with open(path, mode) as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------------------
# Checkpointing (orbax)
# ---------------------------------------------------------------------------


class _Checkpointer:
  """Saves ``{model, opt}`` NNX states + JSON metadata after each epoch."""

  def __init__(self, directory: str):
    import orbax.checkpoint as ocp  # noqa: PLC0415

    self.ocp = ocp
    self.manager = ocp.CheckpointManager(
        Path(directory).resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )

  def save(self, epoch: int, model_state, opt_state, meta: dict[str, Any]) -> None:
    ocp = self.ocp
    state = {"model": nnx.as_pure(model_state), "opt": nnx.as_pure(opt_state)}
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, model_state, opt_state):
    """Returns ``(model_state, opt_state, meta)`` of the latest checkpoint, or None."""
    ocp = self.ocp
    step = self.manager.latest_step()
    if step is None:
      return None
    target = {"model": nnx.as_pure(model_state), "opt": nnx.as_pure(opt_state)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = restored["state"]
    fresh_opt = nnx.as_pure(opt_state)
    nnx.replace_by_pure_dict(model_state, nnx.to_pure_dict(state["model"])
                             if isinstance(state["model"], nnx.State) else state["model"])
    nnx.replace_by_pure_dict(opt_state, nnx.to_pure_dict(state["opt"])
                             if isinstance(state["opt"], nnx.State) else state["opt"])
    meta = dict(restored["meta"])
    # Warns when the checkpoint's AutoWU was built for another budget.
    meta["autowu_config_diffs"] = optax_autolr.check_restored(
        nnx.as_pure(opt_state), fresh_opt)
    return model_state, opt_state, meta

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _init_model(name: str, num_classes: int, in_shape: tuple[int, ...]):
  """Jitted model initializer ``key -> model``, cached across runs in a process.

  One compile instead of many eager ops; the same parameters as
  ``make_model(name, nnx.Rngs(key))``.
  """
  return nnx.jit(lambda key: models_lib.make_model(
      name, nnx.Rngs(key), num_classes=num_classes, in_shape=in_shape))


def _as_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
  if isinstance(config, TrainConfig):
    return dataclasses.replace(config)
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  unknown = set(config) - fields
  if unknown:
    raise ValueError(f"unknown config keys: {sorted(unknown)}")
  return TrainConfig(**config)


@dataclasses.dataclass
class Setup:
  """A run before training: optimizer, split NNX states, jitted steps, data.

  ``model_state`` / ``opt_state`` are the current states (:func:`fit`
  replaces them after every step; a resume replaces them before).
  """

  cfg: TrainConfig
  schedule: str
  dataset: data_lib.Dataset
  steps_per_epoch: int
  total_steps: int
  needs_value: bool
  info: schedules_lib.ScheduleInfo
  gd_opt: Any
  model_state: Any
  opt_state: Any
  train_step: Callable[..., Any]
  eval_model_state: Callable[..., Any]
  eval_step: Callable[..., Any]
  train_it: Any
  test_it: Any
  val_it: Any = None

  @property
  def n_train(self) -> int:
    return len(self.dataset.train_x)


class EpochResult(NamedTuple):
  """What :func:`fit` hands ``on_epoch`` after each epoch."""

  epoch: int  # 0-based.
  first_step: int
  rows: np.ndarray  # (steps, 4) float64: loss, lr, phase, probability per step.
  test_accuracy: float
  test_loss: float
  seconds: float
  val_accuracy: float | None = None  # None without a validation split.
  val_loss: float | None = None


def _prepare(dataset: data_lib.Dataset, cfg: TrainConfig) -> data_lib.Dataset:
  """``cfg.subset`` (first examples of train / test), then ``cfg.holdout``."""
  if cfg.subset is not None:
    n_train, n_test = cfg.subset
    dataset = dataset._replace(
        train_x=dataset.train_x[:n_train], train_y=dataset.train_y[:n_train],
        test_x=dataset.test_x[:n_test], test_y=dataset.test_y[:n_test])
  if cfg.holdout:
    if dataset.val_x is not None:
      raise cli.UsageError(f"argument --holdout: {dataset.name} has its own validation split")
    if cfg.holdout >= len(dataset.train_x):
      raise cli.UsageError(f"argument --holdout: {cfg.holdout} is not smaller than the "
                           f"{len(dataset.train_x)} training examples")
    dataset = data_lib.split_validation(dataset, cfg.holdout)
  return dataset


def setup(cfg: TrainConfig, dataset: data_lib.Dataset) -> Setup:
  """Builds the optimizer, the model and its jitted steps for ``cfg`` on ``dataset``."""
  n_train = len(dataset.train_x)
  steps_per_epoch = data_lib.num_batches(n_train, cfg.batch_size)
  if steps_per_epoch < 1:
    raise cli.UsageError(f"argument --batch-size: {cfg.batch_size} is larger than the "
                         f"{n_train} training examples")
  total_steps = steps_per_epoch * cfg.epochs
  schedule = schedules_lib.canonical(cfg.schedule)
  is_autowu = schedule in schedules_lib.AUTOWU_SCHEDULES
  tx, needs_value, info = schedules_lib.make_optimizer(
      schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      peak_lr=cfg.peak_lr, warmup_fraction=cfg.warmup_fraction,
      weight_decay=cfg.weight_decay,
      autowu_kwargs=cfg.autowu_kwargs(steps_per_epoch) if is_autowu else None)

  # Model and optimizer, split into (static graphdef, state) for jax.jit.
  model = _init_model(cfg.model, dataset.num_classes,
                      tuple(int(d) for d in dataset.train_x.shape[1:]))(
                          jax.random.key(cfg.seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  model.eval()
  gd_model_eval, _ = nnx.split(model)
  model.train()
  gd_model, model_state = nnx.split(model)
  gd_opt, opt_state = nnx.split(optimizer)
  del model, optimizer
  # Some optimizers keep references to the parameters in their state
  # (Prodigy, COCOB, Mechanic): copy every leaf so that the donating train
  # step never receives the same buffer twice.
  model_state, opt_state = jax.tree.map(jnp.copy, (model_state, opt_state))
  train_step, eval_model_state, eval_step = _make_steps(
      gd_model, gd_model_eval, gd_opt, info.lr_fn, info.eval_params_fn)

  mean, std = data_lib.NORM_STATS.get(dataset.name, (0.0, 1.0))
  norm = dict(normalize="none" if dataset.is_text else cfg.normalize, mean=mean, std=std)
  train_it = data_lib.make_epoch_iterator(dataset.train_x, dataset.train_y, cfg.batch_size,
                                          seed=cfg.seed, **norm)

  def eval_it(x, y):
    eval_batch = cfg.eval_batch_size if not dataset.is_text else max(1, cfg.eval_batch_size // 10)
    return data_lib.make_epoch_iterator(x, y, min(eval_batch, len(x)), shuffle=False,
                                        drop_last=False, **norm)

  test_it = eval_it(dataset.test_x, dataset.test_y)
  val_it = eval_it(dataset.val_x, dataset.val_y) if dataset.val_x is not None else None
  return Setup(cfg=cfg, schedule=schedule, dataset=dataset, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, needs_value=needs_value, info=info, gd_opt=gd_opt,
               model_state=model_state, opt_state=opt_state, train_step=train_step,
               eval_model_state=eval_model_state, eval_step=eval_step, train_it=train_it,
               test_it=test_it, val_it=val_it)


def fit(
    s: Setup,
    *,
    start_epoch: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> float | None:
  """The train loop: epochs ``start_epoch .. cfg.epochs - 1`` of ``s``.

  Every step is ``s.train_step`` (:func:`make_step` inside NNX); after each
  epoch the test set (and the validation split, if any) is evaluated and ``on_epoch`` gets an
  :class:`EpochResult` (``s.model_state`` / ``s.opt_state`` are then the
  states after that epoch). A progress bar shows the loss and LR unless
  ``cfg.quiet``. Returns the seconds until the first step was done
  (compilation included), or None when no step ran.
  """
  cfg, info = s.cfg, s.info
  t_train = time.perf_counter()
  compile_s = None
  for epoch in range(start_epoch, cfg.epochs):
    t_epoch = time.perf_counter()
    bar = _progress(s.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.quiet)
    rows = []
    last_post = 0.0
    for i, (xb, yb) in enumerate(s.train_it(epoch)):
      s.model_state, s.opt_state, row = s.train_step(s.model_state, s.opt_state, xb, yb)
      rows.append(row)
      if compile_s is None:
        jax.block_until_ready(row)
        compile_s = time.perf_counter() - t_train
      if bar is not None:
        bar.update(1)
        now = time.perf_counter()
        if not cfg.quiet and (now - last_post > 0.5 or i == s.steps_per_epoch - 1):
          loss, lr, phase, _ = (float(v) for v in jax.device_get(row))
          bar.set_postfix_str(f"loss {loss:.4f} {info.lr_label} "
                              f"{report.fmt(lr, nan='-')} {_fmt_phase(phase)}")
          last_post = now
    if bar is not None:
      bar.close()
    arr = np.asarray(jax.device_get(jnp.stack(rows)), dtype=np.float64)
    eval_state = s.eval_model_state(s.model_state, s.opt_state)
    acc, test_loss = _evaluate(s.eval_step, eval_state, s.test_it)
    val = _evaluate(s.eval_step, eval_state, s.val_it) if s.val_it is not None else (None, None)
    if on_epoch is not None:
      on_epoch(EpochResult(epoch, epoch * s.steps_per_epoch, arr, acc, test_loss,
                           time.perf_counter() - t_epoch, *val))
  return compile_s


def _resume(s: Setup, ckpt: _Checkpointer, hist: dict[str, list], metrics_path: Path,
            epochs_path: Path, log: Callable[..., None]) -> tuple[int, float, list, list]:
  """Restores the latest checkpoint into ``s`` and the history rows before it.

  Returns ``(start_epoch, prior_train_time, metrics_rows, epoch_rows)``
  (``0, 0.0, [], []`` when the directory holds no checkpoint).
  """
  cfg = s.cfg
  restored = ckpt.restore(s.model_state, s.opt_state)
  if restored is None:
    log(f"no checkpoint in {cfg.checkpoint_dir}; starting from scratch")
    return 0, 0.0, [], []
  s.model_state, s.opt_state, meta = restored
  start_epoch = int(meta["epoch"])
  if (meta.get("total_steps") not in (None, s.total_steps)
          and not meta["autowu_config_diffs"]):
    warnings.warn(
        f"resuming a run made for {meta['total_steps']} steps with "
        f"{s.total_steps} total steps: the schedule changes", stacklevel=3)
  last_step = start_epoch * s.steps_per_epoch
  old_rows = [r for r in _read_jsonl(metrics_path) if r["step"] < last_step]
  epoch_rows = [r for r in _read_jsonl(epochs_path) if r["epoch"] < start_epoch]
  for r in old_rows:
    for k in hist:
      v = r.get(k)
      hist[k].append(float("nan") if v is None else v)
  log(f"resumed from epoch {start_epoch} ({cfg.checkpoint_dir})")
  return start_epoch, float(meta.get("train_time_s", 0.0)), old_rows, epoch_rows


def _switch_and_posterior(s: Setup, plot: bool) -> tuple[dict[str, Any], dict | None]:
  """AutoWU's switch (step, restart LR, reason), the decay guard's LR factor (1: it never
  fired) and, for the plot, the GP posterior."""
  switch: dict[str, Any] = {"switch_step": None, "restart_lr": None, "switch_reason": None,
                            "decay_scale": None}
  if not s.info.is_autowu:
    return switch, None
  pure_opt = nnx.as_pure(nnx.merge(s.gd_opt, s.opt_state).opt_state)
  m = optax_autolr.get_metrics(pure_opt)  # One read off the device.
  switched = m["switch_step"] >= 0
  switch = {
      "switch_step": m["switch_step"] if switched else None,
      "restart_lr": m["restart_lr"] if switched else None,
      "switch_reason": m["switch_reason"],
      "decay_scale": m["decay_scale"],
  }
  posterior = None
  if plot:  # The posterior is only drawn, never reported.
    try:
      # The GP constants come from the state (compiled once per run).
      grid, res = optax_autolr.loss_curve_posterior(pure_opt)
      grid, m, v = (np.asarray(a, np.float64) for a in
                    jax.device_get((grid, res.posterior.mean, res.posterior.var)))
      if np.all(np.isfinite(m)) and np.all(np.isfinite(v)):
        posterior = {"step": grid, "mean": m, "std": np.sqrt(np.maximum(v, 0.0))}
    except Exception as e:  # noqa: BLE001 - a plot aid must not fail the run.
      warnings.warn(f"loss_curve_posterior failed: {e}", stacklevel=3)
  return switch, posterior


class _Outputs(NamedTuple):
  hist: dict[str, list]
  epoch_rows: list[dict[str, Any]]
  start_epoch: int
  prior_time: float
  ckpt: _Checkpointer | None
  tb: _TB
  metrics_path: Path
  epochs_path: Path


def _open_outputs(cfg: TrainConfig, s: Setup, out_dir: Path, log: Callable[..., None]
                  ) -> _Outputs:
  """Opens the run's files, checkpoints (resuming if asked) and TensorBoard writer."""
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics_path, epochs_path = out_dir / "metrics.jsonl", out_dir / "epochs.jsonl"
  # History (host numpy, filled once per epoch).
  hist: dict[str, list] = {k: [] for k in ("step", "loss", "lr", "phase", "probability")}
  epoch_rows: list[dict[str, Any]] = []
  old_rows: list[dict[str, Any]] = []
  start_epoch = 0
  prior_time = 0.0
  ckpt = _Checkpointer(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
  if ckpt is not None and not cfg.resume and ckpt.manager.latest_step() is not None:
    ckpt.close()
    raise cli.UsageError(f"argument --checkpoint-dir: {cfg.checkpoint_dir} already holds "
                         "checkpoints: pass --resume to continue that run, or choose "
                         "another --checkpoint-dir")
  if ckpt is not None and cfg.resume:
    start_epoch, prior_time, old_rows, epoch_rows = _resume(
        s, ckpt, hist, metrics_path, epochs_path, log)
  # Start the files afresh (after a resume: rewritten up to the restored point).
  _write_jsonl(metrics_path, old_rows, mode="w")
  _write_jsonl(epochs_path, epoch_rows, mode="w")
  tb = _TB(out_dir / "tb" if cfg.tensorboard else None)
  return _Outputs(hist, epoch_rows, start_epoch, prior_time, ckpt, tb, metrics_path,
                  epochs_path)


class _EpochRecorder:
  """``fit``'s per-epoch callback: step and epoch rows to jsonl, TensorBoard, log, checkpoint."""

  def __init__(self, cfg: TrainConfig, s: Setup, out: _Outputs, log: Callable[..., None],
               t_train: float):
    self.cfg, self.s, self.out, self.log, self.t_train = cfg, s, out, log, t_train

  def _steps(self, r: EpochResult) -> None:
    arr, first, tb, info = r.rows, r.first_step, self.out.tb, self.s.info
    steps = list(range(first, first + len(arr)))
    step_rows = []
    for st, (loss, lr, phase, prob) in zip(steps, arr):
      step_rows.append({"step": st, "epoch": r.epoch, "loss": _finite_or_none(loss),
                        "lr": _finite_or_none(lr), "phase": int(phase),
                        "probability": _finite_or_none(prob)})
      tb.scalar("train/loss", loss, st)
      tb.scalar(f"train/{info.lr_label}", lr, st)
      if info.is_autowu:
        tb.scalar("autowu/phase", phase, st)
        tb.scalar("autowu/probability", prob, st)
    _write_jsonl(self.out.metrics_path, step_rows)
    self.out.hist["step"] += steps
    for j, k in enumerate(("loss", "lr", "phase", "probability")):
      self.out.hist[k] += arr[:, j].tolist()

  def _epoch(self, r: EpochResult) -> dict[str, Any]:
    arr, end = r.rows, r.first_step + len(r.rows)
    train_loss = float(np.nanmean(arr[:, 0])) if np.isfinite(arr[:, 0]).any() else None
    erow = {"epoch": r.epoch, "step": end, "test_accuracy": r.test_accuracy,
            "test_loss": _finite_or_none(r.test_loss), "train_loss": train_loss,
            "val_accuracy": r.val_accuracy,
            "val_loss": None if r.val_loss is None else _finite_or_none(r.val_loss),
            "epoch_time_s": r.seconds}
    self.out.epoch_rows.append(erow)
    _write_jsonl(self.out.epochs_path, [erow])
    for split in ("test", "val"):
      if erow[f"{split}_accuracy"] is not None:
        self.out.tb.scalar(f"{split}/accuracy", erow[f"{split}_accuracy"], end)
        self.out.tb.scalar(f"{split}/loss", r.test_loss if split == "test" else r.val_loss, end)
    return erow

  def _log(self, r: EpochResult, train_loss: float | None) -> None:
    info = self.s.info
    lr_last, phase_last, prob_last = r.rows[-1, 1], r.rows[-1, 2], r.rows[-1, 3]
    extra = f" | {_fmt_phase(phase_last)} p={prob_last:.2f}" if info.is_autowu else ""
    tl = train_loss if train_loss is not None else float("nan")
    val_s = ("" if r.val_loss is None else
             f"val acc {r.val_accuracy:.4f} loss {r.val_loss:.4f} | ")
    self.log(f"epoch {r.epoch + 1:3d}/{self.cfg.epochs} | loss {tl:.4f} | {val_s}"
             f"test acc {r.test_accuracy:.4f} loss {r.test_loss:.4f} | {info.lr_label} "
             f"{report.fmt(lr_last, nan='-')}{extra} | {r.seconds:.1f}s")

  def __call__(self, r: EpochResult) -> None:
    self._steps(r)
    erow = self._epoch(r)
    self._log(r, erow["train_loss"])
    if self.out.ckpt is not None:
      s = self.s
      self.out.ckpt.save(r.epoch + 1, s.model_state, s.opt_state,
                     {"epoch": r.epoch + 1, "schedule": s.schedule,
                      "total_steps": s.total_steps,
                      "train_time_s": self.out.prior_time + time.perf_counter() - self.t_train})


def _summary(cfg: TrainConfig, s: Setup, dataset: data_lib.Dataset,
             epoch_rows: list[dict[str, Any]], switch: dict[str, Any], out_dir: Path,
             **times: float) -> dict[str, Any]:
  """The contents of ``summary.json`` (``times``: wall, compile and total seconds)."""
  accs = [r["test_accuracy"] for r in epoch_rows]
  last = epoch_rows[-1] if epoch_rows else {}
  summary: dict[str, Any] = {
      "schedule": s.schedule,
      "model": cfg.model,
      "dataset": dataset.name,
      "dataset_source": dataset.source,
      "n_train": s.n_train,
      "n_test": len(dataset.test_x),
      "final_test_accuracy": accs[-1] if accs else None,
      "best_test_accuracy": max(accs) if accs else None,
      "final_test_loss": last.get("test_loss"),
      "final_train_loss": last.get("train_loss"),
      "final_val_accuracy": last.get("val_accuracy"),
      "final_val_loss": last.get("val_loss"),
      "n_val": 0 if dataset.val_x is None else len(dataset.val_x),
      **switch,
      **times,
      "steps_per_epoch": s.steps_per_epoch,
      "total_steps": s.total_steps,
      "opt_state_bytes": _state_bytes(s.opt_state),
      "needs_value": s.needs_value,
      "lr_label": s.info.lr_label,
      "schedule_hparams": s.info.hparams,
      "backend": jax.default_backend(),
      "test_accuracy_per_epoch": accs,
      "val_accuracy_per_epoch": [r["val_accuracy"] for r in epoch_rows],
      "test_loss_per_epoch": [r["test_loss"] for r in epoch_rows],
      "val_loss_per_epoch": [r["val_loss"] for r in epoch_rows],
      "out_dir": str(out_dir),
      "args": dataclasses.asdict(cfg),
  }
  if dataset.is_text:  # Byte-level: nats per byte -> bits per byte.
    for split in ("test", "val"):
      loss = summary[f"final_{split}_loss"]
      summary[f"final_{split}_bpb"] = None if loss is None else loss / math.log(2)
    summary["final_test_perplexity"] = report.perplexity(summary["final_test_loss"])
  return summary


def _final_line(summary: dict[str, Any], switch: dict[str, Any], is_autowu: bool,
                is_text: bool) -> str:
  """The one line ``run`` prints at the end."""
  sw = (f"switch step {switch['switch_step']} | restart LR "
        f"{report.fmt(switch['restart_lr'], nan='-')} | {switch['switch_reason']}"
        if is_autowu else "no switch (not AutoWU)")
  final_acc = summary["final_test_accuracy"]
  acc_s = f"{final_acc:.4f}" if final_acc is not None else "-"
  if is_text and summary["final_test_bpb"] is not None:
    acc_s = (f"{summary['final_test_bpb']:.4f} bits/byte (perplexity "
             f"{summary['final_test_perplexity']:.3f}, next-byte accuracy {acc_s})")
  metric = "test loss" if is_text else "test accuracy"
  return (f"[{summary['schedule']}] final {metric} {acc_s} | {sw} | wall time "
          f"{summary['wall_time_s']:.1f}s | {summary['out_dir']}")


def run(
    config: TrainConfig | dict[str, Any] | None = None,
    dataset: data_lib.Dataset | None = None,
    *,
    prepared: bool = False,
) -> dict[str, Any]:
  """Trains one model (:func:`setup`, :func:`fit`) and writes the run's outputs.

  See the module docstring for the outputs.

  Args:
    config: a :class:`TrainConfig` or a dict of its fields (default: all
      defaults).
    dataset: an already-loaded dataset to reuse (``config.dataset`` /
      ``data_dir`` / ``context`` are then ignored; ``config.subset`` and
      ``config.holdout`` still apply).
    prepared: ``dataset`` already had ``subset`` / ``holdout`` applied.

  Returns:
    The contents of ``summary.json`` plus ``"history"``: per-step lists
    ``step, loss, lr, phase, probability`` and per-epoch ``test_accuracy``,
    ``test_loss``.
  """
  cfg = _as_config(config if config is not None else TrainConfig())
  t_start = time.perf_counter()
  log = report.logger(quiet=cfg.quiet)
  if dataset is None:
    dataset = load_data(cfg)
  if not prepared:
    dataset = _prepare(dataset, cfg)
  s = setup(cfg, dataset)
  out_dir = cfg.resolved_out_dir()
  out = _open_outputs(cfg, s, out_dir, log)
  hist, epoch_rows, ckpt = out.hist, out.epoch_rows, out.ckpt
  schedule, info, steps_per_epoch = s.schedule, s.info, s.steps_per_epoch
  n_val = 0 if dataset.val_x is None else len(dataset.val_x)
  log(f"{schedule} | {cfg.model} | {dataset.name} ({dataset.source}) | "
      f"{s.n_train} train / {n_val} val / {len(dataset.test_x)} test | batch {cfg.batch_size} | "
      f"{cfg.epochs} epochs x {steps_per_epoch} steps | {jax.default_backend()}")

  t_train = time.perf_counter()
  compile_s = fit(s, start_epoch=out.start_epoch,
                  on_epoch=_EpochRecorder(cfg, s, out, log, t_train))
  if ckpt is not None:
    ckpt.close()
  train_time = out.prior_time + time.perf_counter() - t_train
  out.tb.close()

  switch, posterior = _switch_and_posterior(s, plot=cfg.plot)
  summary = _summary(cfg, s, dataset, epoch_rows, switch, out_dir,
                     wall_time_s=train_time, compile_time_s=compile_s,
                     total_time_s=time.perf_counter() - t_start)
  accs = summary["test_accuracy_per_epoch"]
  if cfg.plot:
    try:
      _plot(out_dir / "summary.png", summary, hist, accs, posterior, info.lr_label)
      summary["plot"] = str(out_dir / "summary.png")
    except ImportError:
      warnings.warn("matplotlib is not installed; skipping summary.png", stacklevel=2)
  with open(out_dir / "summary.json", "w") as f:
    json.dump(summary, f, indent=2, default=str)

  print(_final_line(summary, switch, info.is_autowu, dataset.is_text))

  result = dict(summary)
  result["history"] = {**{k: list(v) for k, v in hist.items()},
                       "epoch_step": [r["step"] for r in epoch_rows],
                       "test_accuracy": accs,
                       "test_loss": [r["test_loss"] for r in epoch_rows]}
  return result


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------


def _plot(path: Path, summary, hist, accs, posterior, lr_label: str) -> None:
  import matplotlib  # noqa: PLC0415

  if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "png"):
    matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # noqa: PLC0415

  steps = np.asarray(hist["step"], float)
  loss = np.asarray(hist["loss"], float)
  lr = np.asarray(hist["lr"], float)
  sw_step, r_lr = summary["switch_step"], summary["restart_lr"]

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  ax = axes[0]
  ok = np.isfinite(lr)
  if ok.any():
    ax.plot(steps[ok], lr[ok], lw=1.5, color="C0")
    if (lr[ok] > 0).any():
      ax.set_yscale("log")
  else:
    ax.text(0.5, 0.5, f"no learning rate\n({summary['schedule']})", ha="center",
            va="center", transform=ax.transAxes)
  if sw_step is not None:
    ax.axvline(sw_step, color="C3", ls="--", lw=1, label=f"switch (step {sw_step})")
    if r_lr is not None:
      ax.plot([sw_step], [r_lr], "o", color="C3")
      ax.annotate(f"restart LR {r_lr:.3g}\n({summary['switch_reason']})",
                  (sw_step, r_lr), xytext=(8, -4), textcoords="offset points",
                  fontsize=8, color="C3", va="top")
    ax.legend(loc="lower right", fontsize=8)
  ax.set_xlabel("step")
  ax.set_ylabel(lr_label if lr_label != "lr" else "learning rate")
  ax.set_title(f"{lr_label.upper() if lr_label != 'lr' else 'LR'}: {summary['schedule']}")

  ax = axes[1]
  okl = np.isfinite(loss)
  ax.plot(steps[okl], loss[okl], lw=1, color="C0", label="train loss (minibatch)")
  if posterior is not None:
    g, m, s = posterior["step"], posterior["mean"], posterior["std"]
    ax.plot(g, m, color="C1", lw=1.5, label="GP posterior mean (warmup)")
    ax.fill_between(g, m - 2 * s, m + 2 * s, color="C1", alpha=0.25, label="±2σ")
  if sw_step is not None:
    ax.axvline(sw_step, color="C3", ls="--", lw=1)
  if okl.any() and loss[okl].min() > 0:
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_title("training loss")
  ax.legend(loc="upper right", fontsize=8)

  ax = axes[2]
  name = "test accuracy"
  if summary.get("final_test_bpb") is not None:  # A language model: bits per byte.
    name = "test bits per byte"
    accs = [math.nan if v is None else v / math.log(2) for v in summary["test_loss_per_epoch"]]
  if accs:
    ep = np.arange(1, len(accs) + 1)
    ax.plot(ep, accs, "o-", ms=3, color="C2")
  ax.set_xlabel("epoch")
  ax.set_ylabel(name)
  final = f": final {accs[-1]:.4f}" if accs else ""
  ax.set_title(f"{name} ({summary['dataset']}, {summary['model']}){final}")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
