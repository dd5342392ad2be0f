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

from semcorr.cli.common import (accelerator, check_out_dir, parse_args, plural, resolve_config,
                                run_main)
from semcorr.errors import ConfigError

# torch and the pipeline are imported once the arguments are parsed: ``--help`` answers without them

log = logging.getLogger("semcorr.features")

PROG = "semcorr-features"
FLAGS = ("--format", "--mirrored")  # described in semcorr.cli.help.PROGRAMS


def parse_feature_args(argv: Sequence[str]) -> Tuple[str, bool, List[str]]:
    """(format, mirrored, the remaining config tokens and flags)."""
    fmt, mirrored, rest = "pt", False, []
    it = iter(argv)
    for token in it:
        if token == "--format" or token.startswith("--format="):
            fmt = token.split("=", 1)[1] if "=" in token else next(it, "")
            from semcorr.backbones.feature_files import FORMATS

            if fmt not in FORMATS:
                raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        elif token == "--mirrored":
            mirrored = True
        else:
            rest.append(token)
    return fmt, mirrored, rest


def run(argv: Sequence[str]) -> int:
    fmt, mirrored, rest = parse_feature_args(argv)
    cfg = resolve_config(parse_args(rest, PROG, flags=FLAGS))  # --help [TOPIC] answers here
    if cfg is None:
        return 0
    from semcorr.backbones.feature_files import FeatureLayout
    from semcorr.builder import build_run
    from semcorr.feature_export import export_features

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
    sys.stdout.write(f"wrote {plural(n, 'feature file')} ({layout.describe()}) and features.json "
                     f"into {out_dir}/\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
