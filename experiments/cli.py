"""What the experiments' command lines share: user errors as one line, exit status 2.

A user error (a flag out of range, a missing file, a batch larger than the
data) prints ``<prog>: error: <message>`` and at most one more line (a hint,
or where to find the flags) to stderr and exits with status 2, as argparse
does for its own errors, but without the usage block and without a
traceback. Bugs still raise normally.

* :class:`ArgumentParser`: argparse with that two-line :meth:`~ArgumentParser.error`.
* :class:`UsageError`: raised by the checks that need more than one flag (or
  the data); :func:`usage_errors` turns it into ``parser.error``.
* :func:`integer`, :func:`number`, :func:`list_of`, :func:`existing_file`,
  :func:`existing_dir`, :func:`existing_path`, :func:`output_dir`: argparse ``type=`` callables whose
  messages name the allowed values (argparse otherwise reports
  ``invalid <function name> value``).

Standard library only: the CLIs import it before anything heavy (JAX).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

__all__ = [
    "ArgumentParser",
    "UsageError",
    "add_output_flags",
    "existing_dir",
    "existing_file",
    "existing_path",
    "integer",
    "keyword_literal",
    "list_of",
    "number",
    "output_dir",
    "usage_errors",
]


class UsageError(ValueError):
  """A user error of a command line; the message names the flag.

  ``str(error)`` is one line, optionally followed by one hint line.
  """


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are at most two lines on stderr (exit status 2)."""

  def error(self, message: str) -> NoReturn:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    first = lines[0] if lines else "invalid arguments"
    hint = " ".join(lines[1:]) or f"(see {self.prog} --help)"
    self.exit(2, f"{self.prog}: error: {first}\n  {hint}\n")


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
  """Turns a :class:`UsageError` raised inside into ``parser.error`` (exit 2)."""
  try:
    yield
  except UsageError as e:
    parser.error(str(e))


def _named(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
  # argparse names the type callable in some messages; never a private name.
  fn.__name__ = fn.__qualname__ = name
  return fn


def _range_text(low: float | None, high: float | None, low_open: bool,
                high_open: bool) -> str:
  def fmt(v: float) -> str:
    return f"{v:g}"

  if low is not None and high is not None:
    return f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
  if low is not None:
    return f"{'>' if low_open else '>='} {fmt(low)}"
  if high is not None:
    return f"{'<' if high_open else '<='} {fmt(high)}"
  return ""


def integer(minimum: int | None = None, maximum: int | None = None, *,
            words: tuple[str, ...] = ()) -> Callable[[str], Any]:
  """``type=`` for an integer in ``[minimum, maximum]``, or one of ``words``."""
  rng = _range_text(minimum, maximum, False, False)
  want = "an integer" + (f" {rng}" if rng else "")
  if words:
    want += " or " + " or ".join(repr(w) for w in words)

  def parse(s: str) -> Any:
    if s.strip().lower() in words:
      return s.strip().lower()
    try:
      v = int(s)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}") from None
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
      raise argparse.ArgumentTypeError(f"expected {want}, got {v}")
    return v

  return _named(parse, "integer")


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, none: bool = False) -> Callable[[str], Any]:
  """``type=`` for a finite number in the range (``none``: 'none' gives None)."""
  rng = _range_text(low, high, low_open, high_open)
  want = "a number" + (f" {rng}" if rng else "") + (" or 'none'" if none else "")

  def parse(s: str) -> float | None:
    if none and s.strip().lower() == "none":
      return None
    try:
      v = float(s)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {want}, got {s!r}") from None
    bad = (not math.isfinite(v)
           or (low is not None and (v < low or (low_open and v == low)))
           or (high is not None and (v > high or (high_open and v == high))))
    if bad:
      raise argparse.ArgumentTypeError(f"expected {want}, got {s.strip()}")
    return v

  return _named(parse, "number")


def list_of(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
  """``type=`` for a comma- or space-separated list of ``item`` values."""

  def parse(s: str) -> list[Any]:
    vals = [item(v) for v in s.replace(",", " ").split()]
    if not vals:
      raise argparse.ArgumentTypeError("expected at least one value, got an empty list")
    return vals

  return _named(parse, "list")


def _existing(noun: str, is_kind: Callable[[Path], bool]) -> Callable[[str], str]:
  def parse(s: str) -> str:
    p = Path(s).expanduser()
    if not p.exists():
      raise argparse.ArgumentTypeError(f"no such {noun}: {s}")
    if not is_kind(p):
      raise argparse.ArgumentTypeError(f"not a {noun}: {s}")
    return s

  return parse


def _output_dir(s: str) -> str:
  p = Path(s).expanduser()
  if p.exists() and not p.is_dir():
    raise argparse.ArgumentTypeError(f"exists and is not a directory: {s}")
  return s


existing_file = _named(_existing("file", Path.is_file), "file")
"""``type=`` for a path that must be an existing file."""
existing_dir = _named(_existing("directory", Path.is_dir), "directory")
"""``type=`` for a path that must be an existing directory."""
existing_path = _named(_existing("file or directory", Path.exists), "path")
"""``type=`` for a path that must exist (a file or a directory)."""
output_dir = _named(_output_dir, "directory")
"""``type=`` for an output directory: created later, but not an existing file."""


def add_output_flags(p: argparse.ArgumentParser, *, quick: str, out_dir: str,
                     from_json: str | None = None) -> None:
  """The flags every experiment script shares: ``--quick``, ``--out-dir``, ``--from-json``.

  The arguments are the help texts; ``from_json=None`` leaves that flag out.
  """
  p.add_argument("--quick", action="store_true", help=quick)
  p.add_argument("--out-dir", type=output_dir, default=None, help=out_dir)
  if from_json is not None:
    p.add_argument("--from-json", type=existing_file, default=None, metavar="PATH",
                   help=from_json)


def keyword_literal(text: str) -> tuple[str, Any]:
  """``type=`` for ``NAME=VALUE`` with a Python literal value: ``(name, value)``."""
  name, sep, value = text.partition("=")
  try:
    if not sep or not name.isidentifier():
      raise ValueError
    return name, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise argparse.ArgumentTypeError(
        f"expected NAME=VALUE with a Python literal, e.g. min_descent=4.0; got {text!r}"
    ) from None
