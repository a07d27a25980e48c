"""The README's usage snippet runs as written, and trains."""

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import optax_autolr

README = Path(__file__).resolve().parents[1] / 'README.md'


def _usage_snippet() -> str:
  text = README.read_text()
  usage = text[text.index('## Usage'):]
  match = re.search(r'```python\n(.*?)```', usage, re.S)
  assert match, 'no python block under "## Usage"'
  return match.group(1)


def test_usage_snippet_runs_and_trains():
  scope = {}
  exec(compile(_usage_snippet(), 'README.md', 'exec'), scope)  # noqa: S102
  model, optimizer, train_step = (scope['model'], scope['optimizer'],
                                  scope['train_step'])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((128, 784)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 128))
  losses = [float(train_step(model, optimizer, x, y)) for _ in range(40)]
  assert all(np.isfinite(losses))
  metrics = optax_autolr.get_metrics(optimizer.opt_state)
  assert metrics['step'] == 40
  assert metrics['lr'] > 1e-5  # The warmup advanced.
  assert losses[-1] < losses[0]
