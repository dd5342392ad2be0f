"""AP-10K (Yu et al., 2021) as a semantic-correspondence benchmark, as in GeoAware-SC.

``root`` holds the COCO-style keypoint files ``annotations/ap10k-{split}-split<fold>.json``
(``data.annotation`` overrides; ``{split}`` and ``{fold}`` are filled in) and the images under
``data/`` (``data.image_dir``). Each category is a species (``name``) with its family
(``supercategory``); annotations hold 17 keypoints ``[x, y, v, ...]`` and ``bbox`` [x, y, w, h].

Pair construction (deterministic; documented here because the released benchmark files are not
part of AP-10K itself):

1. keep images with exactly one non-crowd annotation (``single_instance``) and at least
   ``min_common`` keypoints with visibility ``v >= min_visibility``;
2. for every species (sorted by name), draw ordered pairs (source of that species, target from
   the mode's pool) with ``numpy.random.default_rng(crc32("<seed>/<mode>/<split>/<species>"))``,
   keeping pairs of distinct images that share at least ``min_common`` keypoints, until
   ``pairs_per_category`` are found (at most 50 x as many draws). Pools by ``mode``:
   ``intra_species``: same species; ``cross_species``: same family, other species;
   ``cross_family``: other families.
3. a keypoint is valid when annotated (``v >= min_visibility``) in both images.

The category of a pair is the source's species. Protocol: threshold alpha * max(w, h) of the
target box, mean per image (per keypoint also reported). Symmetric keypoints come from
``semcorr.data.symmetry``.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from semcorr.checks import number, one_of
from semcorr.registry import register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, read_json
from semcorr.data.symmetry import load_symmetry, sym_indices
from semcorr.paths import resolve_root

MODES = ("intra_species", "cross_species", "cross_family")
N_KEYPOINTS = 17


@dataclass
class AP10KConfig(DataConfig):
    annotation: str = "annotations/ap10k-{split}-split{fold}.json"
    fold: int = 1
    image_dir: str = "data"
    mode: str = "intra_species"  # intra_species | cross_species | cross_family
    pairs_per_category: int = 50
    min_common: int = 3  # keypoints annotated in both images
    min_visibility: int = 1  # COCO flag: 0 unlabelled, 1 labelled but occluded, 2 visible
    single_instance: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "mode", MODES)
        number(self, "pairs_per_category", ge=1, integer=True)
        number(self, "min_common", ge=1, le=N_KEYPOINTS, integer=True)
        number(self, "min_visibility", ge=0, le=2, integer=True)


@dataclass
class _Instance:
    image_id: str
    species: str
    family: str
    kps: np.ndarray  # (17, 2)
    vis: np.ndarray  # (17,) bool
    bbox: List[float]  # x1, y1, x2, y2


@register("data", "ap10k", AP10KConfig)
class AP10KDataset(PairDataset):
    protocol = {"threshold_by": "bbox", "average": "per_image"}

    def __init__(self, root: Optional[str] = None, split: str = "test",
                 annotation: str = "annotations/ap10k-{split}-split{fold}.json", fold: int = 1,
                 image_dir: str = "data", mode: str = "intra_species", pairs_per_category: int = 50,
                 min_common: int = 3, min_visibility: int = 1, single_instance: bool = True,
                 seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise DataError(f"ap10k: unknown mode {mode!r}; valid: {', '.join(MODES)}")
        base = resolve_root(root, "ap-10k", "ap10k")
        self.image_root = base / image_dir
        path = Path(annotation.format(split=split, fold=fold))
        path = path if path.is_absolute() else base / path
        coco = read_json(path, "ap10k")
        instances = self._instances(coco, path, min_visibility, single_instance, min_common)
        self.min_common = min_common
        records = self._pairs(instances, mode, split, pairs_per_category, seed)
        self.finalize(records)

    # ------------------------------------------------------------------ annotations
    def _instances(self, coco: Dict[str, Any], path: Path, min_visibility: int,
                   single_instance: bool, min_common: int) -> List[_Instance]:
        try:
            cats = {c["id"]: (str(c["name"]), str(c.get("supercategory", c["name"])))
                    for c in coco["categories"]}
            files = {im["id"]: str(im["file_name"]) for im in coco["images"]}
            per_image: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
            for ann in coco["annotations"]:
                if not ann.get("iscrowd", 0):
                    per_image[ann["image_id"]].append(ann)
            out = []
            for image_id in sorted(per_image, key=lambda i: files[i]):
                anns = per_image[image_id]
                if single_instance and len(anns) != 1:
                    continue
                ann = anns[0]
                raw = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
                if len(raw) != N_KEYPOINTS:
                    raise DataError(f"annotation {ann.get('id')}: {len(raw)} keypoints, expected 17")
                vis = (raw[:, 2] >= min_visibility) & (raw[:, 2] > 0) & (raw[:, :2] >= 0).all(1)
                if vis.sum() < min_common:
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                species, family = cats[ann["category_id"]]
                out.append(_Instance(files[image_id], species, family, raw[:, :2], vis,
                                     [x, y, x + w, y + h]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"ap10k: malformed annotation file {path}: {err!r}") from None
        return out

    # ------------------------------------------------------------------ pairs
    def _pairs(self, instances: List[_Instance], mode: str, split: str, per_category: int,
               seed: int) -> List[PairRecord]:
        by_species: Dict[str, List[int]] = defaultdict(list)
        for i, inst in enumerate(instances):
            by_species[inst.species].append(i)
        sym = load_symmetry().pairs("ap10k")
        records = []
        for species in sorted(by_species):
            sources = by_species[species]
            family = instances[sources[0]].family
            if mode == "intra_species":
                pool = sources
            elif mode == "cross_species":
                pool = [i for i, x in enumerate(instances) if x.family == family and x.species != species]
            else:
                pool = [i for i, x in enumerate(instances) if x.family != family]
            if not pool:
                continue
            rng = np.random.default_rng(zlib.crc32(f"{seed}/{mode}/{split}/{species}".encode()))
            seen = set()
            for _ in range(50 * per_category):
                if len(seen) >= per_category:
                    break
                s, t = sources[rng.integers(len(sources))], pool[rng.integers(len(pool))]
                if s == t or (s, t) in seen:
                    continue
                valid = instances[s].vis & instances[t].vis
                if valid.sum() < self.min_common:
                    continue
                seen.add((s, t))
                records.append(self._record(instances[s], instances[t], valid, sym))
        return records

    @staticmethod
    def _record(src: _Instance, trg: _Instance, valid: np.ndarray, sym) -> PairRecord:
        ids = np.arange(N_KEYPOINTS)
        return PairRecord(
            src=src.image_id, trg=trg.image_id,
            src_kps=np.where(valid[:, None], src.kps, 0.0), trg_kps=np.where(valid[:, None], trg.kps, 0.0),
            valid=valid, category=src.species, kps_ids=ids, src_bbox=src.bbox, trg_bbox=trg.bbox,
            sym_pairs=sym_indices(ids, valid, sym), pair_id=f"{src.image_id}->{trg.image_id}",
            meta={"src_family": src.family, "trg_family": trg.family, "trg_species": trg.species},
        )
