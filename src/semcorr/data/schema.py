"""The one sample schema every dataset returns, and the collate function that pads keypoints.

A sample (one image pair, after resizing to the network frame) is a dict:

=================  ==================  ===============================================================
key                shape / type        meaning
=================  ==================  ===============================================================
src_img, trg_img   (3, H, W) float     RGB in [0, 1], network frame (H, W multiples of the patch size)
src_kps, trg_kps   (K, 2) float        keypoints (x, y) in the network frame, pixel-index convention
src_kps_orig,      (K, 2) float        the same keypoints in the original image frame
trg_kps_orig
kps_valid          (K,) bool           the keypoint is annotated and visible in both images
kps_ids            (K,) long           semantic keypoint id (dataset-specific), -1 if unknown
src_frame,         (4,) float          (sx, sy, ox, oy): net = (orig + 0.5) * s - 0.5 + o
trg_frame
src_content_hw,    (2,) long           height, width of the non-padded content in the network frame
trg_content_hw
src_content_yx,    (2,) long           row, column of the content's top-left pixel in the network
trg_content_yx                         frame (0, 0 unless ``data.resize`` centres the content)
src_imsize,        (2,) long           original height, width
trg_imsize
trg_bbox           (4,) float          annotated target box (x1, y1, x2, y2), original frame; NaN if none
src_bbox           (4,) float          annotated source box, original frame; NaN if none
category           str                 category name
category_idx       int                 index into the dataset's ``categories``
src_id, trg_id     str                 image ids (relative paths), unique within the dataset
src_digest,        str                 :func:`semcorr.digest.image_digest` of ``src_img`` /
trg_digest                             ``trg_img``: the feature caches' image identity, computed
                                       in the data workers; absent where the dataset does not
                                       compute it (``PairDataset.image_digests``: the training
                                       split, which uses no cache)
pair_id            str                 pair id
index              int                 the pair's index in its dataset (orders gathered results)
direction          str                 ``src_to_trg``, or ``trg_to_src`` when the dataset serves
                                       each pair with its images' roles swapped (every
                                       ``src_*`` / ``trg_*`` key exchanged; see
                                       :func:`swap_sides`)
sym_pairs          (S, 2) long         pairs of keypoint indices (into the K keypoints) that are
                                       left/right symmetric; may be empty
kps_has_sym,       (K,) bool,          left/right diagnostics, evaluation only, for datasets with a
src/trg_sym_vis,   (K, 2) float        symmetry table (:mod:`semcorr.data.left_right`): the
src/trg_sym_kps,                       keypoint's counterpart exists / is visible in each image /
src/trg_group_vis                      its ground truth there (original frame); another member of
                                       its geometry-aware group is visible in each image. Absent
                                       when the dataset does not know them
=================  ==================  ===============================================================

After :func:`collate`, tensors gain a batch dimension, K is padded to the largest count in the
batch (``kps_valid`` and the left/right flags False, ``kps_ids`` -1, points 0 on padding;
``kps_count`` (B,) long holds each pair's own K), S likewise (-1 rows), and strings become lists.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

KEYPOINT_KEYS = ("src_kps", "trg_kps", "src_kps_orig", "trg_kps_orig", "src_sym_kps", "trg_sym_kps")
KEYPOINT_FLAG_KEYS = ("kps_valid", "kps_has_sym", "src_sym_vis", "trg_sym_vis", "src_group_vis",
                      "trg_group_vis")
STRING_KEYS = ("category", "src_id", "trg_id", "pair_id", "src_digest", "trg_digest")


def collate(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack samples into a batch, padding the keypoint and symmetric-pair dimensions."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: Dict[str, Any] = {}
    k_max = max(int(s["src_kps"].shape[0]) for s in samples)
    s_max = max(int(s["sym_pairs"].shape[0]) for s in samples) if "sym_pairs" in samples[0] else 0
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in STRING_KEYS or isinstance(values[0], str):
            batch[key] = list(values)
        elif key in KEYPOINT_KEYS:
            batch[key] = torch.stack([_pad(v, k_max, 0.0) for v in values])
        elif key in KEYPOINT_FLAG_KEYS:
            batch[key] = torch.stack([_pad(v, k_max, False) for v in values])
        elif key == "kps_ids":
            batch[key] = torch.stack([_pad(v, k_max, -1) for v in values])
        elif key == "sym_pairs":
            batch[key] = torch.stack([_pad(v.reshape(-1, 2), s_max, -1) for v in values])
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot batch {key!r} of different shapes {sorted(shapes)}: images of "
                    "different sizes need data.resize=square or longer_side_pad, or batch_size=1"
                )
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, float, bool)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = list(values)
    batch["kps_count"] = torch.tensor([int(s["src_kps"].shape[0]) for s in samples])
    return batch


def swap_sides(sample: Dict[str, Any]) -> Dict[str, Any]:
    """The sample with the roles of its two images exchanged: every ``src_<x>`` key takes the
    value of ``trg_<x>`` and back. Keypoint lists, validity, ids and symmetric pairs index the
    same K keypoints in both images, so they stay as they are; so does ``pair_id``."""
    out = dict(sample)
    for key in sample:
        if key.startswith("src_"):
            other = "trg_" + key[4:]
            if other in sample:
                out[key], out[other] = sample[other], sample[key]
    return out


def _pad(t: torch.Tensor, n: int, value: Any) -> torch.Tensor:
    if t.shape[0] == n:
        return t
    pad = torch.full((n - t.shape[0], *t.shape[1:]), value, dtype=t.dtype)
    return torch.cat([t, pad], dim=0)
