"""Render the README's figure, the cross-attention of the reverse task, from notebook 02.

    python scripts/render_readme_figure.py    # trains for about a minute or two on a CPU

Runs notebooks/02_train_and_look_inside.ipynb from top to bottom in its full configuration
(never the smoke one), takes the image its cell tagged `readme-figure` draws and writes it to
docs/cross_attention_reverse.png. The picture is whatever the notebook's code produces, so
README and notebook cannot drift apart: re-run this script after changing either.
"""

import argparse
import base64
import os
import pathlib

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_train_and_look_inside.ipynb"
FIGURE = REPO / "docs" / "cross_attention_reverse.png"
TAG = "readme-figure"
# Runs before the notebook's first cell: sharp PNGs (twice the pixels) from the inline backend.
SETUP = '%config InlineBackend.figure_formats = ["retina"]'


def tagged_png(notebook: nbformat.NotebookNode, tag: str) -> bytes:
    """The PNG output of the one code cell carrying `tag`."""
    cells = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"Expected one cell tagged {tag!r} in {NOTEBOOK}, found {len(cells)}.")
    images = [
        out.data["image/png"] for out in cells[0].outputs if "image/png" in out.get("data", {})
    ]
    if len(images) != 1:
        raise SystemExit(f"The cell tagged {tag!r} drew {len(images)} images, expected one.")
    return base64.b64decode(images[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=FIGURE)
    args = parser.parse_args()

    # The notebook reads its configuration from the environment: full run, inline figures.
    os.environ.pop("FLAXFORMER_LITE_NOTEBOOK_SMOKE", None)
    os.environ.pop("MPLBACKEND", None)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    client = NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(tagged_png(notebook, TAG))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
