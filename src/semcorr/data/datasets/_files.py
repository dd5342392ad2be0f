"""Small readers shared by the dataset loaders: every failure names the file."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from semcorr.errors import DataError, SemcorrError, first_sentence


@contextmanager
def reading(path: Path, dataset: str, what: str = "annotation file") -> Iterator[Path]:
    """Read ``path`` inside ``with reading(path, "pf_willow"):``: a missing file raises
    ``FileNotFoundError`` and any failure while reading or parsing it (truncated, binary, wrong
    structure) a :class:`DataError`, both naming the file; errors that already name it
    (:class:`SemcorrError`) pass through. Every loader reads its annotation files through this
    (or the readers below), so a bad file is one line, never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {what} not found: {path}")
    try:
        yield path
    except (SemcorrError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001  (whatever the parser raises: name the file)
        raise DataError(f"{dataset}: cannot read {what} {path} ({type(err).__name__}: "
                        f"{first_sentence(err)})") from None


def read_text(path: Path, dataset: str, what: str = "annotation file") -> str:
    """The UTF-8 text of a file; errors name it (see :func:`reading`)."""
    with reading(path, dataset, what):
        return Path(path).read_text(encoding="utf-8")


def read_mat(path: Path, dataset: str, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB ``.mat`` file; a missing, truncated or foreign file (or one
    without ``key``) raises an error that names it."""
    import scipy.io

    with reading(path, dataset):
        data = scipy.io.loadmat(str(path))
        if key not in data:
            raise DataError(f"{dataset}: {path} has no {key!r} (keys: "
                            f"{', '.join(k for k in data if not k.startswith('__'))})")
        return np.asarray(data[key])


def read_json(path: Path, dataset: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises an error that names it."""
    with reading(path, dataset):
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def read_csv(path: Path, dataset: str, required: Sequence[str] = ()) -> List[Dict[str, str]]:
    """Rows of a CSV file with a header; checks that the ``required`` columns exist."""
    with reading(path, dataset, "pair list"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{dataset}: {path} lacks columns {missing}; header is {header}")
    for i, row in enumerate(rows):
        if None in row or None in row.values():  # too many / too few fields: cut or malformed
            n = len([v for k, v in row.items() if k is not None and v is not None])
            n += len(row.get(None) or [])
            raise DataError(f"{dataset}: {path}, row {i + 2}: {n} fields but the header has "
                            f"{len(header)} (a truncated or malformed file?)")
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
