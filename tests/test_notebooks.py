"""The notebooks are stored stripped, use only the public API, and run from top to bottom.

Each notebook is executed headless in a fresh kernel (nbclient, matplotlib's Agg backend)
in its smoke configuration: FLAXFORMER_LITE_NOTEBOOK_SMOKE=1 makes it train for a few steps
on a little data, so the whole file takes a few minutes on a laptop CPU. Any error in any
cell fails the test.
"""

import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMOKE_VARIABLE = "FLAXFORMER_LITE_NOTEBOOK_SMOKE"
# A name after `flaxformer_lite.` that starts with an underscore is private.
PRIVATE_NAME = re.compile(r"flaxformer_lite(\.\w+)*\._|from flaxformer_lite[\w.]* import .*\b_\w")


def read(path: pathlib.Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def test_the_notebooks_exist():
    assert [path.name for path in NOTEBOOKS] == [
        "01_attention.ipynb",
        "02_train_and_look_inside.ipynb",
        "03_translate_your_own_data.ipynb",
        "04_vision_transformer.ipynb",
        "05_transformers_vs_rnns.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_stripped(path):
    notebook = read(path)
    nbformat.validate(notebook)
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}
    for index, cell in enumerate(notebook.cells):
        where = f"{path.name} cell {index}"
        assert set(cell.metadata) <= {"tags"}, f"{where} has metadata {dict(cell.metadata)}"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{where} has outputs: strip them"
            assert cell.execution_count is None, f"{where} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_uses_only_the_public_api(path):
    for cell in read(path).cells:
        if cell.cell_type == "code":
            assert not PRIVATE_NAME.search(cell.source), f"{path.name}: {cell.source}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_VARIABLE, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' work directories go here
    notebook = read(path)
    client = NotebookClient(
        notebook,
        timeout=600,  # per cell
        kernel_name="python3",
        # Run in notebooks/, as Jupyter does: the notebooks import configs/ from the parent.
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, at the first failing cell


def test_the_readme_figure_cell_is_tagged():
    """scripts/render_readme_figure.py takes the README's picture from this one cell."""
    notebook = read(NOTEBOOK_DIR / "02_train_and_look_inside.ipynb")
    tagged = [cell for cell in notebook.cells if "readme-figure" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert 'maps["cross"]' in tagged[0].source
