"""The docs site builds with warnings as errors and documents the public API.

Runs ``python -m sphinx -W --keep-going -b html docs <tmp>`` as CI does (the
README's test command installs the ``docs`` extra). Outside CI the test is
skipped when Sphinx is not installed; in CI (``CI=true``) it always runs.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import time
import types
import zlib

import pytest

import optax_autolr

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
BUILD_BUDGET_S = 60.0
PUBLIC_MODULES = ('gp', 'scaling', 'window')
RESULTS = ('suite', 'transformer', 'compare', 'surge', 'bench', 'authors_check')


def _missing(*modules: str) -> list[str]:
  return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.fixture(scope='module')
def html(tmp_path_factory) -> pathlib.Path:
  if _missing('sphinx') and os.environ.get('CI') != 'true':
    pytest.skip("Sphinx is not installed: pip install -e '.[docs]'")
  missing = _missing('sphinx', 'myst_nb', 'furo')
  assert not missing, f"{missing} not installed: pip install -e '.[docs]'"
  out = tmp_path_factory.mktemp('html')
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
       'html', str(DOCS), str(out)],
      cwd=ROOT, capture_output=True, text=True, check=False)
  elapsed = time.perf_counter() - start
  print(f'docs built in {elapsed:.1f} s')
  assert proc.returncode == 0, (
      f'sphinx -W failed ({proc.returncode}):\n{proc.stderr[-6000:]}')
  assert elapsed < BUILD_BUDGET_S, f'docs build took {elapsed:.0f} s'
  return out


def _inventory(html_dir: pathlib.Path) -> dict[str, str]:
  """objects.inv as {name: role}, e.g. {'optax_autolr.autowu': 'py:function'}.

  Leaves out the hidden aliases (priority -1) that autodoc adds for an
  object's canonical (defining-module) name.
  """
  data = (html_dir / 'objects.inv').read_bytes()
  header_end = 0
  for _ in range(4):  # four '# ...' header lines, then zlib
    header_end = data.index(b'\n', header_end) + 1
  text = zlib.decompress(data[header_end:]).decode()
  entries = {}
  for line in text.splitlines():
    match = re.match(r'(.+?)\s+(\S+:\S+)\s+(-?\d+)\s', line)
    if match and match.group(3) != '-1':
      entries[match.group(1)] = match.group(2)
  return entries


def test_pages_are_built(html):
  pages = ['index', 'api', 'changelog', '_generated/quickstart',
           *(f'results/{r}' for r in RESULTS),
           *(f'guide/{g}' for g in ('checkpoints', 'multi_device',
                                    'accumulation', 'non_finite', 'costs'))]
  for page in pages:
    assert (html / f'{page}.html').is_file(), page


def test_every_public_name_is_documented(html):
  inventory = _inventory(html)
  undocumented = []
  for name in optax_autolr.__all__:
    obj = getattr(optax_autolr, name)
    if isinstance(obj, types.ModuleType):
      candidates = [obj.__name__]
    else:
      candidates = [f'optax_autolr.{name}',
                    *(f'optax_autolr.{m}.{name}' for m in PUBLIC_MODULES)]
    if not any(c in inventory for c in candidates):
      undocumented.append(name)
  assert not undocumented, (
      f'add these to docs/api.rst: {undocumented}')


def test_api_uses_public_names(html):
  private = [n for n, role in _inventory(html).items()
             if role.startswith('py:') and re.search(r'(^|\.)_[a-z]', n)]
  assert not private, private[:10]


def test_notebook_and_results_are_included(html):
  notebook = (html / '_generated' / 'quickstart.html').read_text()
  assert 'optax_autolr quickstart' in notebook
  assert 'autowu' in notebook
  for name in RESULTS:
    source = (ROOT / 'experiments' / 'results' / f'{name}.md').read_text()
    title = re.search(r'^# (.+)$', source, re.M).group(1)
    page = (html / 'results' / f'{name}.html').read_text()
    # The page renders the committed results file (included, not copied).
    words = re.findall(r'[A-Za-z]{4,}', title)
    assert all(w in page for w in words), (name, title)
