"""Losses: values against explicit per-keypoint references, masking, gradients through OT."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from semcorr.backbones.base import FeatureMap
from semcorr.config import available, load_config
from semcorr.losses import build_loss
from semcorr.losses.combined import CombinedLoss
from semcorr.losses.gaussian_ce import GaussianCELoss, gaussian_targets
from semcorr.losses.ot_nll import OTNLLLoss
from semcorr.matchers.base import MatchResult, cosine_similarity


def make_batch(b=2, k=5, h=6, w=7, stride=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w * stride, h * stride], dtype=torch.float32)
    src_kps = torch.rand(b, k, 2, generator=g) * (size - 1)
    trg_kps = torch.rand(b, k, 2, generator=g) * (size - 1)
    valid = torch.ones(b, k, dtype=torch.bool)
    valid[0, -1] = False  # invisible in one image
    if b > 1:
        valid[1, -2:] = False  # padding
    return {"src_kps": src_kps, "trg_kps": trg_kps, "kps_valid": valid,
            "pair_id": [f"p{i}" for i in range(b)]}


def make_maps(b=2, d=16, h=6, w=7, stride=8, seed=1, valid=True):
    g = torch.Generator().manual_seed(seed)
    src = FeatureMap(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), stride)
    trg = FeatureMap(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), stride)
    if valid:
        src.valid = torch.ones(b, h, w, dtype=torch.bool)
        trg.valid = torch.ones(b, h, w, dtype=torch.bool)
        trg.valid[b - 1, :, -2:] = b == 1  # padded right columns in the second target
    return src, trg


def reference_gaussian_ce(batch, src, trg, temperature, sigma, window):
    """Per keypoint, in plain loops: bilinear source feature, softmax, truncated Gaussian."""
    h, w = src.grid
    s = src.stride
    losses = []
    for b in range(src.features.shape[0]):
        for k in range(batch["src_kps"].shape[1]):
            if not batch["kps_valid"][b, k]:
                continue
            x, y = batch["src_kps"][b, k].tolist()
            cx, cy = (x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5  # continuous cell coordinates
            cx, cy = min(max(cx, 0), w - 1), min(max(cy, 0), h - 1)
            x0, y0 = int(math.floor(cx)), int(math.floor(cy))
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            ax, ay = cx - x0, cy - y0
            f = src.features[b]
            feat = ((1 - ax) * (1 - ay) * f[:, y0, x0] + ax * (1 - ay) * f[:, y0, x1]
                    + (1 - ax) * ay * f[:, y1, x0] + ax * ay * f[:, y1, x1])
            tx, ty = batch["trg_kps"][b, k].tolist()
            gx, gy = (tx + 0.5) / s - 0.5, (ty + 0.5) / s - 0.5
            logits, target = [], []
            for r in range(h):
                for c in range(w):
                    ok = bool(trg.valid[b, r, c])
                    sim = F.cosine_similarity(feat, trg.features[b, :, r, c], dim=0)
                    logits.append(sim / temperature if ok else torch.tensor(-math.inf, dtype=sim.dtype))
                    near = abs(c - round(gx)) <= window // 2 and abs(r - round(gy)) <= window // 2
                    target.append(math.exp(-((c - gx) ** 2 + (r - gy) ** 2) / (2 * sigma ** 2))
                                  if ok and near else 0.0)
            logp = torch.log_softmax(torch.stack(logits), 0)
            q = torch.tensor(target, dtype=logp.dtype)
            q = q / q.sum()
            losses.append(-(q[q > 0] * logp[q > 0]).sum())
    return torch.stack(losses).mean()


def test_gaussian_targets_shape_support_and_mass():
    _, trg = make_maps()
    kps = torch.tensor([[[20.0, 20.0], [20.0, 20.0]], [[36.0, 10.0], [52.0, 10.0]]])
    q = gaussian_targets(kps, trg, sigma=1.5, window=3)
    assert q.shape == (2, 2, 42)
    assert torch.allclose(q[0].sum(-1), torch.ones(2)) and torch.allclose(q[1, 0].sum(), torch.ones(()))
    grid = q[0, 0].view(6, 7)
    assert grid.argmax().item() == 2 * 7 + 2  # (20 + .5) / 8 - .5 = 2.06 -> cell (2, 2)
    assert (grid > 0).sum() == 9  # 3 x 3 window
    assert q[1, 0].view(6, 7)[:, -2:].sum() == 0  # padded target cells get no mass
    assert (q[1, 0] > 0).sum() == 3 * 2  # window rows 0-2 x cols 3-5, col 5 is padding
    assert q[1, 1].sum() == 0  # a window wholly in padding: no target (the keypoint is dropped)


def test_gaussian_ce_matches_reference():
    batch = make_batch()
    src, trg = make_maps()
    loss, logs = GaussianCELoss(temperature=0.1, sigma=1.5, window=5)(batch, src, trg, None)
    ref = reference_gaussian_ce(batch, src, trg, 0.1, 1.5, 5)
    assert torch.allclose(loss.double(), ref, rtol=1e-4), (loss, ref)
    assert logs["n_keypoints"] == 7  # 10 keypoints, 3 invisible or padding


def test_invisible_and_padded_keypoints_do_not_contribute():
    batch = make_batch()
    src, trg = make_maps()
    loss_fns = [GaussianCELoss(), OTNLLLoss(negatives="all")]
    result = MatchResult(scores=torch.log_softmax(cosine_similarity(src, trg) / 0.1, -1))
    before = [fn(batch, src, trg, result)[0] for fn in loss_fns]
    moved = dict(batch)
    moved["trg_kps"] = batch["trg_kps"].clone()
    moved["trg_kps"][~batch["kps_valid"]] = 3.0  # anywhere else
    moved["src_kps"] = batch["src_kps"].clone()
    moved["src_kps"][~batch["kps_valid"]] = 40.0
    after = [fn(moved, src, trg, result)[0] for fn in loss_fns]
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # a visible keypoint does contribute
    moved["trg_kps"][0, 0] = torch.tensor([3.0, 3.0])
    assert not torch.equal(loss_fns[0](moved, src, trg, result)[0], before[0])


def test_gaussian_ce_prefers_the_right_features_and_has_gradients():
    batch = make_batch(b=1, k=6)
    batch["kps_valid"][:] = True
    src, _ = make_maps(b=1)
    same = FeatureMap(src.features.clone(), src.stride)
    batch["trg_kps"] = batch["src_kps"].clone()  # identity pair: target = source
    fn = GaussianCELoss()
    good = fn(batch, src, same, None)[0]
    shuffled = FeatureMap(src.features[..., torch.randperm(7)], src.stride)
    bad = fn(batch, src, shuffled, None)[0]
    assert good < bad
    feats = src.features.clone().requires_grad_(True)
    fn(batch, FeatureMap(feats, 8), same, None)[0].backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_ot_nll_hand_computed():
    """One keypoint on 1x3 grids: row of the plan (0.1, 0.3, 0.1), ground truth at cell 1."""
    plan = torch.tensor([[[0.1, 0.3, 0.1], [0.2, 0.2, 0.1], [0.0, 0.0, 0.5]]])
    result = MatchResult(scores=plan.clamp_min(1e-30).log())
    src = FeatureMap(torch.zeros(1, 2, 1, 3), 8)
    trg = FeatureMap(torch.zeros(1, 2, 1, 3), 8)
    batch = {"src_kps": torch.tensor([[[3.5, 3.5]]]), "trg_kps": torch.tensor([[[11.5, 3.5]]]),
             "kps_valid": torch.tensor([[True]]), "pair_id": ["a"]}
    p = torch.tensor([0.2, 0.6, 0.2])  # row 0 normalised
    fn = OTNLLLoss(pos_weight=1.0, neg_weight=0.5, negatives="all", neg_radius=0)
    loss, logs = fn(batch, src, trg, result)
    expected_neg = -(torch.log(1 - p[0]) + torch.log(1 - p[2])) / 2
    assert torch.allclose(logs["pos_nll"], -torch.log(p[1]))
    assert torch.allclose(logs["neg_nll"], expected_neg)
    assert torch.allclose(loss, -torch.log(p[1]) + 0.5 * expected_neg)
    # neg_radius 1 excludes both neighbours: no negatives left
    loss_r1, logs_r1 = OTNLLLoss(negatives="all", neg_radius=1)(batch, src, trg, result)
    assert logs_r1["neg_nll"] == 0 and torch.allclose(loss_r1, -torch.log(p[1]))
    # pos_radius 1: the whole row's mass
    _, logs_p = OTNLLLoss(pos_radius=1, negatives="all")(batch, src, trg, result)
    assert torch.allclose(logs_p["pos_nll"], torch.tensor(0.0), atol=1e-6)


def test_ot_nll_negative_selection():
    batch = make_batch()
    src, trg = make_maps()
    result = MatchResult(scores=torch.log_softmax(cosine_similarity(src, trg) / 0.05, -1))
    hard = OTNLLLoss(n_negatives=4, negatives="hardest")(batch, src, trg, result)[1]["neg_nll"]
    rand = OTNLLLoss(n_negatives=4, negatives="random")
    r1, r2 = rand(batch, src, trg, result)[1]["neg_nll"], rand(batch, src, trg, result)[1]["neg_nll"]
    assert torch.equal(r1, r2)  # seeded by the pair ids: reproducible (and resumable)
    assert hard > r1  # the hardest negatives carry the most mass


@pytest.mark.parametrize("matcher", ["ot", "gwot"])
def test_ot_nll_trains_through_the_ot_layer(matcher):
    """Gradients reach the features through the solver (gwot: checkpoint mode) and lower the loss."""
    from semcorr.matchers import build_matcher

    overrides = [f"matcher={matcher}", "matcher.n_steps=10"]
    if matcher == "gwot":
        overrides += ["matcher.grad=checkpoint", "matcher.checkpoint_every=5"]
    cfg = load_config(overrides)
    m = build_matcher(cfg.matcher)
    batch = make_batch(b=1, k=5, h=4, w=4)
    batch["kps_valid"][:] = True
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    trg = FeatureMap(torch.randn(1, 8, 4, 4), 8)
    fn = OTNLLLoss(n_negatives=4)
    opt = torch.optim.Adam([feats], lr=0.05)
    values = []
    for _ in range(8):
        loss = fn(batch, FeatureMap(feats, 8), trg, m(FeatureMap(feats, 8), trg))[0]
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0]


def test_combined_is_the_weighted_sum():
    batch = make_batch()
    src, trg = make_maps()
    result = MatchResult(scores=torch.log_softmax(cosine_similarity(src, trg) / 0.1, -1))
    combo = CombinedLoss(terms={"gaussian_ce": 1.0, "ot_nll": 0.5},
                         options={"ot_nll": {"negatives": "all"}})
    total, logs = combo(batch, src, trg, result)
    ce = GaussianCELoss()(batch, src, trg, result)[0]
    nll = OTNLLLoss(negatives="all")(batch, src, trg, result)[0]
    assert torch.allclose(total, ce + 0.5 * nll)
    assert set(logs) >= {"gaussian_ce", "ot_nll", "ot_nll/pos_nll"}
    with pytest.raises(ValueError, match="valid terms"):
        CombinedLoss(terms={"nope": 1.0})


@pytest.mark.parametrize("name", available("loss"))
def test_every_loss_config_builds(name):
    cfg = load_config([f"loss={name}"])
    loss = build_loss(cfg.loss)
    assert (loss is None) == (name == "none")
