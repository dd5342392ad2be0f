import os
import subprocess
import sys
import time

import pytest
import torch

from semcorr.backbones.dinov2 import DinoV2, WeightsUnavailable
from semcorr.backbones.dsift import DenseSift

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def official_state_dict(model: DinoV2) -> dict:
    """The facebookresearch/dinov2 key names for a timm DINOv2 (mask token, register_tokens)."""
    state = {k: v.clone() for k, v in model.vit.state_dict().items()}
    if "reg_token" in state:
        # official register models embed the class token's position inside pos_embed
        state["register_tokens"] = state.pop("reg_token")
        cls_pos = torch.randn(1, 1, state["cls_token"].shape[-1])
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


@pytest.mark.parametrize("model", ["vits14", "vits14_reg"])
def test_official_checkpoint_gives_the_same_features(tmp_path, model):
    torch.manual_seed(0)
    source = DinoV2(model=model, weights="none", model_kwargs=TINY).eval()
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(official_state_dict(source), path)
    torch.manual_seed(1)
    loaded = DinoV2(model=model, weights=str(path), model_kwargs=TINY).eval()
    x = torch.rand(2, 3, 56, 70)
    with torch.no_grad():
        a, b = source(x), loaded(x)
    assert a.features.shape == (2, 48, 4, 5)
    assert torch.allclose(a.features, b.features, atol=1e-5)
    # a differently seeded random model differs, so the comparison above has teeth
    other = DinoV2(model=model, weights="none", model_kwargs=TINY).eval()
    assert not torch.allclose(other(x).features, a.features, atol=1e-3)


def test_timm_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    source = DinoV2(model="vits14", weights="none", model_kwargs=TINY).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.vit.state_dict().items()}, str(path))
    loaded = DinoV2(model="vits14", weights=str(path), model_kwargs=TINY).eval()
    x = torch.rand(1, 3, 28, 28)
    assert torch.allclose(source(x).features, loaded(x).features, atol=1e-5)


def test_checkpoint_of_the_wrong_size_is_a_clear_error(tmp_path):
    source = DinoV2(model="vits14", weights="none", model_kwargs=TINY)
    path = tmp_path / "x.pth"
    torch.save(official_state_dict(source), path)
    with pytest.raises((ValueError, RuntimeError)):
        DinoV2(model="vits14", weights=str(path), model_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2})
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DinoV2(model="vits14", weights=str(tmp_path / "missing.pth"), model_kwargs=TINY)


def test_timm_weights_offline_fail_fast_and_name_the_local_option():
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        DinoV2(model="vitb14", weights="timm")
    assert time.perf_counter() - t0 < 20
    assert "backbone.weights=" in str(err.value) and ".pth" in str(err.value)


@pytest.mark.slow
def test_timm_weights_without_offline_flag_do_not_hang(tmp_path):
    # No HF_HUB_OFFLINE: the reachability probe must answer within seconds here (no internet).
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path)  # an empty cache
    code = ("from semcorr.backbones.dinov2 import DinoV2\n"
            "try:\n    DinoV2(model='vits14', weights='timm')\n"
            "except Exception as e:\n    print(type(e).__name__)\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    elapsed = time.perf_counter() - t0
    if "WeightsUnavailable" not in out.stdout:
        pytest.skip(f"the hub is reachable from this machine ({out.stdout.strip()!r})")
    assert elapsed < 60


def test_trainable_blocks_and_frozen_modules_stay_in_eval():
    model = DinoV2(model="vits14", weights="none", trainable_blocks=1,
                   model_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("vit.blocks.2.", "vit.norm.")) for n in trainable)
    model.train()
    assert not model.vit.blocks[0].training and model.vit.blocks[2].training
    frozen = DinoV2(model="vits14", weights="none", trainable_blocks=0, model_kwargs=TINY)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_trainable_blocks_minus_one_trains_the_whole_vit():
    for model_name in ("vits14", "vits14_reg"):
        model = DinoV2(model=model_name, weights="none", trainable_blocks=-1, model_kwargs=TINY)
        names = [n for n, _ in model.named_parameters()]
        assert {"vit.patch_embed.proj.weight", "vit.pos_embed", "vit.cls_token"} <= set(names)
        assert all(p.requires_grad for p in model.parameters()), \
            [n for n, p in model.named_parameters() if not p.requires_grad]
        assert model.frozen_modules() == [] and all(m.training for m in model.modules())
        model(torch.rand(1, 3, 28, 28)).features.sum().backward()
        assert model.vit.patch_embed.proj.weight.grad is not None
        assert model.vit.pos_embed.grad is not None
    # frozen modules are in eval mode right after construction, before any train() call
    partial = DinoV2(model="vits14", weights="none", trainable_blocks=1, model_kwargs=TINY)
    assert not partial.vit.patch_embed.training and not partial.vit.blocks[0].training
    assert partial.vit.blocks[1].training
    with pytest.raises(ValueError, match="-1"):
        DinoV2(model="vits14", weights="none", trainable_blocks=-2, model_kwargs=TINY)


def test_layer_choice_and_input_size_check():
    model = DinoV2(model="vits14", weights="none", layer=0, model_kwargs=TINY).eval()
    assert model.layer == 0
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        model(torch.rand(1, 3, 50, 56))


def test_dense_sift_grid_and_normalisation():
    sift = DenseSift(stride=8, keypoint_size=16)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 48, 64)
    fmap = sift(images)
    assert fmap.features.shape == (2, 128, 6, 8) and fmap.stride == 8
    norms = fmap.features.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    assert torch.equal(sift(images).features, fmap.features)  # deterministic
    assert not torch.allclose(fmap.features[0], fmap.features[1])
