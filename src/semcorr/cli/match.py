"""Match points between two images of your own: ``semcorr-match`` / ``python -m semcorr.cli.match``.

::

    semcorr-match SRC TRG [--points "x,y;x,y" | --points-file F | --dense [--mask M]]
                  [--pca] [group=name ...] [key.path=value ...] [ckpt=RUN]

Transfers the given source points (pixel coordinates of the original source image, 0-based,
pixel-index convention) into the target with the configured backbone, head and matcher (or a
trained run's, with ``ckpt=RUN``), and writes into ``out_dir``: ``matches.json`` (per point:
source point, target point, score), ``matches.png`` (side-by-side figure), ``config.yaml`` and,
with ``--pca``, ``pca.png`` (the pair's features as colours: :mod:`semcorr.pca`).

The pipeline is :mod:`semcorr.inference` (the evaluation pipeline on one pair); dense points
(``--dense``, ``--mask``) come from :mod:`semcorr.foreground`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig

from semcorr.atomic import write_text
from semcorr.cli.common import (accelerator, check_out_dir, make_out_dir, parse_args, resolve_config,
                                run_main, usage)
from semcorr.config import save_config
from semcorr.rundir import check_run_folder, claim_run_folder
from semcorr.data.base import load_image_reduced
from semcorr.data.resize import check_size
from semcorr.errors import InputError
from semcorr.foreground import dense_points
from semcorr.inference import PairMatch, inference_model, match_images

log = logging.getLogger("semcorr.match")

PROG = "semcorr-match"
USAGE = f"""usage: {PROG} SRC TRG [--points "x,y;x,y" | --points-file F | --dense [--mask FILE|all]]
                     [--pca] [--print-config] [--overwrite] [group=name ...] [key.path=value ...]

Transfer points from the source image SRC to the target image TRG; writes matches.json and
matches.png into out_dir (default runs/<timestamp>-<random>; an out_dir holding an earlier run's
results needs --overwrite).

  --points "x,y;x,y"   source points, original-image pixels (0-based)
  --points-file F      the same from a file: .json ([[x, y], ...] or {{"points": [...]}}) or text
                       (one "x,y" or "x y" per line, # comments)
  --dense              a grid of foreground points (one per backbone cell)
  --mask FILE|all      dense foreground: a mask image, or all cells (default: border contrast)
  --pca                also write pca.png: the first 3 principal components of both images'
                       features, fitted jointly on their foreground, as RGB

Examples:
  {PROG} a.jpg b.jpg --points "120,80;200,150" backbone=dsift matcher=nn out_dir=out
  {PROG} a.jpg b.jpg --dense backbone=dinov2_vitb14 backbone.weights=/path/dinov2_vitb14_pretrain.pth
  {PROG} a.jpg b.jpg --points "120,80" ckpt=runs/my_training_run   (a trained run's model)
"""


@dataclass
class MatchArgs:
    src: str
    trg: str
    points: Optional[str] = None
    points_file: Optional[str] = None
    dense: bool = False
    mask: Optional[str] = None
    pca: bool = False
    tokens: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# arguments and inputs
# ------------------------------------------------------------------------------------------------
def parse_match_args(argv: Sequence[str]) -> tuple[MatchArgs, List[str]]:
    """Split ``argv`` into the match arguments and the remaining config tokens / flags."""
    positional: List[str] = []
    rest: List[str] = []
    values: Dict[str, Optional[str]] = {"--points": None, "--points-file": None, "--mask": None}
    dense = pca = False
    it = iter(argv)
    for token in it:
        if token in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n" + usage(PROG).split("\n", 1)[1])
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
        elif token == "--pca":
            pca = True
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
                     points_file=values["--points-file"], dense=dense, mask=values["--mask"], pca=pca)
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


def read_image_checked(path: str | Path, stride: int, what: str,
                       keep: int = 1 << 30) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """:func:`~semcorr.data.base.load_image_reduced` with the match command's checks: readable,
    at least one patch large. A large image is decoded at 1/k of its size, every side kept
    >= ``keep`` px (twice the network frame): an 8000 x 6000 JPEG never becomes a full-size
    float tensor. Returns the image, k and the original (h, w)."""
    try:
        image, factor, (h, w) = load_image_reduced(path, keep)
    except ValueError as err:
        raise InputError(str(err)) from None
    try:
        check_size(h, w, stride)
    except ValueError as err:
        raise InputError(f"{what} {path}: {err} (the backbone's patch size)") from None
    return image, factor, (h, w)


def to_reduced(points: torch.Tensor, factor: int) -> torch.Tensor:
    """Original-frame points -> the frame of an image decoded at 1/``factor`` of its size."""
    return (points + 0.5) / factor - 0.5


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
    args = parse_args(rest, PROG, flags=("--overwrite",))
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    out_dir = check_out_dir(cfg.out_dir)
    check_run_folder(out_dir, args.overwrite)
    points = None
    if margs.points is not None:
        points = parse_points(margs.points)
    elif margs.points_file is not None:
        points = read_points_file(margs.points_file)
    for path in (margs.src, margs.trg):  # fail on a missing file before building the model
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
    net = inference_model(cfg, "cuda" if accelerator(cfg) == "gpu" else "cpu")
    stride = net.backbone.stride
    keep = 2 * int(cfg.data.image_size)
    src_img, src_k, src_hw = read_image_checked(margs.src, stride, "source image", keep)
    trg_img, trg_k, trg_hw = read_image_checked(margs.trg, stride, "target image", keep)
    if margs.dense:
        points = dense_points(src_img, stride, cfg.data.image_size, cfg.data.resize, margs.mask,
                              factor=src_k, original_hw=src_hw)
    assert points is not None
    match = match_images(net, src_img, trg_img, points, cfg.data.image_size, cfg.data.resize,
                         factors=(src_k, trg_k), sizes=(src_hw, trg_hw),
                         names=(str(margs.src), str(margs.trg)))
    make_out_dir(out_dir)
    with claim_run_folder(out_dir, args.overwrite):
        save_config(cfg, out_dir)
        record = matches_record(match, margs.src, margs.trg, cfg, margs.dense)
        write_text(out_dir / "matches.json", dump_matches(record))
        from semcorr.viz import plot_matches

        plot_matches(src_img, trg_img, to_reduced(match.src_points, src_k),
                     to_reduced(match.trg_points, trg_k), out_dir / "matches.png",
                     scores=match.scores, title=f"{cfg.backbone.name} + {cfg.matcher.name}")
        written = [out_dir / "matches.json", out_dir / "matches.png"]
        if margs.pca:
            from semcorr.pca import pca_panel
            from semcorr.viz import plot_pca_rows

            written.append(plot_pca_rows([pca_panel(match.batch, match.out, 0)], out_dir / "pca.png"))
    log.info("matched %d points; wrote %s", len(points), ", ".join(map(str, written)))
    sys.stdout.write(f"{len(points)} matches -> {', '.join(map(str, written))}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
