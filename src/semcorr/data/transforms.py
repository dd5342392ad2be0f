"""Paired training augmentation: the keypoints move with the pixels, never at evaluation.

A :class:`PairTransform` is the ``PairDataset.transform`` hook: it takes the original-frame pair
dict of :meth:`semcorr.data.base.PairDataset.load_pair` (images (3, h, w) in [0, 1], keypoints
(K, 2) pixel-index (x, y), ``kps_valid`` (K,), boxes (4,) x1 y1 x2 y2 or NaN, ``kps_ids`` (K,),
``category``) and returns one of the same form. Per image, in this order:

1. **crop** (probability ``crop_p``): a random integer window that contains the object box (the
   annotated box, else the box of the valid keypoints, else the whole image) and keeps at least
   ``min_crop`` of each side; the resize to the network frame then zooms it. Keypoints that fall
   outside the crop get ``kps_valid = False``.
2. **horizontal flip** (probability ``hflip_p``): ``x -> w - 1 - x``. A flipped left eye looks
   like a right eye, so the keypoint list is re-labelled through the symmetric-keypoint table
   (``semcorr.data.symmetry``): new keypoint k of the flipped image is the mirror of its partner,
   so index k still names the same semantic part in source and target. A keypoint whose partner is
   not annotated becomes invalid. When the table does not know the pair's keypoints (no
   ``kps_ids``, or a dataset without a table) the two images are flipped *together* (one draw),
   which needs no re-labelling.
3. **photometric jitter** (probability ``photometric_p``, albumentations ``ColorJitter`` with
   brightness / contrast / saturation ``jitter`` and ``hue``, then ``ToGray`` with ``grey_p``).

Randomness comes from torch's generator (seeded per DataLoader worker by PyTorch); albumentations
is reseeded from it on every call, so workers do not repeat each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from semcorr.checks import number

PartnerFn = Callable[[Optional[str]], Optional[Dict[int, int]]]


@dataclass
class AugmentConfig:
    """``data.augment.*``: training-time augmentation (off by default; never used at evaluation)."""

    enabled: bool = False
    crop_p: float = 0.5
    min_crop: float = 0.6  # the crop keeps at least this fraction of each image side
    hflip_p: float = 0.5
    photometric_p: float = 0.8
    jitter: float = 0.3  # brightness, contrast and saturation factor range 1 +- jitter
    hue: float = 0.05
    grey_p: float = 0.05

    def __post_init__(self) -> None:
        for name in ("crop_p", "hflip_p", "photometric_p", "grey_p"):
            number(self, name, ge=0, le=1)
        number(self, "min_crop", gt=0, le=1)
        number(self, "jitter", ge=0, le=1)
        number(self, "hue", ge=0, le=0.5)


class PairTransform:
    """Random crop, symmetric-aware horizontal flip and photometric jitter of a pair dict.

    Args:
        crop_p, min_crop, hflip_p, photometric_p, jitter, hue, grey_p: see :class:`AugmentConfig`.
        partner: ``partner(category) -> {id: mirrored id}`` or None when unknown (see
            :meth:`semcorr.data.symmetry.Symmetry.partner`); None for no table at all.
        generator: optional ``torch.Generator`` (default: torch's global generator).
    """

    def __init__(self, crop_p: float = 0.5, min_crop: float = 0.6, hflip_p: float = 0.5,
                 photometric_p: float = 0.8, jitter: float = 0.3, hue: float = 0.05,
                 grey_p: float = 0.05, partner: Optional[PartnerFn] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        if not 0 < min_crop <= 1:
            raise ValueError(f"augment.min_crop must be in (0, 1], got {min_crop}")
        self.crop_p, self.min_crop, self.hflip_p = crop_p, min_crop, hflip_p
        self.photometric_p = photometric_p
        self.partner = partner
        self.generator = generator
        self._photometric = None
        if photometric_p > 0:
            import albumentations as A

            self._photometric = A.Compose([
                A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue, p=1.0),
                A.ToGray(p=grey_p),
            ])

    # ------------------------------------------------------------------ randomness
    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _uniform_int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi] (inclusive)."""
        return lo + int(self._rand() * (hi - lo + 1)) if hi > lo else lo

    # ------------------------------------------------------------------ the call
    def __call__(self, pair: Dict[str, Any]) -> Dict[str, Any]:
        pair = dict(pair)
        pair["kps_valid"] = pair["kps_valid"].clone()
        for side in ("src", "trg"):
            if self._rand() < self.crop_p:
                self._crop(pair, side)
        self._flip(pair)
        for side in ("src", "trg"):
            if self._photometric is not None and self._rand() < self.photometric_p:
                pair[f"{side}_img"] = self._jitter(pair[f"{side}_img"])
        return pair

    # ------------------------------------------------------------------ crop
    def object_box(self, pair: Dict[str, Any], side: str) -> torch.Tensor:
        """(4,) x1 y1 x2 y2 the crop must contain: the box, the valid keypoints, or the image."""
        h, w = pair[f"{side}_img"].shape[-2:]
        box = pair.get(f"{side}_bbox")
        if box is None or torch.isnan(box).any():
            kps, valid = pair[f"{side}_kps"], pair["kps_valid"]
            if valid.any():
                pts = kps[valid]
                box = torch.cat([pts.amin(0), pts.amax(0)])
            else:
                box = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])
        lo = torch.tensor([0.0, 0.0, 0.0, 0.0])
        hi = torch.tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0])
        return torch.minimum(torch.maximum(box.float(), lo), hi)

    def _crop(self, pair: Dict[str, Any], side: str) -> None:
        image = pair[f"{side}_img"]
        h, w = image.shape[-2:]
        x1, y1, x2, y2 = self.object_box(pair, side).tolist()
        x1, y1, x2, y2 = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
        cw = self._uniform_int(max(x2 - x1 + 1, math.ceil(self.min_crop * w)), w)
        ch = self._uniform_int(max(y2 - y1 + 1, math.ceil(self.min_crop * h)), h)
        x0 = self._uniform_int(max(0, x2 + 1 - cw), min(x1, w - cw))
        y0 = self._uniform_int(max(0, y2 + 1 - ch), min(y1, h - ch))
        pair[f"{side}_img"] = image[:, y0:y0 + ch, x0:x0 + cw]
        shift = torch.tensor([float(x0), float(y0)])
        kps = pair[f"{side}_kps"] - shift
        pair[f"{side}_kps"] = kps
        pair["kps_valid"] &= inside(kps, ch, cw)
        box = pair.get(f"{side}_bbox")
        if box is not None and not torch.isnan(box).any():
            box = box - shift.repeat(2)
            box = torch.stack([box[0].clamp(0, cw - 1), box[1].clamp(0, ch - 1),
                               box[2].clamp(0, cw - 1), box[3].clamp(0, ch - 1)])
            pair[f"{side}_bbox"] = box

    # ------------------------------------------------------------------ flip
    def permutation(self, pair: Dict[str, Any]) -> Optional[torch.Tensor]:
        """(K,) long: index of each keypoint's mirror partner in the list (-1: not annotated);
        None when the symmetry of this pair's keypoints is unknown."""
        ids = pair.get("kps_ids")
        if self.partner is None or ids is None or (ids < 0).any():
            return None
        table = self.partner(pair.get("category"))
        if table is None:
            return None
        where = {int(i): k for k, i in enumerate(ids.tolist())}
        return torch.tensor([where.get(table.get(int(i), int(i)), -1) for i in ids.tolist()],
                            dtype=torch.long)

    def _flip(self, pair: Dict[str, Any]) -> None:
        perm = self.permutation(pair)
        if perm is None:  # unknown symmetry: flip both images, labels unchanged
            if self._rand() < self.hflip_p:
                for side in ("src", "trg"):
                    flip_image(pair, side)
            return
        for side in ("src", "trg"):
            if self._rand() < self.hflip_p:
                flip_image(pair, side)
                ok = perm >= 0
                safe = perm.clamp_min(0)
                pair[f"{side}_kps"] = pair[f"{side}_kps"][safe]
                pair["kps_valid"] = pair["kps_valid"] & pair["kps_valid"][safe] & ok

    # ------------------------------------------------------------------ photometric
    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        assert self._photometric is not None
        self._photometric.set_random_seed(int(torch.randint(0, 2**31 - 1, (), generator=self.generator)))
        array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        out = self._photometric(image=np.ascontiguousarray(array))["image"]
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float().div_(255.0)


def inside(kps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(K,) bool: (x, y) keypoints inside an ``h x w`` image (pixel-index convention)."""
    x, y = kps[:, 0], kps[:, 1]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def mirror_points(kps: torch.Tensor, width: int) -> torch.Tensor:
    """(K, 2) (x, y) points of a ``width``-px-wide image, mirrored horizontally: x -> w - 1 - x."""
    out = kps.clone()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def flip_image(pair: Dict[str, Any], side: str) -> None:
    """Mirror one image of the pair dict in place, with its keypoints and box (no re-labelling)."""
    image = pair[f"{side}_img"]
    w = image.shape[-1]
    pair[f"{side}_img"] = image.flip(-1)
    pair[f"{side}_kps"] = mirror_points(pair[f"{side}_kps"], w)
    box = pair.get(f"{side}_bbox")
    if box is not None and not torch.isnan(box).any():
        pair[f"{side}_bbox"] = torch.stack([(w - 1) - box[2], box[1], (w - 1) - box[0], box[3]])


def build_train_transform(cfg: Any, symmetry: Any = None,
                          dataset: Optional[str] = None) -> Optional[PairTransform]:
    """The training transform a config asks for, or None when ``augment.enabled`` is false.

    Args:
        cfg: the ``data`` section (uses ``cfg.augment`` and ``cfg.kind``) or an augment section.
        symmetry: a :class:`semcorr.data.symmetry.Symmetry` (default: the packaged table).
        dataset: the table's dataset key (default: ``cfg.kind``, e.g. ``spair`` or ``ap10k``).
    """
    aug = getattr(cfg, "augment", cfg)
    if not aug.enabled:
        return None
    if symmetry is None:
        from semcorr.data.symmetry import load_symmetry

        symmetry = load_symmetry()
    name = dataset or getattr(cfg, "kind", None)

    def partner(category: Optional[str]) -> Optional[Dict[int, int]]:
        return symmetry.partner(name, category) if name else None

    return PairTransform(crop_p=aug.crop_p, min_crop=aug.min_crop, hflip_p=aug.hflip_p,
                         photometric_p=aug.photometric_p, jitter=aug.jitter, hue=aug.hue,
                         grey_p=aug.grey_p, partner=partner)
