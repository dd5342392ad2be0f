"""Bounded stores of tensors by key: an in-memory LRU and an on-disk cache.

:class:`FeatureStore` is the protocol (``get(key)`` / ``put(key, tensor)``) that
:class:`semcorr.features.FeatureExtractor` checks for backbone features; datasets use a
:class:`MemoryCache` for decoded images.

- :class:`MemoryCache`: bounded LRU in memory, for one run;
- :class:`DiskCache`: one file per key under a folder, shared between runs, safe to delete
  (atomic writes; unreadable or corrupt files are misses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Protocol

import torch

from semcorr.filemode import new_file_mode

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
            os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the user's umask decides
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, "features": value.detach().cpu().contiguous()}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
