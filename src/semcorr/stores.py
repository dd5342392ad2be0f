"""Bounded stores of tensors by key: an in-memory LRU and an on-disk cache.

:class:`FeatureStore` is the protocol (``get(key)`` / ``put(key, tensor)``) that
:class:`semcorr.features.FeatureExtractor` checks for backbone features; datasets use a
:class:`MemoryCache` for decoded images.

- :class:`MemoryCache`: bounded LRU in memory, for one run;
- :class:`DiskCache`: one file per key under a folder, shared between runs, safe to delete
  (atomic writes; a checksum per entry: unreadable, corrupt or altered files are misses; a
  folder that cannot be written warns once and is skipped).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Protocol

import torch

from semcorr.atomic import atomic_open

log = logging.getLogger(__name__)


class FeatureStore(Protocol):
    def get(self, key: str) -> Optional[torch.Tensor]: ...

    def put(self, key: str, value: torch.Tensor) -> None: ...


def stored_bytes(value: torch.Tensor) -> int:
    """The memory a stored tensor keeps alive: its whole storage (a view of a batch holds the
    batch), not just its own elements."""
    return value.untyped_storage().nbytes()


def tensor_digest(value: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (what a disk-cache entry is checked against)."""
    data = value.detach().cpu().contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class MemoryCache:
    """A least-recently-used store of tensors bounded by total size in MB (counted as the
    storage each holds, :func:`stored_bytes`: store own tensors, e.g. ``.clone()`` of a slice)."""

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
        size = stored_bytes(value)
        if size > self.max_bytes:
            return
        if key in self.items:
            self.bytes -= stored_bytes(self.items.pop(key))
        self.items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= stored_bytes(old)


class DiskCache:
    """Features on disk, one ``.pt`` file per key under ``root``; safe to delete at any time.

    The file name is a hash of the key (which names backbone, weights, image and resolution, see
    :meth:`FeatureExtractor.key`). Each file holds the key, the tensor (its own elements only,
    never a batch's storage) and the SHA-256 of the tensor (:func:`tensor_digest`); reading
    checks both, so a file that cannot be read, holds another key, or whose content was changed
    (even in place with the same size) is a miss, removed with a warning. Writes are atomic
    (:func:`semcorr.atomic.atomic_open`): a crashed or concurrent writer never leaves a partial
    file under a final name.

    A cache that cannot be written (``root`` is a file, read-only, on a full disk) warns once
    and stops writing; the run goes on computing the features.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self.writable = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._stop_writing(err)

    def _stop_writing(self, err: OSError) -> None:
        if self.writable:
            log.warning("feature cache: cannot write to cache.disk_dir=%s (%s); the run goes on "
                        "without storing features there", self.root,
                        err.strerror or type(err).__name__)
        self.writable = False

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
            if blob.get("sha256") != tensor_digest(value):
                raise ValueError("checksum mismatch: the file was changed after it was written")
        except Exception as err:  # noqa: BLE001 - any unreadable file is a miss
            log.warning("feature cache: ignoring unreadable %s (%s)", path, err)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        if not self.writable:
            return
        tensor = value.detach().cpu().contiguous().clone()  # its own storage, not the batch's
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                torch.save({"key": key, "features": tensor, "sha256": tensor_digest(tensor)}, f)
        except OSError as err:
            self._stop_writing(err)
