"""semcorr's DINOv2 patch tokens vs the official facebookresearch model: relative differences.

    python benchmarks/dinov2_equivalence.py                # the table in docs/backbones.md
    python benchmarks/dinov2_equivalence.py --quick        # 224 and 448x630 only, giant skipped

Needs the official model code (``../shared/reference/dinov2`` or ``$SEMCORR_SHARED_REFERENCE``;
``--reference DIR`` overrides), used as an oracle only. Random weights (``pretrained=False``), in
float32 on the CPU, with the position embedding (+ N(0, 0.5^2)), LayerScale (N(0, 0.5^2)) and the
class / register tokens (N(0, 1)) perturbed so that they matter. ViT-S/14 has its full 12 blocks;
ViT-g/14 is cut to 1 block (the official ``vit_giant2`` fixes depth=40, so its class is built with
the arguments of ``dinov2_vitg14[_reg]``).

For each model and input size (H x W) it prints ||ours - official|| / ||official|| of the patch
tokens after the final norm (``x_norm_patchtokens``) for:

- ``official .pth``: ``backbone.weights=<the official state dict saved with torch.save>``;
- ``timm weights``: ``backbone.weights=timm``, timm's pretrained loader reading a local file that
  holds the official state dict converted by timm's ``checkpoint_filter_fn`` (what timm's hub
  files are) -- offline, through ``pretrained_cfg_overlay``;
- ``pos_embed=timm``: the previous default (timm's resampling of the position embedding).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the oracle helpers

from reference.dinov2_oracle import (giant_official, has_official, import_official,  # noqa: E402
                                     official_tokens, rel, save_official, small_official,
                                     timm_weights_kwargs)
from semcorr.backbones.dinov2 import DinoV2  # noqa: E402
from semcorr.paths import shared_reference_dir  # noqa: E402


def ours(name: str, official, depth: int, tmp: Path):
    """The three semcorr backbones: official .pth, timm weights, and the old pos_embed=timm."""
    pth = save_official(official, tmp / f"{name}_pretrain.pth")
    os.environ["HF_HUB_OFFLINE"] = "1"
    timm_kwargs = timm_weights_kwargs(name, official.state_dict(), depth, tmp / f"{name}_timm.pth")
    kw = {"depth": depth}
    return {
        "official .pth": DinoV2(model=name, weights=str(pth), model_kwargs=kw).eval(),
        "timm weights": DinoV2(model=name, weights="timm", model_kwargs=timm_kwargs).eval(),
        "pos_embed=timm": DinoV2(model=name, weights=str(pth), model_kwargs=kw, pos_embed="timm").eval(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="folder holding dinov2/ (default: the shared reference folder)")
    parser.add_argument("--quick", action="store_true", help="224 and 448x630 only, no giant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = args.reference or shared_reference_dir()
    if not has_official(ref):
        sys.exit(f"official DINOv2 code not found (looked in {ref}); pass --reference DIR "
                 f"or set SEMCORR_SHARED_REFERENCE")

    small = [(224, 224), (448, 448), (840, 840), (448, 630)]
    giant = [(224, 224), (448, 630)]
    if args.quick:
        small, giant = [(224, 224), (448, 630)], []
    rows = [(name, s) for name in ("vits14", "vits14_reg") for s in small]
    rows += [(name, s) for name in ("vitg14", "vitg14_reg") for s in giant]
    cols = ("official .pth", "timm weights", "pos_embed=timm")
    print(f"| model | H x W | {' | '.join(cols)} |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), import_official(ref) as modules:
        built = {}
        for name, (h, w) in rows:
            if name not in built:
                built.clear()
                registers = name.endswith("_reg")
                official, depth = ((small_official(modules, registers), 12) if name.startswith("vits14")
                                   else (giant_official(modules, registers), 1))
                built[name] = (official, depth, ours(name, official, depth, Path(tmp)))
            official, depth, backbones = built[name]
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 10000 + w))
            want = official_tokens(official, x)
            diffs = [rel(backbones[col](x).flat(), want) for col in cols]
            label = f"ViT-{ {'s': 'S', 'g': 'g'}[name[3]]}/14{'-reg' if name.endswith('_reg') else ''}" + \
                (f" ({depth} block)" if depth == 1 else "")
            print(f"| {label} | {h} x {w} | " + " | ".join(f"{d:.1e}" for d in diffs) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s, torch {torch.__version__}, timm {timm.__version__}")


if __name__ == "__main__":
    main()
