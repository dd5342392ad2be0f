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
import warnings
from functools import partial
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from semcorr.backbones.dinov2 import MODELS, DinoV2
from semcorr.paths import shared_reference_dir

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith(("ls1.gamma", "ls2.gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name in ("cls_token", "register_tokens"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def official_model(name: str):
    import dinov2.hub.backbones as hub
    import dinov2.layers as layers
    import dinov2.models.vision_transformer as vits

    registers = name.endswith("_reg")
    torch.manual_seed(0)  # the random initialisation
    if name.startswith("vits14"):
        return perturb((hub.dinov2_vits14_reg if registers else hub.dinov2_vits14)(pretrained=False)), 12
    extra = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) \
        if registers else dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
    model = vits.DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=1536, depth=1, num_heads=24, mlp_ratio=4,
        block_fn=partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention),
        init_values=1.0, ffn_layer="swiglufused", block_chunks=0, **extra)
    return perturb(model), 1


def ours(name: str, official, depth: int, tmp: Path):
    """The three semcorr backbones: official .pth, timm weights, and the old pos_embed=timm."""
    pth = tmp / f"{name}_pretrain.pth"
    torch.save(official.state_dict(), pth)
    target = timm.create_model(MODELS[name], pretrained=False, num_classes=0, depth=depth)
    target.load_state_dict(checkpoint_filter_fn(dict(official.state_dict()), target), strict=True)
    timm_file = tmp / f"{name}_timm.pth"
    torch.save(target.state_dict(), timm_file)
    del target
    os.environ["HF_HUB_OFFLINE"] = "1"
    kw = {"depth": depth}
    return {
        "official .pth": DinoV2(model=name, weights=str(pth), model_kwargs=kw).eval(),
        "timm weights": DinoV2(model=name, weights="timm", model_kwargs=dict(
            kw, pretrained_cfg_overlay={"file": str(timm_file)})).eval(),
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
    if ref is None or not (ref / "dinov2" / "dinov2").is_dir():
        sys.exit(f"official DINOv2 code not found (looked in {ref}); pass --reference DIR "
                 f"or set SEMCORR_SHARED_REFERENCE")
    sys.path.insert(0, str(ref / "dinov2"))
    warnings.filterwarnings("ignore", message="xFormers")

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
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        built = {}
        for name, (h, w) in rows:
            if name not in built:
                built.clear()
                official, depth = official_model(name)
                built[name] = (official, depth, ours(name, official, depth, Path(tmp)))
            official, depth, backbones = built[name]
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 10000 + w))
            want = official.forward_features((x - MEAN) / STD)["x_norm_patchtokens"]
            diffs = []
            for col in cols:
                got = backbones[col](x).flat()
                diffs.append(float((got - want).norm() / want.norm()))
            label = f"ViT-{ {'s': 'S', 'g': 'g'}[name[3]]}/14{'-reg' if name.endswith('_reg') else ''}" + \
                (f" ({depth} block)" if depth == 1 else "")
            print(f"| {label} | {h} x {w} | " + " | ".join(f"{d:.1e}" for d in diffs) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s, torch {torch.__version__}, timm {timm.__version__}")


if __name__ == "__main__":
    main()
