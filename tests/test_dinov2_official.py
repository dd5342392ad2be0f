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

from pathlib import Path

import pytest
import torch

from reference.dinov2_oracle import (MEAN, STD, giant_official, has_official, import_official,
                                     official_tokens, rel, save_official, small_official,
                                     timm_weights_kwargs)
from semcorr.backbones.dinov2 import DinoV2, official_pos_embed
from semcorr.paths import SHARED_REFERENCE_ENV, shared_reference_dir

TOL = 1e-4  # ||a - b|| / ||b||, float32


@pytest.fixture(scope="module")
def official():
    """The official ``dinov2`` package (model code only; never pretrained weights)."""
    ref = shared_reference_dir()
    if not has_official(ref):
        pytest.skip(f"official DINOv2 reference code not found: set {SHARED_REFERENCE_ENV} or place "
                    f"it at ../shared/reference/dinov2 (looked in {ref})")
    with import_official(ref) as modules:
        yield modules


def ours_tokens(backbone: DinoV2, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone(x).flat()


def timm_weights(model_name, official_state, depth, tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return timm_weights_kwargs(model_name, official_state, depth, tmp_path / "timm_model.pth")


SIZES = [(224, 224), (448, 448), (448, 630), (644, 392), (518, 518)]  # (H, W); 518: native grid


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
def test_small_models_match_the_official_code(official, registers, tmp_path, monkeypatch):
    ref = small_official(official, registers, depth=2)
    name = "vits14_reg" if registers else "vits14"
    path = save_official(ref, tmp_path / "dinov2_pretrain.pth")
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


@pytest.mark.slow
@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
@pytest.mark.parametrize("arch", ["vitb14", "vitl14"])
def test_base_and_large_match_the_official_code(official, arch, registers, tmp_path, monkeypatch):
    """ViT-B/14 and ViT-L/14 (one block: the blocks are the same at every depth), non-square
    and square sizes, plain from the official .pth, registers through timm's loader."""
    ref = small_official(official, registers, depth=1, arch=arch)
    name = arch + ("_reg" if registers else "")
    if registers:
        ours = DinoV2(model=name, weights="timm", model_kwargs=timm_weights(
            name, ref.state_dict(), 1, tmp_path, monkeypatch)).eval()
    else:
        ours = DinoV2(model=name, weights=str(save_official(ref, tmp_path / "dinov2_pretrain.pth")),
                      model_kwargs={"depth": 1}).eval()
    for hw in [(224, 224), (448, 630)]:
        x = torch.rand(1, 3, *hw)
        assert rel(ours_tokens(ours, x), official_tokens(ref, x)) < TOL, hw


def test_layer_and_norm_options_match_the_official_intermediate_layers(official, tmp_path):
    ref = small_official(official, registers=False, depth=3)
    path = save_official(ref, tmp_path / "dinov2_pretrain.pth")
    x = torch.rand(2, 3, 280, 196)
    for layer, norm in [(0, False), (1, True), (-1, False)]:
        ours = DinoV2(model="vits14", weights=str(path), layer=layer, norm=norm,
                      model_kwargs={"depth": 3}).eval()
        want = official_tokens(ref, x, layer=layer % 3, norm=norm)
        assert rel(ours_tokens(ours, x), want) < TOL, (layer, norm)


@pytest.mark.slow
@pytest.mark.parametrize("registers,norm", [(False, True), (True, False)], ids=["plain-norm", "reg-raw"])
def test_several_layers_match_the_official_intermediate_layers(official, registers, norm, tmp_path):
    """``layers=[...]``: each listed block's tokens equal the official
    ``get_intermediate_layers(x, n=[...], norm=norm)``; ``concat`` stacks them in the listed order,
    ``mean`` averages them."""
    ref = small_official(official, registers, depth=4)
    path = save_official(ref, tmp_path / "dinov2_pretrain.pth")
    name = "vits14_reg" if registers else "vits14"
    x = torch.rand(2, 3, 224, 168)
    with torch.no_grad():  # the official call returns the blocks in ascending order
        want = dict(zip([0, 1, 3], ref.get_intermediate_layers((x - MEAN) / STD, n=[0, 1, 3], norm=norm)))
    d = ref.embed_dim
    assert rel(want[0], want[3]) > 0.1 and rel(want[1], want[3]) > 0.1  # the order matters
    for layers in ([3, 1], [0, -1, 1]):
        blocks = [b % 4 for b in layers]
        cat = DinoV2(model=name, weights=str(path), layers=layers, norm=norm,
                     model_kwargs={"depth": 4}).eval()
        got = ours_tokens(cat, x)
        assert cat.dim == d * len(layers) and got.shape == (2, 16 * 12, d * len(layers))
        for i, block in enumerate(blocks):
            assert rel(got[..., i * d:(i + 1) * d], want[block]) < TOL, (layers, block)
        mean = DinoV2(model=name, weights=str(path), layers=layers, fuse="mean", norm=norm,
                      model_kwargs={"depth": 4}).eval()
        assert mean.dim == d
        assert rel(ours_tokens(mean, x), torch.stack([want[b] for b in blocks]).mean(0)) < TOL, layers


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
        ours = DinoV2(model=name, weights=str(save_official(ref, tmp_path / "dinov2_pretrain.pth")),
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


def test_several_layers_are_cached_under_their_own_key():
    """The cache key names the blocks and the fusion; a multi-layer backbone goes through the
    feature caches like a single-layer one."""
    from semcorr.features import FeatureExtractor
    from semcorr.stores import MemoryCache

    kwargs = dict(model="vits14", weights="none", model_kwargs=dict(TINY, depth=3))
    single = DinoV2(**kwargs, layer=1)
    cat = DinoV2(**kwargs, layers=[2, 0])
    mean = DinoV2(**kwargs, layers=[2, 0], fuse="mean")
    assert "-l1-n1-" in single.cache_key()
    assert "-l2+0-concat-n1-" in cat.cache_key() and "-l2+0-mean-n1-" in mean.cache_key()
    assert cat.layer == 2 and cat.dim == 96 and mean.dim == 48
    ex = FeatureExtractor(cat.eval(), [MemoryCache(64)])
    x = torch.rand(2, 3, 28, 42)
    with torch.no_grad():
        first = ex(x, ["a", "b"], use_cache=True).features
        again = ex(x, ["a", "b"], use_cache=True).features
    assert ex.backbone_calls == 2 and torch.equal(first, again) and first.shape == (2, 96, 2, 3)
    with pytest.raises(ValueError, match="name a block twice"):
        DinoV2(**kwargs, layers=[2, -1])
    with pytest.raises(ValueError, match="fuse must be one of concat, mean"):
        DinoV2(**kwargs, layers=[1, 2], fuse="sum")


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
