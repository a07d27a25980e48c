"""Sphinx configuration: API reference from the docstrings, guides, notebook, results.

Build (from the repository root, with ``pip install -e '.[docs]'``)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebook is rendered without executing it; tests/test_docs.py runs this
build with warnings as errors.
"""

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, even if not installed

import optax_autolr  # noqa: E402  pylint: disable=wrong-import-position

# Sphinx reads sources only below docs/: copy the notebook in at build time
# (docs/_generated/ is ignored by git), only when it changed, so incremental
# builds stay incremental. The results pages use {include} instead.
_GENERATED = DOCS / '_generated'
_COPIES = {ROOT / 'notebooks' / 'quickstart.ipynb':
           _GENERATED / 'quickstart.ipynb'}
_GENERATED.mkdir(exist_ok=True)
for _src, _dst in _COPIES.items():
  if not _dst.exists() or _dst.read_bytes() != _src.read_bytes():
    shutil.copyfile(_src, _dst)

project = 'optax_autolr'
author = 'optax_autolr authors'
copyright = 'optax_autolr authors'  # pylint: disable=redefined-builtin
release = optax_autolr.__version__
version = release

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'myst_nb',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb',
                 '.ipynb': 'myst-nb'}
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# 'Properties:' (of a NamedTuple's computed fields) reads like 'Args:'.
napoleon_custom_sections = [('Properties', 'params_style')]
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
add_module_names = True

# Notebooks are shown as committed (without outputs): never executed here.
nb_execution_mode = 'off'
myst_enable_extensions = ['colon_fence', 'dollarmath']
myst_heading_anchors = 3

html_theme = 'furo'
html_title = f'optax_autolr {release}'


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Documents a NamedTuple's fields once: from its docstring's Attributes."""
  del app, what, name, options
  doc = getattr(obj, '__doc__', None) or ''
  if doc.startswith('Alias for field number'):
    return True
  return skip


def setup(app):
  app.connect('autodoc-skip-member', _skip_namedtuple_fields)
