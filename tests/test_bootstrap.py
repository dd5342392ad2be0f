"""Bootstrap intervals and paired tests (semcorr.metrics.bootstrap): deterministic, equal to plain
loops over resampled pairs, the protocol's averaging and headline, exact permutation p-values."""

import itertools
import zlib

import numpy as np
import pytest

from semcorr.eval_stats import with_interval
from semcorr.metrics.bootstrap import Measure, bootstrap_intervals, paired_difference, value
from semcorr.metrics.functional import summarize_pairs
from semcorr.metrics.protocol import Protocol

ALPHAS = (0.05, 0.1)


def _data(rng, n=60, cats=("a", "b", "c")):
    category = [cats[i % len(cats)] for i in range(n)]
    n_valid = rng.integers(0, 9, n)  # some pairs have no valid keypoint
    n_correct = np.stack([rng.binomial(n_valid, p) for p in (0.4, 0.7)], 1)
    return n_correct, n_valid, category


@pytest.mark.parametrize("average,headline", [("per_image", "pooled"), ("per_keypoint", "pooled"),
                                              ("per_image", "category_mean")])
def test_point_values_equal_the_metric(average, headline):
    n_correct, n_valid, category = _data(np.random.default_rng(1))
    m = Measure.pck(n_correct, n_valid, category, ALPHAS, average, headline)
    overall, per_cat, names = m.values()
    import torch
    want = summarize_pairs(torch.as_tensor(n_correct, dtype=torch.float64), torch.as_tensor(n_valid, dtype=torch.float64),
                           category, Protocol(average=average, headline=headline), ALPHAS)
    assert overall.tolist() == pytest.approx(list(want["pck"].values()), abs=1e-12)
    for i, c in enumerate(names):
        assert per_cat[i].tolist() == pytest.approx(list(want["pck_per_category"][c].values()), abs=1e-12)


@pytest.mark.parametrize("average,headline", [("per_image", "pooled"), ("per_keypoint", "category_mean")])
def test_intervals_equal_a_loop_over_resampled_pairs(average, headline):
    """The vectorised bootstrap equals recomputing the statistic on each resample, drawn with
    the same generators (seeded by the seed and the category's crc32), one replicate at a time."""
    n_correct, n_valid, category = _data(np.random.default_rng(2))
    m = Measure.pck(n_correct, n_valid, category, ALPHAS, average, headline)
    got = bootstrap_intervals(m, 300, seed=7)
    cats = list(dict.fromkeys(category))
    index = {c: np.flatnonzero(np.asarray(category) == c) for c in cats}
    draws = {c: np.random.default_rng([7, zlib.crc32(c.encode())]).integers(0, len(index[c]), (300, len(index[c])),
                                                                             dtype=np.int32) for c in cats}
    reps, reps_cat = [], []
    for r in range(300):
        picked = np.concatenate([index[c][draws[c][r]] for c in cats])
        num = m.num[picked]
        den = m.den[picked]
        cat_of = np.asarray(category)[picked]
        per = [100 * num[cat_of == c].sum(0) / den[cat_of == c].sum() for c in cats]
        reps_cat.append(per)
        reps.append(np.mean(per, 0) if headline == "category_mean" else 100 * num.sum(0) / den.sum())
    lo, hi = np.percentile(np.asarray(reps), [2.5, 97.5], axis=0)
    for j, a in enumerate(ALPHAS):
        assert got["pck_ci95"][f"{a:g}"] == pytest.approx([lo[j], hi[j]], abs=1e-9)
    lo_c, hi_c = np.percentile(np.asarray(reps_cat), [2.5, 97.5], axis=0)
    for i, c in enumerate(cats):
        assert got["pck_per_category_ci95"][c]["0.1"] == pytest.approx([lo_c[i, 1], hi_c[i, 1]], abs=1e-9)


def test_intervals_are_deterministic_and_per_category_independent():
    n_correct, n_valid, category = _data(np.random.default_rng(3))
    m = Measure.pck(n_correct, n_valid, category, ALPHAS)
    first = bootstrap_intervals(m, 200, seed=0)
    assert bootstrap_intervals(m, 200, seed=0) == first
    assert bootstrap_intervals(m, 200, seed=1) != first
    keep = [i for i, c in enumerate(category) if c != "c"]  # a category filter
    sub = Measure.pck(n_correct[keep], n_valid[keep], [category[i] for i in keep], ALPHAS)
    assert bootstrap_intervals(sub, 200, seed=0)["pck_per_category_ci95"]["a"] == first["pck_per_category_ci95"]["a"]


def test_interval_covers_the_value_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(4)
    widths = []
    for n in (200, 3200):
        n_valid = np.full(n, 10)
        n_correct = np.stack([rng.binomial(10, 0.6, n)] * 2, 1)
        m = Measure.pck(n_correct, n_valid, ["x"] * n, ALPHAS)
        lo, hi = bootstrap_intervals(m, 500)["pck_ci95"]["0.1"]
        v = m.values()[0][1]
        assert lo < v < hi
        widths.append(hi - lo)
        # the bootstrap's half-width is near the binomial standard error's 1.96 multiple
        se = 100 * np.sqrt(np.var(n_correct[:, 1] / 10) / n)
        assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.2)
    assert widths[1] < widths[0] / 3


def test_single_pair_categories_get_no_interval():
    m = Measure.pck(np.array([[1, 2], [2, 2], [0, 1]]), np.array([2, 2, 2]), ["a", "a", "b"], ALPHAS)
    got = bootstrap_intervals(m, 100)
    assert got["pck_per_category_ci95"]["b"] == {"0.05": None, "0.1": None}
    assert got["pck_per_category_ci95"]["a"]["0.1"] is not None and got["single_pair_categories"] == ["b"]
    alone = bootstrap_intervals(Measure.pck(np.array([[1, 1]]), np.array([2]), ["a"], ALPHAS), 100)
    assert alone["pck_ci95"] == {"0.05": None, "0.1": None}


def test_paired_difference_and_exact_permutation_p_value():
    """With 8 pairs, the sign-flip distribution has 2^8 equally likely swaps: the Monte Carlo
    p-value approaches the exact one."""
    a = np.array([[1], [2], [0], [3], [1], [2], [2], [0]], dtype=float)
    b = np.array([[2], [3], [1], [3], [2], [4], [1], [2]], dtype=float)
    valid = np.full(8, 4.0)
    cats = ["x"] * 8
    ma = Measure.pck(a, valid, cats, (0.1,), "per_keypoint")
    mb = Measure.pck(b, valid, cats, (0.1,), "per_keypoint")
    d = paired_difference(ma, mb, n_boot=500, n_perm=20000, seed=0)
    diff = (b - a)[:, 0]
    assert d.overall[0] == pytest.approx(100 * diff.sum() / 32)
    observed = abs(diff.sum())
    flips = [abs(np.dot(s, diff)) for s in itertools.product((-1, 1), repeat=8)]
    exact = np.mean(np.asarray(flips) >= observed - 1e-12)
    assert d.overall_p[0] == pytest.approx(exact, abs=0.01)
    lo, hi = d.overall_ci[:, 0]
    assert lo < d.overall[0] < hi and lo > 0
    same = paired_difference(ma, ma, n_boot=100, n_perm=100)
    assert same.overall[0] == 0 and same.overall_p[0] == 1.0 and same.overall_ci[:, 0].tolist() == [0, 0]


def test_value_headlines():
    num = np.array([[[10.0], [30.0]]])  # one replicate, two categories
    den = np.array([[20.0, 40.0]])
    assert value(num, den, "pooled")[0][0, 0] == pytest.approx(100 * 40 / 60)
    assert value(num, den, "category_mean")[0][0, 0] == pytest.approx((50 + 75) / 2)


def test_printed_interval():
    assert with_interval(62.3, [61.5, 63.1]) == "62.30 ± 0.80"
    assert with_interval(62.3, [60.0, 63.0]) == "62.30 [60.00, 63.00]"
    assert with_interval(62.3, None) == "62.30"
