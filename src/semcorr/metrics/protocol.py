"""Named evaluation protocols: every choice that changes a published PCK number, in one object.

A :class:`Protocol` is passed whole to everything that scores, draws or writes PCK (the metric,
the curves, ``predictions.jsonl``, the figures, the report); ``docs/datasets.md`` lists each
dataset's protocols and the reference code each follows:

=============  ==========================================================================
field          meaning
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
overrides      the fields the command line changed (``metric.threshold_by`` ...), if any
=============  ==========================================================================

A dataset declares its named protocols (``PairDataset.protocols``) and a default;
:func:`resolve_protocol` picks one by name and applies the config's explicit overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

THRESHOLD_BY = ("bbox", "bbox_kp", "image")
AVERAGES = ("per_image", "per_keypoint")
DIRECTIONS = ("src_to_trg", "trg_to_src")
HEADLINES = ("pooled", "category_mean")
OVERRIDABLE = ("threshold_by", "average", "strict")  # metric.<key> on the command line


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (the table in the module docstring); checked when made."""

    name: str = "custom"
    threshold_by: str = "bbox"
    frame: Optional[int] = None
    direction: str = "src_to_trg"
    average: str = "per_image"
    headline: str = "pooled"
    strict: bool = False
    reference: str = ""
    overrides: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, valid in (("threshold_by", THRESHOLD_BY), ("average", AVERAGES),
                           ("direction", DIRECTIONS), ("headline", HEADLINES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        if self.frame is not None and (int(self.frame) != self.frame or int(self.frame) <= 0):
            raise ValueError(f"protocol frame must be a positive size in pixels, got {self.frame!r}")
        if not isinstance(self.strict, bool):
            raise ValueError(f"protocol strict must be true or false, got {self.strict!r}")

    @property
    def comparison(self) -> str:
        """``<`` (strict) or ``<=``."""
        return "<" if self.strict else "<="

    def as_dict(self) -> Dict[str, Any]:
        """The ``protocol`` entry of ``metrics.json`` (``overrides`` only when there are any)."""
        out = asdict(self)
        out["overrides"] = list(self.overrides)
        if not self.overrides:
            del out["overrides"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Protocol":
        """The inverse of :meth:`as_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown protocol keys {unknown}; valid: {', '.join(sorted(known))}")
        values = dict(data)
        values["overrides"] = tuple(values.get("overrides") or ())
        return cls(**values)

    def summary(self) -> str:
        """One line naming the protocol and its settings, e.g. ``ncnet (L: image in a 224 frame,
        trg_to_src, per_image, <=)``."""
        frame = f" in a {self.frame} frame" if self.frame else ""
        head = ", mean of categories" if self.headline == "category_mean" else ""
        changed = f"; overridden: {', '.join(self.overrides)}" if self.overrides else ""
        return (f"{self.name} (L: {self.threshold_by}{frame}, {self.direction}, "
                f"{self.average}{head}, {self.comparison}{changed})")


def protocol(**settings: Any) -> Protocol:
    """A :class:`Protocol` from keyword settings (checked); what datasets declare."""
    return Protocol(**settings)


def resolve_protocol(protocols: Mapping[str, Protocol], default: str, name: Optional[str] = None,
                     overrides: Optional[Mapping[str, Any]] = None) -> Protocol:
    """The protocol named ``name`` (None: ``default``) among ``protocols``, with ``overrides``
    (None values ignored) on top. The result carries its ``name`` and, when an override changed a
    setting, ``overrides``: the changed keys (reported next to the numbers)."""
    chosen = name or default
    if chosen not in protocols:
        raise ValueError(f"unknown protocol {chosen!r} for this dataset; valid: {', '.join(protocols)}")
    out = replace(protocols[chosen], name=chosen)
    changed = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ValueError(f"protocol key {key!r} cannot be overridden; valid: {', '.join(OVERRIDABLE)}")
        if value is not None and value != getattr(out, key):
            changed[key] = value
    if changed:
        out = replace(out, **changed, overrides=tuple(changed))
    return out
