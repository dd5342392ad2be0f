"""Match points between two images of your own: ``semcorr-match`` / ``python -m semcorr.match``.

::

    python -m semcorr.match SRC TRG [--points "x,y;x,y" | --points-file F | --dense [--mask M]]
                            [group=name ...] [key.path=value ...]

Transfers the given source points (pixel coordinates of the original source image, 0-based,
pixel-index convention) into the target with the configured backbone, head and matcher, and writes
into ``out_dir``: ``matches.json`` (per point: source point, target point, score) and
``matches.png`` (side-by-side figure), plus ``config.yaml``.

The pipeline is the evaluation pipeline: both images are read with
:func:`semcorr.data.base.load_image`, resized with :func:`semcorr.data.resize.resize_image`
(``data.image_size``, ``data.resize``, the backbone's stride as divisor) and run through
:meth:`semcorr.models.CorrespondenceModule.forward` (backbone, head, matcher,
``matcher.transfer``); predictions go back to the original target frame with ``to_original``.

**Scores.** The row maximum of the matcher's scores for the source point's cell: the cosine
similarity for ``matcher=nn``, the log of the transport-plan entry for the OT family (at most
log(1/n_s); higher is more confident in both cases).

**Dense mode** (``--dense``): one source point per backbone cell (the cell centres, mapped to the
original frame) that lies in the *foreground*, defined by ``--mask``:

- ``--mask FILE``: a mask image of the source's size; foreground = pixels brighter than mid-grey;
- ``--mask all``: every cell of the image;
- no ``--mask`` (default): a simple saliency rule, *border contrast*: the colours of the image's
  outer 5 % frame (summarised by 4 k-means colours) are taken as background; a pixel is
  foreground when its colour distance to the nearest of them (box-smoothed over one cell) exceeds
  Otsu's threshold. This works for an object that stands out from a background that reaches the
  border (product shots, many PF-WILLOW images); it is not an object detector: objects coloured
  like the border are lost and clutter is kept, so pass a mask when it matters.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from semcorr.cli.common import build_parts, config_dict, parse_args, resolve_config, run_main
from semcorr.config import save_config
from semcorr.data.base import load_image
from semcorr.data.resize import check_size, resize_image, to_network, to_original
from semcorr.errors import SemcorrError
from semcorr.matchers.transfer import cell_centers

log = logging.getLogger("semcorr.match")

PROG = "semcorr-match"
USAGE = f"""usage: {PROG} SRC TRG [--points "x,y;x,y" | --points-file F | --dense [--mask FILE|all]]
                     [--print-config] [group=name ...] [key.path=value ...]

Transfer points from the source image SRC to the target image TRG; writes matches.json and
matches.png into out_dir (default runs/<timestamp>).

  --points "x,y;x,y"   source points, original-image pixels (0-based)
  --points-file F      the same from a file: .json ([[x, y], ...] or {{"points": [...]}}) or text
                       (one "x,y" or "x y" per line, # comments)
  --dense              a grid of foreground points (one per backbone cell)
  --mask FILE|all      dense foreground: a mask image, or all cells (default: border contrast)

Examples:
  {PROG} a.jpg b.jpg --points "120,80;200,150" backbone=dsift matcher=nn out_dir=out
  {PROG} a.jpg b.jpg --dense backbone=dinov2_vitb14 backbone.weights=/path/dinov2_vitb14_pretrain.pth
"""


class InputError(SemcorrError, ValueError):
    """A bad image, mask or point list given to the match command."""


@dataclass
class MatchArgs:
    src: str
    trg: str
    points: Optional[str] = None
    points_file: Optional[str] = None
    dense: bool = False
    mask: Optional[str] = None
    tokens: List[str] = field(default_factory=list)


@dataclass
class PairMatch:
    """The outcome of :func:`match_images`.

    Attributes:
        src_points, trg_points: (K, 2) source points and their matches, original frames.
        scores: (K,) the matcher's score of each match (see the module docstring).
        batch: the one-pair batch in the network frame (schema keys, batch size 1).
        out: :meth:`CorrespondenceModule.forward`'s output (``result`` holds the full scores).
    """

    src_points: torch.Tensor
    trg_points: torch.Tensor
    scores: torch.Tensor
    batch: Dict[str, Any]
    out: Dict[str, Any]


# ------------------------------------------------------------------------------------------------
# arguments and inputs
# ------------------------------------------------------------------------------------------------
def parse_match_args(argv: Sequence[str]) -> tuple[MatchArgs, List[str]]:
    """Split ``argv`` into the match arguments and the remaining config tokens / flags."""
    positional: List[str] = []
    rest: List[str] = []
    values: Dict[str, Optional[str]] = {"--points": None, "--points-file": None, "--mask": None}
    dense = False
    it = iter(argv)
    for token in it:
        if token in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if token in values:
            value = next(it, None)
            if value is None:
                raise InputError(f"{token} needs a value")
            values[token] = value
        elif token.split("=", 1)[0] in values:
            key, value = token.split("=", 1)
            values[key] = value
        elif token == "--dense":
            dense = True
        elif token.startswith("--") or "=" in token:
            rest.append(token)
        else:
            positional.append(token)
    if len(positional) != 2:
        raise InputError(f"expected two images SRC TRG, got {len(positional)} "
                         f"({' '.join(positional) or 'none'}); see {PROG} --help")
    given = [k for k in ("--points", "--points-file") if values[k] is not None] + (["--dense"] if dense else [])
    if len(given) != 1:
        raise InputError("give exactly one of --points, --points-file, --dense"
                         + (f" (got {', '.join(given)})" if given else ""))
    if values["--mask"] is not None and not dense:
        raise InputError("--mask only applies with --dense")
    args = MatchArgs(src=positional[0], trg=positional[1], points=values["--points"],
                     points_file=values["--points-file"], dense=dense, mask=values["--mask"])
    return args, rest


def parse_points(text: str) -> torch.Tensor:
    """``"x,y;x,y"`` -> (K, 2) float."""
    points = []
    for item in (s.strip() for s in text.replace("\n", ";").split(";")):
        if not item:
            continue
        parts = item.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            points.append([float(parts[0]), float(parts[1])])
        except ValueError:
            raise InputError(f"cannot parse point {item!r}: expected x,y") from None
    if not points:
        raise InputError("no points given")
    out = torch.tensor(points, dtype=torch.float32)
    if not torch.isfinite(out).all():
        raise InputError("points must be finite numbers")
    return out


def read_points_file(path: str | Path) -> torch.Tensor:
    """Points from a ``.json`` file (``[[x, y], ...]`` or ``{"points": [...]}``) or a text file
    (one ``x,y`` or ``x y`` per line; ``#`` starts a comment)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"points file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"cannot parse {path}: {err}") from None
        data = data.get("points") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(p, (list, tuple)) for p in data):
            raise InputError(f"{path}: expected a list of [x, y] or {{\"points\": [[x, y], ...]}}")
        return parse_points(";".join(",".join(str(v) for v in p) for p in data))
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return parse_points(";".join(line for line in lines if line))


def check_points(points: torch.Tensor, hw: Sequence[int], what: str = "source image") -> None:
    """Every point must lie on the image: 0 <= x <= w - 1, 0 <= y <= h - 1."""
    h, w = int(hw[0]), int(hw[1])
    outside = ((points[:, 0] < 0) | (points[:, 0] > w - 1) | (points[:, 1] < 0) | (points[:, 1] > h - 1))
    if outside.any():
        bad = "; ".join(f"{x:g},{y:g}" for x, y in points[outside][:5].tolist())
        more = f" and {int(outside.sum()) - 5} more" if int(outside.sum()) > 5 else ""
        raise InputError(f"{int(outside.sum())} point(s) outside the {what} ({w}x{h} px, x in "
                         f"[0, {w - 1}], y in [0, {h - 1}]): {bad}{more}")


def read_image_checked(path: str | Path, stride: int, what: str) -> torch.Tensor:
    """``load_image`` with the match command's checks: readable, at least one patch large."""
    try:
        image = load_image(path)
    except ValueError as err:
        raise InputError(str(err)) from None
    h, w = image.shape[-2:]
    try:
        check_size(h, w, stride)
    except ValueError as err:
        raise InputError(f"{what} {path}: {err} (the backbone's patch size)") from None
    return image


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
def build_module(cfg: DictConfig):
    """The evaluation module (backbone, head, matcher, transfer) from a run config, in eval mode.

    Matchers with a ``grad`` mode (GW-OT) are switched to ``detach``: matching needs no gradient.
    """
    from semcorr.backbones.dinov2 import WeightsUnavailable
    from semcorr.cli.common import accelerator
    from semcorr.models import CorrespondenceModule

    if cfg.matcher.get("grad", "detach") != "detach":
        cfg.matcher.grad = "detach"  # inference only: no autograd graph through the solver
    try:
        backbone, head, matcher = build_parts(cfg)
    except WeightsUnavailable as err:
        raise InputError(str(err)) from None
    except ValueError as err:  # e.g. a checkpoint that does not fit the model
        raise InputError(f"cannot build the model: {err}") from None
    module = CorrespondenceModule(backbone, matcher, head=head, transfer=dict(cfg.matcher.transfer),
                                  run_config=config_dict(cfg))
    device = "cuda" if accelerator(cfg) == "gpu" else "cpu"
    return module.to(device).eval()


def network_geometry(image: torch.Tensor, image_size: int, resize: str, stride: int):
    """``resize_image`` of one image: (image (3, H, W), frame (4,), content_hw (2,))."""
    return resize_image(image, image_size, resize, stride)


def pair_batch(src_img: torch.Tensor, trg_img: torch.Tensor, src_points: torch.Tensor,
               image_size: int, resize: str, stride: int) -> Dict[str, Any]:
    """A one-pair batch with the schema keys the module's pipeline reads (network frame)."""
    src_net, src_frame, src_hw = network_geometry(src_img, image_size, resize, stride)
    trg_net, trg_frame, trg_hw = network_geometry(trg_img, image_size, resize, stride)
    return {
        "src_img": src_net[None], "trg_img": trg_net[None],
        "src_kps": to_network(src_points, src_frame)[None], "src_kps_orig": src_points[None],
        "kps_valid": torch.ones(1, len(src_points), dtype=torch.bool),
        "src_frame": src_frame[None], "trg_frame": trg_frame[None],
        "src_content_hw": src_hw[None], "trg_content_hw": trg_hw[None],
        "src_imsize": torch.tensor([src_img.shape[-2:]]), "trg_imsize": torch.tensor([trg_img.shape[-2:]]),
        "src_id": ["src"], "trg_id": ["trg"],
    }


@torch.no_grad()
def match_images(module, src_img: torch.Tensor, trg_img: torch.Tensor, points: torch.Tensor,
                 image_size: int = 224, resize: str = "longer_side_pad") -> PairMatch:
    """Transfer ``points`` (K, 2), original source frame, into the target.

    Args:
        module: a :class:`~semcorr.models.CorrespondenceModule` (see :func:`build_module`).
        src_img, trg_img: (3, h, w) float RGB in [0, 1] (:func:`semcorr.data.base.load_image`).
        image_size, resize: the network frame (``data.image_size``, ``data.resize``).
    """
    check_points(points, src_img.shape[-2:])
    stride = module.backbone.stride
    batch = pair_batch(src_img, trg_img, points.float(), image_size, resize, stride)
    batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out = module(batch)
    return PairMatch(src_points=points.float().cpu(), trg_points=out["pred_orig"][0].cpu(),
                     scores=out["score"][0].float().cpu(), batch=batch, out=out)


# ------------------------------------------------------------------------------------------------
# dense points
# ------------------------------------------------------------------------------------------------
def border_contrast_mask(image: torch.Tensor, cell: int = 8, border: float = 0.05,
                         n_colours: int = 4) -> np.ndarray:
    """(h, w) bool foreground by border contrast (see the module docstring).

    The border pixels are summarised by ``n_colours`` k-means colours (so a border that is half
    sky, half road counts both as background); a pixel's saliency is its colour distance to the
    nearest of them, box-smoothed over ``cell`` pixels and thresholded with Otsu's method.
    """
    from scipy.cluster.vq import kmeans2
    from scipy.ndimage import uniform_filter
    from skimage.filters import threshold_otsu

    rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.float64)
    h, w = rgb.shape[:2]
    bh, bw = max(1, int(round(border * h))), max(1, int(round(border * w)))
    frame = np.concatenate([rgb[:bh].reshape(-1, 3), rgb[-bh:].reshape(-1, 3),
                            rgb[:, :bw].reshape(-1, 3), rgb[:, -bw:].reshape(-1, 3)])
    k = max(1, min(n_colours, len(np.unique(frame.round(2), axis=0))))
    centres, _ = kmeans2(frame, k, seed=0, minit="++")
    dist = np.linalg.norm(rgb[:, :, None, :] - centres[None, None], axis=-1).min(-1)
    dist = uniform_filter(dist, size=max(1, cell))
    if float(dist.max() - dist.min()) < 1e-6:
        return np.zeros((h, w), dtype=bool)
    return dist > threshold_otsu(dist)


def read_mask(path: str | Path, hw: Sequence[int]) -> np.ndarray:
    """A mask image of size ``hw``: foreground where the mean channel value is above 0.5."""
    try:
        mask = load_image(path).mean(0).numpy() > 0.5
    except ValueError as err:
        raise InputError(str(err)) from None
    if tuple(mask.shape) != (int(hw[0]), int(hw[1])):
        raise InputError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px but the source image "
                         f"is {int(hw[1])}x{int(hw[0])} px")
    return mask


def dense_points(src_img: torch.Tensor, stride: int, image_size: int, resize: str,
                 mask: Optional[str] = None) -> torch.Tensor:
    """(K, 2) original-frame source points: the centres of the backbone cells that lie on the
    image content and in the foreground (``mask``: a file, ``"all"``, or None for border
    contrast). Raises :class:`InputError` when no cell is foreground."""
    h, w = src_img.shape[-2:]
    net, frame, content = network_geometry(src_img, image_size, resize, stride)
    grid = (net.shape[-2] // stride, net.shape[-1] // stride)
    centres = cell_centers(grid, stride)
    inside = (centres[:, 0] < content[1]) & (centres[:, 1] < content[0])
    points = to_original(centres[inside], frame)
    points[:, 0].clamp_(0, w - 1)
    points[:, 1].clamp_(0, h - 1)
    if mask == "all":
        return points
    fg = read_mask(mask, (h, w)) if mask else border_contrast_mask(
        src_img, cell=max(1, int(round(stride / float(frame[0])))))
    keep = fg[points[:, 1].round().long().numpy(), points[:, 0].round().long().numpy()]
    if not keep.any():
        raise InputError("no foreground cell found"
                         + (f" in mask {mask}" if mask else " by the border-contrast rule")
                         + "; pass --mask FILE or --mask all")
    return points[torch.from_numpy(keep)]


# ------------------------------------------------------------------------------------------------
# outputs and the command
# ------------------------------------------------------------------------------------------------
def matches_record(match: PairMatch, src: str, trg: str, cfg: DictConfig, dense: bool) -> Dict[str, Any]:
    """The content of ``matches.json``."""
    return {
        "src": str(src), "trg": str(trg),
        "src_size": list(match.batch["src_imsize"][0].tolist()),  # (h, w)
        "trg_size": list(match.batch["trg_imsize"][0].tolist()),
        "backbone": cfg.backbone.name, "matcher": cfg.matcher.name, "dense": dense,
        "score": "nn: cosine similarity; ot/gwot: log transport-plan entry",
        "matches": [{"src": [round(a, 2), round(b, 2)], "trg": [round(c, 2), round(d, 2)],
                     "score": round(float(s), 6)}
                    for (a, b), (c, d), s in zip(match.src_points.tolist(), match.trg_points.tolist(),
                                                 match.scores.tolist())],
    }


def dump_matches(record: Dict[str, Any]) -> str:
    """JSON text with one match per line."""
    head = {k: v for k, v in record.items() if k != "matches"}
    lines = "{\n" + "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items())
    lines += ' "matches": [\n'
    lines += ",\n".join("  " + json.dumps(m) for m in record["matches"])
    return lines + "\n ]\n}\n"


def run(argv: Sequence[str]) -> int:
    margs, rest = parse_match_args(argv)
    args = parse_args(rest, PROG)
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    points = None
    if margs.points is not None:
        points = parse_points(margs.points)
    elif margs.points_file is not None:
        points = read_points_file(margs.points_file)
    for path in (margs.src, margs.trg):  # fail on a missing file before building the model
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
    module = build_module(cfg)
    stride = module.backbone.stride
    src_img = read_image_checked(margs.src, stride, "source image")
    trg_img = read_image_checked(margs.trg, stride, "target image")
    if margs.dense:
        points = dense_points(src_img, stride, cfg.data.image_size, cfg.data.resize, margs.mask)
    assert points is not None
    match = match_images(module, src_img, trg_img, points, cfg.data.image_size, cfg.data.resize)
    out_dir = Path(cfg.out_dir)
    save_config(cfg, out_dir)
    record = matches_record(match, margs.src, margs.trg, cfg, margs.dense)
    (out_dir / "matches.json").write_text(dump_matches(record))
    from semcorr.viz import plot_matches

    plot_matches(src_img, trg_img, match.src_points, match.trg_points, out_dir / "matches.png",
                 scores=match.scores, title=f"{cfg.backbone.name} + {cfg.matcher.name}")
    log.info("matched %d points; wrote %s and %s", len(points), out_dir / "matches.json",
             out_dir / "matches.png")
    sys.stdout.write(f"{len(points)} matches -> {out_dir / 'matches.json'}, {out_dir / 'matches.png'}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
