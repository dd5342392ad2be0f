"""Match points between two images with a run's model: the pipeline behind ``semcorr-match`` and
the notebooks.

Both images are resized with :func:`semcorr.data.resize.resize_image` (``data.image_size``,
``data.resize``, the backbone's stride as divisor) and run through a
:class:`~semcorr.net.CorrespondenceNet` (backbone, head, matcher, ``matcher.transfer``);
predictions go back to the original target frame.

**Scores.** The row maximum of the matcher's scores for the source point's cell: the cosine
similarity for ``matcher=nn``, the log of the transport-plan entry for the OT family (at most
log(1/n_s); higher is more confident in both cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig

from semcorr.builder import build_net
from semcorr.data.resize import resize_image, to_network
from semcorr.digest import image_digest
from semcorr.errors import InputError
from semcorr.net import CorrespondenceNet, MatchOutput


def inference_model(cfg: DictConfig, device: str = "cpu") -> CorrespondenceNet:
    """The run's net (:func:`semcorr.builder.build_net`: with ``cfg.ckpt``'s weights when set) on
    ``device``, in eval mode."""
    return build_net(cfg).to(device).eval()


@dataclass
class PairMatch:
    """The outcome of :func:`match_images`.

    Attributes:
        src_points, trg_points: (K, 2) source points and their matches, original frames.
        scores: (K,) the matcher's score of each match (see the module docstring).
        batch: the one-pair batch in the network frame (schema keys, batch size 1).
        out: the net's :class:`~semcorr.net.MatchOutput` (``out.scores`` holds the full scores).
    """

    src_points: torch.Tensor
    trg_points: torch.Tensor
    scores: torch.Tensor
    batch: Dict[str, Any]
    out: MatchOutput


def check_points(points: torch.Tensor, hw: Sequence[int], what: str = "source image") -> None:
    """Every point must lie on the image: 0 <= x <= w - 1, 0 <= y <= h - 1."""
    h, w = int(hw[0]), int(hw[1])
    outside = ((points[:, 0] < 0) | (points[:, 0] > w - 1) | (points[:, 1] < 0) | (points[:, 1] > h - 1))
    if outside.any():
        bad = "; ".join(f"{x:g},{y:g}" for x, y in points[outside][:5].tolist())
        more = f" and {int(outside.sum()) - 5} more" if int(outside.sum()) > 5 else ""
        raise InputError(f"{int(outside.sum())} point(s) outside the {what} ({w}x{h} px, x in "
                         f"[0, {w - 1}], y in [0, {h - 1}]): {bad}{more}")


def pair_batch(src_img: torch.Tensor, trg_img: torch.Tensor, src_points: torch.Tensor,
               image_size: int, resize: str, stride: int, factors: Tuple[int, int] = (1, 1),
               sizes: Optional[Tuple[Sequence[int], Sequence[int]]] = None,
               names: Tuple[str, str] = ("src", "trg")) -> Dict[str, Any]:
    """A one-pair batch with the schema keys :class:`~semcorr.net.CorrespondenceNet` reads
    (network frame).

    ``factors``: each image was decoded at 1/k of its original size
    (:func:`semcorr.data.base.load_image_reduced`); the frames then map the *original* pixels,
    so ``src_points`` and the predictions are in original pixels. ``sizes``: the original (h, w)
    (default: the images' own). The images' digests (``src_digest`` / ``trg_digest``, the feature
    caches' key) are computed here, once, from the network-frame images on the host.
    """
    sizes = sizes or (src_img.shape[-2:], trg_img.shape[-2:])
    src_net, src_frame, src_hw, src_yx = resize_image(src_img, image_size, resize, stride)
    trg_net, trg_frame, trg_hw, trg_yx = resize_image(trg_img, image_size, resize, stride)
    src_frame[:2] /= factors[0]  # original -> reduced (1 / k) -> network
    trg_frame[:2] /= factors[1]
    return {
        "src_img": src_net[None], "trg_img": trg_net[None],
        "src_kps": to_network(src_points, src_frame)[None], "src_kps_orig": src_points[None],
        "kps_valid": torch.ones(1, len(src_points), dtype=torch.bool),
        "src_frame": src_frame[None], "trg_frame": trg_frame[None],
        "src_content_hw": src_hw[None], "trg_content_hw": trg_hw[None],
        "src_content_yx": src_yx[None], "trg_content_yx": trg_yx[None],
        "src_imsize": torch.tensor([[int(v) for v in sizes[0]]]),
        "trg_imsize": torch.tensor([[int(v) for v in sizes[1]]]),
        "src_id": [names[0]], "trg_id": [names[1]],
        "src_digest": [image_digest(src_net)], "trg_digest": [image_digest(trg_net)],
    }


@torch.no_grad()
def match_images(net: CorrespondenceNet, src_img: torch.Tensor, trg_img: torch.Tensor, points: torch.Tensor,
                 image_size: int = 224, resize: str = "longer_side_pad",
                 factors: Tuple[int, int] = (1, 1),
                 sizes: Optional[Tuple[Sequence[int], Sequence[int]]] = None,
                 names: Tuple[str, str] = ("src", "trg")) -> PairMatch:
    """Transfer ``points`` (K, 2), original source frame, into the target.

    Args:
        net: a :class:`~semcorr.net.CorrespondenceNet` (see :func:`inference_model`).
        src_img, trg_img: (3, h, w) float RGB in [0, 1] (:func:`semcorr.data.base.load_image`),
            or images decoded at 1/k of their size (:func:`semcorr.data.base.load_image_reduced`)
            with ``factors`` (k_src, k_trg) and the original ``sizes`` ((h, w), (h, w)): points
            and predictions stay in original pixels.
        image_size, resize: the network frame (``data.image_size``, ``data.resize``).
        names: the images' names in error messages.
    """
    sizes = sizes or (src_img.shape[-2:], trg_img.shape[-2:])
    check_points(points, sizes[0])
    stride = net.backbone.stride
    batch = pair_batch(src_img, trg_img, points.float(), image_size, resize, stride, factors, sizes,
                       names)
    batch = {k: v.to(net.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out = net(batch)
    return PairMatch(src_points=points.float().cpu(), trg_points=out.pred_orig[0].cpu(),
                     scores=out.score[0].float().cpu(), batch=batch, out=out)
