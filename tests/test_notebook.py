"""notebooks/quickstart.ipynb runs top to bottom on the demo assets (issue 11)."""
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat, nbclient and "
                               "ipykernel (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel")
pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_executes(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYVIT_NB_EPOCHS", "2")   # the same cells, a shorter distillation
    monkeypatch.setenv("TMPDIR", str(tmp_path))    # the notebook's scratch folder goes here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3, "fits (V1, V2) and the distillation curves"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Full, V1 static fit" in text and "Full, V2 DirectFit + Scale Fix" in text
    assert "distilled (2 short epochs)" in text
    table = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert table and "| teacher (GELU) | " in table[0]["data"]["text/markdown"]
