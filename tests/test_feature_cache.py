"""Feature caches: in-batch dedupe, the on-disk store, and eval cost that grows with images."""

import json
from pathlib import Path

import torch

from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.cli.eval import main as eval_main
from semcorr.features import FeatureExtractor
from semcorr.stores import DiskCache, MemoryCache


class Pool(Backbone):
    """A tiny deterministic backbone: 4 x 4 average pooling, with the features' sum as a channel."""

    stride = 4
    dim = 4

    def forward(self, images):
        f = torch.nn.functional.avg_pool2d(images, 4)
        return FeatureMap(features=torch.cat([f, f.sum(1, keepdim=True)], 1), stride=4)


def _images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_duplicates_in_a_batch_are_computed_once():
    imgs = _images(2)
    batch = torch.stack([imgs[0], imgs[1], imgs[0], imgs[0]])
    ex = FeatureExtractor(Pool())
    out = ex(batch, ["a", "b", "a", "a"])
    assert ex.backbone_calls == 2
    assert torch.equal(out.features, Pool()(batch).features)
    # the same id with different pixels (e.g. an augmented copy) is not a duplicate; the same
    # pixels under two ids are
    ex(torch.stack([imgs[0], imgs[1]]), ["a", "a"])
    assert ex.backbone_calls == 4
    ex(torch.stack([imgs[1], imgs[1]]), ["b", "copy-of-b"])
    assert ex.backbone_calls == 5
    ex(batch)  # no ids: nothing to dedupe by
    assert ex.backbone_calls == 9


def test_dedupe_keeps_gradients():
    imgs = _images(2).requires_grad_(True)
    batch = torch.stack([imgs[0], imgs[0], imgs[1]])
    FeatureExtractor(Pool())(batch, ["a", "a", "b"]).features.sum().backward()
    ref = imgs.detach().clone().requires_grad_(True)
    Pool()(torch.stack([ref[0], ref[0], ref[1]])).features.sum().backward()
    assert torch.allclose(imgs.grad, ref.grad)


def test_memory_cache_across_batches():
    imgs = _images(3)
    ex = FeatureExtractor(Pool(), [MemoryCache(1)])
    ex(imgs, ["a", "b", "c"], use_cache=True)
    out = ex(imgs[[2, 0]], ["c", "a"], use_cache=True)
    assert ex.backbone_calls == 3 and torch.equal(out.features, Pool()(imgs[[2, 0]]).features)
    ex(imgs, ["a", "b", "c"], use_cache=False)  # training: no cache
    assert ex.backbone_calls == 6


def test_memory_cache_is_bounded_lru():
    cache = MemoryCache(max_mb=1)
    quarter = torch.zeros(2**16)  # 0.25 MB of float32
    for key in "abcd":
        cache.put(key, quarter.clone())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("e", quarter.clone())
    assert cache.get("b") is None and cache.get("a") is not None and cache.bytes <= 2**20
    cache.put("big", torch.zeros(2**19))  # larger than the bound: not stored
    assert cache.get("big") is None and len(cache.items) == 4


def test_disk_cache_roundtrip_and_reuse(tmp_path):
    imgs = _images(3)
    ids = ["x/1.jpg", "x/2.jpg", "y/3.jpg"]
    first = FeatureExtractor(Pool(), [MemoryCache(1), DiskCache(tmp_path)])
    ref = first(imgs, ids, use_cache=True).features
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))
    # a new run (empty memory) computes nothing, and disk hits are promoted to memory
    memory = MemoryCache(1)
    second = FeatureExtractor(Pool(), [memory, DiskCache(tmp_path)])
    assert torch.equal(second(imgs, ids, use_cache=True).features, ref)
    assert second.backbone_calls == 0 and len(memory.items) == 3
    # a different resolution is a different key
    small = torch.nn.functional.interpolate(imgs, size=(8, 8))
    second(small, ids, use_cache=True)
    assert second.backbone_calls == 3


def test_corrupt_or_foreign_files_are_misses(tmp_path):
    store = DiskCache(tmp_path / "cache")
    value = torch.arange(6.0).reshape(2, 3)
    store.put("k1", value)
    assert torch.equal(store.get("k1"), value)
    path = store.path("k1")
    path.write_bytes(b"truncated")
    assert store.get("k1") is None and not path.exists()
    store.put("k2", value)
    store.path("k3").parent.mkdir(parents=True, exist_ok=True)
    store.path("k2").replace(store.path("k3"))  # a file under the wrong name
    assert store.get("k3") is None
    assert store.get("never") is None and store.misses == 3 and store.hits == 1


def _eval(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    rc = eval_main(["data=synthetic", "data.n_pairs.test=6", "data.images=[astronaut,coffee]",
                    "data.image_size=64", "data.batch_size=3", "backbone=dsift", "plots.n_pairs=0",
                    "logger.wandb=false", "trainer.enable_progress_bar=false", f"out_dir={out}", *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_eval_backbone_calls_follow_distinct_images(tmp_path):
    cached = _eval(tmp_path, "cached", f"cache.disk_dir={tmp_path / 'features'}")
    # 6 pairs over 2 source images and 6 generated targets: 8 distinct images
    assert cached["timing"]["distinct_images"] == 8
    assert cached["timing"]["backbone_calls"] == 8
    uncached = _eval(tmp_path, "uncached", "cache.enabled=false")
    # no cache: each batch of 3 pairs computes its distinct sources (2) and targets (3)
    assert uncached["timing"]["backbone_calls"] == 10
    assert uncached["pck"] == cached["pck"]
    reused = _eval(tmp_path, "reused", f"cache.disk_dir={tmp_path / 'features'}")
    assert reused["timing"]["backbone_calls"] == 0 and reused["pck"] == cached["pck"]
