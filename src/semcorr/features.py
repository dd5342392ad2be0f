"""Backbone feature extraction with a per-image cache and a call counter.

Pair benchmarks reuse each image many times (PF-WILLOW: 1,800 image slots, 70 images), so during
evaluation the features of each distinct (image id, network size) are computed once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Protocol, Sequence

import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap


class FeatureStore(Protocol):
    def get(self, key: str) -> Optional[torch.Tensor]: ...

    def put(self, key: str, value: torch.Tensor) -> None: ...


class MemoryCache:
    """A least-recently-used store of tensors bounded by total size in MB."""

    def __init__(self, max_mb: float = 2048) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.items: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[torch.Tensor]:
        value = self.items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        if key in self.items:
            self.bytes -= self.items.pop(key).numel() * value.element_size()
        self.items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class FeatureExtractor(nn.Module):
    """Runs the backbone, through ``stores`` (checked in order) when ``use_cache`` is on.

    Attributes:
        backbone_calls: number of images the backbone has processed (cache misses included).
    """

    def __init__(self, backbone: Backbone, stores: Sequence[FeatureStore] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.stores = list(stores)
        self.backbone_calls = 0

    def key(self, image_id: str, image: torch.Tensor) -> str:
        h, w = image.shape[-2:]
        return f"{self.backbone.cache_key()}|{image_id}|{h}x{w}"

    def forward(self, images: torch.Tensor, ids: Optional[Sequence[str]] = None,
                use_cache: bool = False) -> FeatureMap:
        """Features of (B, 3, H, W) images; ``ids`` name the images for the cache."""
        if not (use_cache and self.stores and ids is not None):
            self.backbone_calls += images.shape[0]
            return self.backbone(images)
        keys = [self.key(i, im) for i, im in zip(ids, images)]
        found: list[Optional[torch.Tensor]] = []
        for key in keys:
            value = None
            for store in self.stores:
                value = store.get(key)
                if value is not None:
                    break
            found.append(value)
        missing = [b for b, v in enumerate(found) if v is None]
        stride = self.backbone.stride
        if missing:
            fmap = self.backbone(images[missing])
            self.backbone_calls += len(missing)
            stride = fmap.stride
            for b, feats in zip(missing, fmap.features):
                feats = feats.detach()
                found[b] = feats
                for store in self.stores:
                    store.put(keys[b], feats)
        feats = torch.stack([f.to(images.device) for f in found])  # type: ignore[union-attr]
        return FeatureMap(features=feats, stride=stride)
