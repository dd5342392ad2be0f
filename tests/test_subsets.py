"""``data.max_pairs`` draws a seeded sample in which every category keeps its share
(``data.subset=first``: the first pairs, as before); the table and metrics.json say a subset was
scored; ``distinct_images`` counts pictures by content."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from runs import QUIET
from semcorr.data.base import subset_indices


def test_every_category_keeps_its_share():
    cats = ["a"] * 90 + ["b"] * 90 + ["c"] * 180
    keep = subset_indices(cats, 60, seed=0)
    assert len(keep) == 60 and keep == sorted(keep) and len(set(keep)) == 60
    assert Counter(cats[i] for i in keep) == {"a": 15, "b": 15, "c": 30}


def test_largest_remainders_and_one_per_category():
    cats = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5
    counts = Counter(cats[i] for i in subset_indices(cats, 10, seed=1))
    assert sum(counts.values()) == 10 and counts == {"a": 5, "b": 3, "c": 1, "d": 1}
    counts = Counter(cats[i] for i in subset_indices(cats, 4, seed=1))
    assert set(counts) == {"a", "b", "c", "d"}  # n >= categories: every one is there
    assert subset_indices(cats, 200, seed=0) == list(range(100))


def test_the_sample_is_seeded():
    cats = [f"c{i % 7}" for i in range(700)]
    assert subset_indices(cats, 70, seed=3) == subset_indices(cats, 70, seed=3)
    assert subset_indices(cats, 70, seed=3) != subset_indices(cats, 70, seed=4)
    assert subset_indices(cats, 70, seed=3) != list(range(70))


def _synthetic(*tokens):
    from semcorr.builder import build_datamodule
    from semcorr.config import load_config

    cfg = load_config(["data=synthetic", "data.image_size=64", *tokens])
    return build_datamodule(cfg, 8).dataset("test")


def test_dataset_subsets_per_category_or_first():
    full = _synthetic()
    n_cats = len(full.categories)
    sample = _synthetic(f"data.max_pairs={2 * n_cats}")
    assert Counter(r.category for r in sample.records) == {c: 2 for c in full.categories}
    assert sample.subset == {"pairs": 2 * n_cats, "of": len(full), "how": "per_category", "seed": 0}
    assert sample.subset_note() == f"{2 * n_cats} of {len(full)} pairs (a per-category sample, seed 0)"
    first = _synthetic(f"data.max_pairs={2 * n_cats}", "data.subset=first")
    assert [r.pair_id for r in first.records] == [r.pair_id for r in full.records[: 2 * n_cats]]
    assert first.subset_note().endswith("(the first ones)")
    other = _synthetic(f"data.max_pairs={2 * n_cats}", "data.subset_seed=5")
    assert [r.pair_id for r in other.records] != [r.pair_id for r in sample.records]
    assert full.subset is None and full.subset_note() == f"{len(full)} pairs"
    one = _synthetic("data.n_pairs.test=1")
    assert one.subset_note() == "1 pair"


def test_the_table_and_metrics_say_a_subset_was_scored(tmp_path, capsys):
    from semcorr.cli.eval import main

    out = tmp_path / "run"
    assert main(["data.max_pairs=6", "data.image_size=64", "data.n_keypoints=8", *QUIET,
                 f"out_dir={out}", "predictions.enabled=false"]) == 0
    text = capsys.readouterr().out
    assert "synthetic (test), 6 of 48 pairs (a per-category sample, seed 0)" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["subset"] == {"pairs": 6, "of": 48, "how": "per_category", "seed": 0}
    assert metrics["n_pairs"] == 6 and len(metrics["pck_per_category"]) == 6


def test_bad_subset_values_are_config_errors():
    from semcorr.config import load_config
    from semcorr.errors import ConfigError

    with pytest.raises(ConfigError, match="data.subset"):
        load_config(["data.subset=random"])
    with pytest.raises(ConfigError, match="data.subset_seed"):
        load_config(["data.subset_seed=-1"])


@pytest.mark.shared_data
def test_pf_willow_sample_covers_every_subset_and_counts_pictures(pf_willow_root):
    from semcorr.data.datasets.pf_willow import PFWillowDataset

    first = PFWillowDataset(root=str(pf_willow_root), divisor=8, max_pairs=60, subset="first")
    sample = PFWillowDataset(root=str(pf_willow_root), divisor=8, max_pairs=60)
    assert len({r.category for r in first.records}) == 1  # today's behaviour: one subset
    assert Counter(r.category for r in sample.records) == {c: 6 for c in sample.categories}
    assert len(sample.categories) == 10
    full = PFWillowDataset(root=str(pf_willow_root), divisor=8)
    # 100 file names, 70 pictures (subsets share files), as the feature cache counts them
    assert len(full.image_ids()) == 100 and full.distinct_images() == 70
