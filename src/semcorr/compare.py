"""Paired comparison of evaluation runs from what they stored (``metrics.json`` and
``predictions.jsonl``; no model call): ``semcorr-compare`` (:mod:`semcorr.cli.compare`) and the
Python API::

    from semcorr.compare import compare_runs, format_comparison, write_comparison
    result = compare_runs(["runs/nn", "runs/gwot"])       # run B (and C ...) minus run A
    print(format_comparison(result))
    write_comparison(result, "runs/compare")               # compare.md, compare.json, figures

The runs must evaluate the same pairs (same dataset, split and pair ids) under the same protocol
(L, frame, direction, average, headline, comparison); otherwise :class:`~semcorr.errors.ConfigError`
says, in one line, what differs (``allow_protocol_mismatch`` accepts different protocols: each
run is then scored under its own, and both are shown). Pairs are aligned by ``pair_id``.

For every run after the first and every measure — PCK under the protocol, and, when both runs
stored left/right data (:mod:`semcorr.metrics.left_right`), the PCK of the subsets n11 / n10 /
n1x, the swap and near-both rates and the geometry-aware PCK — overall and per category, at each
alpha: both runs' values, the difference (later run minus the first), its paired-bootstrap 95 %
interval and a paired permutation p-value (:mod:`semcorr.metrics.bootstrap`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from semcorr import atomic
from semcorr.errors import ConfigError
from semcorr.metrics.bootstrap import LEVEL, Measure, paired_differences
from semcorr.metrics.curve import alpha_grid
from semcorr.metrics.left_right import SUBSETS
from semcorr.run_data import RunData, load_run

PROTOCOL_SETTINGS = ("threshold_by", "frame", "direction", "average", "headline", "strict")
LEFT_RIGHT_MEASURES = (*SUBSETS, "swap_rate", "near_both_rate", "geo_aware")


@dataclass
class CompareSettings:
    """How a comparison is computed (the ``semcorr-compare`` keys of the same names)."""

    bootstrap: int = 2000  # paired-bootstrap resamples for the intervals
    permutations: int = 10000  # random swaps for the p-value (resolution 1 / (1 + this))
    seed: int = 0
    allow_protocol_mismatch: bool = False
    curve_max_alpha: float = 0.2  # per-category PCK curves on [0, this]

    def __post_init__(self) -> None:
        for name in ("bootstrap", "permutations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.curve_max_alpha <= 1:
            raise ConfigError(f"curve_max_alpha must be in (0, 1], got {self.curve_max_alpha!r}")


def _protocol_settings(run: RunData) -> Dict[str, Any]:
    return {k: getattr(run.protocol, k) for k in PROTOCOL_SETTINGS}


def check_comparable(runs: Sequence[RunData], allow_protocol_mismatch: bool = False) -> List[str]:
    """Raise :class:`ConfigError` (one line) when the runs cannot be paired; return notes on what
    differs but is allowed (protocols under ``allow_protocol_mismatch``, alphas not shared)."""
    first = runs[0]
    notes: List[str] = []
    for run in runs[1:]:
        for what in ("dataset", "split"):
            if getattr(run, what) != getattr(first, what):
                raise ConfigError(f"cannot compare runs of different {what}s: {first.name} has "
                                  f"{getattr(first, what)!r}, {run.name} {getattr(run, what)!r}")
        a, b = set(first.pair_id), set(run.pair_id)
        if a != b or len(a) != len(first.pair_id) or len(b) != len(run.pair_id):
            raise ConfigError(f"cannot compare runs of different pair sets: {first.name} has "
                              f"{len(first.pair_id)} pairs, {run.name} {len(run.pair_id)}, "
                              f"{len(a & b)} in common (same data.max_pairs / categories / split?)")
        cats_a = dict(zip(first.pair_id, first.category))
        moved = [p for p, c in zip(run.pair_id, run.category) if cats_a[p] != c]
        if moved:
            raise ConfigError(f"cannot compare: {len(moved)} pairs have other categories in "
                              f"{run.name} than in {first.name} (e.g. {moved[0]})")
        pa, pb = _protocol_settings(first), _protocol_settings(run)
        if pa != pb:
            changed = ", ".join(f"{k} {pa[k]!r} vs {pb[k]!r}" for k in PROTOCOL_SETTINGS if pa[k] != pb[k])
            if not allow_protocol_mismatch:
                raise ConfigError(f"cannot compare runs under different protocols ({first.name} vs "
                                  f"{run.name}: {changed}); --allow-protocol-mismatch compares each "
                                  "run under its own")
            notes.append(f"protocols differ ({changed}): each run is scored under its own: "
                         f"{first.name}: {first.protocol.summary()}; {run.name}: {run.protocol.summary()}")
        if not set(first.alphas) & set(run.alphas):
            raise ConfigError(f"cannot compare: no alpha in common ({first.name}: "
                              f"{list(first.alphas)}, {run.name}: {list(run.alphas)})")
        if set(first.alphas) != set(run.alphas):
            notes.append(f"alphas differ ({first.name}: {list(first.alphas)}, {run.name}: "
                         f"{list(run.alphas)}): compared at those in common")
    return notes


def align(runs: Sequence[RunData]) -> List[RunData]:
    """Every run with its pairs in the first run's order (by ``pair_id``)."""
    order = runs[0].pair_id
    out = [runs[0]]
    for run in runs[1:]:
        where = {p: i for i, p in enumerate(run.pair_id)}
        out.append(run.reorder([where[p] for p in order]))
    return out


def run_measures(run: RunData, alphas: Sequence[float]) -> Dict[str, Measure]:
    """The measures of a run at ``alphas``: ``pck`` (the protocol's average and headline) and,
    with left/right data, the subsets' PCK, the swap and near-both rates (of n11) and the
    geometry-aware PCK (per image or per keypoint as the protocol averages), pooled overall."""
    cols = [run.alphas.index(a) for a in alphas]
    cat, alphas = run.category, tuple(alphas)
    p = run.protocol
    out = {"pck": Measure.pck(run.n_correct[:, cols], run.n_valid, cat, alphas, p.average, p.headline)}
    lr = run.left_right
    if lr is not None:
        count, correct = lr.count.numpy(), lr.correct.numpy()[:, :, cols]
        for s, name in enumerate(SUBSETS):
            out[name] = Measure(correct[:, s], count[:, s], cat, alphas)
        out["swap_rate"] = Measure(lr.swap.numpy()[:, cols], count[:, 0], cat, alphas)
        out["near_both_rate"] = Measure(lr.near_both.numpy()[:, cols], count[:, 0], cat, alphas)
        geo_num, geo_den = lr.geo_correct.numpy()[:, cols], lr.geo_count.numpy()
        out["geo_aware"] = (Measure.mean_of_ratios(geo_num, geo_den, cat, alphas) if p.average == "per_image"
                            else Measure(geo_num, geo_den, cat, alphas))
    return out


def _num(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def _entry(d, alphas, where) -> Dict[str, Dict[str, Any]]:
    """{alpha: {a, b, difference, ci95, p}} at ``where`` (an index into the category axis, or
    None for the overall values)."""
    out = {}
    for j, a in enumerate(alphas):
        pick = (lambda v: v[j]) if where is None else (lambda v: v[where, j])  # noqa: E731
        ci = d.overall_ci[:, j] if where is None else d.per_category_ci[:, where, j]
        lo, hi = _num(ci[0]), _num(ci[1])
        out[f"{a:g}"] = {
            "a": _num(pick(d.values_a[0] if where is None else d.values_a[1])),
            "b": _num(pick(d.values_b[0] if where is None else d.values_b[1])),
            "difference": _num(pick(d.overall if where is None else d.per_category)),
            "ci95": None if lo is None or hi is None else [lo, hi],
            "p": _num(pick(d.overall_p if where is None else d.per_category_p)),
        }
    return out


def compare_runs(paths: Sequence[str | Path], settings: Optional[CompareSettings] = None) -> Dict[str, Any]:
    """Compare runs (folders) pair by pair: every run after the first against the first. Returns
    the ``compare.json`` content (module docstring); the per-category PCK curves of every run are
    under ``curves``."""
    settings = settings or CompareSettings()
    if len(paths) < 2:
        raise ConfigError("semcorr-compare needs at least two runs")
    t0 = time.perf_counter()
    grid = alpha_grid(settings.curve_max_alpha)
    runs = [load_run(p, curve_alphas=grid) for p in paths]
    _unique_names(runs)
    notes = check_comparable(runs, settings.allow_protocol_mismatch)
    runs = align(runs)
    alphas = [a for a in runs[0].alphas if all(a in r.alphas for r in runs[1:])]
    base = runs[0]
    base_measures = run_measures(base, alphas)
    comparisons = []
    for run in runs[1:]:
        other = run_measures(run, alphas)
        shared = [k for k in base_measures if k in other]
        entry: Dict[str, Any] = {"run": run.name, "against": base.name, "measures": {}}
        diffs = paired_differences({k: (base_measures[k], other[k]) for k in shared}, settings.bootstrap,
                                   settings.permutations, settings.seed)
        for key, d in diffs.items():
            entry["measures"][key] = {
                "overall": _entry(d, d.alphas, None),
                "per_category": {c: _entry(d, d.alphas, i) for i, c in enumerate(d.categories)},
            }
        if "n11" not in shared:
            missing = [r.name for r in (base, run) if r.left_right is None]
            entry["left_right_note"] = (f"no left/right comparison: {', '.join(missing)} stored no "
                                        "left/right data (a dataset without a symmetry table, or a "
                                        "run made before semcorr wrote it)")
        comparisons.append(entry)
    return {
        "runs": [{"name": r.name, "path": str(r.path), "dataset": r.dataset, "split": r.split,
                  "n_pairs": len(r.pair_id), "protocol": r.protocol.summary(),
                  "left_right": r.left_right is not None} for r in runs],
        "alphas": [float(a) for a in alphas],
        "categories": list(dict.fromkeys(base.category)),
        "settings": {**asdict(settings), "level": LEVEL,
                     "interval": "paired bootstrap over pairs, stratified by category, percentile",
                     "test": "paired permutation test (each pair's two results swapped with "
                             "probability 1/2), two-sided"},
        "notes": notes,
        "comparisons": comparisons,
        "curves": _curves(runs),
        "seconds": time.perf_counter() - t0,
    }


def _unique_names(runs: Sequence[RunData]) -> None:
    """Runs in folders of the same name are told apart by their parent folder."""
    seen: Dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"


def _curves(runs: Sequence[RunData]) -> Dict[str, Any]:
    """Per run: ``{"alphas": [...], "pck": {"all": [...], category: [...]}}`` (percent)."""
    out = {}
    for run in runs:
        m = Measure.pck(run.curve_correct, run.curve_valid, run.category, tuple(run.curve_alphas),
                        run.protocol.average, run.protocol.headline)
        overall, per_cat, names = m.values()
        pck = {"all": [_num(v) for v in overall]}
        pck.update({c: [_num(v) for v in per_cat[i]] for i, c in enumerate(names)})
        out[run.name] = {"alphas": [round(float(a), 6) for a in run.curve_alphas], "pck": pck,
                         "average": run.protocol.average}
    return out


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------
def _f(x: Optional[float], signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _p(p: Optional[float]) -> str:
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.2g}"


def _ci(ci: Optional[Sequence[float]]) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def format_comparison(result: Dict[str, Any]) -> str:
    """``compare.md``: the runs, then per comparison one table per alpha (PCK per category and
    overall) and, with left/right data, one table of the subsets and rates (overall)."""
    s = result["settings"]
    lines = ["# semcorr-compare", ""]
    for r in result["runs"]:
        lines.append(f"- **{r['name']}**: {r['dataset']} ({r['split']}), {r['n_pairs']} pairs, "
                     f"protocol {r['protocol']}" + ("" if r["left_right"] else "; no left/right data"))
    lines += ["", f"Differences are later run minus **{result['runs'][0]['name']}**, in PCK points. "
              f"Interval: {s['interval']}, {s['bootstrap']} resamples, {int(s['level'] * 100)} %. "
              f"p: {s['test']}, {s['permutations']} random swaps (resolution "
              f"{1 / (1 + s['permutations']):.1g}); seed {s['seed']}. Per-category p-values are "
              "not corrected for multiple comparisons.", ""]
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    for comp in result["comparisons"]:
        a, b = comp["against"], comp["run"]
        lines += ["", f"## {b} − {a}", ""]
        pck = comp["measures"]["pck"]
        for alpha in (f"{x:g}" for x in result["alphas"]):
            lines += [f"### PCK@{alpha}", "",
                      f"| category | {a} | {b} | difference | 95 % interval | p |",
                      "|---|---:|---:|---:|---|---:|"]
            rows = list(pck["per_category"].items()) + [("**all**", pck["overall"])]
            for name, values in rows:
                v = values[alpha]
                lines.append(f"| {name} | {_f(v['a'])} | {_f(v['b'])} | {_f(v['difference'], True)} | "
                             f"{_ci(v['ci95'])} | {_p(v['p'])} |")
            lines.append("")
        if "n11" in comp["measures"]:
            lines += ["### Left/right (all pairs pooled)", "",
                      "| measure | alpha | " + f"{a} | {b} | difference | 95 % interval | p |",
                      "|---|---|---:|---:|---:|---|---:|"]
            for key in LEFT_RIGHT_MEASURES:
                for alpha, v in comp["measures"][key]["overall"].items():
                    lines.append(f"| {_MEASURE_NAMES[key]} | {alpha} | {_f(v['a'])} | {_f(v['b'])} | "
                                 f"{_f(v['difference'], True)} | {_ci(v['ci95'])} | {_p(v['p'])} |")
            lines.append("")
        else:
            lines += [comp.get("left_right_note", ""), ""]
    return "\n".join(lines).rstrip() + "\n"


_MEASURE_NAMES = {"n11": "PCK n11", "n10": "PCK n10", "n1x": "PCK n1x", "swap_rate": "swap rate",
                  "near_both_rate": "near-both rate", "geo_aware": "geo-aware PCK"}


def write_comparison(result: Dict[str, Any], out_dir: str | Path) -> Dict[str, Path]:
    """Write ``compare.md``, ``compare.json``, ``compare.png`` (per-category differences with their
    intervals) and ``pck_curves_per_category.png`` (every run's PCK-alpha curve per category)."""
    from semcorr.viz_stats import plot_category_curves, plot_differences

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = {"md": out / "compare.md", "json": out / "compare.json"}
    atomic.write_text(written["md"], format_comparison(result))
    atomic.write_json(written["json"], result)  # strict JSON: undefined values are already null
    figure = plot_differences(result, out / "compare.png")
    if figure is not None:
        written["figure"] = figure
    curves = {name: (c["alphas"], c["pck"]) for name, c in result["curves"].items()}
    written["curves"] = plot_category_curves(curves, out / "pck_curves_per_category.png",
                                             title=f"PCK vs alpha per category ({result['runs'][0]['dataset']})")
    return written


def nearest_alpha(alphas: Sequence[float], target: float = 0.1) -> float:
    """The alpha of ``alphas`` closest to ``target`` (the figure's)."""
    return min(alphas, key=lambda a: (abs(a - target), a))


def headline_lines(result: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(comparison, one-line summary at each alpha) for the terminal."""
    out = []
    for comp in result["comparisons"]:
        parts = []
        for alpha, v in comp["measures"]["pck"]["overall"].items():
            parts.append(f"@{alpha}: {_f(v['difference'], True)} {_ci(v['ci95'])} p={_p(v['p'])}")
        out.append((f"{comp['run']} − {comp['against']}", "; ".join(parts)))
    return out
