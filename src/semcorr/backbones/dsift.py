"""Dense SIFT: a weight-free reference backbone (OpenCV SIFT descriptors on a regular grid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch

from semcorr.backbones.base import Backbone, BackboneConfig, FeatureMap
from semcorr.backbones.upsample import upsampled_stride
from semcorr.checks import number
from semcorr.registry import configured, register


@dataclass
class DSiftConfig(BackboneConfig):
    stride: int = 8  # grid spacing in pixels (one cell per descriptor)
    keypoint_size: float = 16.0  # SIFT support size in pixels
    root_sift: bool = False  # Hellinger (RootSIFT) mapping before L2 normalisation

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "stride", ge=1, integer=True)
        number(self, "keypoint_size", gt=0)


@register("backbone", "dsift", DSiftConfig)
class DenseSift(Backbone):
    """One 128-D SIFT descriptor per ``stride`` x ``stride`` cell, computed at the cell centre on
    the grey-scale image with support ``keypoint_size`` and upright orientation, L2-normalised.

    Runs on the CPU (OpenCV); output is moved to the input's device. Not differentiable.
    """

    dim = 128

    def __init__(self, cfg: Optional[DSiftConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(DSiftConfig, cfg, **overrides)
        self.stride = int(cfg.stride)
        upsampled_stride(self.stride, cfg.upsample)  # a factor whose cells are exact
        self.upsample = int(cfg.upsample)
        self.keypoint_size = float(cfg.keypoint_size)
        self.root_sift = cfg.root_sift
        self._sift = None

    def cache_key(self) -> str:
        return f"dsift-s{self.stride}-k{self.keypoint_size:g}-r{int(self.root_sift)}"

    def _descriptor(self, gray: np.ndarray) -> np.ndarray:
        if self._sift is None:
            self._sift = cv2.SIFT_create()
        h, w = gray.shape
        gh, gw = h // self.stride, w // self.stride
        c = (self.stride - 1) / 2
        kps = [cv2.KeyPoint(float(x * self.stride + c), float(y * self.stride + c), self.keypoint_size, 0)
               for y in range(gh) for x in range(gw)]
        kps_out, desc = self._sift.compute(gray, kps)
        if desc is None or len(kps_out) != len(kps):
            raise RuntimeError(
                f"dense SIFT returned {0 if desc is None else len(kps_out)} of {len(kps)} descriptors"
            )
        desc = desc.astype(np.float32)
        if self.root_sift:
            desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12))
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return desc.reshape(gh, gw, -1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> FeatureMap:
        self.check_input(images)
        rgb = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for im in rgb:
            gray = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY)
            out.append(torch.from_numpy(self._descriptor(gray)).permute(2, 0, 1))
        feats = torch.stack(out).to(images.device)
        return FeatureMap(features=feats, stride=self.stride)
