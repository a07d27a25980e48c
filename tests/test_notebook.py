"""Tests for notebooks/quickstart.ipynb: committed clean, and runs end to end.

The execution test runs the notebook with a tiny budget (``QUICKSTART_SMALL=1``)
in a Jupyter kernel of the current interpreter. It is skipped only when
Fashion-MNIST is unavailable outside CI; in CI (``CI=true``) it always runs.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 300
_PREFIX_MARK = "QUICKSTART_KERNEL_PREFIX="


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_notebook_has_tagged_parameters_cell():
    nb = _read()
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert "QUICKSTART_SMALL" in tagged[0].source


def _fashion_mnist_missing() -> str | None:
    """The reason Fashion-MNIST cannot be loaded, or None if it can."""
    from experiments.data import DatasetNotFoundError, load_dataset  # noqa: PLC0415

    try:
        load_dataset("fashion_mnist", subset=(1, 1))
    except DatasetNotFoundError as e:
        return str(e)
    return None


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    )


@pytest.mark.slow
def test_quickstart_notebook_executes(monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    missing = _fashion_mnist_missing()
    if missing is not None and os.environ.get("CI") != "true":
        pytest.skip(f"Fashion-MNIST unavailable (outside CI): {missing}")

    monkeypatch.setenv("QUICKSTART_SMALL", "1")
    nb = _read()
    # Check that the kernel runs in this interpreter's environment (the venv).
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys; print({_PREFIX_MARK!r} + sys.prefix)"))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",  # jupyter_client runs a "python" kernelspec with sys.executable
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start
    print(f"quickstart notebook (QUICKSTART_SMALL=1) ran in {elapsed:.1f} s")

    text = _text_outputs(nb)
    prefixes = re.findall(re.escape(_PREFIX_MARK) + r"(.*)", text)
    assert prefixes and prefixes[-1].strip() == sys.prefix, (prefixes, sys.prefix)
    match = re.search(r"Final test accuracy: ([0-9.]+)", text)
    assert match, f"no final accuracy line in the outputs:\n{text[-3000:]}"
    assert 0.5 < float(match.group(1)) <= 1.0, match.group(0)
    assert re.search(r"switch step: \d+ .*restart LR: \S+, reason: \w", text), text[-3000:]
    assert "B_simple at the switch-epoch weights" in text
    assert "Predicted LR (surge law)" in text
    assert _images(nb) >= 2
    errors = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors
