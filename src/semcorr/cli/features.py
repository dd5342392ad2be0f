"""Write a backbone's features in the precomputed layout: ``semcorr-features`` /
``python -m semcorr.cli.features``.

::

    semcorr-features [group=name ...] [key.path=value ...] out_dir=DIR [--format pt|npy|safetensors]
                     [--mirrored]

For every distinct image of the dataset split (``data=...``, ``data.split``), the features the
configured backbone (``backbone=...``; a trained run's with ``ckpt=RUN``) gives on the image's
network frame (``data.image_size``, ``data.resize``) go to ``DIR/<image id>.<format>``, with
``DIR/features.json`` (layout: :mod:`semcorr.backbones.feature_files`). Then
``eval.py <the same data tokens> backbone=precomputed backbone.root=DIR`` scores exactly what the
direct run scores. The files hold the backbone's native map: ``backbone.upsample`` is not applied
(set it on the precomputed run).
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from semcorr.backbones.feature_files import FORMATS, FeatureLayout
from semcorr.builder import build_run
from semcorr.cli.common import accelerator, check_out_dir, parse_args, resolve_config, run_main, usage
from semcorr.errors import ConfigError
from semcorr.feature_export import export_features

log = logging.getLogger("semcorr.features")

PROG = "semcorr-features"
USAGE = f"""usage: {PROG} [group=name ...] [key.path=value ...] out_dir=DIR [--format pt|npy|safetensors]
                        [--mirrored] [--print-config]

Write the backbone's features of every image of the dataset split (data.split) into out_dir in
the layout backbone=precomputed reads (one file per image id plus features.json).

  --format F     pt (default), npy or safetensors
  --mirrored     also each image's mirror image (id + '#hflip'), for a flipped (Pose-Align) source

Example:
  {PROG} data=pf_willow data.root=/data/pf-willow backbone=dsift out_dir=feats/willow_dsift
  python eval.py data=pf_willow data.root=/data/pf-willow backbone=precomputed backbone.root=feats/willow_dsift
"""


def parse_feature_args(argv: Sequence[str]) -> Tuple[str, bool, List[str]]:
    """(format, mirrored, the remaining config tokens and flags)."""
    fmt, mirrored, rest = "pt", False, []
    it = iter(argv)
    for token in it:
        if token in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n" + usage(PROG).split("\n", 1)[1])
            raise SystemExit(0)
        if token == "--format" or token.startswith("--format="):
            fmt = token.split("=", 1)[1] if "=" in token else next(it, "")
            if fmt not in FORMATS:
                raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        elif token == "--mirrored":
            mirrored = True
        else:
            rest.append(token)
    return fmt, mirrored, rest


def run(argv: Sequence[str]) -> int:
    fmt, mirrored, rest = parse_feature_args(argv)
    cfg = resolve_config(parse_args(rest, PROG))
    if cfg is None:
        return 0
    out_dir = check_out_dir(cfg.out_dir)
    built = build_run(cfg, stage="test")
    device = "cuda" if accelerator(cfg) == "gpu" else "cpu"
    net = built.net.to(device).eval()
    backbone = net.backbone
    layout = FeatureLayout(
        stride=int(backbone.stride), image_size=int(cfg.data.image_size), resize=str(cfg.data.resize),
        dim=int(backbone.dim),
        written_by={"command": " ".join([PROG, *argv]), "data": cfg.data.name, "split": cfg.data.split,
                    "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
                    "cache_key": backbone.cache_key(), "ckpt": cfg.ckpt or None})
    if backbone.upsample != 1:
        log.info("writing the native %d-px map; backbone.upsample=%d is applied when the files are read "
                 "(set it on the precomputed run)", backbone.stride, backbone.upsample)

    def extract(images, ids):
        return net.extractor(images, ids, use_cache=True).features

    n = export_features(built.dataset, extract, out_dir, layout, fmt=fmt, mirrored=mirrored,
                        batch_size=int(cfg.data.batch_size), device=device)
    sys.stdout.write(f"wrote {n} feature files ({layout.describe()}) -> {out_dir}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
