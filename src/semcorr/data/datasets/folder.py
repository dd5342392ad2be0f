"""Your own data: a folder of images and a pair list with keypoints (JSON or CSV).

``data.root`` is the image folder; ``data.pairs`` the pair list (relative to ``root`` or absolute).
Coordinates are 0-based pixel coordinates (x, y) of the image as displayed (EXIF applied).

JSON: a list of pairs (or ``{"pairs": [...]}``), each::

    {"src": "cat1.jpg", "trg": "cat2.jpg",
     "src_kps": [[10, 20], [30, 40], null], "trg_kps": [[12, 22], [33, 41], [5, 5]],
     "category": "cat", "src_bbox": [0, 0, 99, 80], "trg_bbox": [4, 2, 90, 70],
     "kps_ids": [0, 1, 2]}

``category``, boxes ([x1, y1, x2, y2]) and ``kps_ids`` are optional; a keypoint that is null
or negative in either image is not evaluated.

CSV: header ``src,trg,XA,YA,XB,YB`` plus optional ``category``, ``src_bbox``, ``trg_bbox``;
coordinates and boxes ``;``-separated (``x1;y1;x2;y2``), empty or negative entries invalid.

Protocol (``data.threshold_by``): ``auto`` uses the target box when every pair has one, else the
box around the target keypoints (``bbox_kp``); or name one of bbox | bbox_kp | image.

Left/right diagnostics (:mod:`semcorr.metrics.left_right`): ``data.symmetry`` lists the keypoint
ids (``kps_ids``, else the position in the list) that swap under a horizontal flip, e.g.
``[[0, 1], [2, 3]]``; ``data.geo_groups`` the geometry-aware groups (default: those pairs). A
keypoint's counterpart is visible in an image when it is given (not null) there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from semcorr.registry import configured, register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, points, read_csv, read_json, split_floats
from semcorr.checks import one_of
from semcorr.data.left_right import left_right_fields, visible_points
from semcorr.metrics.protocol import AVERAGES, THRESHOLD_BY, protocol


@dataclass
class FolderConfig(DataConfig):
    pairs: str = "pairs.json"  # .json or .csv, relative to root
    threshold_by: str = "auto"  # auto | bbox | bbox_kp | image
    average: str = "per_image"  # per_image | per_keypoint
    symmetry: List[List[int]] = field(default_factory=list)  # left/right id pairs; empty: none
    geo_groups: Optional[List[List[int]]] = None  # geometry-aware groups; None: the symmetry pairs

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "threshold_by", ("auto", *THRESHOLD_BY))
        one_of(self, "average", AVERAGES)
        for name in ("symmetry", "geo_groups"):
            groups = getattr(self, name) or []
            if any(len(g) < 2 for g in groups) or (name == "symmetry" and any(len(g) != 2 for g in groups)):
                what = "pairs [a, b]" if name == "symmetry" else "lists of two or more ids"
                raise ValueError(f"{name} must hold {what}, got {groups}")


@register("data", "folder", FolderConfig)
class FolderDataset(PairDataset):
    def __init__(self, cfg: Optional[FolderConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(FolderConfig, cfg, **overrides)
        super().__init__(cfg, divisor)
        if not cfg.root:
            raise FileNotFoundError("folder: set data.root to the image folder")
        self.image_root = Path(cfg.root).expanduser()
        pairs, threshold_by, average = cfg.pairs, cfg.threshold_by, cfg.average
        self.symmetry = [tuple(int(i) for i in pair) for pair in cfg.symmetry]
        groups = cfg.geo_groups if cfg.geo_groups is not None else cfg.symmetry
        self.geo_groups = [[int(i) for i in g] for g in groups]
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"folder: data.root {self.image_root} is not a directory")
        path = Path(pairs)
        path = path if path.is_absolute() else self.image_root / path
        if path.suffix.lower() == ".csv":
            records = [self._from_csv(row, i, path) for i, row in
                       enumerate(read_csv(path, "folder", ("src", "trg", "XA", "YA", "XB", "YB")))]
        else:
            data = read_json(path, "folder")
            items = data.get("pairs") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise DataError(f"folder: {path} should hold a list of pairs or {{\"pairs\": [...]}}")
            records = [self._from_json(item, i, path) for i, item in enumerate(items)]
        if not records:
            raise DataError(f"folder: {path} lists no pairs")
        if threshold_by == "auto":
            threshold_by = "bbox" if all(r.trg_bbox is not None for r in records) else "bbox_kp"
        self.protocols = {"folder": protocol(threshold_by=threshold_by, average=average)}
        self.default_protocol = "folder"
        self.finalize(records)

    def _from_json(self, item: Dict[str, Any], index: int, path: Path) -> PairRecord:
        try:
            src_kps, src_ok = points(item["src_kps"])
            trg_kps, trg_ok = points(item["trg_kps"])
            if len(src_kps) != len(trg_kps):
                raise DataError(f"{len(src_kps)} src_kps but {len(trg_kps)} trg_kps")
            ids = item.get("kps_ids")
            return self._record(str(item["src"]), str(item["trg"]), src_kps, trg_kps, src_ok, trg_ok,
                                item.get("category"), item.get("src_bbox"), item.get("trg_bbox"),
                                None if ids is None else np.asarray(ids, dtype=np.int64), index,
                                f"{path}, pair {index}")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"folder: {path}, pair {index}: {err!r}") from None

    def _from_csv(self, row: Dict[str, str], index: int, path: Path) -> PairRecord:
        try:
            xa, ya, xb, yb = (split_floats(row[c]) for c in ("XA", "YA", "XB", "YB"))
            if not (len(xa) == len(ya) == len(xb) == len(yb)):
                raise DataError("XA, YA, XB, YB differ in length")
            src, trg = np.stack([xa, ya], 1), np.stack([xb, yb], 1)
            src_ok = (np.isfinite(src) & (src >= 0)).all(1)
            trg_ok = (np.isfinite(trg) & (trg >= 0)).all(1)
            boxes = [split_floats(row[k]) if row.get(k) else None for k in ("src_bbox", "trg_bbox")]
            return self._record(row["src"], row["trg"], np.nan_to_num(src), np.nan_to_num(trg), src_ok, trg_ok,
                                row.get("category"), *boxes, None, index, f"{path}, row {index + 2}")
        except (KeyError, ValueError) as err:
            raise DataError(f"folder: {path}, row {index + 2}: {err}") from None

    def _record(self, src: str, trg: str, src_kps, trg_kps, src_ok, trg_ok, category, src_bbox,
                trg_bbox, ids, index: int, annotation: str) -> PairRecord:
        valid = src_ok & trg_ok
        for name, box in (("src_bbox", src_bbox), ("trg_bbox", trg_bbox)):
            if box is not None and len(box) != 4:
                raise DataError(f"{name} needs 4 numbers x1, y1, x2, y2, got {list(box)}")
        if ids is not None and len(ids) != len(src_kps):
            raise DataError(f"{len(ids)} kps_ids for {len(src_kps)} keypoints")
        for image in (src, trg):
            if not (self.image_root / image).is_file():
                raise FileNotFoundError(f"folder: image not found: {self.image_root / image}")
        left_right = None
        if self.symmetry:
            kid = np.arange(len(src_kps)) if ids is None else ids
            left_right = left_right_fields(kid, visible_points(src_kps, src_ok, kid),
                                           visible_points(trg_kps, trg_ok, kid), self.symmetry,
                                           self.geo_groups)
        return PairRecord(
            src=src, trg=trg, src_kps=np.where(valid[:, None], src_kps, 0.0),
            trg_kps=np.where(valid[:, None], trg_kps, 0.0), valid=valid,
            category=str(category) if category else "all", kps_ids=ids,
            src_bbox=None if src_bbox is None else [float(v) for v in src_bbox],
            trg_bbox=None if trg_bbox is None else [float(v) for v in trg_bbox],
            pair_id=f"{index}:{src}->{trg}", left_right=left_right, annotation=annotation,
        )
