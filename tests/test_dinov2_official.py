"""semcorr's DINOv2 backbone gives the official facebookresearch model's patch tokens.

The oracle is the official model code in the shared reference folder (``../shared/reference/dinov2``
or ``$SEMCORR_SHARED_REFERENCE/dinov2``, see its README); the tests that need it skip with the
reason when it is absent. Random weights, with the position embedding and LayerScale perturbed so
that both matter; the official state dict reaches semcorr as an official ``.pth``
(``backbone.weights=path``) or as timm weights (the official file converted by timm's
``checkpoint_filter_fn``, which is what timm's hub files are, loaded through timm's pretrained
loader from a local file). Reduced depth keeps this fast; the blocks are the same at every depth.
"""

from __future__ import annotations

import sys
import warnings
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from semcorr.backbones.dinov2 import MODELS, DinoV2, official_pos_embed
from semcorr.paths import SHARED_REFERENCE_ENV, shared_reference_dir

TOL = 1e-4  # ||a - b|| / ||b||, float32


@pytest.fixture(scope="module")
def official():
    """The official ``dinov2`` package (model code only; never pretrained weights)."""
    ref = shared_reference_dir()
    if ref is None or not (ref / "dinov2" / "dinov2" / "hub" / "backbones.py").is_file():
        pytest.skip(f"official DINOv2 reference code not found: set {SHARED_REFERENCE_ENV} or place "
                    f"it at ../shared/reference/dinov2 (looked in {ref})")
    sys.path.insert(0, str(ref / "dinov2"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "xFormers is not available": plain attention
            import dinov2.hub.backbones as hub
            import dinov2.layers as layers
            import dinov2.models.vision_transformer as vits
        yield hub, vits, layers
    finally:
        sys.path.remove(str(ref / "dinov2"))


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Make the position embedding, LayerScale and prefix tokens matter (random init has
    LayerScale 1 and position embeddings of std 0.02)."""
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


def small_official(official, registers: bool, depth: int) -> torch.nn.Module:
    """The hub's ViT-S/14 (``dinov2_vits14[_reg]``, pretrained=False), cut to ``depth`` blocks."""
    hub = official[0]
    torch.manual_seed(0)
    model = (hub.dinov2_vits14_reg if registers else hub.dinov2_vits14)(pretrained=False)
    assert not model.chunked_blocks  # the hub builds with block_chunks=0
    model.blocks = model.blocks[:depth]
    model.n_blocks = depth
    return perturb(model)


def giant_official(official, registers: bool) -> torch.nn.Module:
    """ViT-g/14 with one block. ``vit_giant2`` fixes depth=40, so the class is built directly
    with the arguments ``dinov2_vitg14[_reg]`` give it (hub defaults plus ffn_layer="swiglufused")."""
    _, vits, layers = official
    torch.manual_seed(0)
    extra = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) \
        if registers else dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
    model = vits.DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=1536, depth=1, num_heads=24, mlp_ratio=4,
        block_fn=partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention),
        init_values=1.0, ffn_layer="swiglufused", block_chunks=0, **extra)
    return perturb(model)


def official_tokens(model, x: torch.Tensor, layer: int | None = None, norm: bool = True):
    """(B, h*w, D) patch tokens of the official model for [0, 1] images ``x``."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        if layer is None:
            return model.forward_features(x)["x_norm_patchtokens"]
        return model.get_intermediate_layers(x, n=[layer], norm=norm)[0]


def ours_tokens(backbone: DinoV2, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone(x).flat()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def save_official(model, tmp_path: Path) -> Path:
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(model.state_dict(), path)  # the official checkpoint format
    return path


def timm_weights(model_name: str, official_state: dict, depth: int, tmp_path: Path, monkeypatch) -> dict:
    """model_kwargs for ``weights="timm"`` that make timm's pretrained loader read a local file
    holding what timm's hub holds: the official state dict converted by checkpoint_filter_fn."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = timm.create_model(MODELS[model_name], pretrained=False, num_classes=0, depth=depth)
    converted = checkpoint_filter_fn({k: v.clone() for k, v in official_state.items()}, target)
    target.load_state_dict(converted, strict=True)
    path = tmp_path / "timm_model.pth"
    torch.save(target.state_dict(), path)
    return {"depth": depth, "pretrained_cfg_overlay": {"file": str(path)}}


SIZES = [(224, 224), (448, 448), (448, 630), (644, 392), (518, 518)]  # (H, W); 518: native grid


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
def test_small_models_match_the_official_code(official, registers, tmp_path, monkeypatch):
    ref = small_official(official, registers, depth=2)
    name = "vits14_reg" if registers else "vits14"
    path = save_official(ref, tmp_path)
    from_pth = DinoV2(model=name, weights=str(path), model_kwargs={"depth": 2}).eval()
    from_timm = DinoV2(model=name, weights="timm", model_kwargs=timm_weights(
        name, ref.state_dict(), 2, tmp_path, monkeypatch)).eval()
    old = DinoV2(model=name, weights=str(path), model_kwargs={"depth": 2}, pos_embed="timm").eval()
    torch.manual_seed(0)
    for hw in SIZES:
        x = torch.rand(1, 3, *hw)
        want = official_tokens(ref, x)
        for backbone in (from_pth, from_timm):
            got = ours_tokens(backbone, x)
            assert got.shape == want.shape
            assert rel(got, want) < TOL, (hw, rel(got, want))
        # timm's own resampling equals the official one for the register models only
        diff = rel(ours_tokens(old, x), want)
        if registers or hw == (518, 518):
            assert diff < TOL, (hw, diff)
        else:
            assert diff > 1e-3, (hw, diff)


def test_layer_and_norm_options_match_the_official_intermediate_layers(official, tmp_path):
    ref = small_official(official, registers=False, depth=3)
    path = save_official(ref, tmp_path)
    x = torch.rand(2, 3, 280, 196)
    for layer, norm in [(0, False), (1, True), (-1, False)]:
        ours = DinoV2(model="vits14", weights=str(path), layer=layer, norm=norm,
                      model_kwargs={"depth": 3}).eval()
        want = official_tokens(ref, x, layer=layer % 3, norm=norm)
        assert rel(ours_tokens(ours, x), want) < TOL, (layer, norm)


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
def test_giant_matches_the_official_code(official, registers, tmp_path, monkeypatch):
    """ViT-g/14: SwiGLU FFN (official w12 / w3 'swiglufused' = timm SwiGLUPacked fc1 / fc2,
    hidden 4096 from both rules), converted by checkpoint_filter_fn; one block. The plain model
    comes from the official .pth, the register model through timm's loader (both routes are
    tested at every ViT-S size above)."""
    ref = giant_official(official, registers)
    name = "vitg14_reg" if registers else "vitg14"
    if registers:
        kwargs = timm_weights(name, ref.state_dict(), 1, tmp_path, monkeypatch)
        ours = DinoV2(model=name, weights="timm", model_kwargs=kwargs).eval()
        sizes = [(224, 224), (392, 294)]
    else:
        ours = DinoV2(model=name, weights=str(save_official(ref, tmp_path)),
                      model_kwargs={"depth": 1}).eval()
        sizes = [(224, 224), (448, 630)]
    assert ours.vit.blocks[0].mlp.fc1.out_features == 2 * ref.blocks[0].mlp.w3.in_features == 8192
    for hw in sizes:
        x = torch.rand(1, 3, *hw)
        assert rel(ours_tokens(ours, x), official_tokens(ref, x)) < TOL, hw


# ----------------------------------------------------------------------------------------------
# Without the oracle: the options, the cache and gradients
# ----------------------------------------------------------------------------------------------
TINY = {"depth": 1, "embed_dim": 48, "num_heads": 2}


def test_pos_embed_option_and_cache_key():
    official_mode = DinoV2(model="vits14", weights="none", model_kwargs=TINY)
    assert official_mode.pos_embed_mode == "official"
    timm_mode = DinoV2(model="vits14", weights="none", model_kwargs=TINY, pos_embed="timm")
    assert "-peofficial-" in official_mode.cache_key() and "-petimm-" in timm_mode.cache_key()
    with pytest.raises(ValueError, match="official, timm"):
        DinoV2(model="vits14", weights="none", model_kwargs=TINY, pos_embed="bilinear")


def test_official_resize_arithmetic():
    """Offset 0.1: a scale factor of (n + 0.1) / M, not the exact ratio; offset 0: the size."""
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = official_pos_embed(pos, (37, 37), (16, 45), 1, 0.1, False)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 37, 45.1 / 37), mode="bicubic")
    assert torch.equal(out[:, 1:], want.permute(0, 2, 3, 1).reshape(1, -1, 8))
    assert torch.equal(out[:, :1], pos[:, :1])
    exact = torch.nn.functional.interpolate(grid, size=(16, 45), mode="bicubic", antialias=True)
    out0 = official_pos_embed(pos[:, 1:], (37, 37), (16, 45), 0, 0.0, True)
    assert torch.equal(out0, exact.permute(0, 2, 3, 1).reshape(1, -1, 8))
    assert official_pos_embed(pos, (37, 37), (37, 37), 1, 0.1, False) is pos  # native size


def test_cached_pos_embed_follows_weight_changes():
    model = DinoV2(model="vits14", weights="none", model_kwargs=dict(TINY, init_values=1.0)).eval()
    x = torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        a = model(x).features
        assert len(model._pos_cache) == 1
        assert torch.equal(model(x).features, a)  # served from the cache
        model.vit.pos_embed.add_(1.0)  # in place, as load_state_dict or an optimiser step
        b = model(x).features
    assert not torch.allclose(a, b)
    fresh = DinoV2(model="vits14", weights="none", model_kwargs=dict(TINY, init_values=1.0)).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x).features, b, atol=1e-6)


@pytest.mark.parametrize("hw", [(56, 70), (518, 518)], ids=["resized", "native"])
def test_pos_embed_trains_with_trainable_blocks_minus_one(hw):
    model = DinoV2(model="vits14_reg", weights="none", trainable_blocks=-1, model_kwargs=TINY).train()
    model(torch.rand(1, 3, *hw)).features.square().sum().backward()
    grad = model.vit.pos_embed.grad
    assert grad is not None and grad.abs().sum() > 0
    assert not model._pos_cache


def test_shared_reference_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_REFERENCE_ENV, str(tmp_path))
    assert shared_reference_dir() == tmp_path
    monkeypatch.setenv(SHARED_REFERENCE_ENV, str(tmp_path / "absent"))
    assert shared_reference_dir() is None
