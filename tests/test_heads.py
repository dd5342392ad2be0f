"""Heads: the bottleneck block, 4-D convolution against a brute-force reference, neighbourhood
consensus symmetry and memory, composition, and the wiring into the matchers."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from semcorr.backbones.base import FeatureMap
from semcorr.config import available, load_config
from semcorr.heads import build_head
from semcorr.heads.bottleneck import ResNetBottleneckHead
from semcorr.heads.consensus import NeighbourhoodConsensus, conv4d, nc_activation_bytes
from semcorr.matchers import build_matcher
from semcorr.matchers.base import cosine_similarity


def match_refined(matcher, head, src, trg):
    """The pipeline's score refinement: the matcher on the head's refined cosine similarity."""
    return matcher(src, trg, similarity=head.refine(cosine_similarity(src, trg), src, trg))


def fmap(b=2, d=12, h=4, w=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return FeatureMap(torch.randn(b, d, h, w, generator=g, dtype=dtype), 8,
                      torch.ones(b, h, w, dtype=torch.bool))


def conv4d_reference(x, weight, bias):
    """Direct sum over the k^4 kernel offsets of a zero-padded input."""
    k = weight.shape[2]
    p = k // 2
    b, c, h1, w1, h2, w2 = x.shape
    xp = F.pad(x, (p, p) * 4)
    out = bias.view(1, -1, 1, 1, 1, 1).expand(b, -1, h1, w1, h2, w2).clone()
    for a in range(k):
        for bb in range(k):
            for cc in range(k):
                for dd in range(k):
                    patch = xp[:, :, a:a + h1, bb:bb + w1, cc:cc + h2, dd:dd + w2]
                    out += torch.einsum("oc,bcijkl->boijkl", weight[:, :, a, bb, cc, dd], patch)
    return out


def test_bottleneck_shapes_identity_at_init_and_widths():
    head = ResNetBottleneckHead(dim=768)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(768, 192), (192, 192), (192, 768)]
    src, trg = fmap(d=768), fmap(d=768, seed=1)
    out_s, out_t = head(src, trg)
    assert out_s.features.shape == src.features.shape and out_s.stride == 8
    assert out_s.valid is src.valid
    assert torch.equal(out_s.features, src.features)  # zero-initialised last norm: identity
    torch.nn.init.ones_(convs[-1].weight)
    head.blocks[0].body[-1].weight.data.fill_(1.0)
    assert not torch.equal(head(src, trg)[0].features, src.features)


def test_conv4d_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 3, 5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    assert torch.allclose(conv4d(x, w, bias), conv4d_reference(x, w, bias), atol=1e-10)
    w1 = torch.randn(1, 3, 1, 1, 1, 1, generator=g, dtype=torch.float64)
    assert torch.allclose(conv4d(x, w1), conv4d_reference(x, w1, torch.zeros(1, dtype=x.dtype)))


def test_nc_is_symmetric_and_masks_padding():
    torch.manual_seed(0)
    nc = NeighbourhoodConsensus(channels=[4, 2], kernel_sizes=[3, 3, 3]).double()
    src, trg = fmap(h=4, w=3, dtype=torch.float64), fmap(h=3, w=5, seed=1, dtype=torch.float64)
    sim = cosine_similarity(src, trg)
    out = nc.refine(sim, src, trg)
    assert out.shape == sim.shape
    swapped = nc.refine(sim.transpose(1, 2), trg, src)  # exchange the two images
    assert torch.allclose(swapped, out.transpose(1, 2), atol=1e-12)
    trg.valid[0, :, -1] = False
    masked = nc.refine(cosine_similarity(src, trg), src, trg)
    assert torch.isneginf(masked[0].view(12, 3, 5)[:, :, -1]).all()
    assert torch.isfinite(masked[1]).all()


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while running ``fn``."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("grid", [6, 10])
def test_nc_memory_matches_the_estimate(grid):
    nc = NeighbourhoodConsensus()  # 16 -> 8 channels, 3^4 kernels, symmetric, mutual
    src = fmap(b=1, d=8, h=grid, w=grid)
    trg = fmap(b=1, d=8, h=grid, w=grid, seed=1)
    sim = cosine_similarity(src, trg).requires_grad_(True)
    measured = saved_bytes(lambda: nc.refine(sim, src, trg))
    estimate = nc_activation_bytes((grid, grid), (grid, grid))
    assert estimate <= measured <= 1.3 * estimate, (measured, estimate)


def test_compose_runs_features_then_refiners():
    cfg = load_config(["head=resnet_bottleneck_nc"])
    head = build_head(cfg.head, dim=12)
    assert [type(h).__name__ for h in head.heads] == ["ResNetBottleneckHead", "NeighbourhoodConsensus"]
    assert head.refines_similarity
    src, trg = fmap(), fmap(seed=1)
    s2, t2 = head(src, trg)
    result = match_refined(build_matcher(load_config(["matcher=nn"]).matcher), head, s2, t2)
    assert result.scores.shape == (2, 20, 20)
    result.scores[torch.isfinite(result.scores)].sum().backward()
    nc = head.heads[1]
    assert nc.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("matcher_name", ["ot", "gwot"])
def test_nc_with_the_ot_family(matcher_name):
    grad = ["matcher.grad=unroll"] if matcher_name == "gwot" else []
    matcher = build_matcher(load_config([f"matcher={matcher_name}", "matcher.n_steps=5", *grad]).matcher)
    assert "similarity" in inspect.signature(matcher.forward).parameters
    nc = NeighbourhoodConsensus(channels=[2, 2])
    src, trg = fmap(), fmap(seed=1)
    result = match_refined(matcher, nc, src, trg)
    assert result.scores.shape == (2, 20, 20)
    result.scores[torch.isfinite(result.scores)].exp().pow(2).sum().backward()
    assert nc.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("matcher_name", ["ot", "gwot"])
def test_given_similarity_equals_the_feature_cost(matcher_name):
    """Passing the plain cosine similarity reproduces the matcher's own cost, padding included."""
    grad = ["matcher.grad=detach"] if matcher_name == "gwot" else []
    matcher = build_matcher(load_config([f"matcher={matcher_name}", "matcher.n_steps=5", *grad]).matcher)
    src, trg = fmap(), fmap(seed=1)
    trg.valid = torch.ones(trg.features.shape[0], *trg.grid, dtype=torch.bool)
    trg.valid[:, -1, :] = False  # a padded bottom row: the solver crops it away
    plain = matcher(src, trg).scores
    given = matcher(src, trg, similarity=cosine_similarity(src, trg)).scores
    finite = torch.isfinite(plain)
    assert torch.equal(finite, torch.isfinite(given))
    assert torch.allclose(plain[finite], given[finite], atol=1e-5)


@pytest.mark.parametrize("name", available("head"))
def test_every_head_config_builds_and_keeps_shapes(name):
    head = build_head(load_config([f"head={name}"]).head, dim=16)
    src, trg = fmap(d=16), fmap(d=16, seed=1)
    s2, t2 = head(src, trg)
    assert s2.features.shape == src.features.shape and t2.features.shape == trg.features.shape
