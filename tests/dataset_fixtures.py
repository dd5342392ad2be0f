"""Helpers that write tiny datasets in their released formats (used by tests/test_datasets_*.py).

Images are noise with a distinct colour square painted at each keypoint, so a test can check that
a loaded keypoint still sits on its colour (coordinates, EXIF orientation and resizing right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from semcorr.data.resize import to_original

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0)]


def painted(h: int, w: int, kps: Sequence[Optional[Sequence[float]]], seed: int = 0,
            half: int = 3) -> np.ndarray:
    """(h, w, 3) uint8 dark noise with a (2*half+1)-px square of PALETTE[k] at keypoint k."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    for k, p in enumerate(kps):
        if p is None or p[0] < 0 or p[1] < 0:
            continue
        x, y = int(round(p[0])), int(round(p[1]))
        image[max(0, y - half): y + half + 1, max(0, x - half): x + half + 1] = PALETTE[k % len(PALETTE)]
    return image


def save(path: Path, array: np.ndarray, mode: Optional[str] = None, exif_orientation: int = 1) -> None:
    """Write an image; ``mode`` L / RGBA converts, ``exif_orientation`` 6 stores it rotated with
    the EXIF tag that rotates it back (the displayed image is ``array``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    kwargs = {}
    if exif_orientation == 6:  # displayed = stored rotated 90 degrees clockwise
        im = im.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        kwargs["exif"] = exif.tobytes()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        kwargs["quality"] = 95
    im.save(path, **kwargs)


def colour_at(image: torch.Tensor, kps: torch.Tensor) -> torch.Tensor:
    """(K, 3) RGB of a (3, h, w) [0, 1] image at (K, 2) pixel-index keypoints (nearest pixel)."""
    h, w = image.shape[-2:]
    x = kps[:, 0].round().long().clamp(0, w - 1)
    y = kps[:, 1].round().long().clamp(0, h - 1)
    return image[:, y, x].T


def assert_on_colours(image: torch.Tensor, kps: torch.Tensor, valid: torch.Tensor,
                      order: Optional[List[int]] = None, tol: float = 0.2) -> None:
    """Every valid keypoint k lies on the colour PALETTE[order[k]] (default k)."""
    got = colour_at(image, kps)
    for k in torch.nonzero(valid).flatten().tolist():
        want = torch.tensor(PALETTE[(order[k] if order else k) % len(PALETTE)], dtype=torch.float32) / 255
        assert torch.allclose(got[k], want, atol=tol), (k, got[k].tolist(), want.tolist())


def sample_on_colours(sample: Dict, order: Optional[List[int]] = None) -> None:
    """Check a schema sample in both frames: original-frame keypoints on the original colours is
    checked by the caller; here the network-frame image and keypoints agree."""
    valid = sample["kps_valid"]
    for side in ("src", "trg"):
        net = sample[f"{side}_kps"]
        back = to_original(net, sample[f"{side}_frame"])
        assert torch.allclose(back, sample[f"{side}_kps_orig"], atol=1e-3)
        assert_on_colours(sample[f"{side}_img"], net, valid, order, tol=0.35)
