"""What an evaluation adds to ``metrics.json`` beyond PCK, from the per-pair counts its
:class:`~semcorr.report.EvalReport` kept (no model call): bootstrap intervals
(:mod:`semcorr.metrics.bootstrap`), left/right diagnostics (:mod:`semcorr.metrics.left_right`),
per-category PCK-alpha curves, and a note when only some pairs were evaluated; plus their text
for the printed table and their scalars for the loggers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from semcorr.metrics.bootstrap import LEVEL, Measure, bootstrap_intervals
from semcorr.metrics.left_right import SUBSETS, left_right_summary
from semcorr.metrics.protocol import Protocol


def subset_note(dataset: Any, limit_test_batches: Any = None) -> Optional[Dict[str, Any]]:
    """The settings that narrowed the evaluated pairs (the dataset's
    :meth:`~semcorr.data.base.PairDataset.pair_selection`, e.g. ``{"data.max_pairs": 100}``, and
    ``trainer.limit_test_batches``), or None when every pair of the split was evaluated."""
    selection = getattr(dataset, "pair_selection", None)
    out: Dict[str, Any] = dict(selection()) if callable(selection) else {}
    if limit_test_batches not in (None, 1.0):
        out["trainer.limit_test_batches"] = limit_test_batches
    return out or None


def evaluation_statistics(report, protocol: Protocol, alphas: Sequence[float], n_boot: int,
                          seed: int = 0) -> Dict[str, Any]:
    """The extra ``metrics.json`` entries of a finished test: ``pck_ci95`` and
    ``pck_per_category_ci95`` with ``bootstrap`` (how they were made; absent when
    ``n_boot`` is 0), ``left_right`` (absent without left/right data) and
    ``pck_curve_per_category``."""
    n_correct, n_valid, category = report.pair_counts()
    out: Dict[str, Any] = {}
    measure = Measure.pck(n_correct.numpy(), n_valid.numpy(), category, alphas, protocol.average,
                          protocol.headline)
    if n_boot > 0 and len(category):
        intervals = bootstrap_intervals(measure, n_boot, seed)
        single = intervals.pop("single_pair_categories")
        out.update(intervals)
        out["bootstrap"] = {"resamples": int(n_boot), "seed": int(seed), "level": LEVEL,
                            "method": "pairs resampled with replacement within each category; "
                                      "percentile interval of the protocol's headline",
                            "single_pair_categories": single}
    counts = report.left_right()
    if counts is not None:
        out["left_right"] = left_right_summary(counts, category, alphas, protocol)
    curve_correct, curve_valid = report.curve_counts()
    if len(category):
        grid = report.curve_alphas
        overall, per_cat, names = Measure.pck(curve_correct.numpy(), curve_valid.numpy(), category, grid,
                                              protocol.average, protocol.headline).values()
        out["pck_curve_per_category"] = {
            "alphas": [round(float(a), 6) for a in grid], "average": protocol.average,
            "pck": {name: [_finite(v) for v in per_cat[i]] for i, name in enumerate(names)}}
    return out


def _finite(v: float) -> Optional[float]:
    return float(v) if np.isfinite(v) else None


def with_interval(value: float, ci: Optional[Sequence[float]]) -> str:
    """``62.31 ± 0.84`` (± half the width of the interval) when the value lies within a tenth of
    that half-width of the interval's middle, else ``62.31 [61.20, 62.90]``; ``62.31`` without
    an interval."""
    if ci is None:
        return f"{value:.2f}"
    lo, hi = ci
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    if abs(value - mid) <= 0.1 * half + 1e-9:
        return f"{value:.2f} ± {half:.2f}"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def interval_legend(metrics: Mapping[str, Any]) -> List[str]:
    """The lines under the PCK table that say what its intervals are and which pairs it covers."""
    lines = []
    boot = metrics.get("bootstrap")
    if boot:
        lines.append(f"±: half-width of the {int(boot['level'] * 100)} % bootstrap interval over pairs "
                     f"({boot['resamples']} resamples within each category, seed {boot['seed']}); "
                     "[low, high] where the interval is not symmetric about the value")
        single = boot.get("single_pair_categories") or []
        if single:
            lines.append(f"no interval for {len(single)} categor{'y' if len(single) == 1 else 'ies'} "
                         "with a single pair (resampling it cannot vary; it adds no variability to "
                         "the overall interval)")
    subset = metrics.get("pairs_subset")
    if subset:
        keys = ", ".join(f"{k}={v}" for k, v in subset.items())
        lines.append(f"note: a subset of the split's pairs was evaluated ({keys}); the numbers and "
                     "intervals describe these pairs, not the benchmark")
    return lines


def left_right_table(section: Mapping[str, Any]) -> str:
    """The overall left/right numbers as text (``metrics.json`` ``left_right``)."""
    alphas = list(section["pck"].keys())
    head = f"{'left/right':<30}{'share':>8}" + "".join(f"{'@' + a:>10}" for a in alphas)
    lines = [head, "-" * len(head)]

    def row(name: str, share: str, values: Mapping[str, Optional[float]]) -> None:
        lines.append(f"{name:<30}{share:>8}" + "".join(
            f"{'—' if values[a] is None else format(values[a], '.2f'):>10}" for a in alphas))

    for name in SUBSETS:
        s = section[name]
        share = "—" if s["share"] is None else f"{s['share']:.3f}"
        row(f"PCK {name} (n={s['count']})", share, s["pck"])
    row("swap rate (% of n11)", "", section["swap_rate"])
    row("near-both rate (% of n11)", "", section["near_both_rate"])
    geo = section["geo_aware"]
    share = "—" if geo["keypoint_share"] is None else f"{geo['keypoint_share']:.3f}"
    row(f"geo-aware PCK (n={geo['count']})", share, geo["pck"])
    lines.append("subsets and rates: GECO, keypoints pooled; geo-aware: GeoAware-SC "
                 f"({geo['average'].replace('_', ' ')}); "
                 "share: of the scored keypoints (docs/evaluation.md)")
    return "\n".join(lines)


def logged_scalars(metrics: Mapping[str, Any], prefix: str = "test") -> Dict[str, float]:
    """The interval bounds and overall left/right numbers as flat scalars for the loggers
    (``test/pck_ci95_low@0.1``, ``test/left_right/n11/pck@0.1``, ``test/left_right/swap_rate@0.1``,
    ...); undefined values are left out."""
    out: Dict[str, float] = {}
    for a, ci in (metrics.get("pck_ci95") or {}).items():
        if ci is not None:
            out[f"{prefix}/pck_ci95_low@{a}"], out[f"{prefix}/pck_ci95_high@{a}"] = ci
    lr = metrics.get("left_right")
    if lr:
        base = f"{prefix}/left_right"
        for name in SUBSETS:
            if lr[name]["share"] is not None:
                out[f"{base}/{name}/share"] = lr[name]["share"]
            out.update({f"{base}/{name}/pck@{a}": v for a, v in lr[name]["pck"].items() if v is not None})
        for key in ("swap_rate", "near_both_rate"):
            out.update({f"{base}/{key}@{a}": v for a, v in lr[key].items() if v is not None})
        out.update({f"{base}/geo_aware/pck@{a}": v for a, v in lr["geo_aware"]["pck"].items() if v is not None})
    return out
