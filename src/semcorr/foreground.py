"""Foreground source points for dense matching (``semcorr-match --dense``).

One source point per backbone cell (the cell centres, mapped to the original frame) that lies in
the *foreground*, defined by a mask:

- a mask image of the source's size (:func:`semcorr.data.base.read_mask`: pixels above half the
  file's maximum are foreground);
- ``"all"``: every cell of the image;
- none (default): a simple saliency rule, *border contrast*: the colours of the image's outer 5 %
  frame (summarised by 4 k-means colours) are taken as background; a pixel is foreground when its
  colour distance to the nearest of them (box-smoothed over one cell) exceeds Otsu's threshold.
  This works for an object that stands out from a background that reaches the border (product
  shots, many PF-WILLOW images); it is not an object detector: objects coloured like the border
  are lost and clutter is kept, so pass a mask when it matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from semcorr.backbones.base import cell_centers, valid_cells
from semcorr.data.base import read_mask
from semcorr.data.resize import resize_image, to_original
from semcorr.errors import DataError, InputError


def _mask_of_size(path: str | Path, hw: Sequence[int]) -> np.ndarray:
    """:func:`read_mask` of a file that must be ``hw`` (h, w) large."""
    try:
        mask = read_mask(path)
    except DataError as err:
        raise InputError(str(err)) from None
    if tuple(mask.shape) != (int(hw[0]), int(hw[1])):
        raise InputError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px but the source image "
                         f"is {int(hw[1])}x{int(hw[0])} px")
    return mask


def border_contrast_mask(image: torch.Tensor, cell: int = 8, border: float = 0.05,
                         n_colours: int = 4) -> np.ndarray:
    """(h, w) bool foreground by border contrast (see the module docstring).

    The border pixels are summarised by ``n_colours`` k-means colours (so a border that is half
    sky, half road counts both as background); a pixel's saliency is its colour distance to the
    nearest of them, box-smoothed over ``cell`` pixels and thresholded with Otsu's method.
    """
    from scipy.cluster.vq import kmeans2
    from scipy.ndimage import uniform_filter
    from skimage.filters import threshold_otsu

    rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.float64)
    h, w = rgb.shape[:2]
    bh, bw = max(1, int(round(border * h))), max(1, int(round(border * w)))
    frame = np.concatenate([rgb[:bh].reshape(-1, 3), rgb[-bh:].reshape(-1, 3),
                            rgb[:, :bw].reshape(-1, 3), rgb[:, -bw:].reshape(-1, 3)])
    k = max(1, min(n_colours, len(np.unique(frame.round(2), axis=0))))
    centres, _ = kmeans2(frame, k, seed=0, minit="++")
    dist = np.linalg.norm(rgb[:, :, None, :] - centres[None, None], axis=-1).min(-1)
    dist = uniform_filter(dist, size=max(1, cell))
    if float(dist.max() - dist.min()) < 1e-6:
        return np.zeros((h, w), dtype=bool)
    return dist > threshold_otsu(dist)


def dense_points(src_img: torch.Tensor, stride: int, image_size: int, resize: str,
                 mask: Optional[str] = None, factor: int = 1,
                 original_hw: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(K, 2) original-frame source points: the centres of the backbone cells that lie on the
    image content and in the foreground (``mask``: a file, ``"all"``, or None for border
    contrast). Raises :class:`InputError` when no cell is foreground.

    ``factor``, ``original_hw``: ``src_img`` was decoded at 1/factor of an image of
    ``original_hw`` (:func:`semcorr.data.base.load_image_reduced`); points are returned, and a
    mask file is read, in the original frame."""
    h, w = src_img.shape[-2:]
    oh, ow = (int(v) for v in (original_hw or (h, w)))
    net, frame, content, top_left = resize_image(src_img, image_size, resize, stride)
    grid = (net.shape[-2] // stride, net.shape[-1] // stride)
    centres = cell_centers(grid, stride)
    inside = valid_cells(content[None], grid, stride, top_left[None]).reshape(-1)
    points = to_original(centres[inside], frame)
    points[:, 0].clamp_(0, w - 1)
    points[:, 1].clamp_(0, h - 1)
    original = (points + 0.5) * factor - 0.5
    original[:, 0].clamp_(0, ow - 1)
    original[:, 1].clamp_(0, oh - 1)
    if mask == "all":
        return original
    if mask:
        fg, where = _mask_of_size(mask, (oh, ow)), original
    else:
        fg = border_contrast_mask(src_img, cell=max(1, int(round(stride / float(frame[0])))))
        where = points
    keep = fg[where[:, 1].round().long().numpy(), where[:, 0].round().long().numpy()]
    if not keep.any():
        raise InputError("no foreground cell found"
                         + (f" in mask {mask}" if mask else " by the border-contrast rule")
                         + "; pass --mask FILE or --mask all")
    return original[torch.from_numpy(keep)]
