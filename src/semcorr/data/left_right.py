"""What the left/right diagnostics need to know about each keypoint of a pair, from the datasets'
keypoint tables (evaluation only; the metrics are in :mod:`semcorr.metrics.left_right`).

Two tables name, for a keypoint id, the keypoints it can be confused with:

- its **counterpart** (GECO's subsets, the swap rate): the mirrored id of the symmetric-keypoint
  table (:mod:`semcorr.data.symmetry`, the table the GW-OT symmetry term and the flip
  augmentation use);
- its **geometry-aware group** (GeoAware-SC's subset): ``resources/geoaware_groups.json``,
  GeoAware-SC's ``SPAIR_GEO_AWARE`` / ``AP10K_GEO_AWARE`` (groups of two or more ids).

A dataset fills ``PairRecord.left_right`` with :func:`left_right_fields` from the keypoints
visible in each image as a whole — not only those of the pair's list: SPair-71k's pair files list
only keypoints visible in both images, while GECO's subsets depend on whether the counterpart is
visible in the target alone. The sample then carries (K: the pair's keypoints):

==================  ============  ===========================================================
key                 shape         meaning
==================  ============  ===========================================================
kps_has_sym         (K,) bool     the keypoint has a counterpart in the table
src_sym_vis,        (K,) bool     the counterpart is visible in the source / target image
trg_sym_vis
src_sym_kps,        (K, 2) float  the counterpart's ground truth (x, y) in that image, original
trg_sym_kps                       frame; 0 where it is not visible there
src_group_vis,      (K,) bool     another member of the keypoint's geometry-aware group is
trg_group_vis                     visible in that image
==================  ============  ===========================================================
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from semcorr.data.symmetry import Symmetry

GROUPS_RESOURCE = "geoaware_groups.json"
FLAG_KEYS = ("kps_has_sym", "src_sym_vis", "trg_sym_vis", "src_group_vis", "trg_group_vis")
POINT_KEYS = ("src_sym_kps", "trg_sym_kps")
SAMPLE_KEYS = FLAG_KEYS + POINT_KEYS

Point = Tuple[float, float]


@lru_cache(maxsize=1)
def load_groups() -> Symmetry:
    """The packaged geometry-aware groups, read once, looked up like the symmetry table:
    ``load_groups().table[dataset]`` (SPair-71k: per category)."""
    text = resources.files("semcorr").joinpath("resources", GROUPS_RESOURCE).read_text()
    return Symmetry(json.loads(text))


def groups_of(dataset: str, category: Optional[str] = None) -> List[List[int]]:
    """The geometry-aware groups of ``dataset`` / ``category`` (empty when there are none)."""
    entry = load_groups().table.get(dataset)
    if isinstance(entry, dict):
        entry = entry.get(category)
    return [[int(i) for i in g] for g in (entry or [])]


def visible_points(points: np.ndarray, visible: np.ndarray,
                   ids: Optional[Sequence[int]] = None) -> Dict[int, Point]:
    """``{id: (x, y)}`` of the visible keypoints of one image. ``points`` (N, 2), ``visible``
    (N,) bool, ``ids`` (N,) their ids (default 0..N-1)."""
    ids = range(len(points)) if ids is None else ids
    return {int(i): (float(p[0]), float(p[1])) for i, p, v in zip(ids, points, visible) if v}


def left_right_fields(kps_ids: Sequence[int], src_points: Mapping[int, Point],
                      trg_points: Mapping[int, Point], pairs: Optional[Sequence[Tuple[int, int]]],
                      groups: Sequence[Sequence[int]] = ()) -> Dict[str, np.ndarray]:
    """The left/right keys of one pair (table in the module docstring) as numpy arrays.

    Args:
        kps_ids: (K,) the id of each keypoint of the pair's list.
        src_points, trg_points: ``{id: (x, y)}`` of every keypoint visible in the source / target
            image (original frame), listed in the pair or not.
        pairs: the symmetric id pairs of the pair's category (None or empty: no counterparts).
        groups: the geometry-aware groups (lists of ids) of the category.
    """
    partner: Dict[int, int] = {}
    for a, b in pairs or ():
        partner[int(a)], partner[int(b)] = int(b), int(a)
    group_of = {int(i): tuple(int(j) for j in g) for g in groups for i in g}
    k = len(kps_ids)
    out = {key: np.zeros(k, dtype=bool) for key in FLAG_KEYS}
    out.update({key: np.zeros((k, 2), dtype=np.float64) for key in POINT_KEYS})
    for n, kid in enumerate(int(i) for i in kps_ids):
        mate = partner.get(kid)
        out["kps_has_sym"][n] = mate is not None
        for side, points in (("src", src_points), ("trg", trg_points)):
            if mate is not None and mate in points:
                out[f"{side}_sym_vis"][n] = True
                out[f"{side}_sym_kps"][n] = points[mate]
            out[f"{side}_group_vis"][n] = any(j != kid and j in points for j in group_of.get(kid, ()))
    return out
