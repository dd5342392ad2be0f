"""Uncertainty of PCK from per-pair counts: bootstrap intervals of one run and paired tests of two.

Every statistic here is a **ratio of sums over pairs**: a :class:`Measure` gives each pair a
numerator (A alphas) and a denominator. PCK averaged per keypoint is (correct, valid); per image
it is (the pair's PCK, 1) for pairs with a valid keypoint (pairs without one have (0, 0) and
count for nothing, as in :func:`semcorr.metrics.functional.pck_summary`). A category's value is
100 x its sums' ratio; the overall value is the ratio of all sums (``pooled``) or the unweighted
mean of the categories' values (``category_mean``), as the protocol's headline says.

**Resampling** is stratified by category: each replicate draws, in every category, as many pairs
as it has, with replacement (the benchmark fixes each category's pair count, so the interval is
about which pairs were drawn, not how many of each category). Draws are vectorised: per category
one (R, n_c) array of pair indices, counted into per-pair weights and multiplied with each column.
The generator of a category is seeded by ``(seed, crc32(category name))``, so a category's
interval does not depend on the other categories present and a rerun gives the same bits.

A category with fewer than two counted pairs cannot vary under resampling: it gets no interval
(None) and adds no variability to the overall one (when every category is such, there is none).
A replicate in which a statistic is undefined (a resample that drew no pair with a denominator,
possible for small subsets such as n10 of a category) is left out of that statistic's interval.

- :func:`bootstrap_intervals`: percentile 95 % interval of a run's statistic.
- :func:`paired_difference`: run B minus run A on the same pairs: the difference, its
  paired-bootstrap percentile interval (both runs resampled with the same draws) and the p-value
  of a paired permutation test: under the null hypothesis that the two runs are exchangeable on
  each pair, each pair's two results are swapped with probability 1/2 (a sign flip of the pair's
  difference for a mean); two-sided p = (1 + #{|T*| >= |T|}) / (1 + R).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from semcorr.metrics.functional import PCK_GRID

LEVEL = 0.95
_TOL = 1e-9  # relative tolerance of |T*| >= |T| (sums in another order round differently)


@dataclass
class Measure:
    """Per-pair sums of one statistic (N pairs, A alphas).

    Attributes:
        num: (N, A) float64 numerators. den: (N,) float64 denominators (0: the pair does not count).
        category: the N pairs' categories. alphas: the A alphas.
        headline: ``pooled`` or ``category_mean`` (the overall value).
    """

    num: np.ndarray
    den: np.ndarray
    category: List[str]
    alphas: Tuple[float, ...]
    headline: str = "pooled"

    @classmethod
    def pck(cls, n_correct, n_valid, category: Sequence[str], alphas: Sequence[float],
            average: str = "per_image", headline: str = "pooled") -> "Measure":
        """PCK from (N, A) correct and (N,) valid keypoint counts, averaged per image or per
        keypoint."""
        n_correct = np.asarray(n_correct, dtype=np.float64).reshape(len(category), len(alphas))
        n_valid = np.asarray(n_valid, dtype=np.float64).reshape(-1)
        if average == "per_keypoint":
            return cls(n_correct, n_valid, list(category), tuple(alphas), headline)
        has = n_valid > 0
        per_pair = np.round(n_correct / np.maximum(n_valid, 1)[:, None] * PCK_GRID) / PCK_GRID
        num = np.where(has[:, None], per_pair, 0.0)  # on the metric's 2^-32 grid: exact sums
        return cls(num, has.astype(np.float64), list(category), tuple(alphas), headline)

    @classmethod
    def mean_of_ratios(cls, num, den, category: Sequence[str], alphas: Sequence[float],
                       headline: str = "pooled") -> "Measure":
        """The mean over pairs with ``den > 0`` of each pair's num / den (a per-image average)."""
        num = np.asarray(num, dtype=np.float64)
        den = np.asarray(den, dtype=np.float64)
        has = den > 0
        ratio = np.where(has[:, None], num / np.maximum(den, 1e-300)[:, None], 0.0)
        return cls(ratio, has.astype(np.float64), list(category), tuple(alphas), headline)

    def select(self, columns: Sequence[int]) -> "Measure":
        """The measure at some of its alphas (column indices)."""
        cols = list(columns)
        return Measure(self.num[:, cols], self.den, self.category, tuple(self.alphas[i] for i in cols),
                       self.headline)

    def values(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """Overall (A,) and per-category (C, A) values in percent, and the C category names."""
        num, den, names = _sums(self)
        overall, per_cat = value(num, den, self.headline)
        return overall, per_cat, names

    def single_pair_categories(self) -> List[str]:
        """Categories with fewer than two counted pairs: resampling within them cannot vary, so
        they get no interval (and add no variability to the overall one)."""
        return [name for name, idx in self.strata() if int((self.den[idx] > 0).sum()) < 2]

    def strata(self) -> List[Tuple[str, np.ndarray]]:
        """(category, indices of its pairs) in first-seen order."""
        return _strata(tuple(self.category))


@lru_cache(maxsize=8)
def _strata(category: Tuple[str, ...]) -> List[Tuple[str, np.ndarray]]:
    groups: Dict[str, List[int]] = {}
    for i, name in enumerate(category):
        groups.setdefault(name, []).append(i)
    return [(name, np.asarray(idx, dtype=np.int64)) for name, idx in groups.items()]


def value(num: np.ndarray, den: np.ndarray, headline: str) -> Tuple[np.ndarray, np.ndarray]:
    """Overall (..., A) and per-category (..., C, A) values in percent from per-category sums
    ``num`` (..., C, A) and ``den`` (..., C); NaN where a category (or everything) has no
    denominator; categories without one are left out of a ``category_mean``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_cat = np.where(den[..., None] > 0, 100.0 * num / den[..., None], np.nan)
        if headline == "category_mean":
            present = den > 0
            count = present.sum(-1)[..., None]
            total = np.where(present[..., None], per_cat, 0.0).sum(-2)
            overall = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        else:
            d = den.sum(-1)[..., None]
            overall = np.where(d > 0, 100.0 * num.sum(-2) / d, np.nan)
    return overall, per_cat


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _draws(rng: np.random.Generator, n_rep: int, n: int) -> np.ndarray:
    """(n_rep, n) int32 pair indices: n_rep resamples of n pairs with replacement."""
    return rng.integers(0, n, size=(n_rep, n), dtype=np.int32)


def _counts(draws: np.ndarray) -> np.ndarray:
    """(R, n) float64: how often each of the n pairs is drawn in each row of ``draws`` (R, n)."""
    n_rep, n = draws.shape
    flat = draws.astype(np.int64) + (np.arange(n_rep, dtype=np.int64) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_rep * n).reshape(n_rep, n).astype(np.float64)


def _swaps(rng: np.random.Generator, n_rep: int, n: int) -> np.ndarray:
    """(n_rep, n) float64 0/1, each entry 1 with probability 1/2 (unpacked random bytes)."""
    bits = np.unpackbits(rng.integers(0, 256, size=(n_rep, (n + 7) // 8), dtype=np.uint8), axis=1)
    return bits[:, :n].astype(np.float64)


def _chunks(total: int, size: int = 512) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def _sums(m: Measure) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    strata = m.strata()
    num = np.stack([m.num[idx].sum(0) for _, idx in strata]) if strata else np.zeros((0, len(m.alphas)))
    den = np.asarray([m.den[idx].sum() for _, idx in strata], dtype=np.float64)
    return num, den, [name for name, _ in strata]


def _interval(reps: np.ndarray) -> np.ndarray:
    """(2, ...) percentile interval of replicates (R, ...). Replicates in which the statistic is
    undefined (NaN: a resample without any pair of a subset) are left out; NaN where all are."""
    lo, hi = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
        return np.nanpercentile(reps, [lo, hi], axis=0)


def _as_dict(alphas: Sequence[float], pairs: np.ndarray) -> Dict[str, Optional[List[float]]]:
    """{alpha: [low, high]} from (2, A); None where undefined."""
    out = {}
    for i, a in enumerate(alphas):
        lo, hi = float(pairs[0, i]), float(pairs[1, i])
        out[f"{float(a):g}"] = None if not (np.isfinite(lo) and np.isfinite(hi)) else [lo, hi]
    return out


def resample(measures: Sequence[Measure], n_boot: int, seed: int = 0):
    """Replicates of per-category sums, the same draws for every measure (a paired bootstrap):
    yields, chunk by chunk, a list (one per measure) of (num (r, C, A), den (r, C))."""
    strata = measures[0].strata()
    rngs = [_rng(seed, name) for name, _ in strata]
    for size in _chunks(n_boot):
        outs = [(np.zeros((size, len(strata), len(m.alphas))), np.zeros((size, len(strata))))
                for m in measures]
        for c, ((_, idx), rng) in enumerate(zip(strata, rngs)):
            # how often each pair is drawn, then one matrix-vector product per column (much
            # faster than a product with a thin matrix, or than gathering the drawn values)
            weights = _counts(_draws(rng, size, len(idx)))
            for (num, den), m in zip(outs, measures):
                for j in range(num.shape[-1]):
                    num[:, c, j] = weights @ np.ascontiguousarray(m.num[idx, j])
                den[:, c] = weights @ np.ascontiguousarray(m.den[idx])
        yield outs


def bootstrap_intervals(m: Measure, n_boot: int, seed: int = 0) -> Dict[str, object]:
    """``{"pck_ci95": {alpha: [low, high]}, "pck_per_category_ci95": {category: {alpha: [low,
    high]}}}``: percentile 95 % intervals of the overall value and of each category's, from
    ``n_boot`` stratified resamples (module docstring)."""
    overall, per_cat = [], []
    for ((num, den),) in resample([m], n_boot, seed):
        o, c = value(num, den, m.headline)
        overall.append(o)
        per_cat.append(c)
    names = [name for name, _ in m.strata()]
    single = m.single_pair_categories()
    over = _interval(np.concatenate(overall))
    if len(single) == len(names):  # nothing varies: no interval
        over[:] = np.nan
    cats = _interval(np.concatenate(per_cat))  # (2, C, A)
    cats[:, [names.index(c) for c in single]] = np.nan
    return {"pck_ci95": _as_dict(m.alphas, over),
            "pck_per_category_ci95": {name: _as_dict(m.alphas, cats[:, i]) for i, name in enumerate(names)},
            "single_pair_categories": single}


@dataclass
class Difference:
    """B minus A of one measure: ``overall`` (A,), ``per_category`` (C, A), their 95 % intervals
    ``overall_ci`` (2, A), ``per_category_ci`` (2, C, A) and p-values ``overall_p`` (A,),
    ``per_category_p`` (C, A); ``values_a`` / ``values_b``: each run's (overall (A,), per category
    (C, A)); ``categories`` the C names."""

    overall: np.ndarray
    per_category: np.ndarray
    overall_ci: np.ndarray
    per_category_ci: np.ndarray
    overall_p: np.ndarray
    per_category_p: np.ndarray
    values_a: Tuple[np.ndarray, np.ndarray]
    values_b: Tuple[np.ndarray, np.ndarray]
    categories: List[str]
    alphas: Tuple[float, ...]


def _p_value(stat: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Two-sided permutation p-value (1 + #{|T*| >= |T|}) / (1 + R) per entry; NaN where T is."""
    extreme = np.abs(null) >= np.abs(stat) * (1 - _TOL) - 1e-12
    p = (1.0 + extreme.sum(0)) / (1.0 + null.shape[0])
    return np.where(np.isfinite(stat), p, np.nan)


def paired_difference(a: Measure, b: Measure, n_boot: int = 2000, n_perm: int = 10000,
                      seed: int = 0) -> Difference:
    """B minus A on the same pairs (the same order and categories), with a paired-bootstrap
    95 % interval (``n_boot`` stratified resamples, the same draws for both runs) and a paired
    permutation p-value (``n_perm`` random swaps of the two runs' results per pair)."""
    return paired_differences({"m": (a, b)}, n_boot, n_perm, seed)["m"]


def paired_differences(measures: Mapping[str, Tuple[Measure, Measure]], n_boot: int = 2000,
                       n_perm: int = 10000, seed: int = 0) -> Dict[str, Difference]:
    """:func:`paired_difference` of several measures (name -> (A, B)) of the same pairs at once:
    every measure sees the same resamples and the same swaps, drawn once."""
    names = list(measures)
    flat = [m for name in names for m in measures[name]]  # a0, b0, a1, b1, ...
    first = flat[0]
    for m in flat[1:]:
        if m.category != first.category:
            raise ValueError("paired differences need the same pairs (categories) in every measure")
    for a, b in measures.values():
        if a.alphas != b.alphas:
            raise ValueError("paired differences need the same alphas in both runs")
    boot: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in names]
    for sums in resample(flat, n_boot, seed):
        for i, name in enumerate(names):
            (na, da), (nb, db) = sums[2 * i], sums[2 * i + 1]
            a, b = measures[name]
            oa, ca = value(na, da, a.headline)
            ob, cb = value(nb, db, b.headline)
            boot[i].append((ob - oa, cb - ca))
    null = _permutations([measures[n] for n in names], n_perm, seed)
    out = {}
    cats = [name for name, _ in first.strata()]
    for i, name in enumerate(names):
        a, b = measures[name]
        va, vb = value(*_sums(a)[:2], a.headline), value(*_sums(b)[:2], b.headline)
        overall, per_cat = vb[0] - va[0], vb[1] - va[1]
        ci_o = _interval(np.concatenate([o for o, _ in boot[i]]))
        ci_c = _interval(np.concatenate([c for _, c in boot[i]]))
        single = sorted(set(a.single_pair_categories()) | set(b.single_pair_categories()))
        if len(single) == len(cats):
            ci_o[:] = np.nan
        ci_c[:, [cats.index(c) for c in single]] = np.nan
        null_o, null_c = null[i]
        out[name] = Difference(overall, per_cat, ci_o, ci_c, _p_value(overall, null_o),
                               _p_value(per_cat, null_c), va, vb, cats, a.alphas)
    return out


def _permutations(pairs: Sequence[Tuple[Measure, Measure]], n_perm: int,
                  seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per (A, B) measure pair: (R, A) overall and (R, C, A) per-category differences with each
    pair's two results swapped at random (probability 1/2, independently per pair; the same
    swaps for every measure)."""
    strata = pairs[0][0].strata()
    rngs = [_rng(seed + 1, name) for name, _ in strata]
    base = [(_sums(a)[:2], _sums(b)[:2]) for a, b in pairs]
    results: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in pairs]
    for size in _chunks(n_perm):
        state = [[np.broadcast_to(x, (size, *x.shape)).copy() for x in (*sa, *sb)] for sa, sb in base]
        for c, ((_, idx), rng) in enumerate(zip(strata, rngs)):
            swap = _swaps(rng, size, len(idx))
            for (a, b), (na, da, nb, db) in zip(pairs, state):
                # what moves from B to A; one matrix-vector product per column (much faster
                # than a product with a thin matrix)
                moved = np.ascontiguousarray((b.num[idx] - a.num[idx]).T)
                d_num = np.stack([swap @ col for col in moved], axis=-1)
                d_den = swap @ (b.den[idx] - a.den[idx])
                na[:, c] += d_num
                nb[:, c] -= d_num
                da[:, c] += d_den
                db[:, c] -= d_den
        for i, ((a, b), (na, da, nb, db)) in enumerate(zip(pairs, state)):
            oa, ca = value(na, da, a.headline)
            ob, cb = value(nb, db, b.headline)
            results[i].append((ob - oa, cb - ca))
    return [(np.concatenate([o for o, _ in r]), np.concatenate([c for _, c in r])) for r in results]
