"""End to end: evaluation runs on a folder dataset with a symmetry list write intervals and
left/right numbers that predictions.jsonl reproduces; semcorr-compare pairs them, refuses what
cannot be paired, and works on runs made before left/right data was stored."""

import json
import shutil
from pathlib import Path

import pytest

from dataset_fixtures import painted, save
from runs import QUIET
from semcorr.cli.compare import main as compare_main
from semcorr.cli.eval import main as eval_main
from semcorr.compare import compare_runs
from semcorr.metrics.left_right import left_right_summary
from semcorr.run_data import load_run

# five keypoints: (0, 1) and (2, 3) mirror each other, 4 has no counterpart
IMAGES = {
    "a.png": [(12, 10), (40, 12), (10, 30), (44, 32), (26, 40)],
    "b.png": [(14, 12), (44, 10), (12, 34), None, (30, 42)],
    "c.png": [(10, 14), (38, 14), None, (40, 30), (24, 38)],
    "d.png": [(16, 8), None, (14, 28), (46, 30), (28, 44)],
}
PAIRS = [("a.png", "b.png", "cat"), ("b.png", "a.png", "cat"), ("a.png", "c.png", "cat"),
         ("c.png", "d.png", "dog"), ("d.png", "a.png", "dog"), ("b.png", "d.png", "dog")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lr_folder")
    for i, (name, kps) in enumerate(IMAGES.items()):
        save(root / name, painted(48, 56, kps, seed=i))
    items = [{"src": s, "trg": t, "category": c, "src_kps": IMAGES[s], "trg_kps": IMAGES[t],
              "trg_bbox": [2, 2, 54, 46]} for s, t, c in PAIRS]
    (root / "pairs.json").write_text(json.dumps(items))
    return root


def _eval(folder: Path, out: Path, *extra: str, capsys=None) -> dict:
    tokens = [*QUIET, "data=folder", f"data.root={folder}", "data.image_size=64", "data.batch_size=4",
              "data.symmetry=[[0,1],[2,3]]", "backbone=dsift", "matcher=nn", f"out_dir={out}", *extra]
    assert eval_main(tokens) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("lr_runs")
    return {"a": (base / "a", _eval(folder, base / "a")),
            "b": (base / "b", _eval(folder, base / "b", "data.image_size=96")),
            "folder": folder, "base": base}


@pytest.mark.slow
def test_eval_writes_left_right_and_intervals(runs):
    path, metrics = runs["a"]
    lr = metrics["left_right"]
    # scored keypoints (visible in both), worked out from IMAGES: a->b {0,1,2,4}, b->a {0,1,2,4},
    # a->c {0,1,3,4}, c->d {0,3,4}, d->a {0,2,3,4}, b->d {0,2,4}: 22. Keypoint 4 (no counterpart)
    # is n1x in all six; n11 when the counterpart is visible in the target: a->b 0,1; b->a 0,1,2;
    # a->c 0,1; c->d 3; d->a 0 (its counterpart 1 is visible in the target only), 2, 3; b->d 2
    assert lr["n"] == metrics["n_keypoints"] == 22
    assert (lr["n11"]["count"], lr["n10"]["count"], lr["n1x"]["count"]) == (12, 4, 6)
    cat, dog = lr["per_category"]["cat"], lr["per_category"]["dog"]
    assert (cat["n11"]["count"], cat["n10"]["count"], cat["n1x"]["count"]) == (7, 2, 3)
    assert (dog["n11"]["count"], dog["n10"]["count"], dog["n1x"]["count"]) == (5, 2, 3)
    assert set(lr["per_category"]) == {"cat", "dog"}
    # the three subsets together are every scored keypoint: GECO's per-point PCK is the run's
    for alpha, v in metrics["pck_per_keypoint"].items():
        assert lr["pck"][alpha] == pytest.approx(v, abs=1e-9)
    assert set(metrics["pck_ci95"]) == set(metrics["pck"])
    lo, hi = metrics["pck_ci95"]["0.1"]
    assert lo <= metrics["pck"]["0.1"] <= hi
    assert metrics["bootstrap"]["resamples"] == 1000
    curves = metrics["pck_curve_per_category"]
    assert set(curves["pck"]) == {"cat", "dog"} and len(curves["pck"]["cat"]) == len(curves["alphas"])
    # the curve passes through the run's own per-category PCK at its alphas (same counts, same rule)
    for alpha in ("0.05", "0.1", "0.15"):
        at = curves["alphas"].index(float(alpha))
        for cat_name in ("cat", "dog"):
            assert curves["pck"][cat_name][at] == pytest.approx(metrics["pck_per_category"][cat_name][alpha])
    # the loggers get the intervals and the left/right numbers (CSV here; W&B alike)
    header = (path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("test/pck_ci95_low@0.1", "test/pck_ci95_high@0.1", "test/left_right/n11/pck@0.1",
                "test/left_right/n10/share", "test/left_right/swap_rate@0.1", "test/left_right/geo_aware/pck@0.1"):
        assert key in header, key
    # everything is recomputed from what the run stored, to the last bit
    run = load_run(path)
    again = left_right_summary(run.left_right, run.category, run.alphas, run.protocol)
    assert again == lr


@pytest.mark.slow
def test_eval_table_names_the_subset_and_the_intervals(folder, tmp_path, capsys):
    _eval(folder, tmp_path / "sub", "data.max_pairs=4", "metric.bootstrap=50", "plots.category_curves=true")
    assert (tmp_path / "sub" / "pck_curve_per_category.png").is_file()  # Fig. 6/7: a panel per category
    out = capsys.readouterr().out
    assert "±: half-width of the 95 % bootstrap interval" in out
    assert ("a subset of the split's pairs was evaluated (data.max_pairs=4, data.subset=per_category, "
            "data.subset_seed=0)") in out
    assert "PCK n11" in out and "swap rate" in out
    metrics = json.loads((tmp_path / "sub" / "metrics.json").read_text())
    assert metrics["pairs_subset"] == {"data.max_pairs": 4, "data.subset": "per_category",
                                       "data.subset_seed": 0}
    _eval(folder, tmp_path / "none", "metric.bootstrap=0", "data.symmetry=[]")
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert "pck_ci95" not in metrics and "left_right" not in metrics
    assert "PCK n11" not in capsys.readouterr().out


@pytest.mark.slow
def test_compare_cli(runs, tmp_path, capsys):
    (a, ma), (b, mb) = runs["a"], runs["b"]
    out = tmp_path / "cmp"
    assert compare_main([str(a), str(b), f"out_dir={out}", "bootstrap=300", "permutations=500"]) == 0
    text = capsys.readouterr().out
    assert "## b − a" in text and "### PCK@0.1" in text and "Left/right" in text
    for name in ("compare.md", "compare.json", "compare.png", "pck_curves_per_category.png"):
        assert (out / name).is_file()
    result = json.loads((out / "compare.json").read_text())
    pck = result["comparisons"][0]["measures"]["pck"]
    for alpha in ("0.05", "0.1", "0.15"):
        v = pck["overall"][alpha]
        assert v["a"] == ma["pck"][alpha] and v["b"] == mb["pck"][alpha]  # the runs' own numbers
        assert v["difference"] == pytest.approx(mb["pck"][alpha] - ma["pck"][alpha])
        assert 0 < v["p"] <= 1
    cat = pck["per_category"]["cat"]["0.1"]
    assert cat["a"] == pytest.approx(ma["pck_per_category"]["cat"]["0.1"])
    assert set(result["comparisons"][0]["measures"]) == {"pck", "n11", "n10", "n1x", "swap_rate",
                                                          "near_both_rate", "geo_aware"}
    n11 = result["comparisons"][0]["measures"]["n11"]["overall"]["0.1"]
    assert n11["a"] == pytest.approx(ma["left_right"]["n11"]["pck"]["0.1"])
    assert set(result["curves"]) == {"a", "b"} and "all" in result["curves"]["a"]["pck"]
    at = result["curves"]["b"]["alphas"].index(0.1)
    assert result["curves"]["b"]["pck"]["dog"][at] == pytest.approx(mb["pck_per_category"]["dog"]["0.1"])
    assert result["curves"]["b"]["pck"]["all"][at] == pytest.approx(mb["pck"]["0.1"])
    # the folder now holds a comparison: another one there needs --overwrite (issue 24's rule), and
    # an evaluation run's folder is never written into by accident
    for target in (out, a):
        assert compare_main([str(a), str(b), f"out_dir={target}", "bootstrap=10", "permutations=10"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds another run's results" in err[0] and "--overwrite" in err[0]
    assert json.loads((out / "compare.json").read_text()) == result
    assert compare_main([str(a), str(b), f"out_dir={out}", "bootstrap=10", "permutations=10",
                         "--overwrite"]) == 0
    assert json.loads((out / "compare.json").read_text())["settings"]["bootstrap"] == 10
    capsys.readouterr()
    # the same from Python, and a run against itself differs by nothing
    same = compare_runs([a, a])
    zero = same["comparisons"][0]["measures"]["pck"]["overall"]["0.1"]
    assert zero["difference"] == 0 and zero["p"] == 1.0


@pytest.mark.slow
def test_compare_refuses_what_cannot_be_paired(runs, tmp_path, capsys):
    folder, base = runs["folder"], runs["base"]
    a = runs["a"][0]
    fewer = base / "fewer"
    if not fewer.exists():
        _eval(folder, fewer, "data.max_pairs=3")
    assert compare_main([str(a), str(fewer), f"out_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("cannot compare runs of different pair sets: a has 6 pairs, fewer 3, "
                              "3 in common") in err[0]  # the text of docs/errors.md
    other = base / "kp"
    if not other.exists():
        _eval(folder, other, "metric.average=per_keypoint")
    assert compare_main([str(a), str(other), f"out_dir={tmp_path / 'y'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("cannot compare runs under different protocols (a vs kp: average "
                              "'per_image' vs 'per_keypoint')") in err[0]
    assert compare_main([str(a), str(other), f"out_dir={tmp_path / 'z'}", "bootstrap=100",
                         "permutations=100", "--allow-protocol-mismatch"]) == 0
    out = capsys.readouterr().out
    assert "protocols differ" in out and "per_keypoint" in out and "per_image" in out
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_compare_runs_made_before_left_right(runs, tmp_path):
    """A run without left/right data (rows and metrics.json as written before): compared on PCK,
    and the report says why there is no left/right comparison."""
    old = tmp_path / "old"
    shutil.copytree(runs["a"][0], old)
    rows = [json.loads(line) for line in (old / "predictions.jsonl").read_text().splitlines()]
    with open(old / "predictions.jsonl", "w") as f:
        for row in rows:
            for key in ("lr_subset", "sym_trg_kps", "geo_aware"):
                row.pop(key)
            f.write(json.dumps(row) + "\n")
    metrics = json.loads((old / "metrics.json").read_text())
    for key in ("left_right", "pck_ci95", "pck_per_category_ci95", "bootstrap", "pck_curve_per_category"):
        metrics.pop(key)
    (old / "metrics.json").write_text(json.dumps(metrics))
    result = compare_runs([old, runs["b"][0]])
    comp = result["comparisons"][0]
    assert set(comp["measures"]) == {"pck"} and "old" in comp["left_right_note"]
    assert result["runs"][0]["left_right"] is False
