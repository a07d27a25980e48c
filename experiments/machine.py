"""Facts about the machine a result came from, for results files."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
  """CPU count and model, platform, Python, and jax/optax/flax versions and backend."""
  cpu = "unknown"
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  info: dict[str, Any] = dict(nproc=os.cpu_count(), cpu=cpu, platform=platform.platform(),
                              python=platform.python_version())
  try:
    import flax  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import optax  # noqa: PLC0415

    info.update(jax=jax.__version__, optax=optax.__version__, flax=flax.__version__,
                backend=jax.default_backend())
  except ImportError:  # pragma: no cover
    pass
  return info
