"""The one report writer of the experiments: Markdown lines, numbers, the log.

Every results page (``compare.md``, ``surge.md``, ``bench.md``,
``bench_layout.md``) is a list of lines: :func:`header` (title and the
quick-run warning), the :func:`command_line` / :func:`machine_line` /
:func:`date_now` facts, :func:`table` for every table (:func:`row` for one
row), numbers through :func:`fmt`, written by :func:`write` into
:func:`results_dir`. The scripts' console lines go through :func:`logger`.

The convention of every experiment script: its settings are plain data,
module-level ``FULL`` and ``QUICK`` dicts (``--quick``: a smoke run); the
flags ``--quick`` / ``--out-dir`` / ``--from-json`` come from
:func:`experiments.cli.add_output_flags`.
"""

from __future__ import annotations

import datetime
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["RESULTS_DIR", "command_line", "date_now", "fmt", "header", "logger", "machine_line",
           "results_dir", "row", "table", "write"]


RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where the full runs write their results (``experiments/results``)."""


def fmt(v: Any, spec: str = ".3g", nan: str = "n/a") -> str:
  """``v`` formatted with ``spec``; ``-`` for None, ``nan`` for NaN, ``inf`` for infinities."""
  if v is None:
    return "-"
  try:
    v = float(v)
  except (TypeError, ValueError):
    return str(v)
  if not math.isfinite(v):
    return nan if math.isnan(v) else "inf"
  return format(v, spec)


def perplexity(loss: float | None) -> float | None:
  """``exp(loss)`` (nats), ``inf`` where that overflows (a diverged run), None for None."""
  if loss is None:
    return None
  try:
    return math.exp(loss)
  except OverflowError:
    return math.inf


def results_dir(out_dir: str | None, name: str, quick: bool) -> Path:
  """The output folder of an experiment (created).

  ``out_dir`` if given; else :data:`RESULTS_DIR` for a full run and
  ``$TMPDIR/optax_autolr_<name>_quick`` for a ``--quick`` one, so that a
  smoke run never overwrites the committed results.
  """
  if out_dir is not None:
    path = Path(out_dir)
  elif quick:
    path = Path(tempfile.gettempdir()) / f"optax_autolr_{name}_quick"
  else:
    path = RESULTS_DIR
  path.mkdir(parents=True, exist_ok=True)
  return path


def row(cells: Iterable[Any]) -> str:
  """One Markdown table row: ``| a | b |``."""
  return "| " + " | ".join(str(c) for c in cells) + " |"


def table(head: Sequence[Any], rows: Iterable[Iterable[Any]] = ()) -> list[str]:
  """A Markdown table: the header row, the ``|---|`` separator, then ``rows``."""
  return [row(head), "|" + "---|" * len(head), *(row(r) for r in rows)]


def header(title: str, quick_note: str | None = None) -> list[str]:
  """``# title`` and a blank line; then the bold ``quick_note`` (a smoke run) if given."""
  lines = [f"# {title}", ""]
  if quick_note:
    lines += [f"**{quick_note}**", ""]
  return lines


def command_line(command: str, where: str = " (from the repository root)") -> str:
  """The ``- Command: `...``` bullet."""
  return f"- Command: `{command}`{where}"


def invocation(module: str) -> str:
  """This process's command line as ``python -m <module> <args>`` (the records' ``command``)."""
  return " ".join([f"python -m {module}", *sys.argv[1:]])


def machine_line(mi: dict[str, Any], shared: str = "shared", flax: bool = True) -> str:
  """The ``- Machine:`` bullet from :func:`experiments.machine.machine_info`."""
  libs = f"jax {mi.get('jax')}, optax {mi.get('optax')}"
  if flax:
    libs += f", flax {mi.get('flax')}"
  return (f"- Machine: {mi.get('nproc')} CPU cores ({shared}), {mi.get('cpu')}, "
          f"{mi.get('platform')}; backend {mi.get('backend')}, {libs}, "
          f"python {mi.get('python')}")


def date_now() -> str:
  """Local time, ISO 8601 with the offset, to the second (the results' dates)."""
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write(path: str | Path, lines: Sequence[str], final_newline: bool = False) -> Path:
  """Writes ``lines`` joined by newlines (and one more if ``final_newline``)."""
  path = Path(path)
  path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
  return path


def logger(tag: str | None = None, *, stream: TextIO | None = None,
           quiet: bool = False) -> Callable[..., None]:
  """The console log of a script: ``log(msg)`` prints ``[tag HH:MM:SS] msg``.

  Without ``tag`` the message is printed as is; ``quiet`` makes a no-op;
  ``stream`` defaults to stdout (looked up at each call, so that pytest's
  capture sees it).
  """
  def log(*msg: Any) -> None:
    if quiet:
      return
    text = " ".join(str(m) for m in msg)
    if tag is not None:
      text = f"[{tag} {time.strftime('%H:%M:%S')}] {text}"
    print(text, file=stream or sys.stdout, flush=True)

  return log
