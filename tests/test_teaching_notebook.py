"""docs/teaching.ipynb runs (issue 25, item 4): executed here with nbclient on a smaller draw of the demo
world (its parameters cell), so that it cannot rot; what it computes is checked, not only that it ran."""
import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the [dev] extra installs nbclient: pip install -r requirements/dev.txt")
import nbformat  # noqa: E402  (comes with nbclient)

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "teaching.ipynb"
# Appended after the notebook's last cell: what it computed, as one line of JSON.
REPORT = """import json
print(json.dumps({"angle": largest_angle, "ratio_full": ratio_full, "ratio_icm": ratio_icm,
                  "domains": sorted(rows.domain.unique()), "accuracies": rows.accuracy.tolist(),
                  "chosen": made.chosen.candidate, "candidates": made.table.candidate.tolist(),
                  "images": len(emb.labels), "target": target}))"""


def _parameters_cell(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook has one cell tagged 'parameters'"
    return tagged[0]


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")


def test_the_teaching_notebook_runs_and_computes_what_it_says():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells[_parameters_cell(notebook)].source = "N_PER_CLASS = 8"
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}).execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream")
    got = json.loads(printed)
    assert got["images"] == 8 * 8 * 4 and got["target"] == "cartoon"
    assert got["angle"] < 1e-6  # the hand-made eigenvectors of M span the library's subspace
    assert got["ratio_icm"] < 0.75 * got["ratio_full"]  # the interventions move the projection less
    assert got["domains"] == ["art_painting", "cartoon", "photo", "sketch"]
    assert all(0.0 <= a <= 1.0 for a in got["accuracies"])
    assert got["chosen"] in got["candidates"]
    for cell in notebook.cells:  # every cell ran without an error output
        assert not any(o.output_type == "error" for o in cell.get("outputs", []))
