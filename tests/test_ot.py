"""Entropic OT matcher: Sinkhorn against POT, optimality of the unbalanced plan, masks, grads."""

from __future__ import annotations

import pytest
import torch

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.gwot import solve_gwot
from semcorr.matchers.ot import OTMatcher, solve_ot


def _cost(b=1, ns=20, nt=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.nn.functional.normalize(torch.randn(b, ns, 6, generator=g, dtype=torch.float64), dim=-1)
    z = torch.nn.functional.normalize(torch.randn(b, nt, 6, generator=g, dtype=torch.float64), dim=-1)
    return 1 - y @ z.transpose(1, 2)


def test_balanced_equals_pot_sinkhorn():
    import ot

    cost = _cost()
    lam, eps = 0.5, 0.02
    plan = solve_ot(cost, lam=lam, eps=eps, marginal="balanced", n_steps=500)[0].exp()
    a, b = torch.full((20,), 1 / 20, dtype=torch.float64), torch.full((24,), 1 / 24, dtype=torch.float64)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), (lam * cost[0]).numpy(), eps, method="sinkhorn_log",
                      numItermax=5000, stopThr=1e-14)
    assert (plan - torch.as_tensor(ref)).abs().max() < 1e-12
    assert torch.allclose(plan.sum(0), b, atol=1e-12)


@pytest.mark.slow
def test_unbalanced_is_optimal_and_equals_gwot_without_gw():
    """First-order optimality of min λ<C,T> + λ_ub KL(Tᵀ1|q) - εH(T) s.t. T1 = p: the gradient
    λC + λ_ub log(q̃/q) + ε log T is constant along each row. The GW-OT mirror descent with
    λ_gw = 0 converges to the same plan."""
    cost = _cost(2, seed=1)
    lam, eps, lam_ub = 0.3, 0.05, 0.2
    log_t = solve_ot(cost, lam=lam, eps=eps, lam_ub=lam_ub, marginal="unbalanced", n_steps=300)
    t = log_t.exp()
    col = t.sum(1)
    grad = lam * cost + lam_ub * (col * 24).log()[:, None, :] + eps * log_t
    assert (grad.amax(2) - grad.amin(2)).abs().max() < 1e-10
    assert torch.allclose(t.sum(2), torch.full((2, 20), 1 / 20, dtype=torch.float64), atol=1e-14)
    md = solve_gwot(cost, (4, 5), (4, 6), lam=lam, lam_gw=0.0, lam_ub=lam_ub, eps=eps, n_steps=400,
                    step=1.0).log_plan
    assert (md.exp() - t).abs().max() < 1e-9


def test_masks_and_virtual_rows():
    cost = _cost(1, 20, 24, seed=2)
    sv = torch.ones(1, 20, dtype=torch.bool)
    tv = torch.ones(1, 24, dtype=torch.bool)
    sv[0, -4:] = False
    tv[0, :3] = False
    for marginal in ("balanced", "unbalanced"):
        log_t = solve_ot(cost, sv, tv, lam=0.5, eps=0.02, marginal=marginal, n_steps=200)
        assert torch.isneginf(log_t[0, :, :3]).all() and torch.isfinite(log_t[0, :, 3:]).all()
        t = log_t.exp()
        assert torch.allclose(t.sum(2), torch.full((1, 20), 1 / 16, dtype=torch.float64))
        if marginal == "balanced":  # only valid rows count towards the column marginal
            assert torch.allclose(t[0, :16].sum(0)[3:], torch.full((21,), 1 / 21, dtype=torch.float64),
                                  atol=1e-10)


@pytest.mark.parametrize("marginal", ["balanced", "unbalanced"])
def test_gradcheck(marginal):
    cost = _cost(1, 4, 5, seed=3).requires_grad_()
    eps = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    fn = lambda c, e: solve_ot(c, lam=1.0, eps=e, lam_ub=0.3, marginal=marginal, n_steps=5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cost, eps), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_matcher_autocast_and_small_eps():
    g = torch.Generator().manual_seed(0)
    src = FeatureMap(torch.randn(2, 16, 8, 9, generator=g), 8)
    trg = FeatureMap(torch.randn(2, 16, 7, 8, generator=g), 8)
    for marginal in ("balanced", "unbalanced"):
        m = OTMatcher(eps=1e-3, marginal=marginal)
        out = m(src, trg)
        assert out.scores.shape == (2, 72, 56) and torch.isfinite(out.scores).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = m(src.with_features(src.features.bfloat16()), trg)
        assert torch.isfinite(out16.scores).all()
