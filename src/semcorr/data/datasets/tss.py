"""TSS (Taniai et al., "Joint Recovery of Dense Correspondence and Cosegmentation", CVPR 2016).

Layout: ``root/<group>/<pair>/`` (or ``root/TSS_CVPR2016/<group>/<pair>/``), group in FG3DCar,
JODS, PASCAL; each pair folder holds ``image1.png``, ``image2.png``, ``flow1.flo``,
``flow2.flo`` (Middlebury), ``mask1.png``, ``mask2.png`` (foreground) and ``flip_gt.txt``.

Flow convention (the benchmark's evaluation code): ``flowN.flo`` lives on the pixel grid of
``imageN``; the pixel p of image N corresponds to ``p + flowN[p]`` in the *other* image, and that
other image is mirrored horizontally first when ``flip_gt.txt`` holds 1 (the benchmark gives
methods the mirrored image in that case). Values above 1e9 in magnitude (or NaN) mark unknown flow.

Each pair is served as two samples, one per direction: source = image N (as stored), target =
the other image (mirrored when flipped; its id then ends in ``#hflip``). The queries (keypoints)
are the foreground pixels of maskN with known flow whose target lies inside the target image; the
ground truth is their flow target. So every foreground pixel is evaluated, through the same dense,
vectorised transfer as sparse keypoints. ``query_stride`` > 1 keeps one pixel per stride x stride
block and ``max_queries`` caps the count by even subsampling: both only when asked.

Protocol: threshold alpha * max(h, w) of the target image (alpha = 0.05 in the literature),
PCK per image (per sample), per group (the categories) and overall (all samples of both
directions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from semcorr.checks import number
from semcorr.registry import register
from semcorr.data.base import FLIP_SUFFIX, DataConfig, PairDataset, PairRecord, read_mask
from semcorr.data.datasets._files import DataError, read_text, reading
from semcorr.paths import resolve_root

GROUPS = ["FG3DCar", "JODS", "PASCAL"]
FLO_MAGIC = 202021.25
UNKNOWN_FLOW = 1e9


@dataclass
class TSSConfig(DataConfig):
    query_stride: int = 1  # 1: every foreground pixel is a query
    max_queries: Optional[int] = None  # None: no cap

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "query_stride", ge=1, integer=True)
        number(self, "max_queries", ge=1, integer=True, none_ok=True)


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


def flow_queries(flow: np.ndarray, mask: np.ndarray, trg_hw: tuple[int, int], stride: int = 1,
                 max_queries: Optional[int] = None):
    """Query pixels and their ground truth from a flow field.

    Args:
        flow: (h, w, 2) flow on the source grid; mask: (h, w) source foreground.
        trg_hw: (h, w) of the target image the flow points into (as served, i.e. mirrored when
            the pair is flipped).
    Returns:
        src (K, 2), trg (K, 2) float (x, y) pixel-index coordinates, every foreground pixel with
        known flow whose target lies in the target image (row-major order).
    """
    if flow.shape[:2] != mask.shape:
        raise DataError(f"flow of {flow.shape[:2]} and mask of {mask.shape} differ in size")
    ys, xs = np.nonzero(mask)
    if stride > 1:
        keep = (ys % stride == stride // 2) & (xs % stride == stride // 2)
        ys, xs = ys[keep], xs[keep]
    uv = flow[ys, xs].astype(np.float64)
    known = np.isfinite(uv).all(1) & (np.abs(uv) < UNKNOWN_FLOW).all(1)
    src = np.stack([xs, ys], 1).astype(np.float64)
    trg = src + np.where(known[:, None], uv, 0.0)
    h, w = trg_hw
    inside = (trg[:, 0] >= -0.5) & (trg[:, 0] <= w - 0.5) & (trg[:, 1] >= -0.5) & (trg[:, 1] <= h - 0.5)
    ok = known & inside
    src, trg = src[ok], trg[ok]
    if max_queries is not None and len(src) > max_queries:
        pick = np.linspace(0, len(src) - 1, max_queries).round().astype(np.int64)
        src, trg = src[pick], trg[pick]
    return src, trg


@register("data", "tss", TSSConfig)
class TSSDataset(PairDataset):
    protocol = {"threshold_by": "image", "average": "per_image"}

    def __init__(self, root: Optional[str] = None, split: str = "test", query_stride: int = 1,
                 max_queries: Optional[int] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if split != "test":
            raise DataError(f"tss has only a test split, not {split!r}")
        if query_stride < 1:
            raise DataError(f"tss: query_stride must be >= 1, got {query_stride}")
        base = resolve_root(root, "tss", "tss")
        if (base / "TSS_CVPR2016").is_dir():
            base = base / "TSS_CVPR2016"
        self.image_root = base
        self.query_stride = query_stride
        self.max_queries = max_queries
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
        flip = read_flip(pair_dir / "flip_gt.txt")
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
        mask = read_mask(d / f"mask{a}.png")
        if flow.shape[:2] != tuple(src_img.shape[-2:]) or mask.shape != tuple(src_img.shape[-2:]):
            raise DataError(f"tss: {d}: flow{a}.flo {flow.shape[:2]} / mask{a}.png {mask.shape} do "
                             f"not match image{a}.png {tuple(src_img.shape[-2:])}")
        src, trg = flow_queries(flow, mask, tuple(trg_img.shape[-2:]), self.query_stride,
                                self.max_queries)
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
