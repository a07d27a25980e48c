"""Public names are re-exported at the top level and never shadow a module."""

import importlib
import types

import pytest

import optax_autolr


def test_functions_do_not_shadow_modules():
  for name in optax_autolr.__all__:
    obj = getattr(optax_autolr, name)
    if isinstance(obj, types.ModuleType):
      continue
    with pytest.raises(ModuleNotFoundError):
      importlib.import_module(f'optax_autolr.{name}')


def test_public_modules_are_modules():
  for name in ('gp', 'scaling', 'window'):
    assert isinstance(getattr(optax_autolr, name), types.ModuleType)
    assert importlib.import_module(f'optax_autolr.{name}') is getattr(
        optax_autolr, name)


def test_every_public_name_is_importable():
  for name in optax_autolr.__all__:
    assert hasattr(optax_autolr, name), name
