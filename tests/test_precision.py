"""The precision policy (docs/backbones.md, "Precision"): under a bf16 autocast every similarity
that feeds an argmax or a softmax (cosine similarity, matchers, transfer, the losses' logits, the
consensus head's input) is the float32 one; the backbone computes in ``backbone.precision``
(auto: follow the autocast, TF32 on CUDA, exact float32 on a CPU) and returns float32.

Autocast is exercised on the CPU (``torch.autocast("cpu", dtype=torch.bfloat16)``, what
Lightning's ``bf16-mixed`` enters there); the CUDA branches are flag settings, checked as such.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from semcorr.backbones.base import FeatureMap
from semcorr.backbones.dinov2 import DinoV2
from semcorr.cli.eval import main as eval_main
from semcorr.config import load_config
from semcorr.errors import ConfigError
from semcorr.heads.consensus import NeighbourhoodConsensus
from semcorr.losses.gaussian_ce import GaussianCELoss
from semcorr.losses.ot_nll import OTNLLLoss
from semcorr.matchers.base import cosine_similarity
from semcorr.matchers.gwot import GWOTMatcher
from semcorr.matchers.nearest import NearestNeighbourMatcher
from semcorr.matchers.ot import OTMatcher
from semcorr.matchers.transfer import transfer_rows
from semcorr.net import CorrespondenceNet
from semcorr.precision import (backbone_precision, cuda_fp32_precision, resolve_backbone_precision)

from runs import QUIET, TINY_VIT

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
TINY = dict(model="vits14", weights="none", model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2})


def smooth_maps(grid=32, dim=64, batch=2, seed=0, stride=14):
    """Feature maps of a smooth random field plus noise, the target shifted by (1, 2) cells: many
    near ties between neighbouring cells, as real patch features have."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, grid // 4 + 1, grid // 4 + 1, generator=g)
    field = torch.nn.functional.interpolate(base, size=(grid, grid), mode="bilinear", align_corners=False)
    f1 = field + 0.3 * torch.randn(batch, dim, grid, grid, generator=g)
    f2 = torch.roll(field, shifts=(1, 2), dims=(2, 3)) + 0.3 * torch.randn(batch, dim, grid, grid, generator=g)
    valid = torch.ones(batch, grid, grid, dtype=torch.bool)
    valid[-1, :, -3:] = False  # a padded target
    return FeatureMap(f1, stride), FeatureMap(f2, stride, valid)


class HalfOps(TorchDispatchMode):
    """Records the ATen ops (after autocast's casts) whose output is bfloat16 or float16."""

    def __init__(self):
        super().__init__()
        self.half = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(o, torch.Tensor) and o.dtype in (torch.bfloat16, torch.float16) for o in outs):
            self.half.append(str(func))
        return out


# ------------------------------------------------------------------------------------------------
# similarities, matchers, transfer, losses: float32 under autocast
# ------------------------------------------------------------------------------------------------
def test_bf16_autocast_moves_argmaxes_of_a_plain_product_but_not_of_the_similarity():
    """The issue's measurement: a 32x32 similarity computed under bf16 autocast moves a few
    percent of its row argmaxes; :func:`cosine_similarity` gives the float32 scores, bit for bit."""
    src, trg = smooth_maps()
    ref = cosine_similarity(src, trg)
    a = torch.nn.functional.normalize(src.flat(), dim=-1)
    b = torch.nn.functional.normalize(trg.flat(), dim=-1)
    with torch.autocast(**BF16):
        plain = a @ b.transpose(1, 2)
        sim = cosine_similarity(src, trg)
    plain = plain.float().masked_fill(~trg.valid.flatten(1)[:, None], float("-inf"))
    moved = (plain.argmax(-1) != ref.argmax(-1)).float().mean().item()
    assert plain.dtype == torch.float32 and moved > 0.01  # what the policy prevents (3.3 % here)
    assert sim.dtype == torch.float32 and torch.equal(sim, ref)


@pytest.mark.parametrize("matcher", [
    NearestNeighbourMatcher(),
    OTMatcher(n_steps=5),
    GWOTMatcher(n_steps=3),
    GWOTMatcher(n_steps=3, implementation="gpu"),
], ids=["nn", "ot", "gwot", "gwot-gpu"])
def test_matchers_score_in_float32_under_autocast(matcher):
    src, trg = smooth_maps(grid=12, dim=32)
    ref = matcher(src, trg).scores
    with torch.autocast(**BF16), HalfOps() as ops:
        out = matcher(src, trg).scores
    assert out.dtype == torch.float32 and torch.equal(out, ref) and ops.half == []
    # features already in bf16 (a head under autocast) are upcast, not matched in bf16
    half = matcher(src.with_features(src.features.bfloat16()), trg.with_features(trg.features.bfloat16()))
    assert half.scores.dtype == torch.float32


@pytest.mark.parametrize("method", ["argmax", "soft_argmax", "window_soft_argmax"])
def test_transfer_is_float32_under_autocast(method):
    src, trg = smooth_maps(grid=16, dim=32)
    rows = cosine_similarity(src, trg)[:, :20]
    ref = transfer_rows(rows, trg.grid, trg.stride, method=method, temperature=0.02)
    with torch.autocast(**BF16), HalfOps() as ops:
        out = transfer_rows(rows, trg.grid, trg.stride, method=method, temperature=0.02)
    assert ops.half == [] and all(torch.equal(o, r) for o, r in zip(out, ref))


def _loss_batch(src, trg, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = src.features.shape[0]
    size = torch.tensor([src.grid[1] * src.stride, src.grid[0] * src.stride], dtype=torch.float32)
    return {"src_kps": torch.rand(b, k, 2, generator=g) * (size - 1),
            "trg_kps": torch.rand(b, k, 2, generator=g) * (size * 0.8 - 1),
            "kps_valid": torch.ones(b, k, dtype=torch.bool), "pair_id": [f"p{i}" for i in range(b)]}


@pytest.mark.parametrize("loss", [GaussianCELoss(), GaussianCELoss(logits_from="scores"),
                                  OTNLLLoss(), OTNLLLoss(negatives="random")],
                         ids=["gaussian_ce", "gaussian_ce-scores", "ot_nll", "ot_nll-random"])
def test_losses_are_float32_under_autocast(loss):
    """Loss values and gradients under bf16 autocast equal the float32 ones (the logits of
    ``gaussian_ce`` were bf16 before)."""
    src, trg = smooth_maps(grid=12, dim=32)
    matcher = OTMatcher(n_steps=5) if isinstance(loss, OTNLLLoss) else NearestNeighbourMatcher()
    batch = _loss_batch(src, trg)

    def run(autocast):
        s = src.with_features(src.features.clone().requires_grad_(True))
        with torch.autocast(**BF16, enabled=autocast), HalfOps() as ops:
            value, _ = loss(batch, s, trg, matcher(s, trg))
        with HalfOps() as backward_ops:  # backward outside autocast, as Lightning (and torch) do it
            value.backward()
        return value.detach(), s.features.grad, ops.half + backward_ops.half

    ref_value, ref_grad, _ = run(False)
    value, grad, half = run(True)
    assert half == [] and torch.equal(value, ref_value) and torch.equal(grad, ref_grad)


def test_consensus_head_gets_the_float32_similarity_and_returns_float32():
    """The head's input is the float32 similarity under autocast; its 4-D convolutions (learned
    layers) follow the autocast, their output is upcast: the refined similarity is float32."""
    src, trg = smooth_maps(grid=6, dim=16, batch=1)
    head = NeighbourhoodConsensus(channels=[2], kernel_sizes=[3, 3])
    ref_input = cosine_similarity(src, trg)
    ref = head.refine(ref_input, src, trg)
    with torch.autocast(**BF16):
        sim = cosine_similarity(src, trg)
        with HalfOps() as ops:
            out = head.refine(sim, src, trg)
    assert torch.equal(sim, ref_input) and out.dtype == torch.float32
    assert any("convolution" in op for op in ops.half)  # the convolutions ran in bf16
    assert torch.allclose(out, ref, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------------------------
# the backbone's precision
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting,device,autocast,expected", [
    ("auto", "cpu", None, "fp32"), ("auto", "cuda", None, "tf32"), ("auto", "cpu", torch.bfloat16, "bf16"),
    ("auto", "cuda", torch.bfloat16, "bf16"), ("auto", "cuda", torch.float16, "fp16"),
    ("tf32", "cpu", None, "fp32"), ("tf32", "cuda", torch.bfloat16, "tf32"),
    ("fp32", "cpu", torch.bfloat16, "fp32"), ("fp32", "cuda", None, "fp32"),
    ("bf16", "cpu", None, "bf16"), ("bf16", "cuda", None, "bf16"),
])
def test_backbone_precision_resolves(setting, device, autocast, expected):
    with autocast_state(device, autocast):
        assert resolve_backbone_precision(setting, device) == expected


@contextlib.contextmanager
def autocast_state(device, dtype):
    """The autocast flags of ``device`` as ``torch.autocast(device, dtype)`` sets them (None: off),
    set directly so that CUDA's can be set on a machine without a GPU."""
    saved = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    torch.set_autocast_enabled(device, dtype is not None)
    if dtype is not None:
        torch.set_autocast_dtype(device, dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled(device, saved[0])
        torch.set_autocast_dtype(device, saved[1])


def test_cuda_precision_flags_are_set_and_restored():
    """``tf32`` / ``fp32`` on CUDA set the float32 matmul and cuDNN flags inside the backbone's
    block and restore them after (flags only: this runs without a GPU)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with backbone_precision("tf32", "cuda"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert not torch.is_autocast_enabled("cuda")
    with autocast_state("cuda", torch.bfloat16), backbone_precision("fp32", "cuda"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert not torch.is_autocast_enabled("cuda")
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with backbone_precision("fp32", "cpu"):  # no CUDA flag is touched for a CPU call
        assert (matmul.fp32_precision, conv.fp32_precision) == before
    with pytest.raises(ValueError, match="mode must be ieee or tf32"):
        with cuda_fp32_precision("bf16"):
            pass


def test_dinov2_precision_on_the_cpu():
    """fp32 is exact float32 even under autocast; auto is fp32 on a CPU and follows an autocast;
    bf16 computes in bfloat16; features are float32 in every case; the cache key names what
    was computed (float32 keys unchanged)."""
    torch.manual_seed(0)
    fp32 = DinoV2(**TINY, precision="fp32").eval()
    auto = DinoV2(**TINY, precision="auto").eval()
    bf16 = DinoV2(**TINY, precision="bf16").eval()
    auto.load_state_dict(fp32.state_dict())
    bf16.load_state_dict(fp32.state_dict())
    images = torch.rand(2, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = fp32(images).features
        with torch.autocast(**BF16):
            fp32_autocast = fp32(images).features
            auto_autocast = auto(images).features
            key_autocast = auto.cache_key()
        auto_plain = auto(images).features
        half = bf16(images).features
    assert all(f.dtype == torch.float32 for f in (ref, fp32_autocast, auto_autocast, auto_plain, half))
    assert torch.equal(fp32_autocast, ref) and torch.equal(auto_plain, ref)
    assert torch.equal(auto_autocast, half)  # auto under a bf16 autocast = bf16
    rel = float((half - ref).norm() / ref.norm())
    assert 1e-4 < rel < 5e-2, rel  # bf16 differs, by bf16's rounding
    def key(model, text=None):  # random weights: an instance id in the key
        return (text or model.cache_key()).replace(model._instance, "<random>")

    assert key(fp32) == key(auto) and key(fp32).endswith("num_heads=2")  # the float32 key as before
    assert key(bf16) == key(fp32) + "-bf16" and key(auto, key_autocast) == key(fp32) + "-bf16"


def test_backbone_precision_is_checked():
    with pytest.raises(ConfigError, match="backbone.precision must be one of auto, fp32, tf32, bf16"):
        load_config([*TINY_VIT, "backbone.precision=fp16"])


# ------------------------------------------------------------------------------------------------
# the whole net, and a bf16-mixed evaluation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("matcher,method", [("nn", "argmax"), ("nn", "window_soft_argmax"),
                                            ("gwot", "argmax"), ("ot", "soft_argmax")])
def test_net_under_autocast_gives_the_float32_predictions(matcher, method):
    """With the backbone in fp32 (``backbone.precision=fp32``) the whole net under a bf16 autocast
    gives the float32 scores and predictions exactly."""
    torch.manual_seed(0)
    build = {"nn": NearestNeighbourMatcher, "ot": lambda: OTMatcher(n_steps=5),
             "gwot": lambda: GWOTMatcher(n_steps=3)}[matcher]
    from semcorr.matchers.transfer import TransferConfig

    net = CorrespondenceNet(DinoV2(**TINY, precision="fp32"), build(),
                            transfer=TransferConfig(method=method)).eval()
    g = torch.Generator().manual_seed(2)
    batch = {"src_img": torch.rand(2, 3, 84, 98, generator=g), "trg_img": torch.rand(2, 3, 84, 98, generator=g),
             "src_content_hw": torch.tensor([[84, 98], [84, 70]]), "trg_content_hw": torch.tensor([[70, 98], [84, 98]]),
             "src_kps": torch.rand(2, 7, 2, generator=g) * 60, "kps_valid": torch.ones(2, 7, dtype=torch.bool),
             "trg_frame": torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)}
    with torch.no_grad():
        ref = net(batch)
        with torch.autocast(**BF16), HalfOps() as ops:
            out = net(batch)
    assert ops.half == []
    assert torch.equal(out.scores, ref.scores) and torch.equal(out.pred, ref.pred)


@pytest.mark.slow
def test_bf16_mixed_evaluation_gives_the_float32_predictions(tmp_path):
    """``trainer.precision=bf16-mixed`` (Lightning's autocast on the CPU) with
    ``backbone.precision=fp32``: the same predictions.jsonl as a float32 evaluation; with
    ``backbone.precision=auto`` the backbone follows the autocast (bf16 features) and the
    evaluation still runs."""
    def run(name, *extra):
        out = tmp_path / name
        rc = eval_main([*QUIET, *TINY_VIT, "data=synthetic", "data.n_pairs.test=4", "data.image_size=84",
                        "data.batch_size=2", "matcher=gwot", "matcher.n_steps=3", f"out_dir={out}", *extra])
        assert rc == 0
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        return rows, json.loads((out / "metrics.json").read_text())

    ref, ref_metrics = run("fp32", "backbone.precision=fp32", "seed=0")
    mixed, mixed_metrics = run("mixed", "backbone.precision=fp32", "seed=0", "trainer.precision=bf16-mixed")
    assert [r["pred"] for r in mixed] == [r["pred"] for r in ref] and len(ref) == 4
    assert mixed_metrics["pck"] == ref_metrics["pck"]
    follows, _ = run("auto", "seed=0", "trainer.precision=bf16-mixed")
    assert len(follows) == 4
