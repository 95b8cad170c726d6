"""Every notebook in ``notebooks/`` executes top to bottom without an error.

The kernel is this interpreter (``sys.executable``), whatever kernels the
machine has installed: the test writes a throwaway kernelspec pointing at it
and puts it first on ``JUPYTER_PATH``.  Notebooks run in ``notebooks/`` as
their working directory, with small sizes (a few seconds each).  Skipped when
nbclient / ipykernel are not installed (``pip install -e .[examples]``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "rankseg-np-test"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    pytest.importorskip("ipykernel")
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rankseg-np tests",
        "language": "python",
        # Matplotlib must not try to open a window in CI; Numba threads as in the parent.
        "env": {"MPLBACKEND": "Agg"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(spec_dir.parents[1])] + ([old] if old else []))
    yield KERNEL
    if old is None:
        del os.environ["JUPYTER_PATH"]
    else:
        os.environ["JUPYTER_PATH"] = old


def execute(path: Path, kernel: str):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def outputs_text(nb) -> str:
    chunks = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                chunks.append(out["text"])
            chunks.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(chunks)


def test_every_notebook_is_tested():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(NOTEBOOK_NAMES)


NOTEBOOK_NAMES = ["quickstart.ipynb", "frameworks.ipynb", "quality.ipynb", "speed.ipynb", "calibration.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_executes(name, kernel_name):
    if name in ("quality.ipynb", "speed.ipynb", "calibration.ipynb"):
        pytest.importorskip("matplotlib")
    nb = execute(NOTEBOOKS / name, kernel_name)
    text = outputs_text(nb)
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    if name == "quickstart.ipynb":
        # The hand-worked example in the first cell: RankSEG keeps the 0.4 pixel, thresholding does not.
        assert "threshold: [1 1 0 0]" in text and "RankSEG:   [1 1 1 0]" in text
    if name == "quality.ipynb":
        assert "| small objects | dice | RMA |" in text
    if name == "speed.ipynb":
        assert "RMA dice" in text and "ns" in text
    if name == "calibration.ipynb":
        # The under-confident model: T = 1/2.5 recovered, and RankSEG's loss turned into a gain.
        assert "fitted temperature: 0.4" in text
        match = re.search(r"RMA Dice gain over argmax: ([-+][0-9.]+) before -> ([-+][0-9.]+) after", text)
        assert match and float(match[1]) < 0 < float(match[2])
