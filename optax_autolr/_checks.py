"""Argument validation shared by the library's factories.

Every check runs when a transformation is built, names the argument and the
allowed range, and raises ``TypeError`` for a value of the wrong kind and
``ValueError`` for one out of range. NumPy scalars are accepted wherever a
Python number is.
"""

import math
import numbers
from typing import Any

import jax
import numpy as np


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _reject_array(name: str, value: Any, static: bool) -> None:
  if static and isinstance(value, jax.Array):
    raise TypeError(
        f'`{name}` must be a Python or NumPy number, got a jax.Array: the arguments of '
        'autowu are constants fixed when it is built, not hyperparameters '
        'that optax.inject_hyperparams can inject (read the LR with '
        'optax_autolr.get_lr(state) or lr_hyperparams(state)).')


def check_int(name: str, value: Any, minimum: int = 1,
              maximum: int | None = None) -> int:
  """Returns ``value`` as an ``int`` in ``[minimum, maximum]``, or raises."""
  _reject_array(name, value, static=True)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f'`{name}` must be an integer, got {type(value).__name__} {value!r}.')
  value = int(value)
  if value < minimum or (maximum is not None and value > maximum):
    allowed = (f'>= {minimum}' if maximum is None
               else f'in [{minimum}, {maximum}]')
    raise ValueError(f'`{name}` must be an integer {allowed}, got {value}.')
  return value


def check_float(name: str, value: Any, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False,
                static: bool = True) -> Any:
  """Checks that ``value`` is a finite number in the given interval.

  Args:
    name: the argument's name, for the message.
    value: the value; with ``static=False`` a concrete scalar array is checked
      and a traced one passes unchecked (e.g. under ``inject_hyperparams``).
    low: lower bound.
    high: upper bound (``math.inf`` for none).
    low_open: whether ``low`` itself is excluded.
    high_open: whether ``high`` itself is excluded.
    static: whether ``value`` must be a Python or NumPy number.

  Returns:
    ``float(value)``; with ``static=False`` an array is returned unchanged.
  """
  _reject_array(name, value, static)
  if _is_traced(value):
    return value
  is_array = isinstance(value, jax.Array) or hasattr(value, 'shape')
  if is_array and getattr(value, 'shape', ()) != ():
    raise TypeError(f'`{name}` must be a scalar, got shape {value.shape}.')
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Real) or is_array):
    raise TypeError(
        f'`{name}` must be a number, got {type(value).__name__} {value!r}.')
  try:
    number = float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f'`{name}` must be a real number, got {value!r}.') from e
  bad = (not math.isfinite(number) or number < low or number > high
         or (low_open and number == low) or (high_open and number == high))
  if bad:
    lb = '(' if low_open else '['
    hb = ')' if high_open or high == math.inf else ']'
    hi = 'inf' if high == math.inf else high
    raise ValueError(f'`{name}` must be in {lb}{low}, {hi}{hb}, got {value!r}.')
  return number if static or not is_array else value


def check_bool(name: str, value: Any) -> bool:
  """Returns ``value`` if it is a Python or NumPy bool, or raises."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(
        f'`{name}` must be a bool, got {type(value).__name__} {value!r}.')
  return bool(value)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
  """Returns ``value`` if it is one of ``choices``, or raises."""
  if value not in choices:
    allowed = ', '.join(repr(c) for c in choices)
    raise ValueError(f'`{name}` must be one of {allowed}; got {value!r}.')
  return value
