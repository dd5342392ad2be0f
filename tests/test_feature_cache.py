"""Feature caches: in-batch dedupe, the on-disk store, and eval cost that grows with images."""

import json
from pathlib import Path

import pytest
import torch

from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.cli.eval import main as eval_main
from semcorr.digest import image_digest
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


def _digests(images):
    return [image_digest(im) for im in images]


def test_duplicates_in_a_batch_are_computed_once():
    imgs = _images(2)
    batch = torch.stack([imgs[0], imgs[1], imgs[0], imgs[0]])
    ex = FeatureExtractor(Pool())
    out = ex(batch, ["a", "b", "a", "a"], digests=_digests(batch))
    assert ex.backbone_calls == 2
    assert torch.equal(out.features, Pool()(batch).features)
    # the same id with different pixels (e.g. an augmented copy) is not a duplicate; the same
    # pixels under two ids are
    pair = torch.stack([imgs[0], imgs[1]])
    ex(pair, ["a", "a"], digests=_digests(pair))
    assert ex.backbone_calls == 4
    same = torch.stack([imgs[1], imgs[1]])
    ex(same, ["b", "copy-of-b"], digests=_digests(same))
    assert ex.backbone_calls == 5
    ex(batch, digests=_digests(batch))  # no ids: nothing to dedupe by
    assert ex.backbone_calls == 9
    # no digests and no cache (a training step): nothing is hashed, so nothing is deduplicated
    ex(batch, ["a", "b", "a", "a"])
    assert ex.backbone_calls == 13


def test_dedupe_keeps_gradients():
    imgs = _images(2).requires_grad_(True)
    batch = torch.stack([imgs[0], imgs[0], imgs[1]])
    FeatureExtractor(Pool())(batch, ["a", "a", "b"], digests=_digests(batch)).features.sum().backward()
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


class _CountingDigest:
    """Replaces ``semcorr.features.image_digest``: counts the images hashed in the extractor."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return image_digest(image)


def test_digests_from_the_workers_are_the_cache_keys(monkeypatch):
    """The workers' digests give the keys the extractor's own hashing gives (a cache filled by
    dataset batches is hit by a user batch without digests, and back); with digests, or without a
    cache, the extractor hashes nothing."""
    imgs = _images(3)
    counter = _CountingDigest()
    monkeypatch.setattr("semcorr.features.image_digest", counter)
    ex = FeatureExtractor(Pool(), [MemoryCache(1)])
    ex(imgs, ["a", "b", "c"], use_cache=True, digests=_digests(imgs))
    assert counter.calls == 0 and ex.backbone_calls == 3
    ex(imgs[[1, 2]], ["b", "c"], use_cache=True)  # no digests: the fallback hashes each image once
    assert counter.calls == 2 and ex.backbone_calls == 3
    ex(imgs, ["a", "b", "c"], use_cache=False)  # training step, no digests: no hashing
    ex(imgs, ["a", "b", "c"])
    assert counter.calls == 2 and ex.backbone_calls == 9
    with pytest.raises(ValueError, match="2 digests for 3 images"):
        ex(imgs, ["a", "b", "c"], use_cache=True, digests=_digests(imgs)[:2])


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


def test_samples_carry_their_images_digests(make_config):
    """Datasets compute the digests in ``__getitem__`` (the data workers), of the network-frame
    pixels, after augmentation, swapped with the images; the training split computes none (no
    cache in training); a one-pair batch for matching carries them too."""
    from semcorr.builder import build_datamodule
    from semcorr.data.schema import collate
    from semcorr.inference import pair_batch

    cfg = make_config("data=synthetic", "data.n_pairs.test=2", "data.n_pairs.train=2", "data.image_size=64",
                      "data.augment.enabled=true", "data.augment.photometric_p=1")
    dm = build_datamodule(cfg, divisor=8, training=True)
    test = dm.dataset("test")
    sample = test[0]
    assert sample["src_digest"] == image_digest(sample["src_img"])
    assert sample["trg_digest"] == image_digest(sample["trg_img"]) != sample["src_digest"]
    batch = collate([test[0], test[1]])
    assert batch["trg_digest"] == [image_digest(im) for im in batch["trg_img"]]  # the same bytes
    test.set_direction("trg_to_src")
    swapped = test[0]
    assert (swapped["src_digest"], swapped["trg_digest"]) == (sample["trg_digest"], sample["src_digest"])
    train = dm.dataset("train")
    assert not train.image_digests and "src_digest" not in train[0]
    train.image_digests = True  # an augmented sample: the digest of the augmented pixels
    augmented = train[0]
    assert augmented["src_digest"] == image_digest(augmented["src_img"])
    one = pair_batch(sample["src_img"], sample["trg_img"], torch.tensor([[3.0, 4.0]]), 64,
                     "longer_side_pad", 8)
    assert one["src_digest"] == [image_digest(one["src_img"][0])]


@pytest.mark.slow
def test_training_hashes_no_image(tmp_path, monkeypatch, tiny_vit):
    """A training run (steps and validation) hashes nothing on the main loop's side of the data
    workers: the training split carries no digests and uses no cache, validation's come with
    its batches."""
    from runs import QUIET, SMALL_DATA
    from semcorr.cli.train import fit, train_config

    counter = _CountingDigest()
    monkeypatch.setattr("semcorr.features.image_digest", counter)
    cfg = train_config([*tiny_vit, *SMALL_DATA, *QUIET, "trainer.max_steps=2", "trainer.limit_val_batches=1",
                        "logger.csv=false", f"out_dir={tmp_path}"])
    fit(cfg)
    assert counter.calls == 0


def test_eval_backbone_calls_follow_distinct_images(tmp_path, monkeypatch):
    """... and evaluation hashes no image in its (timed) loop: the workers did."""
    counter = _CountingDigest()
    monkeypatch.setattr("semcorr.features.image_digest", counter)
    cached = _eval(tmp_path, "cached", f"cache.disk_dir={tmp_path / 'features'}")
    assert counter.calls == 0
    # 6 pairs over 2 source images and 6 generated targets: 8 distinct images
    assert cached["timing"]["distinct_images"] == 8
    assert cached["timing"]["backbone_calls"] == 8
    uncached = _eval(tmp_path, "uncached", "cache.enabled=false")
    # no cache: each batch of 3 pairs computes its distinct sources (2) and targets (3)
    assert uncached["timing"]["backbone_calls"] == 10
    assert uncached["pck"] == cached["pck"]
    reused = _eval(tmp_path, "reused", f"cache.disk_dir={tmp_path / 'features'}")
    assert reused["timing"]["backbone_calls"] == 0 and reused["pck"] == cached["pck"]
