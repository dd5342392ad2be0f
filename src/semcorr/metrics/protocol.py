"""Named evaluation protocols: every choice that changes a published PCK number, in one dict.

A protocol is a plain dict with these keys (``docs/datasets.md`` lists each dataset's protocols and
the reference code each follows):

=============  ==========================================================================
key            meaning
=============  ==========================================================================
name           the protocol's name (``metric.protocol=<name>``), recorded in metrics.json
threshold_by   L, the length alpha multiplies: ``bbox`` (target box), ``bbox_kp`` (box
               around the valid target keypoints) or ``image`` (target image), max(w, h)
frame          None: score in original pixels; an int F: keypoints, predictions and boxes
               are scaled anisotropically into an F x F frame first (x * F / w,
               y * F / h, as NC-Net and CATs do), so ``image`` gives L = F
direction      ``src_to_trg`` (source keypoints are predicted in the target) or
               ``trg_to_src`` (the two images of every pair swap roles: target keypoints
               are predicted in the source and scored against the source ground truth)
average        ``per_image`` (PCK of each pair, then the mean) or ``per_keypoint``
headline       what ``pck`` reports: ``pooled`` (over every pair / keypoint) or
               ``category_mean`` (the unweighted mean of the per-category values)
strict         False: correct when error <= alpha * L; True: error < alpha * L
reference      the repository and file whose evaluation this follows (documentation only)
=============  ==========================================================================

A dataset declares its named protocols (``PairDataset.protocols``) and a default;
:func:`resolve_protocol` picks one by name and applies the config's explicit overrides.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

THRESHOLD_BY = ("bbox", "bbox_kp", "image")
AVERAGES = ("per_image", "per_keypoint")
DIRECTIONS = ("src_to_trg", "trg_to_src")
HEADLINES = ("pooled", "category_mean")

DEFAULTS: Dict[str, Any] = {
    "threshold_by": "bbox", "frame": None, "direction": "src_to_trg", "average": "per_image",
    "headline": "pooled", "strict": False, "reference": "",
}
OVERRIDABLE = ("threshold_by", "average", "strict")  # metric.<key> on the command line


def protocol(**settings: Any) -> Dict[str, Any]:
    """A protocol dict: :data:`DEFAULTS` with ``settings`` on top (checked)."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown protocol keys {unknown}; valid: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **settings}
    check_protocol(out)
    return out


def check_protocol(p: Mapping[str, Any]) -> None:
    """Raise ValueError naming the valid values when a protocol setting is not one of them."""
    for key, valid in (("threshold_by", THRESHOLD_BY), ("average", AVERAGES),
                       ("direction", DIRECTIONS), ("headline", HEADLINES)):
        if p[key] not in valid:
            raise ValueError(f"unknown {key} {p[key]!r}; valid: {', '.join(valid)}")
    if p["frame"] is not None and int(p["frame"]) <= 0:
        raise ValueError(f"protocol frame must be a positive size in pixels, got {p['frame']!r}")
    if not isinstance(p["strict"], bool):
        raise ValueError(f"protocol strict must be true or false, got {p['strict']!r}")


def resolve_protocol(protocols: Mapping[str, Mapping[str, Any]], default: str,
                     name: Optional[str] = None,
                     overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The protocol named ``name`` (None: ``default``) among ``protocols``, with ``overrides``
    (None values ignored) on top. The result holds ``name`` and, when an override changed a
    setting, ``overrides``: the list of changed keys (report them next to the numbers)."""
    chosen = name or default
    if chosen not in protocols:
        raise ValueError(f"unknown protocol {chosen!r} for this dataset; valid: {', '.join(protocols)}")
    out: Dict[str, Any] = {"name": chosen, **DEFAULTS, **protocols[chosen]}
    changed = []
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ValueError(f"protocol key {key!r} cannot be overridden; valid: {', '.join(OVERRIDABLE)}")
        if value is not None and value != out[key]:
            out[key] = value
            changed.append(key)
    if changed:
        out["overrides"] = changed
    check_protocol(out)
    return out


def metric_kwargs(p: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings of a protocol the PCK metric takes (see :class:`semcorr.metrics.PCK`)."""
    return {k: p[k] for k in ("threshold_by", "average", "strict", "frame", "headline")}
