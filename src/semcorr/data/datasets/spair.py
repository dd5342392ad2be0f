"""SPair-71k (Min et al., 2019) in its released layout.

``root`` holds ``JPEGImages/<category>/<name>.jpg``, ``PairAnnotation/{trn,val,test}/<pair>.json``
and ``Layout/<layout>/{trn,val,test}.txt`` (one pair file stem per line). Fields read from a pair
file: ``src_imname``, ``trg_imname``, ``category``, ``src_kps``, ``trg_kps`` (lists of [x, y],
pixel coordinates), ``kps_ids``, ``src_bndbox``, ``trg_bndbox`` ([x1, y1, x2, y2]),
``src_imsize``, ``trg_imsize`` and the difficulty flags ``viewpoint_variation``,
``scale_variation``, ``truncation``, ``occlusion``. ``data.<flag>=[values]`` keeps only pairs whose
flag is one of the values (empty: all). Keypoints given as null or negative are invalid.

Protocols (``metric.protocol``):

- ``hpf`` (default): threshold alpha * max(w, h) of the target box in original pixels, source ->
  target, ``pck`` per image = the mean over all pairs pooled (categories weighted by their pair
  counts). This is the official code of the SPair-71k authors' group: ``juhongm999/hpf``
  ``model/evaluation.py`` (``eval_pck``: one PCK per pair; ``log_pck``: their mean over every
  pair; ``correct_kps``: ``torch.le``) and ``data/dataset.py`` (``get_pckthres``: target box);
  DHPF and CHM average the same way. ``pck_per_keypoint`` (all correct / all valid keypoints, the
  "per point" / "per keypoint" numbers of DIFT and the GW-OT paper's other half of Tab. 2) is
  always in metrics.json too; ``metric.average=per_keypoint`` makes it the headline.
- ``cats``: target -> source, keypoints, predictions and the (source) box scaled anisotropically
  into a 256 x 256 frame (``SunghwanHong/Cost-Aggregation-transformers``
  ``utils_training/evaluation.py``: ``bbox = batch['src_bbox']``).

Symmetric keypoints (GW-OT symmetry term, flips) come from ``semcorr.data.symmetry``.

Left/right diagnostics (:mod:`semcorr.data.left_right`) need every keypoint visible in each image,
not only the pair file's list (keypoints visible in both): they are read from the released
``ImageAnnotation/<category>/<name>.json`` (``kps``: ``{"<id>": [x, y] | null}``), as GECO and
GeoAware-SC read them. Without that folder the run has no left/right section (a warning says so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from semcorr.registry import configured, register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, points, read_json, read_text
from semcorr.data.left_right import groups_of, left_right_fields, visible_points
from semcorr.data.symmetry import load_symmetry, sym_indices
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

log = logging.getLogger(__name__)

SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}
DIFFICULTY = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")


@dataclass
class SPairConfig(DataConfig):
    layout: str = "large"  # Layout/<layout>/<split>.txt; missing layout: every pair file
    viewpoint_variation: List[int] = field(default_factory=list)  # keep these values; empty: all
    scale_variation: List[int] = field(default_factory=list)
    truncation: List[int] = field(default_factory=list)
    occlusion: List[int] = field(default_factory=list)


@register("data", "spair", SPairConfig)
class SPairDataset(PairDataset):
    protocols = {
        "hpf": protocol(threshold_by="bbox", average="per_image",
                        reference="juhongm999/hpf model/evaluation.py, data/dataset.py"),
        "cats": protocol(threshold_by="bbox", frame=256, direction="trg_to_src",
                         reference="SunghwanHong/Cost-Aggregation-transformers "
                                   "utils_training/evaluation.py, data/dataset.py"),
    }
    default_protocol = "hpf"

    def __init__(self, cfg: Optional[SPairConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(SPairConfig, cfg, **overrides)
        split = split or cfg.split
        super().__init__(cfg, divisor)
        if split not in SPLITS:
            raise DataError(f"spair: unknown split {split!r}; valid: train (trn), val, test")
        self.split = SPLITS[split]
        self.image_root = resolve_root(cfg.root, "spair", "spair") / "JPEGImages"
        base = self.image_root.parent
        layout = cfg.layout
        filters = {name: getattr(cfg, name) for name in DIFFICULTY}
        self.filters = {k: {int(v) for v in vals} for k, vals in filters.items() if vals}
        symmetry = load_symmetry()
        self._image_annotations = base / "ImageAnnotation"
        if not self._image_annotations.is_dir():
            log.warning("spair: %s not found: no left/right diagnostics (they need each image's "
                        "keypoints, not only those of the pair files)", self._image_annotations)
        self._visible: Dict[str, Dict[int, tuple]] = {}
        records = []
        for path in self._pair_files(base, layout):
            ann = read_json(path, "spair")
            rec = self._record(ann, path, symmetry)
            if rec is not None:
                records.append(rec)
        self.finalize(records)

    def pair_selection(self) -> Dict[str, Any]:
        """Also the difficulty filters (``data.viewpoint_variation`` ...)."""
        out = super().pair_selection()
        out.update({f"data.{k}": sorted(v) for k, v in self.filters.items()})
        return out

    def left_right_of(self, rec: PairRecord) -> Optional[Dict[str, np.ndarray]]:
        """The left/right keys of a pair from its images' ``ImageAnnotation`` files (None without
        that folder)."""
        if not self._image_annotations.is_dir():
            return None
        return left_right_fields(rec.kps_ids, self._image_keypoints(rec.src),
                                 self._image_keypoints(rec.trg), load_symmetry().pairs("spair", rec.category),
                                 groups_of("spair", rec.category))

    def _image_keypoints(self, image: str) -> Dict[int, tuple]:
        """``{id: (x, y)}`` of the keypoints visible in an image (``<category>/<name>.jpg``), from
        its ``ImageAnnotation`` file (read once per image)."""
        if image not in self._visible:
            path = self._image_annotations / Path(image).with_suffix(".json")
            kps = read_json(path, "spair").get("kps")
            if not isinstance(kps, dict):
                raise DataError(f"spair: {path} has no 'kps' object of keypoint ids")
            ids = [int(k) for k in kps]
            xy, present = points([kps[k] for k in kps])
            self._visible[image] = visible_points(xy, present, ids)
        return self._visible[image]

    def _pair_files(self, base: Path, layout: str) -> List[Path]:
        folder = base / "PairAnnotation" / self.split
        if not folder.is_dir():
            raise FileNotFoundError(f"spair: pair annotations not found: {folder}")
        listing = base / "Layout" / layout / f"{self.split}.txt"
        if listing.is_file():
            names = [line.strip() for line in read_text(listing, "spair", "layout").splitlines()
                     if line.strip()]
            return [folder / (n if n.endswith(".json") else f"{n}.json") for n in names]
        log.warning("spair: %s not found; using every file in %s", listing, folder)
        return sorted(folder.glob("*.json"))

    def _record(self, ann: Dict[str, Any], path: Path, symmetry) -> Optional[PairRecord]:
        try:
            category = str(ann["category"])
            flags = {k: int(ann.get(k, 0)) for k in DIFFICULTY}
            if any(flags[k] not in allowed for k, allowed in self.filters.items()):
                return None
            src_kps, src_ok = points(ann["src_kps"])
            trg_kps, trg_ok = points(ann["trg_kps"])
            ids = np.asarray(ann.get("kps_ids", list(range(len(src_kps)))), dtype=np.int64)
            if not (len(src_kps) == len(trg_kps) == len(ids)):
                raise DataError(f"{len(src_kps)} src_kps, {len(trg_kps)} trg_kps, {len(ids)} kps_ids")
            valid = src_ok & trg_ok
            src = f"{category}/{ann['src_imname']}"
            trg = f"{category}/{ann['trg_imname']}"
            src_box = [float(v) for v in ann["src_bndbox"]]
            trg_box = [float(v) for v in ann["trg_bndbox"]]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"spair: malformed pair annotation {path}: {err!r}") from None
        return PairRecord(
            src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps, valid=valid, category=category,
            kps_ids=ids, src_bbox=src_box, trg_bbox=trg_box,
            sym_pairs=sym_indices(ids, valid, symmetry.pairs("spair", category)),
            pair_id=path.stem, annotation=str(path),
            meta={**flags, "src_imsize": ann.get("src_imsize"), "trg_imsize": ann.get("trg_imsize")},
        )
