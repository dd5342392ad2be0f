"""Left/right diagnostics (GECO's subsets, swap and near-both rates; GeoAware-SC's geometry-aware
subset) on hand-built pairs whose counts are worked out by hand, and against loops that follow
the reference code's rules keypoint by keypoint."""

import numpy as np
import pytest
import torch

from semcorr.data.left_right import left_right_fields, visible_points
from semcorr.data.schema import collate, swap_sides
from semcorr.metrics import Protocol, pck_scores
from semcorr.metrics.left_right import (evidence_from_batch, left_right_counts,
                                        left_right_summary)

PAIRS = [(0, 1), (2, 3)]  # id 4 has no counterpart
ALPHAS = (0.05, 0.1)
BOX = [0.0, 0.0, 100.0, 100.0]  # L = 100: alpha 0.05 -> 5 px, 0.1 -> 10 px


def _pair(src_vis, trg_pts, pred, ids=(0, 1, 2, 3, 4), groups=PAIRS):
    """A batch-of-one dict: ``src_vis`` ids visible in the source (anywhere: (0, 0)), ``trg_pts``
    {id: (x, y)} visible in the target, ``pred`` {id: (x, y)} for the scored ids."""
    src_pts = {i: (0.0, 0.0) for i in src_vis}
    fields = left_right_fields(ids, src_pts, trg_pts, PAIRS, groups)
    valid = torch.tensor([i in src_pts and i in trg_pts for i in ids])
    gt = torch.tensor([trg_pts.get(i, (0.0, 0.0)) for i in ids], dtype=torch.float64)
    p = torch.tensor([pred.get(i, (0.0, 0.0)) for i in ids], dtype=torch.float64)
    sample = {k: torch.as_tensor(v) for k, v in fields.items()}
    sample.update({"src_kps": gt.float(), "kps_valid": valid, "pred": p, "gt": gt})
    return sample


def _batch(samples):
    batch = collate([{k: v for k, v in s.items() if k not in ("pred", "gt")} for s in samples])
    k = batch["kps_valid"].shape[1]
    pad = lambda t: torch.cat([t, torch.zeros(k - t.shape[0], 2, dtype=t.dtype)])  # noqa: E731
    return batch, torch.stack([pad(s["pred"]) for s in samples]), torch.stack([pad(s["gt"]) for s in samples])


def _counts(samples, protocol=Protocol(threshold_by="bbox"), alphas=ALPHAS):
    batch, pred, gt = _batch(samples)
    box = torch.tensor([BOX] * len(samples), dtype=torch.float64)
    scores = pck_scores(protocol, alphas, pred, gt, batch["kps_valid"], box,
                        torch.tensor([[100, 100]] * len(samples)))
    evidence = evidence_from_batch(batch, batch["kps_valid"])
    return left_right_counts(scores, evidence, protocol), evidence


def hand_pairs(groups=PAIRS):
    # pair 1 (category a): 3 visible in the source only; 0, 1 n11; 2 n10; 4 n1x
    p1 = _pair({0, 1, 2, 3, 4}, {0: (20, 50), 1: (80, 50), 2: (30, 80), 4: (50, 20)},
               {0: (79, 50),   # 59 px from its own, 1 px from its counterpart's: swapped at both
                1: (80, 56),   # 6 px: correct at 0.1 only; 60.3 px from the counterpart
                2: (30, 80),   # exact
                4: (50, 30)},  # 10 px: correct at 0.1 (<=)
               groups=groups)
    # pair 2 (a): only 0 and 1 scored (2 visible in the target alone); both n11
    p2 = _pair({0, 1}, {0: (45, 50), 1: (55, 50), 2: (10, 10)},
               {0: (50, 50),   # 5 px from both: correct and near both at both alphas
                1: (58, 54)},  # 5 px from its own (correct at both), 13.6 px from the other
               groups=groups)
    # pair 3 (b): 0 scored with its counterpart visible in the source only (n10); 4 scored (n1x)
    p3 = _pair({0, 1, 4}, {0: (10, 10), 4: (90, 90)}, {0: (10, 10), 4: (10, 90)}, groups=groups)
    return [p1, p2, p3]


def test_subsets_swaps_and_near_both_by_hand():
    counts, evidence = _counts(hand_pairs())
    assert evidence.subset[0, :5].tolist() == [2, 2, 1, -1, 0]
    assert evidence.subset[1, :2].tolist() == [2, 2] and evidence.subset[2, :5].tolist() == [1, -1, -1, -1, 0]
    assert counts.count.tolist() == [[2, 1, 1], [2, 0, 0], [0, 1, 1]]
    assert counts.correct[:, :, 0].tolist() == [[0, 1, 0], [2, 0, 0], [0, 1, 0]]  # alpha 0.05
    assert counts.correct[:, :, 1].tolist() == [[1, 1, 1], [2, 0, 0], [0, 1, 0]]  # alpha 0.1
    assert counts.swap.tolist() == [[1, 1], [0, 0], [0, 0]]
    assert counts.near_both.tolist() == [[0, 0], [1, 1], [0, 0]]
    summary = left_right_summary(counts, ["a", "a", "b"], ALPHAS, Protocol(threshold_by="bbox"))
    assert summary["n"] == 8
    assert (summary["n11"]["count"], summary["n10"]["count"], summary["n1x"]["count"]) == (4, 2, 2)
    assert (summary["n11"]["share"], summary["n10"]["share"], summary["n1x"]["share"]) == (0.5, 0.25, 0.25)
    assert summary["n11"]["pck"] == {"0.05": 50.0, "0.1": 75.0}
    assert summary["n10"]["pck"] == {"0.05": 100.0, "0.1": 100.0}
    assert summary["n1x"]["pck"] == {"0.05": 0.0, "0.1": 50.0}
    assert summary["pck"] == {"0.05": 50.0, "0.1": 75.0}  # GECO's per-point PCK of all three
    assert summary["swap_rate"] == {"0.05": 25.0, "0.1": 25.0}
    assert summary["near_both_rate"] == {"0.05": 25.0, "0.1": 25.0}
    b = summary["per_category"]["b"]
    assert b["n11"]["count"] == 0 and b["n11"]["share"] == 0.0 and b["n11"]["pck"] == {"0.05": None, "0.1": None}
    assert b["swap_rate"] == {"0.05": None, "0.1": None}  # undefined without n11, not 0
    assert summary["per_category"]["a"]["n11"]["pck"] == {"0.05": 50.0, "0.1": 75.0}


def test_geometry_aware_subset_by_hand():
    # groups as GeoAware-SC may define them: not the symmetric pairs ({2, 4} is a group here)
    counts, evidence = _counts(hand_pairs(groups=[[0, 1], [2, 3, 4]]))
    # pair 1: 0, 1 (the other is visible in the target), 2 (4 is), 4 (2 is); pair 2: 0, 1;
    # pair 3: none (1 is not visible in the target; 2, 3 neither)
    assert evidence.geo[0, :5].tolist() == [True, True, True, False, True]
    assert evidence.geo[1, :2].tolist() == [True, True] and not evidence.geo[2].any()
    geo = left_right_summary(counts, ["a", "a", "b"], ALPHAS, Protocol())["geo_aware"]
    assert (geo["count"], geo["n_pairs"]) == (6, 2)
    assert geo["pair_share"] == pytest.approx(2 / 3) and geo["keypoint_share"] == 0.75
    # per image: pair 1 1/4 and 3/4 correct, pair 2 2/2; per keypoint 3/6 and 5/6
    assert geo["pck_per_image"] == {"0.05": 62.5, "0.1": 87.5}
    assert geo["pck_per_keypoint"]["0.05"] == 50.0
    assert geo["pck_per_keypoint"]["0.1"] == pytest.approx(500 / 6)
    assert geo["pck"] == geo["pck_per_image"] and geo["average"] == "per_image"
    per_kp = left_right_summary(counts, ["a", "a", "b"], ALPHAS, Protocol(average="per_keypoint"))
    assert per_kp["geo_aware"]["pck"] == per_kp["geo_aware"]["pck_per_keypoint"]
    assert per_kp["per_category"]["b"]["geo_aware"]["pck"] == {"0.05": None, "0.1": None}


def test_strict_protocol_applies_to_the_counterpart_too():
    counts, _ = _counts(hand_pairs(), protocol=Protocol(threshold_by="bbox", strict=True))
    # pair 2: the 5 px distances are no longer within 5 px
    assert counts.correct[1, 0].tolist() == [0, 2] and counts.near_both[1].tolist() == [0, 1]


def test_a_square_frame_protocol_scales_the_counterpart_too():
    """Under a protocol with an F x F scoring frame (x * F / w, y * F / h), the counterpart's
    distance is measured in that frame like the keypoint's own. Target 100 x 200 (h, w), F = 100:
    x distances halve; L = F = 100 (threshold_by=image): 5 px at 0.05, 10 px at 0.1 (frame px).
    Keypoint 0 (gt (100, 50); its counterpart 1 at (118, 50)) predicted at (116, 50): own 16 / 2
    = 8, counterpart 2 / 2 = 1 -> swapped at 0.05, correct and near both at 0.1. Keypoint 1
    predicted at (82, 50): own 36 / 2 = 18, counterpart 18 / 2 = 9 -> swapped at 0.1 only (with
    the counterpart's distance left in original pixels, 18 > 10, it would not be)."""
    sample = _pair({0, 1}, {0: (100, 50), 1: (118, 50)}, {0: (116, 50), 1: (82, 50)})
    batch, pred, gt = _batch([sample])
    imsize = torch.tensor([[100, 200]])
    box = torch.tensor([[0.0, 0.0, 200.0, 100.0]], dtype=torch.float64)
    protocol = Protocol(threshold_by="image", frame=100)
    scores = pck_scores(protocol, ALPHAS, pred, gt, batch["kps_valid"], box, imsize)
    counts = left_right_counts(scores, evidence_from_batch(batch, batch["kps_valid"]), protocol, imsize)
    assert counts.count[0].tolist() == [2, 0, 0]
    assert counts.correct[0, 0].tolist() == [0, 1]
    assert counts.swap[0].tolist() == [1, 1]
    assert counts.near_both[0].tolist() == [0, 1]


def test_target_to_source_protocols_use_the_source_side():
    """Swapping the images' roles (a trg_to_src protocol) swaps the visibility sides: the subsets
    then follow the counterpart's visibility in the image being predicted in (the source)."""
    src = {0: (1.0, 1.0), 1: (2.0, 2.0), 2: (3.0, 3.0)}
    trg = {0: (5.0, 5.0), 2: (7.0, 7.0), 3: (8.0, 8.0)}
    fields = {k: torch.as_tensor(v) for k, v in left_right_fields([0, 1, 2, 3], src, trg, PAIRS).items()}
    sample = {**fields, "src_kps": torch.zeros(4, 2), "kps_valid": torch.tensor([True, False, True, False])}
    forward = evidence_from_batch(collate([sample]), sample["kps_valid"][None])
    backward = evidence_from_batch(collate([swap_sides(sample)]), sample["kps_valid"][None])
    assert forward.subset[0].tolist() == [1, -1, 2, -1]  # in the target: 1 hidden, 3 visible
    assert backward.subset[0].tolist() == [2, -1, 1, -1]  # in the source: 1 visible, 3 hidden
    assert backward.sym_gt[0, 0].tolist() == [2.0, 2.0] and forward.sym_gt[0, 2].tolist() == [8.0, 8.0]


def _reference_counts(rng, n_pairs=40, n_kps=12):
    """Random pairs scored twice: by semcorr, and by loops written from the reference rules
    (GECO pck.py update_counters_pck_alpha; GeoAware-SC eval_spair.py convert_all_results)."""
    pairs = [(2 * i, 2 * i + 1) for i in range(n_kps // 3)]  # the rest have no counterpart
    groups = [[0, 1, 2], [4, 5]]
    ids = list(range(n_kps))
    samples, raw = [], []
    for _ in range(n_pairs):
        src_vis = rng.random(n_kps) < 0.8
        trg_vis = rng.random(n_kps) < 0.7
        trg = rng.uniform(0, 100, (n_kps, 2)).round(1)
        pred = trg + rng.normal(0, 8, (n_kps, 2)).round(1)
        swap = rng.random(n_kps) < 0.3  # some predictions land on the counterpart
        for a, b in pairs:
            if swap[a]:
                pred[a] = trg[b] + rng.normal(0, 2, 2).round(1)
        fields = left_right_fields(ids, visible_points(trg, src_vis), visible_points(trg, trg_vis), pairs, groups)
        valid = torch.from_numpy(src_vis & trg_vis)
        s = {k: torch.as_tensor(v) for k, v in fields.items()}
        s.update({"src_kps": torch.zeros(n_kps, 2), "kps_valid": valid,
                  "pred": torch.from_numpy(pred), "gt": torch.from_numpy(trg)})
        samples.append(s)
        raw.append((src_vis, trg_vis, trg, pred))
    counts, _ = _counts(samples, alphas=(0.05, 0.1, 0.15))
    partner = {a: b for p in pairs for a, b in (p, p[::-1])}
    want = []
    for src_vis, trg_vis, trg, pred in raw:
        per_alpha = []
        for alpha in (0.05, 0.1, 0.15):
            n = dict.fromkeys(["11", "10", "1x", "11_hat", "10_hat", "1x_hat", "11_over", "11_tilde"], 0)
            for i in range(n_kps):
                if not src_vis[i] or not trg_vis[i]:
                    continue
                d = np.linalg.norm(pred[i] - trg[i]) / 100.0
                j = partner.get(i)
                if j is not None and trg_vis[j]:
                    ds = np.linalg.norm(pred[i] - trg[j]) / 100.0
                    n["11"] += 1
                    if d <= alpha:
                        n["11_hat"] += 1
                        n["11_tilde"] += ds <= alpha
                    elif ds <= alpha:
                        n["11_over"] += 1
                else:
                    key = "10" if j is not None else "1x"
                    n[key] += 1
                    n[key + "_hat"] += d <= alpha
            geo = []
            for g in groups:
                both = [i for i in g if src_vis[i] and trg_vis[i]]
                in_trg = [i for i in g if trg_vis[i]]
                if len(in_trg) >= 2 and len(both) >= 1:
                    geo += both
            n["geo"] = len(geo)
            n["geo_hat"] = sum(np.linalg.norm(pred[i] - trg[i]) / 100.0 <= alpha for i in geo)
            per_alpha.append(n)
        want.append(per_alpha)
    return counts, want


def test_equals_reference_loops_on_random_pairs():
    counts, want = _reference_counts(np.random.default_rng(0))
    for p, per_alpha in enumerate(want):
        assert counts.count[p].tolist() == [per_alpha[0][k] for k in ("11", "10", "1x")]
        assert counts.geo_count[p] == per_alpha[0]["geo"]
        for a, n in enumerate(per_alpha):
            assert counts.correct[p, :, a].tolist() == [n["11_hat"], n["10_hat"], n["1x_hat"]]
            assert counts.swap[p, a] == n["11_over"] and counts.near_both[p, a] == n["11_tilde"]
            assert counts.geo_correct[p, a] == n["geo_hat"]
    assert counts.swap.sum() > 5 and counts.near_both.sum() > 0 and counts.count[:, 1].sum() > 5


def test_left_right_fields_from_image_keypoints():
    # keypoint 0's counterpart 1 is visible in the target only: GECO's n11 needs the target's own
    # annotation, not the pair's list of keypoints visible in both
    f = left_right_fields([0, 2, 4], {0: (1, 1), 2: (2, 2), 4: (3, 3)},
                          {0: (5, 5), 1: (6, 6), 2: (7, 7), 4: (8, 8)}, PAIRS, [[0, 1], [2, 3, 4]])
    assert f["kps_has_sym"].tolist() == [True, True, False]
    assert f["trg_sym_vis"].tolist() == [True, False, False] and not f["src_sym_vis"].any()
    assert f["trg_sym_kps"][0].tolist() == [6, 6] and f["trg_sym_kps"][1].tolist() == [0, 0]
    assert f["trg_group_vis"].tolist() == [True, True, True] and f["src_group_vis"].tolist() == [False, True, True]
