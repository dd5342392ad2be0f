"""Feature upsampling before matching (``backbone.upsample=k``, the DIFT / GECO practice).

A native map of (h, w) cells of ``s`` px becomes (k h, k w) cells of ``s / k`` px by bilinear
interpolation (``align_corners=False``). That interpolation puts output cell j at input position
``(j + 0.5) / k - 0.5`` (in input cells), i.e. at pixel

    ((j + 0.5) / k - 0.5) * s + (s - 1) / 2  =  j * s' + (s' - 1) / 2,   s' = s / k,

which is exactly the centre of cell j of a grid with ``s'``-px cells: the keypoint <-> cell rules
(:func:`~semcorr.backbones.base.cell_centers`, :func:`~semcorr.backbones.base.valid_cells`,
:func:`~semcorr.matchers.transfer.cell_index`) hold on the upsampled map unchanged. Output cells
beyond the outermost input centres (the first and last half input cell) take the border value.

``s / k`` need not be an integer (DINOv2's 14 px upsampled by 4: 3.5 px), but it must be exact
in binary floating point, so that a keypoint on a cell boundary falls in the same cell as with an
integer stride: ``k / gcd(s, k)`` must be a power of two (14 px: k = 2, 4, 7, 8, 14, 16, 28, ...;
not 3 or 5). :func:`upsampled_stride` checks this.

Memory: the map grows k^2-fold (D * k^2 h w floats per image) and every matcher's (Ns, Nt) score
matrix k^4-fold (DINOv2-B/14 at 840 px, 60 x 60 cells: 3600^2 float32 = 52 MB per pair; k = 2:
829 MB; k = 4: 13.3 GB). The feature caches keep the native map (upsampling is applied after them).
"""

from __future__ import annotations

from fractions import Fraction

import torch.nn.functional as F

from semcorr.backbones.base import FeatureMap


def _is_exact(ratio: Fraction) -> bool:
    """A fraction whose binary floating-point value is exact (its denominator a power of two)."""
    return ratio.denominator & (ratio.denominator - 1) == 0


def upsampled_stride(stride: float, k: int) -> float:
    """The cell size ``stride / k`` of a map upsampled by ``k`` (an ``int`` when it is one).

    Raises ``ValueError`` when ``stride / k`` is not exactly representable in binary floating
    point (``k / gcd(stride, k)`` not a power of two), naming factors that work.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {k!r}")
    ratio = Fraction(stride) / int(k)
    if not _is_exact(ratio):
        good = [f for f in range(2, 65) if _is_exact(Fraction(stride) / f)][:8]
        raise ValueError(f"upsample={k} makes {stride:g}-px cells {stride:g}/{k} px, which is not "
                         f"exact in binary floating point (keypoints on cell borders would drift); "
                         f"use a factor k with k / gcd({stride:g}, k) a power of two, e.g. "
                         f"{', '.join(map(str, good))}")
    return int(ratio) if ratio.denominator == 1 else float(ratio)


def upsample_features(fmap: FeatureMap, k: int) -> FeatureMap:
    """``fmap`` with (B, D, h, w) features bilinearly upsampled to (B, D, k h, k w) and stride
    ``stride / k`` (see the module docstring); returned as it is for ``k == 1``. ``valid`` is
    dropped (it belongs to the native grid; the pipeline computes it on the new one)."""
    if k == 1:
        return fmap
    stride = upsampled_stride(fmap.stride, k)
    h, w = fmap.grid
    feats = F.interpolate(fmap.features, size=(h * k, w * k), mode="bilinear", align_corners=False)
    return FeatureMap(features=feats, stride=stride)
