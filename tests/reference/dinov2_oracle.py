"""The official DINOv2 model code as a test oracle, for the backbone tests and the equivalence
benchmark (``benchmarks/dinov2_equivalence.py``).

The code lives in the shared reference folder (``../shared/reference/dinov2``, see its README);
:func:`import_official` puts it on ``sys.path`` for the duration of a ``with`` block. Models are
built with random weights (``pretrained=False``) and :func:`perturb` makes the position embedding,
LayerScale and the class / register tokens matter (a random init has LayerScale 1 and position
embeddings of std 0.02).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from semcorr.backbones.dinov2 import MODELS

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def has_official(ref: Optional[Path]) -> bool:
    return ref is not None and (ref / "dinov2" / "dinov2" / "hub" / "backbones.py").is_file()


@contextlib.contextmanager
def import_official(ref: Path) -> Iterator[SimpleNamespace]:
    """The official ``dinov2`` modules (``hub``, ``vits``, ``layers``) from ``ref/dinov2``."""
    sys.path.insert(0, str(ref / "dinov2"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "xFormers is not available": plain attention
            import dinov2.hub.backbones as hub
            import dinov2.layers as layers
            import dinov2.models.vision_transformer as vits
        yield SimpleNamespace(hub=hub, vits=vits, layers=layers)
    finally:
        sys.path.remove(str(ref / "dinov2"))


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Position embedding + N(0, 0.5^2), LayerScale ~ N(0, 0.5^2), prefix tokens ~ N(0, 1)."""
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


def small_official(official: SimpleNamespace, registers: bool, depth: int = 12,
                   arch: str = "vits14") -> torch.nn.Module:
    """The hub's ``dinov2_<arch>[_reg]`` (pretrained=False; ViT-S/B/L), cut to ``depth`` blocks."""
    torch.manual_seed(0)
    model = getattr(official.hub, f"dinov2_{arch}" + ("_reg" if registers else ""))(pretrained=False)
    assert not model.chunked_blocks  # the hub builds with block_chunks=0
    model.blocks = model.blocks[:depth]
    model.n_blocks = depth
    return perturb(model)


def giant_official(official: SimpleNamespace, registers: bool) -> torch.nn.Module:
    """ViT-g/14 with one block. ``vit_giant2`` fixes depth=40, so the class is built directly
    with the arguments ``dinov2_vitg14[_reg]`` give it (hub defaults plus ffn_layer="swiglufused")."""
    torch.manual_seed(0)
    extra = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) \
        if registers else dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
    model = official.vits.DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=1536, depth=1, num_heads=24, mlp_ratio=4,
        block_fn=partial(official.layers.NestedTensorBlock, attn_class=official.layers.MemEffAttention),
        init_values=1.0, ffn_layer="swiglufused", block_chunks=0, **extra)
    return perturb(model)


def official_tokens(model, x: torch.Tensor, layer: Optional[int] = None, norm: bool = True) -> torch.Tensor:
    """(B, h*w, D) patch tokens of the official model for [0, 1] images ``x``."""
    x = (x - MEAN) / STD
    with torch.no_grad():
        if layer is None:
            return model.forward_features(x)["x_norm_patchtokens"]
        return model.get_intermediate_layers(x, n=[layer], norm=norm)[0]


def save_official(model: torch.nn.Module, path: Path) -> Path:
    """The official checkpoint format: ``torch.save(model.state_dict())``."""
    torch.save(model.state_dict(), path)
    return path


def timm_weights_kwargs(model_name: str, official_state: dict, depth: int, path: Path) -> dict:
    """``model_kwargs`` for ``DinoV2(weights="timm")`` that make timm's pretrained loader read a
    local file holding what timm's hub holds: the official state dict converted by
    ``checkpoint_filter_fn`` (set ``HF_HUB_OFFLINE=1``: nothing is downloaded)."""
    target = timm.create_model(MODELS[model_name], pretrained=False, num_classes=0, depth=depth)
    converted = checkpoint_filter_fn({k: v.clone() for k, v in official_state.items()}, target)
    target.load_state_dict(converted, strict=True)
    torch.save(target.state_dict(), path)
    return {"depth": depth, "pretrained_cfg_overlay": {"file": str(path)}}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())
