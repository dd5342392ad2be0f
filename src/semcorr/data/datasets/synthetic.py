"""Synthetic pairs: photographs bundled with scikit-image, warped by random affine + thin-plate-
spline maps, with exact ground-truth keypoints. Needs no download: the embedded default.

A target pixel t is filled from the source at ``M(t) = A t + b + d(t)``, where ``d`` is a thin-
plate spline through random displacements of a 3 x 3 grid of control points. Keypoints are sampled
in the target and mapped through ``M`` to the source, so ground truth is exact by construction.
Each (split, index) pair is generated from its own seed, so the data are reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from semcorr.checks import number, numbers
from semcorr.registry import configured, register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.metrics.protocol import protocol

SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_029}
DEFAULT_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@dataclass
class SyntheticConfig(DataConfig):
    images: List[str] = field(default_factory=lambda: list(DEFAULT_IMAGES))
    n_pairs: Dict[str, int] = field(default_factory=lambda: {"train": 512, "val": 48, "test": 48})
    n_keypoints: int = 16
    rotation_deg: float = 15.0
    scale_range: List[float] = field(default_factory=lambda: [0.8, 1.2])
    shear: float = 0.1
    translation: float = 0.08  # fraction of the image size
    tps_strength: float = 0.05  # std of control-point displacement, fraction of the image size
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.images:
            raise ValueError("images must name at least one scikit-image picture, got []")
        for split, count in self.n_pairs.items():
            if not (isinstance(count, int) and count >= 0):
                raise ValueError(f"n_pairs.{split} must be an integer >= 0, got {count!r}")
        number(self, "n_keypoints", ge=1, integer=True)
        numbers(self, "scale_range", gt=0)
        if len(self.scale_range) != 2 or self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")
        for name in ("rotation_deg", "shear", "translation", "tps_strength"):
            number(self, name, ge=0)


def _skimage_image(name: str, max_side: int = 320) -> np.ndarray:
    """A bundled scikit-image photograph as (h, w, 3) uint8, longer side at most ``max_side``."""
    import cv2
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"synthetic: scikit-image has no bundled image {name!r}")
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3])
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * r2 * np.log(r2)
    return np.nan_to_num(out)


class ThinPlateSpline:
    """2-D thin-plate spline through control points ``ctrl`` (n, 2) with values ``vals`` (n, 2)."""

    def __init__(self, ctrl: np.ndarray, vals: np.ndarray) -> None:
        n = len(ctrl)
        k = _tps_kernel(((ctrl[:, None] - ctrl[None]) ** 2).sum(-1))
        p = np.concatenate([np.ones((n, 1)), ctrl], axis=1)
        a = np.zeros((n + 3, n + 3))
        a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
        b = np.zeros((n + 3, 2))
        b[:n] = vals
        self.ctrl = ctrl
        self.coef = np.linalg.solve(a, b)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        k = _tps_kernel(((pts[:, None] - self.ctrl[None]) ** 2).sum(-1))
        p = np.concatenate([np.ones((len(pts), 1)), pts], axis=1)
        n = len(self.ctrl)
        return k @ self.coef[:n] + p @ self.coef[n:]


@register("data", "synthetic", SyntheticConfig)
class SyntheticPairs(PairDataset):
    protocols = {"image": protocol(threshold_by="image", average="per_image")}
    default_protocol = "image"
    keypoints_in_records = False  # each pair's keypoints are made by its warp when it is loaded

    def __init__(self, cfg: Optional[SyntheticConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(SyntheticConfig, cfg, **overrides)
        split = split or cfg.split
        super().__init__(cfg, divisor)
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"synthetic: unknown split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
        if split not in cfg.n_pairs:
            raise ValueError(f"synthetic: data.n_pairs has no count for split {split!r} "
                             f"(it has {', '.join(cfg.n_pairs) or 'none'})")
        count = int(cfg.n_pairs[split])
        self.split = split
        self.params = dict(rotation_deg=cfg.rotation_deg, scale_range=tuple(cfg.scale_range),
                           shear=cfg.shear, translation=cfg.translation, tps_strength=cfg.tps_strength)
        self.n_keypoints = cfg.n_keypoints
        self.seed = cfg.seed
        self._sources = {name: _skimage_image(name) for name in cfg.images}
        names = list(cfg.images)
        records = []
        for index in range(count):
            name = names[index % len(names)]
            records.append(PairRecord(
                src=f"{name}.png", trg=f"{name}_warp_{split}_{index}.png",
                src_kps=np.zeros((0, 2)), trg_kps=np.zeros((0, 2)), valid=np.zeros(0, bool),
                category=name, pair_id=f"synthetic/{split}/{index}", meta={"index": index},
            ))
        self.finalize(records, categories=sorted(set(names)))

    def _rng(self, index: int) -> np.random.Generator:
        key = zlib.crc32(f"{self.seed}/{self.split}/{index}".encode())
        return np.random.default_rng(key)

    def warp(self, index: int, h: int, w: int):
        """The map M (target pixel -> source pixel) of pair ``index`` for an ``h x w`` image."""
        rng = self._rng(index)
        p = self.params
        theta = np.deg2rad(rng.uniform(-p["rotation_deg"], p["rotation_deg"]))
        scale = rng.uniform(*p["scale_range"])
        shear = rng.uniform(-p["shear"], p["shear"])
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        lin = rot @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        shift = rng.uniform(-p["translation"], p["translation"], size=2) * np.array([w, h])
        gx, gy = np.meshgrid(np.linspace(0, w - 1, 3), np.linspace(0, h - 1, 3))
        ctrl = np.stack([gx.ravel(), gy.ravel()], axis=1)
        disp = rng.normal(0, p["tps_strength"], size=ctrl.shape) * np.array([w, h])
        tps = ThinPlateSpline(ctrl, disp)

        def mapping(pts: np.ndarray) -> np.ndarray:
            return (pts - centre) @ lin.T + centre + shift + tps(pts)

        return mapping, rng

    def read_image(self, image_id: str) -> torch.Tensor:
        """A source image (``<name>.png``) or a generated target (``<name>_warp_<split>_<i>.png``)."""
        stem = image_id.rsplit(".", 1)[0]
        if stem in self._sources:
            return torch.from_numpy(self._sources[stem]).permute(2, 0, 1).float().div(255.0)
        for index, rec in enumerate(self.records):
            if rec.trg == image_id:
                return self.load_pair(index)["trg_img"]
        raise FileNotFoundError(f"synthetic: no image {image_id!r} in split {self.split!r}")

    def load_pair(self, index: int) -> Dict[str, Any]:
        rec = self.records[index]
        source = self._sources[rec.category]
        h, w = source.shape[:2]
        mapping, rng = self.warp(int(rec.meta["index"]), h, w)
        src = torch.from_numpy(source).permute(2, 0, 1).float().div(255.0)
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grid_pts = mapping(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64))
        grid = torch.from_numpy(grid_pts).float().reshape(h, w, 2)
        grid = (grid + 0.5) / torch.tensor([w, h]) * 2 - 1
        trg = F.grid_sample(src[None], grid[None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0].clamp(0, 1)
        # keypoints: sampled in the target, kept where their source lies well inside the image
        cand = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], size=(8 * self.n_keypoints, 2))
        src_pts = mapping(cand)
        margin = 0.05
        inside = ((src_pts[:, 0] > margin * w) & (src_pts[:, 0] < (1 - margin) * w)
                  & (src_pts[:, 1] > margin * h) & (src_pts[:, 1] < (1 - margin) * h))
        keep = np.flatnonzero(inside)[: self.n_keypoints]
        k = len(keep)
        return {
            "src_img": src,
            "trg_img": trg,
            "src_kps": torch.from_numpy(src_pts[keep]).float().reshape(k, 2),
            "trg_kps": torch.from_numpy(cand[keep]).float().reshape(k, 2),
            "kps_valid": torch.ones(k, dtype=torch.bool),
            "kps_ids": torch.arange(k),
            "src_bbox": torch.full((4,), float("nan")),
            "trg_bbox": torch.full((4,), float("nan")),
            "sym_pairs": torch.zeros((0, 2), dtype=torch.long),
        }
