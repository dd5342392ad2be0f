"""``pose_align.*`` (:class:`PoseAlignConfig`) and the names it is checked against, apart from
:mod:`semcorr.pose_align` (which imports torch): the run config and ``--help`` read it light."""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.checks import number, one_of

LABEL = "uses ground-truth left/right labels (†)"
SCORES = ("mask", "mutual_nn")
MASKS = ("auto", "box")


@dataclass
class PoseAlignConfig:
    """``pose_align.*``: GeoAware-SC's test-time flip (docs/pose_align.md). Off by default: it
    uses ground-truth left/right keypoint labels.

    Attributes:
        enabled: match the mirrored source too and keep it per pair when its score is lower.
        score: ``mask`` (GeoAware-SC's default: mean over foreground source cells of the distance
            to the nearest foreground target cell, on a ``resolution`` x ``resolution`` grid) or
            ``mutual_nn`` (their ``--MUTUAL_NN``: mask-free, mean distance of the mutual nearest
            neighbours).
        masks: foreground of the ``mask`` score: ``auto`` (the dataset's segmentation where it
            ships one, SPair-71k's ``Segmentation/``, else the annotated box) or ``box``.
            GeoAware-SC uses SAM masks prompted with the box instead (not packaged).
        resolution: the grid of the ``mask`` score (GeoAware-SC: 64).
    """

    enabled: bool = False
    score: str = "mask"
    masks: str = "auto"
    resolution: int = 64

    def __post_init__(self) -> None:
        one_of(self, "score", SCORES)
        one_of(self, "masks", MASKS)
        number(self, "resolution", ge=1, integer=True)
