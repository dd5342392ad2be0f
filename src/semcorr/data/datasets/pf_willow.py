"""PF-WILLOW (Ham et al., "Proposal Flow", CVPR 2016) in its released layout.

``root`` holds ``PF-dataset-WILLOW/<subset>/<name>.{png,mat}``; each ``.mat`` has ``pts_coord``,
a 2 x 10 array of 1-based (x, y) coordinates. Pairs: every ordered pair of images within a subset
(900), or a pair list: ``test_pairs.csv`` (``subset,src_image,trg_image``) or the NC-Net-style
``test_pairs_pf.csv`` (``imageA,imageB,XA,YA,XB,YB`` with ``;``-separated 1-based coordinates).
Protocol ``hpf``: threshold alpha * max(w, h) of the box around the target keypoints, in
original pixels, source -> target, mean per image (``juhongm999/hpf`` ``data/pfwillow.py``
``get_pckthres`` with ``thres='bbox'``, ``model/evaluation.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

import numpy as np

from semcorr.registry import configured, register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, read_csv, read_mat
from semcorr.errors import ConfigError
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

SUBSETS = ["car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)",
           "motorbike(S)", "winebottle(M)", "winebottle(wC)", "winebottle(woC)"]
FOLDER = "PF-dataset-WILLOW"


@dataclass
class PFWillowConfig(DataConfig):
    pairs_csv: Optional[str] = None  # None: every ordered pair within each subset
    # PF-WILLOW has only test pairs; these carve train / val splits out of disjoint subsets
    # (e.g. train on car(*) and duck(S), validate on winebottle(M), test on the rest).
    train_categories: List[str] = field(default_factory=list)
    val_categories: List[str] = field(default_factory=list)


def read_points(mat_path: Path) -> np.ndarray:
    """(10, 2) 0-based (x, y) keypoints from a PF-WILLOW ``.mat`` file."""
    coords = read_mat(mat_path, "pf_willow", "pts_coord")
    if coords.ndim != 2 or coords.shape[0] < 2 or not np.issubdtype(coords.dtype, np.number):
        raise DataError(f"pf_willow: {mat_path}: pts_coord should be a 2 x K array of numbers, "
                        f"got shape {coords.shape}")
    return np.asarray(coords, dtype=np.float64).T[:, :2] - 1.0


@register("data", "pf_willow", PFWillowConfig)
class PFWillowDataset(PairDataset):
    protocols = {"hpf": protocol(threshold_by="bbox_kp", average="per_image",
                                 reference="juhongm999/hpf data/pfwillow.py, model/evaluation.py")}
    default_protocol = "hpf"

    def __init__(self, cfg: Optional[PFWillowConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(PFWillowConfig, cfg, **overrides)
        split = split or cfg.split
        chosen = {"train": cfg.train_categories, "val": cfg.val_categories}.get(split)
        if split not in ("train", "val", "test") or (split != "test" and not chosen):
            raise ConfigError(f"PF-WILLOW has only a test split, not {split!r}; set "
                             f"data.{split}_categories=[...] to use some subsets as {split} data")
        super().__init__(replace(cfg, categories=list(chosen)) if chosen else cfg, divisor)
        self.image_root = resolve_root(cfg.root, "pf-willow", "pf_willow")
        if not (self.image_root / FOLDER).is_dir():
            raise FileNotFoundError(f"pf_willow: {self.image_root / FOLDER} not found")
        if cfg.pairs_csv:
            records = self._records_from_csv(Path(cfg.pairs_csv))
        else:
            records = self._all_pairs()
        self.finalize(records, categories=[s for s in SUBSETS if any(r.category == s for r in records)])

    def _image_id(self, path: str) -> str:
        p = Path(path)
        if (self.image_root / p).is_file():
            return p.as_posix()
        return (Path(FOLDER) / p.parent.name / p.name).as_posix()

    def _record(self, subset: str, src: str, trg: str, src_kps=None, trg_kps=None,
                annotation: Optional[str] = None) -> PairRecord:
        if src_kps is None:
            mats = [(self.image_root / name).with_suffix(".mat") for name in (src, trg)]
            src_kps, trg_kps = (read_points(m) for m in mats)
            annotation = f"{mats[0]} and {mats[1]}"
        return PairRecord(src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
                          valid=np.ones(len(src_kps), dtype=bool), category=subset,
                          kps_ids=np.arange(len(src_kps)), annotation=annotation)

    def _all_pairs(self) -> List[PairRecord]:
        records = []
        for subset in SUBSETS:
            folder = self.image_root / FOLDER / subset
            if not folder.is_dir():
                continue
            names = sorted(p.relative_to(self.image_root).as_posix() for p in folder.glob("*.png"))
            for src, trg in itertools.permutations(names, 2):
                records.append(self._record(subset, src, trg))
        if not records:
            raise FileNotFoundError(f"pf_willow: no images under {self.image_root / FOLDER}")
        return records

    def _records_from_csv(self, path: Path) -> List[PairRecord]:
        if not path.is_absolute() and not path.is_file():
            path = self.image_root / path
        records = []
        for i, row in enumerate(read_csv(path, "pf_willow")):
            try:
                if "src_image" in row:
                    src, trg = self._image_id(row["src_image"]), self._image_id(row["trg_image"])
                    subset = row.get("subset") or Path(src).parent.name
                    records.append(self._record(subset, src, trg))
                elif "imageA" in row:
                    src, trg = self._image_id(row["imageA"]), self._image_id(row["imageB"])
                    src_kps = _coords(row["XA"], row["YA"])
                    trg_kps = _coords(row["XB"], row["YB"])
                    records.append(self._record(Path(src).parent.name, src, trg, src_kps, trg_kps,
                                                f"{path}, row {i + 2}"))
                else:
                    raise DataError(
                        f"pf_willow: {path}: unknown pair-list header {list(row)}; expected "
                        "subset,src_image,trg_image or imageA,imageB,XA,YA,XB,YB"
                    )
            except (KeyError, TypeError, ValueError) as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"pf_willow: {path}, row {i + 2}: {err!r}") from None
        return records


def _coords(xs: str, ys: str) -> np.ndarray:
    x = np.array([float(v) for v in xs.split(";") if v.strip()])
    y = np.array([float(v) for v in ys.split(";") if v.strip()])
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x but {len(y)} y coordinates")
    return np.stack([x, y], axis=1) - 1.0
