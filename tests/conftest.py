"""Shared test settings: offline, CPU, small threads, and the shared-data fixture."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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
