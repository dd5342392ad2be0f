"""Backbone feature extraction with per-image caches, in-batch deduplication and a call counter.

Pair benchmarks reuse each image many times (PF-WILLOW: 1,800 image slots, 70 images), so during
evaluation the features of each distinct image are computed once. A feature is identified by
:meth:`FeatureExtractor.key`: the backbone's ``cache_key()`` (model, weights, layer), the
network-frame size and a digest of the network-frame pixels -- the content, not the file name, so
a picture stored twice is computed once and a different resize mode, an augmented copy or an
edited file never reuses stale features.

Stores (:class:`FeatureStore`: ``get(key)`` / ``put(key, tensor)``):

- :class:`MemoryCache`: bounded LRU in memory, for one run;
- :class:`DiskCache`: one file per feature under a folder, shared between runs, safe to delete
  (atomic writes; unreadable or corrupt files are misses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap

log = logging.getLogger(__name__)


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
            old = self.items.pop(key)
            self.bytes -= old.numel() * old.element_size()
        self.items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class DiskCache:
    """Features on disk, one ``.pt`` file per key under ``root``; safe to delete at any time.

    The file name is a hash of the key (which names backbone, weights, image and resolution, see
    :meth:`FeatureExtractor.key`); the key is stored inside and checked on reading. Writes go to a
    temporary file in the same folder and are renamed into place, so a crashed or concurrent
    writer never leaves a partial file under a final name. Files that cannot be read, or that hold
    another key, count as misses (and are removed).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.pt"

    def get(self, key: str) -> Optional[torch.Tensor]:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("key") != key:
                raise ValueError("key mismatch")
            value = blob["features"]
            if not isinstance(value, torch.Tensor):
                raise ValueError("no tensor")
        except Exception as err:  # noqa: BLE001 - any unreadable file is a miss
            log.warning("feature cache: ignoring unreadable %s (%s)", path, err)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, "features": value.detach().cpu().contiguous()}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
                if caching:
                    for store in self.stores:
                        store.put(key, feats.detach())
        feats = torch.stack([found[k].to(images.device) for k in keys])
        return FeatureMap(features=feats, stride=stride)
