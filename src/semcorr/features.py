"""Backbone feature extraction with per-image caches, in-batch deduplication and a call counter.

Pair benchmarks reuse each image many times (PF-WILLOW: 1,800 image slots, 70 images), so during
evaluation the features of each distinct image are computed once. A feature is identified by
:meth:`FeatureExtractor.key`: the backbone's ``cache_key()`` (model, weights, layer), the
network-frame size and a digest of the network-frame pixels -- the content, not the file name, so
a picture stored twice is computed once and a different resize mode, an augmented copy or an
edited file never reuses stale features.

Stores (:class:`~semcorr.stores.FeatureStore`: ``get(key)`` / ``put(key, tensor)``) are
:class:`~semcorr.stores.MemoryCache` and :class:`~semcorr.stores.DiskCache`.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.stores import FeatureStore


def image_digest(image: torch.Tensor) -> str:
    """A short hash of an image tensor's bytes, shape and dtype (SHA-1, 16 hex digits)."""
    data = image.detach().contiguous().cpu()
    h = hashlib.sha1(f"{tuple(data.shape)}{data.dtype}".encode())
    h.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


class FeatureExtractor(nn.Module):
    """Runs the backbone once per distinct image of a batch, through ``stores`` when caching.

    Images of one call that share their key (same size and pixels, see :meth:`key`) are
    computed once (``dedupe``); with ``use_cache`` the ``stores`` are checked in order first, and
    computed features are written to all of them.

    Attributes:
        backbone_calls: number of images the backbone has processed.
    """

    def __init__(self, backbone: Backbone, stores: Sequence[FeatureStore] = (),
                 dedupe: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.stores = list(stores)
        self.dedupe = dedupe
        self.backbone_calls = 0

    def key(self, image: torch.Tensor) -> str:
        """``<backbone cache key>|<H>x<W>|<pixel digest>`` of one (3, H, W) network-frame image.

        The key names the content, not the file: the same picture under two ids (PF-WILLOW
        subsets share files) is computed once, and an edited or augmented image never reuses
        stale features.
        """
        h, w = image.shape[-2:]
        return f"{self.backbone.cache_key()}|{h}x{w}|{image_digest(image)}"

    def _lookup(self, key: str) -> Optional[torch.Tensor]:
        for i, store in enumerate(self.stores):
            value = store.get(key)
            if value is not None:
                for earlier in self.stores[:i]:  # promote disk hits to memory
                    earlier.put(key, value)
                return value
        return None

    def forward(self, images: torch.Tensor, ids: Optional[Sequence[str]] = None,
                use_cache: bool = False) -> FeatureMap:
        """Features of (B, 3, H, W) images. ``ids`` (B,) name the images; without them nothing is
        deduplicated or cached.

        Returns a :class:`FeatureMap` with (B, D, h, w) features.
        """
        # features of a backbone that is being trained go stale after every optimiser step
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        caching = use_cache and bool(self.stores) and ids is not None and not trainable
        if ids is None or not (caching or self.dedupe):
            self.backbone_calls += images.shape[0]
            return self.backbone(images)
        keys = [self.key(im) for im in images]
        found: dict[str, torch.Tensor] = {}
        if caching:
            for key in dict.fromkeys(keys):
                value = self._lookup(key)
                if value is not None:
                    found[key] = value
        first = {}  # key -> first batch index needing computation
        for b, key in enumerate(keys):
            if key not in found and key not in first:
                first[key] = b
        stride = self.backbone.stride
        if first:
            todo = list(first.values())
            fmap = self.backbone(images[todo])
            self.backbone_calls += len(todo)
            stride = fmap.stride
            for key, feats in zip(first, fmap.features):
                found[key] = feats
                if caching:  # a copy: a slice would keep the whole batch's storage alive
                    own = feats.detach().clone()
                    for store in self.stores:
                        store.put(key, own)
        feats = torch.stack([found[k].to(images.device) for k in keys])
        return FeatureMap(features=feats, stride=stride)
