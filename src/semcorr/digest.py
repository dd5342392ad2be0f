"""Content digests of images: the identity the feature caches key on (a leaf: torch only).

Datasets compute the digest of each network-frame image in ``__getitem__`` (so in the data
workers, before the batch reaches the device): the samples' ``src_digest`` / ``trg_digest``
(:mod:`semcorr.data.schema`). :class:`semcorr.features.FeatureExtractor` keys its caches on them
and hashes pixels itself only for a batch that carries none and only when it reads or fills a
cache.
"""

from __future__ import annotations

import hashlib

import torch


def image_digest(image: torch.Tensor) -> str:
    """A short hash of an image tensor's bytes, shape and dtype (SHA-1, 16 hex digits).

    The content, not a file name: the same pixels give the same digest under any id, and an
    augmented or re-sized copy a different one. A CUDA tensor is copied to the host first.
    """
    data = image.detach().contiguous().cpu()
    h = hashlib.sha1(f"{tuple(data.shape)}{data.dtype}".encode())
    h.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]
