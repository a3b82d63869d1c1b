"""notebooks/rodpo_results.ipynb runs top to bottom on the demo outputs, so it cannot rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "rodpo_results.ipynb"
CELL_TIMEOUT_S = 300


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not [cell for cell in notebook.cells if cell.cell_type == "code" and cell.get("outputs")]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_the_demo_results(demo_results):
    notebooks = demo_results.project / "notebooks"
    notebooks.mkdir(exist_ok=True)
    copy = shutil.copy(NOTEBOOK, notebooks / NOTEBOOK.name)
    notebook = nbformat.read(copy, as_version=4)
    # the kernel finds the project above its working directory, like `kedro jupyter lab` would
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(notebooks)}}).execute()

    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            data = output.get("data", {})
            texts += [output.get("text", ""), *(data.get(kind, "") for kind in ("text/markdown", "text/html"))]
            images += "image/png" in data
    shown = "\n".join(texts)
    assert "# Users" in shown                           # dataset statistics
    assert "| RoDPO |" in shown                         # the metrics report
    assert "<th>ndcg@10</th>" in shown                  # the metrics table (a polars frame, as HTML)
    assert "No Figure 3 yet" in shown                   # no experiments run: says how to make it
    assert "Case study: warm-up (SFT) vs RoDPO" in shown
    assert images == 2                                  # training curves and Figure 4
