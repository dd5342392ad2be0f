"""PF-PASCAL (Ham et al., "Proposal Flow", TPAMI 2017) with the pair lists used since NC-Net.

``root`` holds ``PF-dataset-PASCAL/JPEGImages/*.jpg`` and the pair lists ``{train,val,test}_pairs.csv``
(looked up in ``root``, ``root/image_pairs`` and ``root/PF-dataset-PASCAL``; ``data.pairs_csv``
overrides). Header ``source_image,target_image,class,XA,YA,XB,YB[,flip]``: image paths relative to
``root``, ``class`` 1-20 in PASCAL VOC order, coordinates ``;``-separated, 1-based (MATLAB) and
negative where the keypoint is not annotated (invalid). The ``flip`` column exists only in the
training and validation lists: a training augmentation. On the **train** split ``flip`` = 1
serves the pair mirrored (both images flipped horizontally, keypoints with them; ids are per
pair, so no re-labelling is needed), as HPF / DHPF / CATs (``data/pfpascal.py``: read for
``trn`` only) and NC-Net's training loader do. Val and test pairs are never flipped, whatever
their file holds (no evaluator flips PF-PASCAL evaluation pairs).

Protocols (``metric.protocol``; docs/datasets.md has the table):

- ``zero_shot`` (default): L = max(h, w) of the target image in original pixels, source ->
  target, mean per image: the zero-shot lineage (``Junyi42/GeoAware-SC`` ``pck_train.py``,
  ``Junyi42/sd-dino`` ``pck_spair_pascal.py``, which compare with ``<``: ``metric.strict=true``);
  the same numbers as HPF's original-pixel evaluation (``juhongm999/hpf``).
- ``ncnet``: target -> source, keypoints and predictions scaled anisotropically into a 224 x 224
  frame, L = 224 (``ignacio-rocco/ncnet`` ``lib/pf_dataset.py`` ``pck_procedure='scnet'``,
  ``lib/eval_util.py``).
- ``cats``: target -> source in a 256 x 256 frame, L = 256
  (``SunghwanHong/Cost-Aggregation-transformers`` ``data/dataset.py``,
  ``utils_training/evaluation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from semcorr.registry import configured, register
from semcorr.data.base import FLIP_SUFFIX, DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, read_csv, split_floats
from semcorr.data.transforms import mirror_points
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
               "sofa", "train", "tvmonitor"]
COLUMNS = ("source_image", "target_image", "class", "XA", "YA", "XB", "YB")


@dataclass
class PFPascalConfig(DataConfig):
    pairs_csv: Optional[str] = None  # None: <split>_pairs.csv found under root


@register("data", "pf_pascal", PFPascalConfig)
class PFPascalDataset(PairDataset):
    protocols = {
        "zero_shot": protocol(
            threshold_by="image", reference="Junyi42/GeoAware-SC pck_train.py; "
                                            "Junyi42/sd-dino pck_spair_pascal.py"),
        "ncnet": protocol(
            threshold_by="image", frame=224, direction="trg_to_src",
            reference="ignacio-rocco/ncnet lib/pf_dataset.py (pck_procedure scnet), lib/eval_util.py"),
        "cats": protocol(
            threshold_by="image", frame=256, direction="trg_to_src",
            reference="SunghwanHong/Cost-Aggregation-transformers data/dataset.py, "
                      "utils_training/evaluation.py"),
    }
    default_protocol = "zero_shot"

    def __init__(self, cfg: Optional[PFPascalConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(PFPascalConfig, cfg, **overrides)
        split = split or cfg.split
        super().__init__(cfg, divisor)
        if split not in ("train", "val", "test"):
            raise DataError(f"pf_pascal: unknown split {split!r}; valid: train, val, test")
        self.image_root = resolve_root(cfg.root, "pf-pascal", "pf_pascal")
        path = self._find_csv(cfg.pairs_csv, split)
        rows = read_csv(path, "pf_pascal", COLUMNS)
        self.flips = split == "train"  # the flip column is a training augmentation
        records = [self._record(row, i, path) for i, row in enumerate(rows)]
        self.finalize(records, categories=[c for c in VOC_CLASSES if any(r.category == c for r in records)])

    def _find_csv(self, pairs_csv: Optional[str], split: str) -> Path:
        if pairs_csv:
            path = Path(pairs_csv)
            return path if path.is_absolute() or path.is_file() else self.image_root / path
        name = f"{split}_pairs.csv"
        for folder in ("", "image_pairs", "PF-dataset-PASCAL"):
            if (self.image_root / folder / name).is_file():
                return self.image_root / folder / name
        raise FileNotFoundError(f"pf_pascal: {name} not found in {self.image_root} (or its "
                                "image_pairs/, PF-dataset-PASCAL/); set data.pairs_csv")

    def _record(self, row, index: int, path: Path) -> PairRecord:
        try:
            cls = int(float(row["class"]))
            if not 1 <= cls <= len(VOC_CLASSES):
                raise DataError(f"class {cls} not in 1..20")
            xa, ya, xb, yb = (split_floats(row[c]) for c in ("XA", "YA", "XB", "YB"))
            if not (len(xa) == len(ya) == len(xb) == len(yb)):
                raise DataError("XA, YA, XB, YB differ in length")
            flip = int(float(row.get("flip") or 0)) if self.flips else 0
        except (KeyError, ValueError) as err:
            raise DataError(f"pf_pascal: {path}, row {index + 2}: {err}") from None
        src_raw, trg_raw = np.stack([xa, ya], 1), np.stack([xb, yb], 1)
        valid = ((np.isfinite(src_raw) & (src_raw >= 0)).all(1)
                 & (np.isfinite(trg_raw) & (trg_raw >= 0)).all(1))
        src_kps = np.where(valid[:, None], src_raw - 1.0, 0.0)
        trg_kps = np.where(valid[:, None], trg_raw - 1.0, 0.0)
        src, trg = row["source_image"], row["target_image"]
        suffix = FLIP_SUFFIX if flip else ""
        return PairRecord(src=src + suffix, trg=trg + suffix, src_kps=src_kps, trg_kps=trg_kps,
                          valid=valid, category=VOC_CLASSES[cls - 1],
                          kps_ids=np.arange(len(src_kps)), pair_id=f"{index}:{src}->{trg}{suffix}",
                          meta={"flip": flip}, annotation=f"{path}, row {index + 2}")

    def load_pair(self, index: int):
        pair = super().load_pair(index)
        if self.records[index].meta.get("flip"):
            for side in ("src", "trg"):
                pair[f"{side}_kps"] = mirror_points(pair[f"{side}_kps"], pair[f"{side}_img"].shape[-1])
        return pair
