"""Resizing images into the network frame and mapping keypoints between frames.

Coordinates use the pixel-index convention (pixel centres at integers). A frame is the vector
(sx, sy, ox, oy) with ``net = (orig + 0.5) * s - 0.5 + o``; this is exact for the
``align_corners=False`` resampling used here. Padding is added at the bottom and right, so
``o = 0`` for every resize mode; augmentations may set it.

Resize modes (``size`` is the target longer side, or side of the square; every output side is
rounded to a multiple of ``divisor``, the backbone's patch size):

- ``square``: both sides to ``size`` (aspect ratio changes).
- ``longer_side_pad``: aspect kept, longer side to ``size``, then zero-padded to ``size x size``.
- ``longer_side``: aspect kept, longer side to ``size``, no padding (images differ in shape).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

RESIZE_MODES = ("square", "longer_side_pad", "longer_side")


def _round_to(x: float, divisor: int) -> int:
    return max(divisor, int(round(x / divisor)) * divisor)


def target_size(h: int, w: int, size: int, mode: str, divisor: int = 1) -> Tuple[int, int, int, int]:
    """Network-frame geometry for an original ``h x w`` image.

    Returns:
        (content_h, content_w, canvas_h, canvas_w): the resized content and the full canvas.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")
    size = _round_to(size, divisor)
    if mode == "square":
        return size, size, size, size
    scale = size / max(h, w)
    ch = min(size, _round_to(h * scale, divisor))
    cw = min(size, _round_to(w * scale, divisor))
    if mode == "longer_side_pad":
        return ch, cw, size, size
    return ch, cw, ch, cw


def resize_image(image: torch.Tensor, size: int, mode: str, divisor: int = 1):
    """Resize a (3, h, w) float image into the network frame.

    Returns:
        image (3, canvas_h, canvas_w), frame (4,) float (sx, sy, 0, 0), content_hw (2,) long.
    """
    h, w = image.shape[-2:]
    ch, cw, H, W = target_size(h, w, size, mode, divisor)
    out = F.interpolate(image[None], size=(ch, cw), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    if (H, W) != (ch, cw):
        out = F.pad(out, (0, W - cw, 0, H - ch))
    frame = torch.tensor([cw / w, ch / h, 0.0, 0.0], dtype=torch.float32)
    return out.clamp_(0, 1), frame, torch.tensor([ch, cw], dtype=torch.long)


def to_network(points: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """(..., 2) original-frame points -> network frame. ``frame`` is (4,) or broadcastable (..., 4)."""
    scale, offset = frame[..., None, :2], frame[..., None, 2:]
    if frame.ndim == 1:
        scale, offset = frame[:2], frame[2:]
    return (points + 0.5) * scale - 0.5 + offset


def to_original(points: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_network`. For batched points (B, K, 2) pass frames (B, 4)."""
    scale, offset = frame[..., None, :2], frame[..., None, 2:]
    if frame.ndim == 1:
        scale, offset = frame[:2], frame[2:]
    return (points - offset + 0.5) / scale - 0.5


def check_size(h: int, w: int, divisor: int) -> None:
    if h < divisor or w < divisor:
        raise ValueError(f"image of {h}x{w} px is smaller than one {divisor}-px patch")
    if math.isnan(h) or math.isnan(w):
        raise ValueError("image size is NaN")
