"""The notebooks under notebooks/: committed without outputs, public API only, and executed top to bottom.

Execution uses nbclient with the ``python3`` kernel (ipykernel, in the ``test`` extra). The four notebooks run one
after another in ONE kernel process (its jax/flax/matplotlib imports are paid once): before each, the test runs
``%reset -f`` (the namespace is emptied, so every notebook runs on its own definitions and imports) and moves the
kernel into that test's temporary folder, so nothing a notebook writes lands in the repository. A notebook's cell
tagged ``parameters`` (papermill's convention) holds its run lengths; the test inserts a cell after it with shorter
ones (`OVERRIDES`): the same code runs, on fewer epochs (and notebook 03's sensitivity scans on fewer images). A cell
that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import ast
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


#: Shorter run lengths for the test, by notebook: every code path runs, on fewer training epochs (and notebook 03's
#: sensitivity scans on 64 training images instead of 256: the same scan code, a quarter of the forward work).
OVERRIDES = {
    "03_sensitivity_finetune.ipynb": "EPOCHS, FT_EPOCHS, SCAN_IMAGES = 1, 1, 64",
    "04_your_own_model.ipynb": "EPOCHS, FT_EPOCHS = 1, 1",
}


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell(name):
    tagged = [c for c in _cells(name) if "parameters" in c["metadata"].get("tags", [])]
    if name not in OVERRIDES:
        assert tagged == []
        return
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    # The override only assigns names the parameters cell defines.
    defined = _assigned("".join(tagged[0]["source"]))
    assert _assigned(OVERRIDES[name]) <= defined, (_assigned(OVERRIDES[name]), defined)


def _assigned(code: str) -> set[str]:
    """The names that `code`'s top-level assignments bind (``A, B = ...`` binds A and B)."""
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


@pytest.fixture(scope="module")
def kernel():
    """One ``python3`` kernel shared by the module's notebook runs (each empties its namespace first)."""
    manager = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("nbclient")
    km = manager.KernelManager(kernel_name="python3")
    km.start_kernel()
    yield km
    km.shutdown_kernel(now=True)


def _execute(name: str, km, cwd: Path):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = list(nb.cells)
    if name in OVERRIDES:
        at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])) + 1
        cells.insert(at, nbformat.v4.new_code_cell(OVERRIDES[name], metadata={"tags": ["injected-parameters"]}))
    setup = f"%reset -f\nimport os\nos.chdir({str(cwd)!r})\ndel os"
    nb.cells = [nbformat.v4.new_code_cell(setup, metadata={"tags": ["injected-setup"]}), *cells]
    client = nbclient.NotebookClient(nb, km=km, timeout=HANG_TIMEOUT_S, kernel_name="python3")
    try:
        client.execute()
    finally:  # the kernel stays up for the next notebook; this run's client channels close
        if client.kc is not None:
            client.kc.stop_channels()
    return [c for c in nb.cells if c.cell_type == "code" and not c.metadata.get("tags", [""])[0].startswith("inj")]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _has_figure(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, kernel, tmp_path):
    # The kernel inherits the environment, with the session's persistent compilation cache (conftest.py exports it).
    code_cells = _execute(name, kernel, tmp_path)
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert errors == []
    # Every cell that draws (viz.plot_*, a matplotlib Figure; all but notebook 04 draw) shows its figure.
    drawing = [c for c in code_cells if "viz.plot_" in c.source or "Figure(" in c.source]
    assert bool(drawing) == (name != "04_your_own_model.ipynb")
    assert all(_has_figure(c) for c in drawing), [c.source[:40] for c in drawing if not _has_figure(c)]
    out = "\n".join(_text(c) for c in code_cells)
    expected = {
        "01_quickstart.ipynb": ["max |pruned - masked| =", "vgg16-A: MACs 206,279,680"],
        "02_paper_table1.ipynb": ["largest |ours - paper| over the pruned %"],
        "03_sensitivity_finetune.ipynb": ["fine-tuned", "plan(s) in the history; test accuracy"],
        "04_your_own_model.ipynb": ["restored test accuracy", "ValueError:"],
    }[name]
    for text in expected:
        assert text in out, text
    if name == "04_your_own_model.ipynb":
        # The NNX checkpoint restores the optimizer's step: EPOCHS + FT_EPOCHS epochs, then one more, of 22 steps.
        assert "optimizer steps: 44" in out and "one more epoch: step 66" in out
