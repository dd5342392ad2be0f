"""Resizing images into the network frame and mapping keypoints between frames.

Coordinates use the pixel-index convention (pixel centres at integers). A frame is the vector
(sx, sy, ox, oy) with ``net = (orig + 0.5) * s - 0.5 + o``; for the first three modes this is
exact for the ``align_corners=False`` resampling used here, with the content at the top-left
(``o = 0``; padding at the bottom and right; augmentations may set ``o``).

Resize modes (``size`` is the target longer side, or side of the square; every canvas side is
rounded to a multiple of ``divisor``, the backbone's patch size):

- ``square``: both sides to ``size`` (aspect ratio changes).
- ``longer_side_pad``: aspect kept, longer side to ``size``, then zero-padded to ``size x size``
  at the bottom and right (antialiased bilinear, each side rounded to ``divisor``).
- ``longer_side``: aspect kept, longer side to ``size``, no padding (images differ in shape).
- ``centre_canvas``: the canvas of GeoAware-SC and SD-DINO (``resize`` in their
  ``utils/utils_correspondence.py``; keypoints as their ``preprocess_kps_pad``,
  ``utils/utils_dataset.py``): aspect kept, the longer side to ``size``, the shorter to
  ``round(size * short / long)`` (half to even, as ``np.around``), PIL LANCZOS on the 8-bit
  image, centred on a zero ``size x size`` canvas at offset ``(size - new) // 2``. Keypoints map
  as theirs do, ``u = x * s + offset`` with ``s = size / max(h, w)`` on both axes, where ``u`` is
  their continuous canvas coordinate (cell c covers ``[14 c, 14 c + 14)``, centre ``14 c + 7``),
  i.e. ``u - 0.5`` in the pixel-index convention: the frame is ``(s, s, ox - s / 2, oy - s / 2)``.
  Read in our convention, this takes an annotated ``x`` as the left edge of pixel ``x`` rather
  than its centre (half an original pixel, ``s / 2`` network pixels, up and left of our other
  modes); it is what makes every keypoint's cell and every prediction in original pixels equal
  to theirs. The content box (``content_yx``, ``content_hw``) says where the image lies.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("square", "longer_side_pad", "longer_side", "centre_canvas")
CENTRED = ("centre_canvas",)  # modes whose content sits in the middle of the canvas


class Resized(NamedTuple):
    """An image in the network frame (:func:`resize_image`).

    Attributes:
        image: (3, H, W) float RGB in [0, 1], the canvas.
        frame: (4,) float (sx, sy, ox, oy): keypoints ``net = (orig + 0.5) * s - 0.5 + o``.
        content_hw: (2,) long height and width of the image content on the canvas.
        content_yx: (2,) long row and column of the content's top-left pixel (0 unless centred).
    """

    image: torch.Tensor
    frame: torch.Tensor
    content_hw: torch.Tensor
    content_yx: torch.Tensor


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
    if mode == "centre_canvas":  # GeoAware-SC / SD-DINO: only the canvas is a multiple of divisor
        if h <= w:
            return round(size * h / w), size, size, size
        return size, round(size * w / h), size, size
    scale = size / max(h, w)
    ch = min(size, _round_to(h * scale, divisor))
    cw = min(size, _round_to(w * scale, divisor))
    if mode == "longer_side_pad":
        return ch, cw, size, size
    return ch, cw, ch, cw


def content_offset(content_hw: Tuple[int, int], canvas_hw: Tuple[int, int], mode: str) -> Tuple[int, int]:
    """(top, left) of the content on the canvas: ``((H - h) // 2, (W - w) // 2)`` for a centred
    mode (GeoAware-SC's floor offset), else (0, 0)."""
    if mode in CENTRED:
        return (canvas_hw[0] - content_hw[0]) // 2, (canvas_hw[1] - content_hw[1]) // 2
    return 0, 0


def lanczos(image: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float image in [0, 1] resized to ``hw`` with PIL LANCZOS on its 8-bit values (as
    GeoAware-SC / SD-DINO resize the decoded JPEG; an image read from a file is 8-bit already, so
    the round trip through uint8 is exact)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    out = Image.fromarray(array).resize((int(hw[1]), int(hw[0])), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float().div_(255.0)


def resize_image(image: torch.Tensor, size: int, mode: str, divisor: int = 1) -> Resized:
    """Resize a (3, h, w) float image into the network frame (a :class:`Resized`)."""
    h, w = image.shape[-2:]
    ch, cw, H, W = target_size(h, w, size, mode, divisor)
    top, left = content_offset((ch, cw), (H, W), mode)
    if mode == "centre_canvas":
        content = lanczos(image, (ch, cw))
        s = H / max(h, w)  # preprocess_kps_pad: one scale for both axes
        frame = torch.tensor([s, s, left - s / 2, top - s / 2], dtype=torch.float32)
    else:
        content = F.interpolate(image[None], size=(ch, cw), mode="bilinear", align_corners=False,
                                antialias=True)[0].clamp_(0, 1)
        frame = torch.tensor([cw / w, ch / h, 0.0, 0.0], dtype=torch.float32)
    out = content
    if (H, W) != (ch, cw):
        out = F.pad(content, (left, W - cw - left, top, H - ch - top))
    return Resized(out, frame, torch.tensor([ch, cw], dtype=torch.long),
                   torch.tensor([top, left], dtype=torch.long))


def resize_mask(mask: torch.Tensor, size: int, mode: str, divisor: int = 1) -> torch.Tensor:
    """An (h, w) bool foreground mask in the network frame of an ``h x w`` image: (H, W) bool, the
    mask resized exactly as the image is (:func:`resize_image`) and thresholded at one half."""
    return resize_image(mask.float().expand(3, *mask.shape[-2:]), size, mode, divisor).image[0] >= 0.5


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
