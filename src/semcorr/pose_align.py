"""Pose-Align: match the mirrored source too, keep it when its orientation score is lower.

GeoAware-SC's test-time ``ADAPT_FLIP`` (Zhang et al., "Telling Left from Right", CVPR 2024;
``Junyi42/GeoAware-SC``), the "†" rows of the GW-OT paper's Tab. 2. It **uses ground-truth
left/right labels** (to re-label the mirrored source's keypoints), so it is never on by default
and a run that uses it says so (``metrics.json`` ``pose_align``, the printed headline).

For a batch of pairs (``docs/pose_align.md`` has the rule with the reference code, line by line):

1. **Mirror the source.** The image content is mirrored inside its box on the canvas (GeoAware-SC
   mirrors the original image and puts it on the canvas again; PIL's LANCZOS commutes with the
   mirror, so the two are the same pixels). Keypoints: ``x' = W - x`` on their continuous canvas
   (``flip_keypoints``), i.e. ``x' = W - 1 - x`` in our pixel-index convention
   (``mirror="canvas"``, for a centred canvas); for content at the top-left of the canvas,
   ``x' = 2 left + w - 1 - x`` about the content box (``mirror="content"``, not in GeoAware-SC).
2. **Re-label.** Keypoint a of the mirrored source is the mirror of its left/right partner b
   (``permute_indices(flip_list, vis)``): swapped only for pairs whose two keypoints are both
   visible in both images (``sym_pairs``); others keep their own mirrored location.
3. **Match both** with the same matcher. GW-OT's symmetry term sees the mirrored source's
   symmetric cell pairs (they follow the re-labelled keypoints).
4. **Decide per pair** with an orientation score (lower is better): flipped iff
   ``score(mirrored) < score(original)`` (strict, as ``optimized_kps_1_to_2``).
   ``mask``: :func:`masked_min_distance` (``get_distance``); ``mutual_nn``:
   :func:`mutual_nn_distance` (``get_distance_mutual_nn``).
5. **Merge per keypoint** (``optimized_kps_1_to_2``): when flipped, keypoint a takes the mirrored
   branch's prediction only if it is valid and either has no left/right partner in the dataset's
   table or its partner is valid too; the others keep the original prediction.

Pure torch: :class:`PoseAlignedNet` is a :class:`~semcorr.net.CorrespondenceNet` whose
``forward`` does the above; Lightning never appears here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from semcorr.data.base import FLIP_SUFFIX
from semcorr.net import CorrespondenceNet, MatchOutput
from semcorr.matchers.base import MatchResult
from semcorr.pose_align_config import LABEL, MASKS, SCORES, PoseAlignConfig  # noqa: F401  (re-exported)

MIRRORS = ("canvas", "content")
MASKED_OUT = -100000.0  # GeoAware-SC's value for masked-out feature elements

PartnerFn = Callable[[Optional[str]], Optional[Dict[int, int]]]




# ------------------------------------------------------------------------------------------------
# Mirroring the source
# ------------------------------------------------------------------------------------------------
def mirror_sum(batch: Dict[str, Any], mirror: str) -> torch.Tensor:
    """(B,) float ``m`` with mirrored ``x' = m - x`` (pixel-index) for the source: ``W - 1`` about
    the canvas (``canvas``, GeoAware-SC's ``x' = W - x`` in continuous coordinates) or
    ``2 left + w - 1`` about the content box (``content``)."""
    if mirror not in MIRRORS:
        raise ValueError(f"unknown mirror {mirror!r}; valid: {', '.join(MIRRORS)}")
    bsz, width = batch["src_img"].shape[0], batch["src_img"].shape[-1]
    if mirror == "canvas":
        return torch.full((bsz,), float(width - 1), device=batch["src_img"].device)
    left = _content_left(batch)
    return (2 * left + batch["src_content_hw"][:, 1] - 1).float().to(batch["src_img"].device)


def _content_left(batch: Dict[str, Any]) -> torch.Tensor:
    yx = batch.get("src_content_yx")
    return torch.zeros_like(batch["src_content_hw"][:, 1]) if yx is None else yx[:, 1]


def mirror_content(images: torch.Tensor, content_yx: Optional[torch.Tensor],
                   content_hw: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images with the content box of each mirrored in place (padding untouched):
    the canvas of the mirrored original image."""
    out = images.clone()
    for b in range(images.shape[0]):
        top, left = (0, 0) if content_yx is None else (int(v) for v in content_yx[b])
        h, w = (int(v) for v in content_hw[b])
        out[b, :, top:top + h, left:left + w] = images[b, :, top:top + h, left:left + w].flip(-1)
    return out


def flip_permutation(sym_pairs: Optional[torch.Tensor], n_keypoints: int, bsz: int,
                     device=None) -> torch.Tensor:
    """(B, K) long: row a of the mirrored source is keypoint ``perm[a]`` of the original: the
    partner b for every pair (a, b) of ``sym_pairs`` (B, S, 2) (-1: padding; the pairs whose
    keypoints are valid in both images), a itself otherwise (``permute_indices(flip_list, vis)``)."""
    perm = torch.arange(n_keypoints, device=device).repeat(bsz, 1)
    if sym_pairs is None or sym_pairs.numel() == 0:
        return perm
    for b in range(bsz):
        for a, c in sym_pairs[b].tolist():
            if a >= 0 and c >= 0:
                perm[b, a], perm[b, c] = c, a
    return perm


def mirrored_source(batch: Dict[str, Any], mirror: str) -> Dict[str, Any]:
    """The batch with its source mirrored (step 1-2 of the module docstring): ``src_img``,
    ``src_kps`` (mirrored, re-labelled), ``src_mask`` (mirrored like the keypoints, as
    GeoAware-SC mirrors its canvas mask) and ``src_id`` (suffixed); ``src_digest`` dropped (it names
    the unmirrored pixels: the feature cache hashes the mirror itself); everything else shared."""
    out = dict(batch)
    out.pop("src_digest", None)
    out["src_img"] = mirror_content(batch["src_img"], batch.get("src_content_yx"), batch["src_content_hw"])
    m = mirror_sum(batch, mirror)
    kps = batch["src_kps"]
    perm = flip_permutation(batch.get("sym_pairs"), kps.shape[1], kps.shape[0], kps.device)
    relabelled = torch.gather(kps, 1, perm[..., None].expand(-1, -1, 2))
    mirrored = relabelled.clone()
    mirrored[..., 0] = m[:, None].to(kps.dtype) - relabelled[..., 0]
    out["src_kps"] = mirrored
    if "src_mask" in batch:
        out["src_mask"] = _mirror_masks(batch, mirror)
    if "src_id" in batch:
        out["src_id"] = [f"{i}{FLIP_SUFFIX}" for i in batch["src_id"]]  # the dataset's id of the mirror image
    return out


def _mirror_masks(batch: Dict[str, Any], mirror: str) -> torch.Tensor:
    masks = batch["src_mask"]
    if mirror == "canvas":
        return masks.flip(-1)
    return mirror_content(masks[:, None], batch.get("src_content_yx"), batch["src_content_hw"])[:, 0]


def flipped_keypoints_used(batch: Dict[str, Any], partner: PartnerFn) -> torch.Tensor:
    """(B, K) bool: where a flipped pair takes the mirrored branch's prediction (step 5): valid
    keypoints without a left/right partner in the table, and valid keypoints whose partner is
    valid too (``optimized_kps_1_to_2``'s ``vis_flip``). The table comes from ``partner(category)``
    and the keypoints' ``kps_ids``."""
    valid = batch["kps_valid"].bool()
    ids = batch["kps_ids"]
    out = torch.zeros_like(valid)
    for b in range(valid.shape[0]):
        table = partner(batch["category"][b])
        if table is None:
            raise ValueError(f"pose_align: no left/right keypoint table for category "
                             f"{batch['category'][b]!r}; Pose-Align needs one (SPair-71k, AP-10K)")
        present = {int(i): k for k, i in enumerate(ids[b].tolist()) if i >= 0 and bool(valid[b, k])}
        for k, i in enumerate(ids[b].tolist()):
            if not bool(valid[b, k]):
                continue
            if i < 0:
                raise ValueError(f"pose_align: pair {batch.get('pair_id', ['?'] * (b + 1))[b]} has "
                                 "keypoints without ids; the left/right labels need kps_ids")
            mate = table.get(int(i))
            out[b, k] = mate is None or mate in present
    return out


# ------------------------------------------------------------------------------------------------
# Orientation scores (lower: the source and target agree better)
# ------------------------------------------------------------------------------------------------
def _normalised(features: torch.Tensor) -> torch.Tensor:
    """(D, h, w) features divided by their norm + 1e-10 per cell (``normalize_feats``)."""
    return features / (features.norm(dim=0, keepdim=True) + 1e-10)


def masked_min_distance(src: torch.Tensor, trg: torch.Tensor, src_mask: torch.Tensor,
                        trg_mask: torch.Tensor, resolution: int = 64) -> torch.Tensor:
    """GeoAware-SC's mask score (``get_distance``) of one pair, a 0-d tensor.

    Args:
        src, trg: (D, h, w), (D, h', w') cell features.
        src_mask, trg_mask: (H, W), (H', W') bool foreground on the canvases.
        resolution: R, the score's grid.
    Math: features L2-normalised per cell and bilinearly resized to R x R (``align_corners``
    False), masks resized to R x R (nearest); features times mask, then every element equal to 0
    set to -1e5 (so background cells are never the nearest); for each foreground source cell i,
    d_i = min_j ||f_i - g_j|| over all R² target cells; the score is the mean of d_i over the
    foreground source cells (+inf when there is none: no decision, the original is kept).
    """
    size = (int(resolution), int(resolution))

    def prepared(features: torch.Tensor, mask: torch.Tensor):
        f = F.interpolate(_normalised(features.float())[None], size=size, mode="bilinear",
                          align_corners=False)[0]
        m = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0]
        f = f * m
        f = f.masked_fill(f == 0, MASKED_OUT)
        return f.flatten(1).T, m.flatten() == 1

    a, fg = prepared(src, src_mask)
    b, _ = prepared(trg, trg_mask)
    if not bool(fg.any()):
        return torch.tensor(float("inf"), device=src.device)
    return torch.cdist(a[fg], b).amin(1).mean()


def mutual_nn_distance(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """GeoAware-SC's mask-free score (``get_distance_mutual_nn``) of one pair, a 0-d tensor: on
    the L2-normalised (D, h, w) / (D, h', w') cell features (every cell), D = cdist; i is mutual
    when the nearest target cell of i has i as its nearest source cell; the score is the mean of
    min_j D_ij over mutual i (never empty: the closest pair is mutual)."""
    a = _normalised(src.float()).flatten(1).T
    b = _normalised(trg.float()).flatten(1).T
    d = torch.cdist(a, b)
    nearest = d.argmin(1)
    mutual = d.argmin(0)[nearest] == torch.arange(a.shape[0], device=a.device)
    return d.amin(1)[mutual].mean()


def orientation_scores(out: MatchOutput, batch: Dict[str, Any], score: str,
                       resolution: int = 64) -> torch.Tensor:
    """(B,) the orientation score of each pair of a match (features after the head)."""
    values = []
    for b in range(out.src.features.shape[0]):
        s, t = out.src.features[b], out.trg.features[b]
        if score == "mutual_nn":
            values.append(mutual_nn_distance(s, t))
        else:
            if "src_mask" not in batch or "trg_mask" not in batch:
                raise ValueError("pose_align.score=mask needs foreground masks in the batch "
                                 "(src_mask, trg_mask); the dataset serves them when asked "
                                 "(PairDataset.serve_masks)")
            values.append(masked_min_distance(s, t, batch["src_mask"][b], batch["trg_mask"][b],
                                              resolution))
    return torch.stack(values)


# ------------------------------------------------------------------------------------------------
# The net
# ------------------------------------------------------------------------------------------------
class PoseAlignedNet(CorrespondenceNet):
    """A :class:`~semcorr.net.CorrespondenceNet` whose ``forward`` applies Pose-Align (the module
    docstring). Same weights, same state-dict keys.

    Args (besides the net's): ``options`` (:class:`PoseAlignConfig`), ``partner(category)`` ->
    ``{keypoint id: mirrored id}`` (the dataset's left/right table, e.g.
    :meth:`semcorr.data.symmetry.Symmetry.partner`), ``mirror`` (``canvas`` | ``content``, see
    :func:`mirror_sum`).

    ``forward`` returns the merged :class:`~semcorr.net.MatchOutput` (``src`` / ``result``: the
    original branch's, ``pred`` / ``pred_orig`` / ``score`` merged) with
    ``result.extras["pose_align"]``: ``flipped`` (B,) bool, ``score`` (B,) and ``score_flipped``
    (B,) orientation scores, ``used`` (B, K) bool keypoints that took the mirrored prediction.
    """

    def __init__(self, *args, options: Optional[PoseAlignConfig] = None,
                 partner: Optional[PartnerFn] = None, mirror: str = "canvas", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if partner is None:
            raise ValueError("pose_align needs the dataset's left/right keypoint table (partner)")
        if mirror not in MIRRORS:
            raise ValueError(f"unknown mirror {mirror!r}; valid: {', '.join(MIRRORS)}")
        self.options = options if options is not None else PoseAlignConfig(enabled=True)
        self.partner = partner
        self.mirror = mirror

    def forward(self, batch: Dict[str, Any], use_cache: Optional[bool] = None) -> MatchOutput:
        use_cache = (not self.training) if use_cache is None else use_cache
        flipped_batch = mirrored_source(batch, self.mirror)
        with self._stage("backbone", batch):
            src, trg = self.features(batch, use_cache)
            src_f = self.image_features(flipped_batch, "src", use_cache)  # same content box
        with self._stage("match", batch):
            out = self.match(batch, src, trg)
            out_f = self.match(flipped_batch, src_f, trg)
            opts = self.options
            score = orientation_scores(out, batch, opts.score, opts.resolution)
            score_f = orientation_scores(out_f, flipped_batch, opts.score, opts.resolution)
            flipped = score_f < score
            used = flipped[:, None] & flipped_keypoints_used(batch, self.partner).to(flipped.device)
        pick = used[..., None]
        extras = dict(out.result.extras)
        extras["pose_align"] = {"flipped": flipped, "score": score, "score_flipped": score_f,
                                "used": used}
        return MatchOutput(src=out.src, trg=out.trg,
                           result=MatchResult(scores=out.result.scores, extras=extras),
                           pred=torch.where(pick, out_f.pred, out.pred),
                           pred_orig=torch.where(pick, out_f.pred_orig, out.pred_orig),
                           score=torch.where(used, out_f.score, out.score))


def pose_align_summary(options: PoseAlignConfig, flipped: Sequence[bool],
                       categories: Sequence[str]) -> Dict[str, Any]:
    """The ``pose_align`` entry of ``metrics.json``: the settings, the label (``LABEL``) and how
    many pairs took the mirrored branch (overall and per category)."""
    per_category: Dict[str, Dict[str, int]] = {}
    for f, c in zip(flipped, categories):
        entry = per_category.setdefault(c, {"pairs": 0, "flipped": 0})
        entry["pairs"] += 1
        entry["flipped"] += int(bool(f))
    return {"enabled": bool(options.enabled), "label": LABEL, "score": options.score,
            "masks": options.masks if options.score == "mask" else None,
            "resolution": options.resolution if options.score == "mask" else None,
            "pairs": len(flipped), "pairs_flipped": int(sum(bool(f) for f in flipped)),
            "per_category": per_category}
