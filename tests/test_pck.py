"""PCK against hand-computed values, for every averaging mode and threshold; the one PCK rule
(:mod:`semcorr.metrics.functional`) and its round trip through ``predictions.jsonl``."""

import json
import math

import pytest
import torch

from semcorr.metrics import PCK, Protocol, pck_lengths, pck_scores, protocol, quantize, resolve_protocol
from semcorr.metrics.functional import within

ALPHAS = [0.05, 0.1, 0.15]


def _batch():
    # Pair 0: target box 100 x 50 -> L_bbox = 100; keypoints at distances 4, 8, 12 (+1 invalid).
    # Pair 1: target box 40 x 80 -> L_bbox = 80; keypoints at distances 3, 20.
    gt = torch.tensor([[[10.0, 10.0], [50.0, 20.0], [90.0, 40.0], [0.0, 0.0]],
                       [[20.0, 20.0], [30.0, 70.0], [0.0, 0.0], [0.0, 0.0]]])
    pred = gt.clone()
    pred[0, 0, 0] += 4
    pred[0, 1, 1] += 8
    pred[0, 2, 0] += 12
    pred[0, 3] += 1000  # invalid: must not count
    pred[1, 0, 1] += 3
    pred[1, 1, 0] += 20
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    bbox = torch.tensor([[0.0, 0.0, 100.0, 50.0], [10.0, 0.0, 50.0, 80.0]])
    imsize = torch.tensor([[200, 300], [120, 160]])  # (h, w)
    cats = torch.tensor([0, 1])
    return pred, gt, valid, bbox, imsize, cats


def test_thresholds_by_protocol():
    _, gt, valid, bbox, imsize, _ = _batch()
    assert pck_lengths("bbox", gt, valid, bbox).tolist() == [100.0, 80.0]
    # keypoint boxes: pair 0 x 10..90, y 10..40 -> 80; pair 1 x 20..30, y 20..70 -> 50
    assert pck_lengths("bbox_kp", gt, valid).tolist() == [80.0, 50.0]
    assert pck_lengths("image", gt, valid, trg_imsize=imsize).tolist() == [300.0, 160.0]


@pytest.mark.parametrize("threshold_by,average,expected", [
    # bbox: L = 100, 80. thresholds 5/10/15 and 4/8/12.
    # pair 0 distances 4, 8, 12: correct 1, 2, 3 of 3; pair 1 distances 3, 20: 1, 1, 1 of 2.
    ("bbox", "per_image", [(1 / 3 + 1 / 2) / 2, (2 / 3 + 1 / 2) / 2, (3 / 3 + 1 / 2) / 2]),
    ("bbox", "per_keypoint", [2 / 5, 3 / 5, 4 / 5]),
    # bbox_kp: L = 80, 50 -> thresholds 4/8/12 and 2.5/5/7.5: pair 0: 1,2,3; pair 1: 0,1,1.
    ("bbox_kp", "per_image", [(1 / 3 + 0) / 2, (2 / 3 + 1 / 2) / 2, (3 / 3 + 1 / 2) / 2]),
    ("bbox_kp", "per_keypoint", [1 / 5, 3 / 5, 4 / 5]),
    # image: L = 300, 160 -> 15/30/45 and 8/16/24: pair 0: 3,3,3; pair 1: 1,1,2.
    ("image", "per_image", [(1 + 1 / 2) / 2, (1 + 1 / 2) / 2, (1 + 1) / 2]),
    ("image", "per_keypoint", [4 / 5, 4 / 5, 5 / 5]),
])
def test_pck_hand_computed(threshold_by, average, expected):
    pred, gt, valid, bbox, imsize, cats = _batch()
    metric = PCK(ALPHAS, Protocol(threshold_by=threshold_by, average=average), categories=["a", "b"])
    metric.update(pred, gt, valid, cats, bbox, imsize)
    out = metric.compute()
    for alpha, value in zip(["0.05", "0.1", "0.15"], expected):
        assert out["pck"][alpha] == pytest.approx(100 * value)
    assert out["n_pairs"] == 2 and out["n_keypoints"] == 5


def test_per_category_results():
    pred, gt, valid, bbox, imsize, cats = _batch()
    metric = PCK(ALPHAS, Protocol(threshold_by="bbox"), categories=["a", "b", "unused"])
    metric.update(pred, gt, valid, cats, bbox, imsize)
    per_cat = metric.compute()["pck_per_category"]
    assert set(per_cat) == {"a", "b"}
    assert per_cat["a"]["0.1"] == pytest.approx(100 * 2 / 3)
    assert per_cat["b"]["0.1"] == pytest.approx(50.0)


@pytest.mark.parametrize("average", ["per_image", "per_keypoint"])
def test_exact_when_a_batch_is_split_across_updates(average):
    torch.manual_seed(0)
    b, k = 37, 9
    gt = torch.rand(b, k, 2) * 100
    pred = gt + torch.randn(b, k, 2) * 8
    valid = torch.rand(b, k) > 0.3
    bbox = torch.cat([torch.zeros(b, 2), 50 + torch.rand(b, 2) * 50], dim=1)
    cats = torch.randint(0, 3, (b,))
    whole = PCK(ALPHAS, Protocol(average=average), categories=["x", "y", "z"])
    whole.update(pred, gt, valid, cats, bbox)
    parts = PCK(ALPHAS, Protocol(average=average), categories=["x", "y", "z"])
    for chunk in torch.arange(b).split(5):
        parts.update(pred[chunk], gt[chunk], valid[chunk], cats[chunk], bbox[chunk])
    # and two metric objects merged, as processes are in distributed evaluation
    a = PCK(ALPHAS, Protocol(average=average), categories=["x", "y", "z"])
    c = PCK(ALPHAS, Protocol(average=average), categories=["x", "y", "z"])
    a.update(pred[:20], gt[:20], valid[:20], cats[:20], bbox[:20])
    c.update(pred[20:], gt[20:], valid[20:], cats[20:], bbox[20:])
    a.merge_state(c)
    expected = whole.compute()
    for other in (parts.compute(), a.compute()):
        assert other["pck"] == pytest.approx(expected["pck"], abs=1e-9)
        for cat, values in expected["pck_per_category"].items():
            assert other["pck_per_category"][cat] == pytest.approx(values, abs=1e-9)


def test_pairs_without_valid_keypoints_are_not_counted():
    gt = torch.zeros(2, 2, 2)
    valid = torch.tensor([[True, True], [False, False]])
    metric = PCK([0.1], Protocol(threshold_by="image"))
    metric.update(gt, gt, valid, trg_imsize=torch.tensor([[10, 10], [10, 10]]))
    out = metric.compute()
    assert out["n_pairs"] == 1 and out["pck"]["0.1"] == 100.0


def test_bbox_protocol_needs_boxes():
    gt = torch.zeros(1, 1, 2)
    metric = PCK([0.1], Protocol(threshold_by="bbox"))
    with pytest.raises(ValueError, match="bbox"):
        metric.update(gt, gt, torch.ones(1, 1, dtype=torch.bool),
                      trg_bbox=torch.full((1, 4), math.nan))


def test_strict_comparison_only_changes_ties():
    gt = torch.tensor([[[50.0, 50.0], [20.0, 20.0]]])
    pred = gt + torch.tensor([[[6.0, 8.0], [1.0, 0.0]]])  # distances 10 (= 0.1 * 100) and 1
    valid = torch.ones(1, 2, dtype=torch.bool)
    box = torch.tensor([[0.0, 0.0, 100.0, 40.0]])
    out = {}
    for strict in (False, True):
        metric = PCK([0.1], Protocol(strict=strict))
        metric.update(pred, gt, valid, trg_bbox=box)
        out[strict] = metric.compute()["pck"]["0.1"]
    assert out == {False: 100.0, True: 50.0}


def test_square_frame_scales_anisotropically():
    # a 200 x 400 (h x w) target; errors 30 px in x (keypoint 0) and 25 px in y (keypoint 1)
    gt = torch.tensor([[[100.0, 100.0], [300.0, 50.0]]])
    pred = gt + torch.tensor([[[30.0, 0.0], [0.0, 25.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    imsize = torch.tensor([[200, 400]])
    scores = pck_scores(Protocol(threshold_by="image", frame=224), [0.1], pred, gt, valid,
                        trg_imsize=imsize)
    assert scores.lengths.tolist() == [224.0]
    dist = scores.dist_sq.sqrt()[0]
    assert dist.tolist() == pytest.approx([30 * 224 / 400, 25 * 224 / 200])  # 16.8, 28
    framed = PCK([0.1, 0.15], Protocol(threshold_by="image", frame=224))
    framed.update(pred, gt, valid, trg_imsize=imsize)
    # thresholds 22.4 / 33.6: 16.8 in at both; 28 only at 0.15
    assert framed.compute()["pck"] == {"0.1": 50.0, "0.15": 100.0}
    original = PCK([0.1, 0.15], Protocol(threshold_by="image"))  # L = 400: thresholds 40 / 60, both in
    original.update(pred, gt, valid, trg_imsize=imsize)
    assert original.compute()["pck"] == {"0.1": 100.0, "0.15": 100.0}
    # a box is scaled with the points: 100 x 50 in a 400 x 200 image -> 64 x 64 in 256 x 256
    box = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    framed_box = pck_scores(Protocol(frame=256), [0.1], pred, gt, valid, box, imsize)
    assert framed_box.lengths.tolist() == [64.0]


def test_headline_mean_of_categories():
    # category 0: one pair, all correct; category 1: two pairs, none correct
    gt = torch.zeros(3, 1, 2)
    pred = torch.tensor([[[1.0, 0.0]], [[50.0, 0.0]], [[50.0, 0.0]]])
    valid = torch.ones(3, 1, dtype=torch.bool)
    imsize = torch.full((3, 2), 100)
    cats = torch.tensor([0, 1, 1])
    for headline, expected in (("pooled", 100 / 3), ("category_mean", 50.0)):
        metric = PCK([0.1], Protocol(threshold_by="image", headline=headline), categories=["a", "b"])
        metric.update(pred, gt, valid, cats, trg_imsize=imsize)
        out = metric.compute()
        assert out["pck"]["0.1"] == pytest.approx(expected)
        assert out["pck_pooled"]["0.1"] == pytest.approx(100 / 3)
        assert out["pck_category_mean"]["0.1"] == pytest.approx(50.0)


def test_named_protocols_resolve_with_overrides():
    table = {"a": protocol(threshold_by="image"), "b": protocol(threshold_by="image", frame=224,
                                                                 direction="trg_to_src")}
    p = resolve_protocol(table, "a")
    assert p.name == "a" and p.direction == "src_to_trg" and "overrides" not in p.as_dict()
    p = resolve_protocol(table, "a", "b", {"strict": True, "average": None})
    assert p.frame == 224 and p.strict is True and p.as_dict()["overrides"] == ["strict"]
    assert Protocol.from_dict(p.as_dict()) == p
    with pytest.raises(ValueError, match="valid: a, b"):
        resolve_protocol(table, "a", "c")
    with pytest.raises(ValueError, match="direction"):
        protocol(direction="sideways")


def test_rule_decides_in_float64_on_the_written_grid():
    # a distance of exactly alpha * L is correct under <=, not under < (squares compared: no sqrt)
    gt = torch.tensor([[[144.0, 152.0], [0.0, 0.0]]])
    pred = gt + torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # distance 5
    valid = torch.tensor([[True, False]])
    box = torch.tensor([[0.0, 0.0, 50.0, 20.0]])  # L = 50: 0.1 * L = 5 exactly
    for strict, expected in ((False, True), (True, False)):
        s = pck_scores(Protocol(strict=strict), [0.1], pred, gt, valid, box)
        assert s.correct[0, 0, 0].item() is expected and not s.correct[0, 1].any()
    assert within(torch.tensor([[25.0]]), torch.tensor([50.0]), [0.1]).item()
    # the grid: each coordinate is the double nearest to its 4-decimal string, so JSON round-trips
    x = torch.tensor([283.98499, 1.00005, -3.123456789], dtype=torch.float64)
    q = quantize(x)
    assert json.loads(json.dumps(q.tolist())) == q.tolist()
    assert q.tolist() == [float(f"{v:.4f}") for v in q.tolist()]


def test_metric_equals_a_recomputation_from_predictions_rows():
    from semcorr.predictions import pck_from_predictions, prediction_row
    from semcorr.report import pair_records

    torch.manual_seed(1)
    b, k = 23, 7
    gt = torch.rand(b, k, 2) * 300
    pred = gt + torch.randn(b, k, 2) * 20
    valid = torch.rand(b, k) > 0.2
    box = torch.cat([torch.zeros(b, 2), 100 + torch.rand(b, 2) * 200], dim=1)
    cats = torch.randint(0, 3, (b,))
    names = ["x", "y", "z"]
    imsize = torch.tensor([[480, 640]] * b)
    for proto in (Protocol(), Protocol(average="per_keypoint", strict=True),
                  Protocol(threshold_by="bbox_kp"), Protocol(threshold_by="image", frame=224)):
        metric = PCK(ALPHAS, proto, categories=names)
        scores = metric.score(pred, gt, valid, box, imsize)
        metric.update(category_idx=cats, scores=scores)
        batch = {"src_kps_orig": gt, "trg_bbox": box, "trg_imsize": imsize, "index": torch.arange(b),
                 "category": [names[c] for c in cats], "src_id": ["s"] * b, "trg_id": ["t"] * b,
                 "pair_id": [str(i) for i in range(b)]}
        rows = [json.loads(json.dumps(prediction_row(r))) for r in pair_records(batch, scores)]
        expected, got = metric.compute(), pck_from_predictions(rows, proto)
        for key in ("pck", "pck_per_image", "pck_per_keypoint", "n_pairs", "n_keypoints"):
            assert got[key] == expected[key], (proto, key)  # bit-exact
        assert got["pck_per_category"] == expected["pck_per_category"]
