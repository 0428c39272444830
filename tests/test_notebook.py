"""docs/quickstart.ipynb runs in a real Jupyter kernel, using only chargpt's public API; any cell error fails."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs_in_a_jupyter_kernel(tmp_path, shakespeare_path, monkeypatch):
    monkeypatch.setenv("CHARGPT_DATA", str(shakespeare_path.parent.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    assert not any(o.get("output_type") == "error" for outs in outputs.values() for o in outs)
    images = [o for outs in outputs.values() for o in outs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # run.plot(), model.attention(...), chargpt.compare(...): each shown inline once
    text = "".join(o.get("text", "") for outs in outputs.values() for o in outs)
    assert "ROMEO:" in text
    assert "Warning" not in text and "IProgress" not in text  # tqdm.auto without ipywidgets: a text bar, no warning
    assert ", step" not in text  # the bar's text follows it directly
    assert (tmp_path / "runs/quickstart/ckpt.pt").is_file()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from chargpt." not in code and "import chargpt" in code  # the public API only
