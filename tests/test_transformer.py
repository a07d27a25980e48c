"""The transformer workload: model, text loader, training and CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import data as data_lib
from experiments import suite, train
from experiments.models import Transformer, make_model

# Real English (this project's README wording), repeated: the loader's input.
_TEXT = (
    "AutoWU warms the learning rate up until a Gaussian process says the minimum of the "
    "loss curve is confidently past, restarts from the learning rate at that minimum, "
    "then decays it to zero by the end of the budget. Everything runs inside the jitted "
    "step: a fixed-size window, a closed-form fit, no host round trips.\n")


@pytest.fixture
def text_file(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(_TEXT * 40)
  return path


def test_forward_shape_and_parameters():
  model = make_model("transformer", nnx.Rngs(0), num_classes=256, in_shape=(32,),
                     layers=2, width=64, heads=4)
  tokens = jnp.zeros((3, 32), jnp.int32)
  assert model(tokens).shape == (3, 32, 256)
  assert model(tokens[:, :7]).shape == (3, 7, 256)  # Shorter sequences work.
  untied = Transformer(in_shape=(32,), width=64, tie=False, rngs=nnx.Rngs(0))
  n = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert n(untied) == n(model) + 64 * 256 + 256


def test_width_must_divide_into_heads():
  with pytest.raises(ValueError, match="`width`"):
    Transformer(width=100, heads=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("t", [0, 5, 15])
def test_causal_mask(t):
  """A change at position t never affects the outputs before t, and does affect t."""
  model = Transformer(in_shape=(16,), width=32, heads=2, rngs=nnx.Rngs(1))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 256)
  changed = tokens.at[:, t].set((tokens[:, t] + 7) % 256)
  a, b = model(tokens), model(changed)
  np.testing.assert_array_equal(np.asarray(a[:, :t]), np.asarray(b[:, :t]))
  assert not np.allclose(np.asarray(a[:, t]), np.asarray(b[:, t]))


def test_text_loader_splits_a_users_file(text_file):
  ds = data_lib.load_text("text", text_file, context=32)
  assert ds.is_text and ds.num_classes == 256 and ds.source == f"text:{text_file}"
  n = len(_TEXT * 40) // 33
  assert len(ds.train_x) + len(ds.val_x) + len(ds.test_x) == n
  assert len(ds.val_x) == len(ds.test_x) == round(0.05 * n)
  for x, y in ((ds.train_x, ds.train_y), (ds.val_x, ds.val_y), (ds.test_x, ds.test_y)):
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == y.shape
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte.
  # The splits are fixed (seed 0), whatever the run's seed; a folder works too.
  again = data_lib.load_text("text", text_file.parent, context=32)
  np.testing.assert_array_equal(again.val_x, ds.val_x)
  np.testing.assert_array_equal(again.test_x, ds.test_x)


def test_text_loader_errors(tmp_path):
  with pytest.raises(data_lib.DatasetNotFoundError, match="no text files"):
    data_lib.load_text("text", tmp_path)  # An empty folder.
  with pytest.raises(data_lib.DatasetNotFoundError, match="--data-dir"):
    data_lib.load_text("text")
  with pytest.raises(ValueError, match="`context`"):
    data_lib.load_text("text", tmp_path, context=0)
  with pytest.raises(ValueError, match="Unknown text dataset"):
    data_lib.load_text("wikipedia")
  (tmp_path / "short.txt").write_text("too short")
  with pytest.raises(ValueError, match="too short"):
    data_lib.load_text("text", tmp_path / "short.txt", context=8)


def test_fortunes_from_the_debian_package():
  if not data_lib.FORTUNES_DIR.is_dir():
    pytest.skip("Debian package fortunes not installed")
  ds = data_lib.load_text("fortunes", context=128)
  assert len(ds.train_x) > 10_000 and len(ds.val_x) > 500
  assert b"the" in bytes(ds.train_x[:50].ravel())


def test_twenty_steps_of_training_lower_the_loss(text_file, tmp_path):
  # 160 windows of 32 bytes, batch 8: one epoch of 20 steps.
  result = train.run(dict(
      schedule="warmup_cosine_adamw", peak_lr=3e-3, model="transformer", dataset="text",
      data_dir=str(text_file), context=32, batch_size=8, epochs=1, subset=(160, None),
      quiet=True, plot=False, tensorboard=False, out_dir=str(tmp_path / "run")))
  loss = np.asarray(result["history"]["loss"])
  assert len(loss) == 20 and np.all(np.isfinite(loss))
  assert loss[-5:].mean() < loss[:5].mean() - 0.5
  assert result["final_test_bpb"] == pytest.approx(result["final_test_loss"] / np.log(2))
  assert result["n_val"] > 0 and result["final_val_loss"] is not None


def test_cli_rejects_a_model_that_does_not_fit_the_data(capsys):
  with pytest.raises(SystemExit) as exc:
    train.main(["--model", "mlp", "--dataset", "fortunes"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--model" in err and "text" in err and len(err.strip().splitlines()) <= 2
  with pytest.raises(SystemExit):
    train.main(["--model", "transformer", "--dataset", "text"])
  assert "--data-dir" in capsys.readouterr().err


def test_text_has_its_own_validation_split(text_file, capsys):
  with pytest.raises(SystemExit) as exc:
    train.main(["--model", "transformer", "--dataset", "text", "--data-dir", str(text_file),
                "--holdout", "10", "--context", "32", "--batch-size", "8"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--holdout" in err and "Traceback" not in err


def test_the_suite_has_the_transformer_cases():
  lm = [c for c in suite.CASES if c["model"] == "transformer"]
  assert {c["batch_size"] for c in lm if c["family"] == "adamw"} == {16, 128}
  assert {c["dataset"] for c in lm} == {"fortunes"}
  runs = suite.plan(lm[0], suite.METHODS)
  assert {r["config"]["schedule"] for r in runs} >= {"autowu_adamw", "warmup_cosine_adamw"}
