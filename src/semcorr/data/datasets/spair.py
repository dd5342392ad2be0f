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
  "per point" / "per keypoint" numbers of DIFT) is always in metrics.json too;
  ``metric.average=per_keypoint`` makes it the headline.
- ``geoaware_kpt``: the zero-shot rows of the GW-OT paper's Tab. 2 (and of GeoAware-SC's own
  zero-shot table, whose DINOv2 55.6 the paper's 55.7 matches): all correct / all keypoints
  (per category: that category's keypoints), correct when the error is **strictly** below
  alpha * max(w, h) of the target box (``Junyi42/GeoAware-SC`` ``pck_train.py``, ``compute_pck``
  with ``--KPT_RESULT``, "following ASIC"; they measure on the 840 canvas, where error and
  threshold carry the same factor, so original pixels give the same decisions).
  ``experiment=paper_spair`` reports it.
- ``geoaware``: GeoAware-SC's default, the same rule averaged per image (mean over all pairs).
- ``cats``: target -> source, keypoints, predictions and the (source) box scaled anisotropically
  into a 256 x 256 frame (``SunghwanHong/Cost-Aggregation-transformers``
  ``utils_training/evaluation.py``: ``bbox = batch['src_bbox']``).

Symmetric keypoints (GW-OT symmetry term, flips) come from ``semcorr.data.symmetry``.

Left/right diagnostics (:mod:`semcorr.data.left_right`) need every keypoint visible in each image,
not only the pair file's list (keypoints visible in both): they are read from the released
``ImageAnnotation/<category>/<name>.json`` (``kps``: ``{"<id>": [x, y] | null}``), as GECO and
GeoAware-SC read them. Without that folder the run has no left/right section (a warning says so).

Foreground masks (Pose-Align's orientation score, ``pose_align.masks=auto``) come from
``Segmentation/<category>/<name>.png`` where that file exists, else from the annotated box. The
files hold grey values: 0 background, the object's PASCAL VOC class id (``VOC_CLASS_IDS``, e.g.
cat = 8) on the object (as one public GeoAware-SC derivative reads them: ``mask == id``); a file
without that value counts every non-zero pixel as foreground.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from semcorr.registry import configured, register
from semcorr.data.base import FLIP_SUFFIX, DataConfig, PairDataset, PairRecord, read_label_image
from semcorr.data.datasets._files import DataError, points, read_json, read_text
from semcorr.data.left_right import groups_of, left_right_fields, visible_points
from semcorr.data.symmetry import load_symmetry, sym_indices
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

log = logging.getLogger(__name__)

SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}
# PASCAL VOC class indices (the grey values of SPair-71k's Segmentation/ files)
VOC_CLASS_IDS = {"aeroplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7,
                 "cat": 8, "chair": 9, "cow": 10, "diningtable": 11, "dog": 12, "horse": 13,
                 "motorbike": 14, "person": 15, "pottedplant": 16, "sheep": 17, "sofa": 18,
                 "train": 19, "tvmonitor": 20}
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
    shared_subdir = "spair"  # the copy in the shared data folder when data.root is null
    protocols = {
        "hpf": protocol(threshold_by="bbox", average="per_image",
                        reference="juhongm999/hpf model/evaluation.py, data/dataset.py"),
        "cats": protocol(threshold_by="bbox", frame=256, direction="trg_to_src",
                         reference="SunghwanHong/Cost-Aggregation-transformers "
                                   "utils_training/evaluation.py, data/dataset.py"),
        "geoaware_kpt": protocol(threshold_by="bbox", average="per_keypoint", strict=True,
                                 reference="Junyi42/GeoAware-SC pck_train.py compute_pck with "
                                           "--KPT_RESULT (per keypoint, all pooled; err < alpha * "
                                           "max(h, w) of the target box)"),
        "geoaware": protocol(threshold_by="bbox", average="per_image", strict=True,
                             reference="Junyi42/GeoAware-SC pck_train.py compute_pck (per image, "
                                       "the mean over all pairs; err < alpha * max(h, w) of the "
                                       "target box)"),
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
        self.image_root = resolve_root(cfg.root, self.shared_subdir, "spair") / "JPEGImages"
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

    def foreground(self, image_id: str, box: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """(h, w) bool: the image's ``Segmentation/`` mask when it has one and
        ``serve_masks == "auto"`` (module docstring), else the box."""
        key = str(image_id)
        mirrored = key.endswith(FLIP_SUFFIX)
        key = key[: -len(FLIP_SUFFIX)] if mirrored else key
        path = (self.image_root.parent / "Segmentation" / key).with_suffix(".png")
        if self.serve_masks != "auto" or not path.is_file():
            return super().foreground(image_id, box, hw)
        labels = read_label_image(path)
        if labels.shape != tuple(hw):
            raise DataError(f"spair: segmentation {path} is {labels.shape[1]}x{labels.shape[0]} px, "
                            f"its image {hw[1]}x{hw[0]} px")
        class_id = VOC_CLASS_IDS.get(key.split("/")[0])
        fg = labels == class_id if class_id is not None and (labels == class_id).any() else labels > 0
        mask = torch.from_numpy(np.ascontiguousarray(fg))
        return mask.flip(-1) if mirrored else mask

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
