"""The notebooks run top to bottom (offline, dense SIFT), match their generator, and are committed
with their outputs (small PNG figures), so a reader of the repository sees them.

The kernel is this interpreter (``sys.executable``, i.e. ``.venv/bin/python`` under
``.venv/bin/python -m pytest``), declared in a kernel spec written to a temporary
``JUPYTER_PATH``: nothing is registered globally.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from semcorr.paths import shared_data_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "semcorr-test-venv"


def _have_pf_willow() -> bool:
    shared = shared_data_dir()
    return shared is not None and (shared / "pf-willow" / "PF-dataset-WILLOW").is_dir()


@pytest.fixture()
def kernel_env(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "semcorr test (this interpreter)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel shows figures inline
    monkeypatch.setenv("SEMCORR_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("SEMCORR_DINOV2_WEIGHTS", raising=False)
    return tmp_path


def _execute(name: str, workdir: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum(bool({"image/png", "image/jpeg"} & set(o.get("data", {})))
               for c in nb.cells for o in c.get("outputs", []))


def test_committed_notebooks_carry_small_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.name for p in paths} >= {"quickstart.ipynb", "gwot_explained.ipynb"}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{path.name}: not executed"
        outputs = [o for c in code for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], f"{path.name} stored an error"
        assert _images(nb) >= 4, f"{path.name} carries {_images(nb)} figures"
        assert path.stat().st_size < 1_500_000, f"{path.name}: {path.stat().st_size} bytes"


def test_notebooks_match_their_generator():
    proc = subprocess.run([sys.executable, str(NOTEBOOKS / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_quickstart_runs(kernel_env):
    nb = _execute("quickstart.ipynb", kernel_env)
    text = _text(nb)
    assert "NN" in text and "GW-OT" in text and "PCK@0.1" in text
    assert _images(nb) >= 4  # matches, dense warp, PCK curves, keypoints.png
    for run in ("eval_nn", "eval_" + ("gwot_pf_willow")):
        metrics = json.loads((kernel_env / "out" / run / "metrics.json").read_text())
        assert metrics["n_pairs"] == 4 and "pck_curve" in metrics


@pytest.mark.slow
@pytest.mark.skipif(not _have_pf_willow(), reason="needs PF-WILLOW in the shared data folder "
                    "($SEMCORR_SHARED_DATA or ../shared/data): the notebook explains one real pair")
@pytest.mark.slow
def test_gwot_explained_runs(kernel_env):
    nb = _execute("gwot_explained.ipynb", kernel_env)
    text = _text(nb)
    assert "winebottle(M)" in text and "left/right order kept" in text and "objective: step 1" in text
    assert _images(nb) >= 4
