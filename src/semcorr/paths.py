"""Where shared files live: data in ``$SEMCORR_SHARED_DATA``, else ``<repo>/../shared/data``;
reference code (test oracles) in ``$SEMCORR_SHARED_REFERENCE``, else ``<repo>/../shared/reference``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SHARED_DATA_ENV = "SEMCORR_SHARED_DATA"
SHARED_REFERENCE_ENV = "SEMCORR_SHARED_REFERENCE"


def repo_root() -> Optional[Path]:
    """The source checkout holding this package (None for a non-editable install)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "semcorr").is_dir():
            return parent
    return None


def shared_data_dir() -> Optional[Path]:
    """The shared data folder, or None if it cannot be found."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    root = repo_root()
    if root is not None and (root.parent / "shared" / "data").is_dir():
        return root.parent / "shared" / "data"
    return None


def shared_reference_dir() -> Optional[Path]:
    """The shared reference-code folder (e.g. ``dinov2/``, the official DINOv2 model code used as a
    test oracle), or None if it cannot be found. ``$SEMCORR_SHARED_REFERENCE`` wins when set (and
    is returned only if it is a directory)."""
    env = os.environ.get(SHARED_REFERENCE_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_dir() else None
    root = repo_root()
    if root is not None and (root.parent / "shared" / "reference").is_dir():
        return root.parent / "shared" / "reference"
    return None


def resolve_root(root: Optional[str], shared_subdir: str, dataset: str) -> Path:
    """A dataset root from the config, or the shared-data copy when the config gives none."""
    if root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{dataset}: data.root {path} is not a directory")
        return path
    shared = shared_data_dir()
    if shared is not None and (shared / shared_subdir).is_dir():
        return shared / shared_subdir
    raise FileNotFoundError(
        f"{dataset}: no data.root given and no shared copy found; pass data.root=/path/to/"
        f"{dataset} (or set ${SHARED_DATA_ENV} to a folder holding {shared_subdir}/)"
    )
