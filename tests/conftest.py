"""Shared test settings: offline, CPU, small threads; fixtures for shared data, the tiny ViT and
quiet run configs (the token lists themselves are in ``runs.py``)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from runs import QUIET, TINY_VIT  # noqa: E402
from semcorr.paths import shared_data_dir  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests that need it skip with the reason when it is absent."""
    path = shared_data_dir()
    if path is None or not path.is_dir():
        pytest.skip("shared data not found: set SEMCORR_SHARED_DATA or place it at ../shared/data")
    return path


@pytest.fixture(scope="session")
def pf_willow_root(shared_data: Path) -> Path:
    root = shared_data / "pf-willow"
    if not (root / "PF-dataset-WILLOW").is_dir():
        pytest.skip(f"PF-WILLOW not found under {root}")
    return root


@pytest.fixture
def tiny_vit() -> list:
    """Tokens of a 2-block random DINOv2-style ViT (D = 48): the one tiny ViT of the tests."""
    return list(TINY_VIT)


@pytest.fixture
def make_config(tmp_path):
    """``make_config(*tokens, **load_config_kwargs)``: a run config with quiet, figure-free
    settings (``runs.QUIET``) and ``out_dir`` under the test's ``tmp_path``; ``tokens`` win."""
    from semcorr.config import load_config

    def make(*tokens, **kwargs):
        return load_config([*QUIET, f"out_dir={tmp_path / 'run'}", *tokens], **kwargs)

    return make
