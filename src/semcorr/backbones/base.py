"""The backbone contract: images in, a patch-feature map and its grid geometry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from semcorr.checks import number
from semcorr.registry import GroupConfig


@dataclass
class BackboneConfig(GroupConfig):
    """Fields every backbone config has (``backbone.*``)."""

    # bilinear upsampling of the feature map by this integer factor before head and matcher
    # (semcorr.backbones.upsample); cells become stride / upsample px; caches hold the native map
    upsample: int = 1

    def __post_init__(self) -> None:
        number(self, "upsample", ge=1, integer=True)


def cell_centers(grid: tuple[int, int], stride: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, 2) (x, y) centres of the cells of an (h, w) grid with ``stride``-px cells, row-major:
    ``c * stride + (stride - 1) / 2`` along each axis (pixel-index convention)."""
    h, w = grid
    ys = torch.arange(h, device=device, dtype=dtype) * stride + (stride - 1) / 2
    xs = torch.arange(w, device=device, dtype=dtype) * stride + (stride - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def grid_rows_cols(grid: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h*w,) row and (h*w,) column index of every cell of an (h, w) grid, row-major."""
    h, w = grid
    return (torch.arange(h, device=device).repeat_interleave(w),
            torch.arange(w, device=device).repeat(h))


@dataclass
class FeatureMap:
    """Patch features on a regular grid of the network-frame image.

    Attributes:
        features: (B, D, h, w) features; cell (r, c) covers pixels
            [r*stride, (r+1)*stride) x [c*stride, (c+1)*stride).
        stride: pixels per cell: the patch size for a ViT, an integer; after upsampling by k
            (``backbone.upsample``) stride / k, a float whose binary representation is exact
            (:func:`semcorr.backbones.upsample.upsampled_stride`), so the cell arithmetic below
            is as exact as with an integer.
        valid: optional (B, h, w) bool, False for cells that lie in padding.

    Pixel coordinates follow the pixel-index convention: the centre of pixel (x, y) is at the
    integers (x, y), so the centre of cell c along one axis is ``c * stride + (stride - 1) / 2``.
    """

    features: torch.Tensor
    stride: float
    valid: Optional[torch.Tensor] = None

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.features.shape[-2]), int(self.features.shape[-1])

    def flat(self) -> torch.Tensor:
        """(B, h*w, D) features, row-major over the grid."""
        return self.features.flatten(2).transpose(1, 2)

    def with_features(self, features: torch.Tensor) -> "FeatureMap":
        return FeatureMap(features=features, stride=self.stride, valid=self.valid)


def valid_cells(content_hw: torch.Tensor, grid: tuple[int, int], stride: float,
                content_yx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, h, w) mask of cells whose centre lies inside the image content.

    Args:
        content_hw: (B, 2) height and width, in network-frame pixels, of the non-padded content.
        content_yx: (B, 2) row and column of the content's top-left pixel (None: (0, 0), the
            content at the top-left and padding at the bottom and right).
    """
    h, w = grid
    dev = content_hw.device
    ys = torch.arange(h, device=dev) * stride + (stride - 1) / 2
    xs = torch.arange(w, device=dev) * stride + (stride - 1) / 2
    top = torch.zeros_like(content_hw) if content_yx is None else content_yx.to(dev)
    y0, x0 = top[:, 0:1].to(ys.dtype), top[:, 1:2].to(xs.dtype)
    in_y = (ys[None, :] >= y0) & (ys[None, :] < y0 + content_hw[:, 0:1].to(ys.dtype))
    in_x = (xs[None, :] >= x0) & (xs[None, :] < x0 + content_hw[:, 1:2].to(xs.dtype))
    return in_y[:, :, None] & in_x[:, None, :]


class Backbone(nn.Module):
    """Base class. Subclasses set ``stride`` and ``dim`` and implement ``forward``.

    ``forward(images)`` takes (B, 3, H, W) float RGB in [0, 1] (each backbone applies its own
    normalisation) with H and W multiples of ``stride``, and returns a :class:`FeatureMap` with
    h = H // stride, w = W // stride (the native map: ``upsample`` is applied by the pipeline
    after the feature caches, :meth:`semcorr.net.CorrespondenceNet.features`).

    A backbone whose features are a function of the image's *name* rather than its pixels (files
    written beforehand: :class:`~semcorr.backbones.precomputed.PrecomputedFeatures`) sets
    ``needs_ids = True`` and takes ``forward(images, ids)``: ``ids`` (B,) are the images' ids
    (``src_id`` / ``trg_id`` of the batch); the feature caches then key on the id, not the pixels.

    Attributes:
        stride: pixels per cell of the native map; the data pipeline makes image sides multiples
            of it.
        dim: feature channels D.
        upsample: the integer factor the pipeline upsamples the map by (``backbone.upsample``).
        needs_ids: ``forward`` needs the images' ids.
    """

    stride: int = 1
    dim: int = 0
    upsample: int = 1
    needs_ids: bool = False

    def check_network_frame(self, image_size: int, resize: str) -> None:
        """Raise :class:`~semcorr.errors.ConfigError` when the run's network frame
        (``data.image_size``, ``data.resize``) cannot be used; any frame works by default."""

    def check_images(self, image_ids: Sequence[str]) -> None:
        """Raise :class:`~semcorr.errors.DataError` when the features of some of a dataset's images
        cannot be had (before a run starts); nothing to check by default."""

    def cache_key(self) -> str:
        """A string that identifies the features this backbone computes (for feature caches)."""
        return type(self).__name__

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"{type(self).__name__}: image size {h}x{w} is not a multiple of the patch size "
                f"{self.stride}; the data pipeline rounds sizes to multiples of the patch size "
                f"(data.image_size), so set it to a multiple of {self.stride}"
            )
