"""GW-OT solver and matcher: against a dense reference, POT, and its own invariants."""

from __future__ import annotations

import pytest
import torch

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.gridfilter import disc_size, filter_leading, filter_trailing
from semcorr.matchers.gwot import GWOTMatcher, solve_gwot
from reference.gwot_dense import pot_entropic_fgw, solve_gwot_dense, structure_matrices

SG, TG = (6, 7), (5, 8)  # Ns = 42, Nt = 40


def _cost(b=2, sg=SG, tg=TG, dim=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.nn.functional.normalize(torch.randn(b, sg[0] * sg[1], dim, generator=g), dim=-1)
    z = torch.nn.functional.normalize(torch.randn(b, tg[0] * tg[1], dim, generator=g), dim=-1)
    return (1 - y @ z.transpose(1, 2)).to(dtype)


def _masks(b=2):
    sv = torch.ones(b, SG[0] * SG[1], dtype=torch.bool)
    tv = torch.ones(b, TG[0] * TG[1], dtype=torch.bool)
    sv[1].view(SG)[:, -1] = False  # padded right column in the source of pair 1
    tv[1].view(TG)[-1] = False  # padded bottom row in the target of pair 1
    return sv, tv


PAIRS = torch.tensor([[[3, 10], [20, 25], [-1, -1]], [[0, 5], [13, 8], [7, 7]]])
KW = dict(lam=0.2, lam_sym=3.0, lam_ub=0.05, eps=0.01, delta_min=2.0, delta_max=3.0, ref_cells=100)


@pytest.mark.parametrize("delta,strict", [(3, True), (5, False), (2.5, False), (1, True), (0, True)])
def test_disc_filters_equal_dense_matrices(delta, strict):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 7 * 9, 5, generator=g, dtype=torch.float64)
    h, w = 7, 9
    cp, cq = structure_matrices((h, w), (h, w), delta, delta)
    k = cp if strict else 1 - cq
    assert torch.allclose(filter_leading(x, (h, w), delta, strict), torch.einsum("ik,bkm->bim", k, x))
    xt = x.transpose(1, 2)
    assert torch.allclose(filter_trailing(xt, (h, w), delta, strict), xt @ k)
    assert disc_size(3, True) == 25 and disc_size(5, False) == 81


@pytest.mark.parametrize("chunk", [7, 50, 333])
@pytest.mark.parametrize("marginal", ["unbalanced", "balanced"])
def test_inplace_chunked_path_equals_autograd_path(chunk, marginal, monkeypatch):
    """Without autograd the solver reuses buffers, updates in place and works in row chunks (and
    the filters in chunks of cells); with small chunks that split the pairs' rows it must give
    what the out-of-place autograd path gives."""
    import semcorr.matchers.gridfilter as gridfilter
    import semcorr.matchers.gwot.solver as solver

    cost = _cost()
    sv, tv = _masks()
    kw = dict(KW, lam_gw=torch.tensor([2.0, 5.0], dtype=torch.float64), sym_pairs=PAIRS, n_steps=15,
              marginal=marginal)
    ref = solve_gwot(cost.clone().requires_grad_(), SG, TG, sv, tv, grad="unroll", **kw)
    monkeypatch.setattr(gridfilter, "CPU_CHUNK_ELEMS", chunk)
    monkeypatch.setattr(solver, "CPU_CHUNK_ELEMS", chunk)
    fin = torch.isfinite(ref.log_plan)
    for want_obj in (False, True):  # the objective takes the log-plan path of the projection
        fast = solve_gwot(cost, SG, TG, sv, tv, grad="detach", return_objective=want_obj, **kw)
        assert torch.equal(torch.isfinite(fast.log_plan), fin)
        assert torch.allclose(fast.log_plan[fin], ref.log_plan.detach()[fin], rtol=1e-12, atol=0)


@pytest.mark.parametrize("marginal,scale", [("unbalanced", "asot"), ("unbalanced", "fraction"),
                                            ("balanced", "fraction"), ("unbalanced", "grid"),
                                            ("unbalanced", "raw")])
def test_equals_dense_reference(marginal, scale):
    cost = _cost()
    sv, tv = _masks()
    lam_gw = torch.tensor([2.0, 5.0], dtype=torch.float64)  # per-pair weights
    kw = dict(KW, lam_gw=lam_gw, sym_pairs=PAIRS, n_steps=15, marginal=marginal, scale=scale)
    fast = solve_gwot(cost, SG, TG, sv, tv, return_objective=True, **kw)
    ref_plan, ref_obj, ref_eta = solve_gwot_dense(cost, SG, TG, sv, tv, **kw)
    fin = torch.isfinite(ref_plan)
    assert torch.equal(torch.isfinite(fast.log_plan), fin)
    assert torch.allclose(fast.log_plan[fin], ref_plan[fin], rtol=1e-6, atol=0)
    assert torch.allclose(fast.objective, ref_obj, rtol=1e-6, atol=1e-12)
    assert torch.allclose(fast.step_size, ref_eta, rtol=1e-12)


def test_equals_pot_entropic_fused_gw():
    """Balanced, no symmetry, η = 1/ε: our iteration is POT's PGD; plans and values agree."""
    sg = tg = (5, 6)
    cost = _cost(1, sg, tg, seed=3)
    lam, lam_gw, eps, dmin, dmax = 1.0, 0.5, 0.05, 2.0, 2.5
    res = solve_gwot(
        cost, sg, tg, lam=lam, lam_gw=lam_gw, eps=eps, delta_min=dmin, delta_max=dmax,
        marginal="balanced", step_size=1 / eps, n_steps=40, sinkhorn_iters=25,
        scale="raw", return_objective=True,
    )
    t_pot, log = pot_entropic_fgw(cost[0], sg, tg, lam, lam_gw, eps, dmin, dmax, max_iter=40, tol=0.0,
                                  log=True)
    t_ours = res.log_plan[0].exp()
    assert (t_ours - t_pot).abs().max() < 1e-9  # plan entries are ~1e-3
    # Objective: ours = s * POT's fgw value - s * alpha * (q'Kq - p'C^p p) - eps * H(T).
    cp, cq = structure_matrices(sg, tg, dmin, dmax)
    k = 1 - cq
    s, alpha = lam + lam_gw / 2, (lam_gw / 2) / (lam + lam_gw / 2)
    p = torch.full((30,), 1 / 30, dtype=torch.float64)
    ours_from_pot = s * float(log["fgw_dist"]) - s * alpha * float(p @ k @ p - p @ cp @ p)
    ours_from_pot += eps * float((t_pot * t_pot.log()).sum())
    assert abs(float(res.objective[0, -1]) - ours_from_pot) < 1e-8 * max(1.0, abs(ours_from_pot))


def test_row_marginal_exact_and_padding_is_minus_inf():
    cost = _cost(dtype=torch.float32)
    sv, tv = _masks()
    res = solve_gwot(cost, SG, TG, sv, tv, lam_gw=2.0, n_steps=20, **{k: v for k, v in KW.items()})
    t = res.log_plan.exp()
    n_s = sv.sum(1).float()
    assert torch.allclose(t.sum(2), (1 / n_s)[:, None].expand(-1, t.shape[1]), rtol=1e-5)
    assert torch.isneginf(res.log_plan[1][:, ~tv[1]]).all()
    assert torch.isfinite(res.log_plan[1][:, tv[1]]).all()
    assert torch.allclose(t[1][sv[1]].sum(), torch.tensor(1.0), rtol=1e-5)


@pytest.mark.parametrize("eps", [0.01, 0.001])
def test_objective_decreases(eps):
    res = solve_gwot(_cost(1), SG, TG, lam_gw=5.0, n_steps=30, return_objective=True,
                     **dict(KW, eps=eps, lam_sym=0.0))
    obj = res.objective[0]
    assert (obj[1:] - obj[:-1] <= 1e-12).all()
    assert obj[-1] < obj[0]


def test_batch_equals_single_solves():
    cost = _cost(3, seed=5)
    sv = torch.ones(3, 42, dtype=torch.bool)
    tv = torch.ones(3, 40, dtype=torch.bool)
    sv[2, :7] = False
    tv[0, -5:] = False
    lam_gw = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64)
    pairs = torch.tensor([[[1, 5]], [[9, 12]], [[-1, -1]]])
    kw = dict(KW, n_steps=10)
    batch = solve_gwot(cost, SG, TG, sv, tv, lam_gw=lam_gw, sym_pairs=pairs, **kw).log_plan
    for i in range(3):
        one = solve_gwot(cost[i : i + 1], SG, TG, sv[i : i + 1], tv[i : i + 1], lam_gw=float(lam_gw[i]),
                         sym_pairs=pairs[i : i + 1], **kw).log_plan
        fin = one.isfinite()
        assert torch.equal(batch[i : i + 1].isfinite(), fin)
        assert torch.allclose(batch[i : i + 1][fin], one[fin], rtol=1e-10, atol=0)


def test_masks_exclude_padding():
    """A padded problem equals the cropped problem on the valid cells, whatever the padding holds."""
    crop_s, crop_t = (5, 6), (4, 7)
    cost = _cost(1, SG, TG, seed=7)
    sv = torch.zeros(SG, dtype=torch.bool)
    sv[: crop_s[0], : crop_s[1]] = True
    tv = torch.zeros(TG, dtype=torch.bool)
    tv[: crop_t[0], : crop_t[1]] = True
    sv, tv = sv.reshape(1, -1), tv.reshape(1, -1)
    garbage = cost.clone()
    garbage[:, ~sv[0]] = -5.0
    garbage[:, :, ~tv[0]] = -5.0
    kw = dict(KW, lam_gw=3.0, lam_sym=0.0, n_steps=12)
    padded = solve_gwot(garbage, SG, TG, sv, tv, **kw).log_plan
    cropped_cost = cost[:, sv[0]][:, :, tv[0]]
    cropped = solve_gwot(cropped_cost, crop_s, crop_t, **kw).log_plan
    assert torch.allclose(padded[:, sv[0]][:, :, tv[0]], cropped, rtol=1e-10)


def _grad_inputs():
    sg, tg = (3, 3), (3, 4)
    cost = _cost(1, sg, tg, seed=11).requires_grad_()
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    lam_gw = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    lam_ub = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    return sg, tg, (cost, lam, lam_gw, lam_ub, eps)


@pytest.mark.parametrize("grad", ["unroll", "checkpoint"])
@pytest.mark.parametrize("marginal", ["unbalanced", "balanced"])
def test_gradcheck(grad, marginal):
    sg, tg, inputs = _grad_inputs()
    pairs = torch.tensor([[[0, 2]]])

    def fn(cost, lam, lam_gw, lam_ub, eps):
        # A fixed step size: the automatic one is a (detached) solver setting.
        return solve_gwot(cost, sg, tg, lam=lam, lam_gw=lam_gw, lam_ub=lam_ub, eps=eps, lam_sym=1.0,
                          sym_pairs=pairs, delta_min=1.5, delta_max=1.0, n_steps=4, step_size=3.0,
                          marginal=marginal, sinkhorn_iters=3, scale="raw", grad=grad,
                          checkpoint_every=2).log_plan

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_detach_mode_has_no_graph():
    sg, tg, inputs = _grad_inputs()
    out = solve_gwot(inputs[0], sg, tg, lam_gw=2.0, n_steps=3, grad="detach").log_plan
    assert not out.requires_grad


def test_checkpoint_and_unroll_gradients_agree():
    sg, tg, (cost, *_) = _grad_inputs()
    grads = []
    for grad in ("unroll", "checkpoint"):
        c = cost.detach().clone().requires_grad_()
        out = solve_gwot(c, sg, tg, lam_gw=2.0, n_steps=7, grad=grad, checkpoint_every=3).log_plan
        out.exp().pow(2).sum().backward()
        grads.append(c.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10)


def _feature_maps(b=2, grid=(12, 12), dim=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    f1 = torch.randn(b, dim, *grid, generator=g, dtype=dtype)
    f2 = torch.randn(b, dim, *grid, generator=g, dtype=dtype)
    valid = torch.ones(b, *grid, dtype=torch.bool)
    valid[1, :, -2:] = False
    return FeatureMap(f1, 8, valid), FeatureMap(f2, 8, valid.clone())


def test_no_nan_small_eps_float32_and_bf16_autocast():
    src, trg = _feature_maps(grid=(10, 10))
    m = GWOTMatcher(eps=1e-3, lam_gw=5.0, lam_sym=1.0, n_steps=30, return_objective=True)
    pairs = torch.tensor([[[3, 8], [30, 40]], [[5, 6], [-1, -1]]])
    out = m(src, trg, pairs)
    fin = out.scores[torch.isfinite(out.scores)]
    assert fin.numel() == 2 * 100 * 100 - 100 * 20 and not torch.isnan(out.scores).any()
    assert torch.isfinite(out.extras["objective"]).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        src16 = src.with_features(src.features.bfloat16())
        out16 = m(src16, trg, pairs)
    assert out16.scores.dtype == torch.float32 and not torch.isnan(out16.scores).any()
    assert torch.allclose(out16.scores.exp().sum(2), out.scores.exp().sum(2), rtol=1e-4)


def test_matcher_module_shapes_and_learnable_parameters():
    src, trg = _feature_maps(grid=(5, 6))
    m = GWOTMatcher(lam_gw=2.0, n_steps=5, learnable=True, grad="unroll", return_objective=True)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"log_lam", "log_lam_gw", "log_lam_ub", "log_eps"}  # lam_sym = 0 stays off
    out = m(src, trg)
    assert out.scores.shape == (2, 30, 30) and out.extras["objective"].shape == (2, 5)
    out.scores[torch.isfinite(out.scores)].exp().pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_every_gwot_and_ot_config_builds():
    from semcorr.config import available, load_config
    from semcorr.matchers import build_matcher

    names = [n for n in available("matcher") if n.startswith(("gwot", "ot"))]
    assert {"gwot", "gwot_tss", "gwot_pf_pascal", "gwot_spair", "gwot_pf_willow", "ot"} <= set(names)
    for name in names:
        cfg = load_config([f"matcher={name}"])
        assert isinstance(build_matcher(cfg.matcher), torch.nn.Module)


def test_matcher_crops_padding_exactly():
    """The module solves on the bounding box of valid cells; valid rows equal the full solve."""
    src, trg = _feature_maps(b=2, grid=(7, 8))
    src.valid[:, 5:] = False  # bottom rows padded in both pairs: cropped away
    trg.valid[:, :, 6:] = False
    trg.valid[0, :, 5] = False  # pair-specific padding stays inside the box
    m = GWOTMatcher(lam_gw=3.0, lam_sym=1.0, n_steps=8, grad="detach")
    pairs = torch.tensor([[[1, 4], [45, 50]], [[9, 14], [-1, -1]]])
    out = m(src, trg, pairs).scores
    sv = src.valid.reshape(2, -1)
    tv = trg.valid.reshape(2, -1)
    cost = 1 - torch.nn.functional.normalize(src.flat(), dim=-1) @ torch.nn.functional.normalize(
        trg.flat(), dim=-1).transpose(1, 2)
    pairs_full = pairs.clone()
    pairs_full[0, 1] = -1  # cell 45/50 lie in cropped rows: dropped by the module as well
    ref = solve_gwot(cost, (7, 8), (7, 8), sv, tv, lam=0.2, lam_gw=3.0, lam_sym=1.0, lam_ub=0.05, eps=0.01,
                     sym_pairs=pairs_full, n_steps=8).log_plan
    for i in range(2):
        block_out = out[i][sv[i]][:, tv[i]]
        block_ref = ref[i][sv[i]][:, tv[i]]
        assert torch.allclose(block_out, block_ref, rtol=1e-4, atol=1e-5)
        assert torch.isneginf(out[i][:, ~tv[i]]).all()
    assert torch.isfinite(out[:, ~sv[0]][:, :, tv[0]]).all()  # padded rows still hold a row


def _torn_plan(grid, seed=0):
    """A plan whose rows each sit on one target cell, the cells a random permutation: every
    source cell's neighbours land far from it (a torn warp)."""
    n = grid[0] * grid[1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.zeros(1, n, n, dtype=torch.float64).scatter_(2, perm.view(1, n, 1), 1.0 / n), perm


@pytest.mark.slow
@pytest.mark.parametrize("grid,scale,weight", [((12, 12), "fraction", 1.0), ((30, 30), "fraction", 1.0),
                                               ((12, 12), "asot", 2.0), ((30, 30), "asot", 2.0)])
def test_scale_means_the_torn_neighbourhood_fraction(grid, scale, weight):
    """Under scale=fraction the GW gradient at (i, j(i)) is lam_gw times the fraction of i's
    delta_min-neighbourhood that lands beyond delta_max of j(i), under scale=asot twice that
    (ASOT's filter gives (C_v p)_i = 2): for a torn plan about weight * lam_gw, whatever the grid."""
    from semcorr.matchers.gridfilter import disc_size
    from semcorr.matchers.gwot.options import GWOTOptions
    from semcorr.matchers.gwot.solver import scale_coefficients
    from semcorr.matchers.gwot.terms import gw_filter, gw_row_term

    t, perm = _torn_plan(grid)
    n = t.shape[1]
    opts = GWOTOptions(lam_gw=0.2, scale=scale)
    c_gw, _ = scale_coefficients(opts, torch.tensor([float(n)], dtype=torch.float64),
                                 torch.tensor([0.2], dtype=torch.float64), torch.zeros(1))
    p = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    grad = c_gw[:, None, None] * (gw_row_term(p, grid, 3.0)[:, :, None] - gw_filter(t, grid, grid, 3.0, 5.0))
    h, w = grid
    interior = [r * w + c for r in range(3, h - 3) for c in range(3, w - 3)]
    values = grad[0, interior, perm[interior]]
    # by hand: the fraction of i's neighbours (|x_i - x_k| < 3) whose cell lands > 5 from i's
    ys, xs = torch.arange(n) // w, torch.arange(n) % w
    d2 = lambda u, v: (ys[u] - ys[v]) ** 2 + (xs[u] - xs[v]) ** 2  # noqa: E731
    size = disc_size(3.0, strict=True)
    expected = [sum(int(d2(perm[k], perm[i]) > 25) for k in range(n) if d2(k, i) < 9) / size
                for i in interior]
    assert torch.allclose(values, weight * 0.2 * torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_asot_filter_normalisation():
    """ASOT's band filter (src/asot.py, construct_Cv_filter: weight 1/r on the 2 floor(rN) frames
    around a frame, its centre excluded, zero padding at the ends) applied to rows of mass 1/N
    gives 2 in the interior (exactly when rN is an integer), fewer at the ends: the factor
    scale=asot puts on the neighbourhood fraction."""
    n, r = 100, 0.04
    reach = int(n * r)
    weights = torch.full((2 * reach + 1,), 1 / r, dtype=torch.float64)
    weights[reach] = 0
    p = torch.full((1, 1, n), 1 / n, dtype=torch.float64)
    cv_p = torch.nn.functional.conv1d(p, weights.view(1, 1, -1), padding="same")[0, 0]
    assert torch.allclose(cv_p[reach:-reach], torch.full((n - 2 * reach,), 2.0, dtype=torch.float64))
    assert float(cv_p[0]) == pytest.approx(1.0)  # one side only at the ends


def _left_right_ambiguous(tilt: float):
    """Source and target (1, 32, 8, 10) maps of unrelated random cells, except: target cells
    L = (4, 2) and R = (4, 7) hold features e_L, e_R; source keypoints a = (4, 2) (left) and
    b = (4, 7) (right), a symmetric pair, look alike: both a blend of e_L and e_R, a tilted
    towards e_R and b towards e_L, so appearance alone swaps them."""
    g = torch.Generator().manual_seed(0)
    d, h, w = 32, 8, 10
    src = torch.randn(1, d, h, w, generator=g)
    trg = torch.randn(1, d, h, w, generator=g)
    e_l, e_r = torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=-1)
    trg[0, :, 4, 2], trg[0, :, 4, 7] = e_l * 5, e_r * 5
    src[0, :, 4, 2] = (e_l + e_r) / 2 + tilt * (e_r - e_l)
    src[0, :, 4, 7] = (e_l + e_r) / 2 - tilt * (e_r - e_l)
    a, b = 4 * w + 2, 4 * w + 7
    return FeatureMap(src, 14), FeatureMap(trg, 14), torch.tensor([[[a, b]]]), (a, b), (4 * w + 2, 4 * w + 7)


@pytest.mark.parametrize("scale", ["asot", "fraction", "grid"])
def test_spair_symmetry_weight_decides_the_side(scale):
    """gwot_spair's lam_sym = 0.1 sends the left keypoint to the left candidate under the asot and
    fraction scales; under the earlier grid scale the same weight cannot move it off appearance's
    choice."""
    from semcorr.config import load_config
    from semcorr.matchers import build_matcher

    src, trg, pairs, (a, b), (left, right) = _left_right_ambiguous(tilt=0.02)
    sides = {}
    for lam_sym in (0.0, 0.1):
        cfg = load_config(["matcher=gwot_spair", f"matcher.lam_sym={lam_sym}", f"matcher.scale={scale}",
                           "matcher.grad=detach"]).matcher
        scores = build_matcher(cfg)(src, trg, sym_pairs=pairs).scores[0]
        sides[lam_sym] = (int(scores[a].argmax()), int(scores[b].argmax()))
    assert sides[0.0] == (right, left)  # appearance alone swaps the pair
    if scale in ("asot", "fraction"):
        assert sides[0.1] == (left, right)  # the symmetry term restores the left/right order
    else:
        assert sides[0.1] == (right, left)  # too weak to matter: the reason for the new scale
