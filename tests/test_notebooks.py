"""The notebooks under notebooks/: committed without outputs, public API only, and executed top to bottom.

Execution uses nbclient with the ``python3`` kernel (ipykernel, in the ``test`` extra); each notebook runs in a
fresh kernel in a temporary working folder, so nothing it writes lands in the repository. A cell that raises fails
the test with the cell's traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_paper_table1.ipynb", "03_sensitivity_finetune.ipynb", "04_your_own_model.ipynb")


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]


def test_the_notebooks_exist():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    for i, cell in enumerate(_cells(name)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{name} cell {i} has outputs; strip them before committing"
            assert cell.get("execution_count") is None, f"{name} cell {i} has an execution count"
    assert (NOTEBOOKS / name).stat().st_size < 50_000


# `from jaxprune.x import _y`, `jaxprune.x._y`, `jp._y`, `viz._y`...: private names of the package.
_PRIVATE = re.compile(r"(?:\bjaxprune(?:\.\w+)*\.|\b(?:jp|models|train|viz|paper|presets)\.)_\w|import\s+_\w")


@pytest.mark.parametrize("name", NAMES)
def test_public_api_only(name):
    code = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "code")
    assert "import jaxprune" in code
    assert not _PRIVATE.search(code), _PRIVATE.search(code)
    for line in code.splitlines():
        m = re.match(r"\s*from (jaxprune[\w.]*) import (.+)", line)
        if m:
            assert not any(n.strip().startswith("_") for n in m.group(2).split(",")), line


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path):
    # The kernel inherits the environment, with the session's persistent compilation cache (conftest.py exports it):
    # the notebooks' kernels and the demo's subprocesses reuse what earlier processes compiled.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=HANG_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert errors == []
