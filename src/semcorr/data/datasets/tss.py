"""TSS (Taniai et al., "Joint Recovery of Dense Correspondence and Cosegmentation", CVPR 2016).

Layout: ``root/<group>/<pair>/`` (or ``root/TSS_CVPR2016/<group>/<pair>/``), group in FG3DCar,
JODS, PASCAL; each pair folder holds ``image1.png``, ``image2.png``, ``flow1.flo``,
``flow2.flo`` (Middlebury), ``mask1.png``, ``mask2.png`` (foreground) and ``flip_gt.txt``.

Protocol ``tss_kit``: the authors' evaluation kit (``t-taniai/TSS_CVPR2016_EvaluationKit``,
``EvalToolMATLAB/compute_scores.m`` and ``RunEvaluation.m``):

- ``flowN.flo`` lives on the pixel grid of ``imageN`` (the query image); pixel p of image N
  corresponds to ``p + flowN[p]`` in the other image. Values above 1e9 in magnitude (or NaN)
  mark unknown flow.
- The queries are **every** pixel of image N with known flow (the kit's ``flowGT < 1e9``; the
  masks are only used for its segmentation score). A query whose flow lands outside the other
  image is kept, as in the kit (no drop, no clip): a prediction always lies inside the image, so
  it is correct only when within the threshold of that outside point.
- L = max(h, w) of the other image (the one the flow points into), in original pixels; correct
  when error <= alpha * L; alpha = 0.05 is the primary number.
- Each pair is scored in both directions (1 -> 2 on flow1, 2 -> 1 on flow2); a group's value is
  the mean over its samples (per image) and the headline is the unweighted mean of the three
  group values (the "Avg." of the papers); the pooled mean over all samples is also reported.

``flip_gt.txt`` (``data.flip_gt``): with ``other`` (default) a pair whose file holds 1 is served
with the *other* image mirrored horizontally and the query image as stored, and the flow is read
as pointing into the mirrored image. This is what the reference drivers that feed the kit do
(``ignacio-rocco/cnngeometric_matconvnet`` ``evaluation/TSS/evaluateTSS.m``: ``im2prime =
im2(:,end:-1:1,:)`` before computing flow 1, ``im1prime`` before flow 2; the flows are written
without un-flipping; same in ``ignacio-rocco/weakalign`` ``data/tss_dataset.py``). With
``ignore``, flip_gt.txt is not read and both images are served as stored, as in
``PruneTruong/DenseMatching`` ``datasets/semantic_matching_datasets/tss.py`` (and SD-DINO's copy
of it); the two conventions cannot both be right for flip pairs and only ``other`` is what the
kit's reference drivers do. A mirrored image's id ends in ``#hflip``.

Each pair is served as two samples, one per direction: source = image N (as stored), target =
the other image. ``query_stride`` > 1 keeps one pixel per stride x stride block and
``max_queries`` caps the count by even subsampling: both only when asked (they change the
numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from semcorr.checks import number, one_of
from semcorr.registry import configured, register
from semcorr.data.base import FLIP_SUFFIX, DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, read_text, reading
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

GROUPS = ["FG3DCar", "JODS", "PASCAL"]
FLO_MAGIC = 202021.25
UNKNOWN_FLOW = 1e9
FLIP_GT = ("other", "ignore")


@dataclass
class TSSConfig(DataConfig):
    query_stride: int = 1  # 1: every pixel with known flow is a query
    max_queries: Optional[int] = None  # None: no cap
    flip_gt: str = "other"  # other: mirror the other image of flip_gt=1 pairs | ignore

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "query_stride", ge=1, integer=True)
        number(self, "max_queries", ge=1, integer=True, none_ok=True)
        one_of(self, "flip_gt", FLIP_GT)


def read_flo(path: Path) -> np.ndarray:
    """A Middlebury ``.flo`` file as (h, w, 2) float32 (u, v); errors name the file."""
    with reading(path, "tss", "flow file"):
        data = path.read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_MAGIC):
        raise DataError(f"tss: {path} is not a Middlebury .flo file (bad magic number)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * w * h:
        raise DataError(f"tss: {path}: header says {w}x{h} but the file holds {len(data) - 12} bytes")
    return np.frombuffer(data[12:], "<f4").reshape(h, w, 2).copy()


def read_flip(path: Path) -> bool:
    if not path.is_file():
        return False
    text = read_text(path, "tss", "flip file").strip()
    try:
        return bool(int(float(text.split()[0]))) if text else False
    except ValueError:
        raise DataError(f"tss: {path} should hold 0 or 1, not {text[:20]!r}") from None


def flow_queries(flow: np.ndarray, stride: int = 1, max_queries: Optional[int] = None):
    """Query pixels and their ground truth from a flow field, as the TSS kit scores them.

    Args:
        flow: (h, w, 2) flow on the query image's grid, pointing into the other image.
        stride: keep one pixel per stride x stride block (1: all).
        max_queries: keep this many, evenly spaced (None: all).
    Returns:
        src (K, 2), trg (K, 2) float (x, y) pixel-index coordinates: every pixel with known flow
        (row-major order) and where its flow lands, inside the other image or not.
    """
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    if stride > 1:
        keep = (ys % stride == stride // 2) & (xs % stride == stride // 2)
        ys, xs = ys[keep], xs[keep]
    uv = flow[ys, xs].astype(np.float64)
    known = np.isfinite(uv).all(1) & (np.abs(uv) < UNKNOWN_FLOW).all(1)
    src = np.stack([xs, ys], 1).astype(np.float64)[known]
    trg = src + uv[known]
    if max_queries is not None and len(src) > max_queries:
        pick = np.linspace(0, len(src) - 1, max_queries).round().astype(np.int64)
        src, trg = src[pick], trg[pick]
    return src, trg


@register("data", "tss", TSSConfig)
class TSSDataset(PairDataset):
    protocols = {"tss_kit": protocol(
        threshold_by="image", average="per_image", headline="category_mean",
        reference="t-taniai/TSS_CVPR2016_EvaluationKit EvalToolMATLAB/compute_scores.m, "
                  "RunEvaluation.m")}
    default_protocol = "tss_kit"
    keypoints_in_records = False  # the keypoints are the flow's grid, made when a pair is loaded

    def __init__(self, cfg: Optional[TSSConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(TSSConfig, cfg, **overrides)
        split = split or cfg.split
        super().__init__(cfg, divisor)
        if split != "test":
            raise DataError(f"tss has only a test split, not {split!r}")
        self.flip_gt = cfg.flip_gt
        base = resolve_root(cfg.root, "tss", "tss")
        if (base / "TSS_CVPR2016").is_dir():
            base = base / "TSS_CVPR2016"
        self.image_root = base
        self.query_stride = cfg.query_stride
        self.max_queries = cfg.max_queries
        records: List[PairRecord] = []
        for group in GROUPS:
            folder = base / group
            if not folder.is_dir():
                continue
            for pair_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                records.extend(self._records(group, pair_dir))
        if not records:
            raise FileNotFoundError(f"tss: no pair folders under {base}/{{{','.join(GROUPS)}}}")
        self.finalize(records, categories=[g for g in GROUPS if any(r.category == g for r in records)])

    def _records(self, group: str, pair_dir: Path) -> List[PairRecord]:
        flip = self.flip_gt == "other" and read_flip(pair_dir / "flip_gt.txt")
        rel = pair_dir.relative_to(self.image_root).as_posix()
        out = []
        for a, b in ((1, 2), (2, 1)):
            src = f"{rel}/image{a}.png"
            trg = f"{rel}/image{b}.png" + (FLIP_SUFFIX if flip else "")
            out.append(PairRecord(
                src=src, trg=trg, src_kps=np.zeros((0, 2)), trg_kps=np.zeros((0, 2)),
                valid=np.zeros(0, dtype=bool), category=group, pair_id=f"{rel}:{a}->{b}",
                meta={"dir": pair_dir, "a": a, "b": b, "flip": flip},
            ))
        return out

    def load_pair(self, index: int) -> Dict[str, Any]:
        rec = self.records[index]
        d, a = rec.meta["dir"], rec.meta["a"]
        src_img, trg_img = self.read_image(rec.src), self.read_image(rec.trg)
        flow = read_flo(d / f"flow{a}.flo")
        if flow.shape[:2] != tuple(src_img.shape[-2:]):
            raise DataError(f"tss: {d}: flow{a}.flo {flow.shape[:2]} does not match "
                            f"image{a}.png {tuple(src_img.shape[-2:])}")
        src, trg = flow_queries(flow, self.query_stride, self.max_queries)
        k = len(src)
        return {
            "category": rec.category,
            "src_img": src_img,
            "trg_img": trg_img,
            "src_kps": torch.from_numpy(src).float().reshape(k, 2),
            "trg_kps": torch.from_numpy(trg).float().reshape(k, 2),
            "kps_valid": torch.ones(k, dtype=torch.bool),
            "kps_ids": None,
            "src_bbox": torch.full((4,), float("nan")),
            "trg_bbox": torch.full((4,), float("nan")),
            "sym_pairs": torch.zeros((0, 2), dtype=torch.long),
        }
