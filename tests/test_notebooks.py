"""The notebooks of ``notebooks/`` run top to bottom on the demo model in quick mode (``PRUNELAB_NOTEBOOK_QUICK=1``),
in a scratch working folder, without errors or stderr output, and show the figures and tables they promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from prune_lab.analysis.notebooks import execute_notebook
from prune_lab.demo import CLIP_DIR, PIPELINE_DIR

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: notebook -> (figures it shows at least, strings its tables must hold: column names, criteria, plans).
EXPECTED = {
    "sensitivity.ipynb": (4, ["magnitude", "taylor", "ablation", "clip", "relative_mean", "kendall_tau", "ratio"]),
    "skip_analysis.ipynb": (4, ["consumer", "zero", "drop", "L0 16x16: all 3", "importance_sum"]),
    "tradeoffs.ipynb": (2, ["unet_params_M", "bk-small", "search params=0.6", "joint_accuracy", "output_mse"]),
}

needs_weights = pytest.mark.skipif(
    not (PIPELINE_DIR / "unet").is_dir() or not any(CLIP_DIR.glob("*.safetensors")),
    reason="the demo weights are not installed (prunelab demo-train)",
)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@needs_weights
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_quick_mode(name, tmp_path):
    figures, strings = EXPECTED[name]
    nb = execute_notebook(NOTEBOOKS / name, quick=True, cwd=tmp_path, timeout=600)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert not [out.text for out in outputs if out.output_type == "stream" and out.name == "stderr"]
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) >= figures
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    for text in strings:
        assert text in html, f"{name}: no table shows {text!r}"
    assert list(tmp_path.iterdir()) == []  # figures go to a scratch folder, never into the working folder


def test_runner_passes_quick_mode_threads_and_working_folder(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from prune_lab.analysis.notebooks import write_notebook

    source = "import os\nprint(os.environ['PRUNELAB_NOTEBOOK_QUICK'], os.environ['OMP_NUM_THREADS'], os.getcwd())"
    path = write_notebook(new_notebook(cells=[new_code_cell(source)]), tmp_path / "probe.ipynb")
    work = tmp_path / "work"
    work.mkdir()
    nb = execute_notebook(path, quick=True, cwd=work, threads=1)
    assert nb.cells[0].outputs[0].text.split() == ["1", "1", str(work)]
    write_notebook(nb, path)
    assert nbformat.read(path, as_version=4).cells[0].outputs[0].text == nb.cells[0].outputs[0].text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.ipynb", "work"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        execute_notebook(tmp_path / "missing.ipynb", quick=True, cwd=work)
