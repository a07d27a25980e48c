"""The built wheel: only `optax_autolr`, typed, licensed, lean dependencies.

The wheel is built from a copy of the checkout (without build outputs, so a
stale ``build/`` cannot hide or add files) with the installed setuptools, as
``pip wheel --no-deps --no-build-isolation``: no network is needed, and the
``test`` extra installs the build backend.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import optax_autolr

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'optax_autolr'
MIN_SETUPTOOLS = (77,)
_IGNORED = ('.git', '.venv', 'venv', 'build', 'dist', '*.egg-info',
            '__pycache__', '.pytest_cache', '.hypothesis', 'runs', '_build')


def _setuptools_version() -> tuple[int, ...]:
  try:
    version = importlib.metadata.version('setuptools')
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in re.findall(r'\d+', version)[:2])


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> zipfile.ZipFile:
  if _setuptools_version() < MIN_SETUPTOOLS:
    pytest.fail("building the wheel needs setuptools>=77 (SPDX license "
                "metadata): pip install -e '.[test]'")
  tmp = tmp_path_factory.mktemp('wheel')
  src = tmp / 'src'
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_IGNORED))
  out = tmp / 'dist'
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
       '--no-build-isolation', '--quiet', str(src), '-w', str(out)],
      check=True, cwd=tmp)
  (path,) = out.glob('optax_autolr-*.whl')
  with zipfile.ZipFile(path) as zf:
    yield zf


def _dist_info(zf: zipfile.ZipFile) -> str:
  (name,) = {n.split('/')[0] for n in zf.namelist()
             if n.split('/')[0].endswith('.dist-info')}
  return name


def _metadata(zf: zipfile.ZipFile):
  text = zf.read(f'{_dist_info(zf)}/METADATA').decode()
  return email.parser.Parser().parsestr(text)


def _normalize(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _requirement_name(requirement: str) -> str:
  return _normalize(re.match(r'[A-Za-z0-9._-]+', requirement).group(0))


def _guards_import_error(node: ast.Try) -> bool:
  for handler in node.handlers:
    names = ast.unparse(handler.type) if handler.type else ''
    if 'ImportError' in names or 'ModuleNotFoundError' in names:
      return True
  return False


def _library_imports() -> tuple[set[str], set[str]]:
  """Third-party top-level modules imported by optax_autolr/: (required, optional).

  An import inside ``try: ... except ImportError`` is optional.
  """
  required, optional = set(), set()

  def visit(node, guarded):
    if isinstance(node, ast.Try) and _guards_import_error(node):
      for child in node.body:
        visit(child, True)
      for child in (*node.handlers, *node.orelse, *node.finalbody):
        visit(child, guarded)
      return
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module]
    for name in names:
      top = name.split('.')[0]
      if top not in sys.stdlib_module_names and top not in (
          'optax_autolr', '__future__'):
        (optional if guarded else required).add(top)
    for child in ast.iter_child_nodes(node):
      visit(child, guarded)

  for path in sorted(PACKAGE.glob('*.py')):
    visit(ast.parse(path.read_text(), str(path)), False)
  return required, optional - required


def _distribution(module: str) -> str:
  dists = importlib.metadata.packages_distributions().get(module, [module])
  return _normalize(dists[0])


def test_only_optax_autolr_is_installed(wheel):
  top_level = {n.split('/')[0] for n in wheel.namelist()}
  dist_info = _dist_info(wheel)
  assert top_level == {'optax_autolr', dist_info}, sorted(top_level)
  assert wheel.read(f'{dist_info}/top_level.txt').decode().split() == [
      'optax_autolr']
  modules = {n for n in wheel.namelist() if n.startswith('optax_autolr/')}
  source = {f'optax_autolr/{p.name}' for p in PACKAGE.glob('*.py')}
  assert source <= modules, sorted(source - modules)


def test_wheel_is_typed_and_licensed(wheel):
  names = wheel.namelist()
  assert 'optax_autolr/py.typed' in names
  dist_info = _dist_info(wheel)
  license_path = f'{dist_info}/licenses/LICENSE'
  assert license_path in names, names
  text = wheel.read(license_path).decode()
  assert 'Apache License' in text and 'Version 2.0, January 2004' in text
  assert text == (ROOT / 'LICENSE').read_text()
  metadata = _metadata(wheel)
  assert metadata['License-Expression'] == 'Apache-2.0'
  assert metadata.get_all('License-File') == ['LICENSE']


def test_version_has_one_source(wheel):
  assert re.fullmatch(r'\d+\.\d+\.\d+([.-]?(dev|rc)\d+)?',
                      optax_autolr.__version__), optax_autolr.__version__
  assert _metadata(wheel)['Version'] == optax_autolr.__version__
  assert _dist_info(wheel) == f'optax_autolr-{optax_autolr.__version__}.dist-info'
  pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  assert 'version' not in pyproject['project'], (
      'the version is set in optax_autolr/__init__.py only')
  assert 'version' in pyproject['project']['dynamic']
  assert pyproject['tool']['setuptools']['dynamic']['version'] == {
      'attr': 'optax_autolr.__version__'}


def test_project_urls(wheel):
  urls = dict(u.split(', ', 1) for u in _metadata(wheel).get_all('Project-URL'))
  assert set(urls) == {'Homepage', 'Repository', 'Documentation', 'Changelog'}
  assert urls['Repository'] == 'https://github.com/optax-autolr/optax_autolr'
  assert all(u.startswith('https://') for u in urls.values()), urls


def test_required_dependencies_are_the_library_imports(wheel):
  required, optional = _library_imports()
  assert {'jax', 'optax', 'numpy'} <= required, required
  requires = _metadata(wheel).get_all('Requires-Dist')
  base = {_requirement_name(r) for r in requires if 'extra ==' not in r}
  assert base == {_distribution(m) for m in required}
  extras = {_requirement_name(r) for r in requires if 'extra ==' in r}
  assert {_distribution(m) for m in optional} <= extras, optional
  # flax and chex are used by experiments/ and tests/, not by the library.
  assert not {'flax', 'chex'} & base


def test_changelog_covers_the_version():
  changelog = (ROOT / 'CHANGELOG.md').read_text()
  assert f'## [{optax_autolr.__version__}]' in changelog
  section = changelog.split('## [0.2.0]', 1)[1].split('## [0.1.0]', 1)[0]
  assert re.search(r'0\.1\.0\W.*not restore', section, re.S), (
      'the 0.2.0 entry says that 0.1.0 checkpoints do not restore')
