"""Small readers shared by the dataset loaders: every failure names the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from semcorr.errors import DataError  # noqa: F401  (re-exported for the loaders)


def read_json(path: Path, dataset: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises an error that names it."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{dataset}: cannot read annotation file {path}: {err}") from None


def read_csv(path: Path, dataset: str, required: Sequence[str] = ()) -> List[Dict[str, str]]:
    """Rows of a CSV file with a header; checks that the ``required`` columns exist."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: pair list not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{dataset}: cannot read pair list {path}: {err}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{dataset}: {path} lacks columns {missing}; header is {header}")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def split_floats(text: str) -> np.ndarray:
    """``"1.5;2;;-1"`` -> array([1.5, 2., nan, -1.]) (empty fields are NaN)."""
    parts = text.split(";") if text else []
    return np.array([float(v) if v.strip() else np.nan for v in parts], dtype=np.float64)


def points(value: Optional[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """A JSON keypoint list ``[[x, y] | null, ...]`` -> (K, 2) float and (K,) bool present.

    Entries that are null, not two numbers, non-finite or negative are absent (NaN).
    """
    value = list(value or [])
    out = np.full((len(value), 2), np.nan)
    for k, p in enumerate(value):
        if p is None or len(p) < 2 or p[0] is None or p[1] is None:
            continue
        out[k] = [float(p[0]), float(p[1])]
    present = np.isfinite(out).all(1) & (out >= 0).all(1)
    out[~present] = 0.0
    return out, present
