"""Left/right symmetric keypoints: which keypoint ids swap under a horizontal flip of the object.

The table ships with the package (``semcorr/resources/symmetry.json``): for each SPair-71k
category and for the 17 AP-10K keypoints, the pairs of keypoint ids (0-based, the annotation's
``kps_ids`` order) that exchange under a horizontal flip; ids not listed lie on the symmetry axis.
Source: the lists of the pose-aware evaluation literature (GeoAware-SC, Zhang et al. 2024), in the
annotation's own ids for every category (GeoAware-SC's test-time ``bus`` list indexes renumbered
keypoints; the packaged table does not). The file is a copy of the shared
``symmetric_keypoints.json`` (regenerate it from there, never edit it by hand);
``tests/test_symmetry.py`` checks every SPair-71k pair against the keypoints' left/right sides.

Two uses:

- :func:`sym_indices` turns id pairs into index pairs of one annotated pair's keypoint list
  (``PairRecord.sym_pairs``, the GW-OT symmetry term);
- :meth:`Symmetry.partner` drives the flip augmentation (``semcorr.data.transforms``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

RESOURCE = "symmetry.json"


class Symmetry:
    """Symmetric keypoint-id pairs per (dataset, category).

    Args:
        table: ``{dataset: {category: [[id_a, id_b], ...]}}`` (SPair-style, per category) or
            ``{dataset: [[id_a, id_b], ...]}`` (one list for every category, e.g. AP-10K).
    """

    def __init__(self, table: Dict[str, object]) -> None:
        self.table = {k: v for k, v in table.items() if not k.startswith("_")}

    def pairs(self, dataset: str, category: Optional[str] = None) -> Optional[List[Tuple[int, int]]]:
        """The id pairs of ``dataset`` / ``category``; None if the table does not know them."""
        entry = self.table.get(dataset)
        if entry is None:
            return None
        if isinstance(entry, dict):
            entry = entry.get(category) if category is not None else None
            if entry is None:
                return None
        return [(int(a), int(b)) for a, b in entry]  # type: ignore[union-attr]

    def partner(self, dataset: str, category: Optional[str] = None) -> Optional[Dict[int, int]]:
        """``{id: mirrored id}`` for the listed ids (ids not in it map to themselves)."""
        pairs = self.pairs(dataset, category)
        if pairs is None:
            return None
        out: Dict[int, int] = {}
        for a, b in pairs:
            out[a], out[b] = b, a
        return out


@lru_cache(maxsize=1)
def load_symmetry() -> Symmetry:
    """The packaged symmetry table (read once)."""
    text = resources.files("semcorr").joinpath("resources", RESOURCE).read_text()
    return Symmetry(json.loads(text))


def sym_indices(kps_ids: Sequence[int], valid: Sequence[bool],
                pairs: Optional[Sequence[Tuple[int, int]]]) -> np.ndarray:
    """(S, 2) indices into a keypoint list whose ids form a symmetric pair, both keypoints valid.

    Args:
        kps_ids: (K,) semantic id of each keypoint in the pair's list.
        valid: (K,) bool, keypoint annotated in both images.
        pairs: symmetric id pairs (see :class:`Symmetry`); None or empty gives (0, 2).
    """
    index = {int(i): k for k, i in enumerate(kps_ids) if bool(valid[k])}
    rows = [(index[a], index[b]) for a, b in (pairs or ()) if a in index and b in index]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)
