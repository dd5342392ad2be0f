"""backbone=precomputed and semcorr-features: the layout, its checks, and the round trip (features
written by semcorr-features and read back give the direct run's predictions exactly)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runs import QUIET
from semcorr.backbones.dsift import DenseSift
from semcorr.backbones.feature_files import (FeatureLayout, find_feature_file, load_feature_file,
                                             read_layout, save_feature_file, write_layout)
from semcorr.backbones.precomputed import PrecomputedFeatures
from semcorr.builder import build_run
from semcorr.cli.eval import main as eval_main
from semcorr.cli.features import main as features_main
from semcorr.config import load_config
from semcorr.errors import ConfigError, DataError
from semcorr.features import FeatureExtractor
from semcorr.predictions import read_predictions
from test_datasets_pf_pascal import pascal_root  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["data=synthetic", "data.image_size=64", "data.n_pairs.test=5", "data.batch_size=2"]


def _eval(tmp: Path, name: str, *tokens: str) -> dict:
    out = tmp / name
    assert eval_main([*QUIET, *tokens, f"out_dir={out}"]) == 0
    return {"metrics": json.loads((out / "metrics.json").read_text()),
            "rows": read_predictions(out / "predictions.jsonl")}


def _same_run(a: dict, b: dict) -> None:
    """The same PCK (every aggregate) and the same prediction for every keypoint of every pair."""
    for key in ("pck", "pck_pooled", "pck_per_category", "pck_per_image", "pck_per_keypoint"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert len(a["rows"]) == len(b["rows"]) > 0
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["pair_id"] == rb["pair_id"] and ra["pred"] == rb["pred"]


@pytest.fixture(scope="module")
def synthetic_dsift(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feats") / "dsift"
    assert features_main([*SYNTH, "backbone=dsift", f"out_dir={root}"]) == 0
    return root


def test_semcorr_features_writes_the_layout(synthetic_dsift):
    layout = read_layout(synthetic_dsift)
    assert (layout.stride, layout.image_size, layout.resize, layout.dim) == (8, 64, "longer_side_pad", 128)
    assert layout.written_by["backbone"]["kind"] == "dsift" and layout.written_by["split"] == "test"
    ds = build_run(load_config([*SYNTH, "backbone=dsift"])).dataset
    files = sorted(p.relative_to(synthetic_dsift).as_posix() for p in synthetic_dsift.rglob("*.pt"))
    assert files == sorted(f"{i}.pt" for i in ds.image_ids())
    # each file holds what the backbone gives on the pipeline's own network-frame image
    sample = ds[0]
    want = DenseSift()(sample["src_img"][None]).features[0]
    assert torch.equal(torch.load(synthetic_dsift / f"{sample['src_id']}.pt"), want)


@pytest.mark.slow
@pytest.mark.parametrize("matcher", ["nn", "ot", "gwot_pf_willow"])
def test_round_trip_gives_the_direct_runs_predictions(synthetic_dsift, tmp_path, matcher):
    direct = _eval(tmp_path, "direct", *SYNTH, "backbone=dsift", f"matcher={matcher}")
    again = _eval(tmp_path, "pre", *SYNTH, "backbone=precomputed", f"backbone.root={synthetic_dsift}",
                  f"matcher={matcher}")
    _same_run(direct, again)
    assert again["metrics"]["timing"]["backbone_calls"] == 10  # one read per distinct image id


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_round_trip_with_mirrored_ids_and_a_target_to_source_protocol(pascal_root, tmp_path, fmt):  # noqa: F811
    """PF-PASCAL's training list serves flipped pairs (ids ending in #hflip) and its ``cats``
    protocol swaps source and target: the files of the flipped ids carry the features of the
    mirrored images, and every prediction is the direct run's."""
    data = ["data=pf_pascal", f"data.root={pascal_root}", "data.image_size=64", "data.split=train",
            "metric.protocol=cats", "data.batch_size=2"]
    root = tmp_path / "feats"
    assert features_main([*data, "backbone=dsift", f"out_dir={root}", "--format", fmt]) == 0
    flipped = [p.name for p in root.rglob(f"*#hflip.{fmt}")]
    assert len(flipped) == 2, flipped
    direct = _eval(tmp_path, "direct", *data, "backbone=dsift")
    again = _eval(tmp_path, "pre", *data, "backbone=precomputed", f"backbone.root={root}")
    assert {r["direction"] for r in again["rows"]} == {"trg_to_src"}
    _same_run(direct, again)


def test_mirrored_files_and_the_mirror_rule(tmp_path):
    """``--mirrored`` writes every image's mirror image's features (what the backbone gives on the
    flipped picture); ``backbone.flipped=mirror`` flips the map instead (square frames only)."""
    root = tmp_path / "feats"
    tokens = [*SYNTH, "data.resize=square", "data.n_pairs.test=1"]
    assert features_main([*tokens, "backbone=dsift", f"out_dir={root}", "--mirrored"]) == 0
    ds = build_run(load_config([*tokens, "backbone=dsift"])).dataset
    image = ds[0]["src_img"]
    sift = DenseSift()
    grid = (8, 8)
    from_file = load_feature_file(root / "astronaut.png#hflip.pt", 128, grid)
    mirrored_image = ds.read_image("astronaut.png").flip(-1)
    from semcorr.data.resize import resize_image
    assert torch.equal(from_file, sift(resize_image(mirrored_image, 64, "square", 8)[0][None]).features[0])
    files = PrecomputedFeatures(root=str(root))
    mirror = PrecomputedFeatures(root=str(root), flipped="mirror")
    ids = ["astronaut.png#hflip"]
    assert torch.equal(files(image[None], ids).features[0], from_file)
    by_rule = mirror(image[None], ids).features[0]
    assert torch.equal(by_rule, sift(image[None]).features[0].flip(-1))
    assert not torch.equal(by_rule, from_file)  # SIFT is not mirror-equivariant: the rule approximates
    pad = tmp_path / "pad"
    write_layout(pad, FeatureLayout(stride=8, image_size=64, resize="longer_side_pad", dim=128))
    with pytest.raises(ConfigError, match="cannot mirror maps of the longer_side_pad frame"):
        PrecomputedFeatures(root=str(pad), flipped="mirror")


def _layout(tmp_path: Path, dim: int = 4) -> Path:
    write_layout(tmp_path, FeatureLayout(stride=8, image_size=32, resize="square", dim=dim))
    return tmp_path


def test_every_file_is_checked(tmp_path):
    root = _layout(tmp_path)
    grid = (4, 4)
    good = torch.randn(4, *grid)
    path = save_feature_file(root, "a/x.jpg", good, "pt")
    assert path == root / "a" / "x.jpg.pt"
    assert torch.equal(load_feature_file(path, 4, grid), good)
    # (h*w, D) row-major cells, float16 / float64, .npy and .safetensors are read the same way
    flat = good.flatten(1).t().contiguous()
    torch.save(flat.half(), root / "flat.pt")
    assert torch.allclose(load_feature_file(root / "flat.pt", 4, grid), good.half().float())
    np.save(root / "np.npy", good.double().numpy())
    assert torch.equal(load_feature_file(root / "np.npy", 4, grid), good)
    from safetensors.torch import save_file

    save_file({"whatever": good}, str(root / "st.safetensors"))
    assert torch.equal(load_feature_file(root / "st.safetensors", 4, grid), good)
    bad = {
        "shape.pt": (lambda p: torch.save(torch.randn(4, 5, 4), p),
                     "has shape (4, 5, 4); expected (D, h, w) = (4, 4, 4) or (h*w, D) = (16, 4)"),
        "hwd.pt": (lambda p: torch.save(torch.randn(4, 4, 3), p), "has shape (4, 4, 3)"),
        "int.pt": (lambda p: torch.save(torch.ones(4, 4, 4, dtype=torch.int64), p),
                   "has dtype int64; expected float16, bfloat16, float32 or float64"),
        "int.npy": (lambda p: np.save(p, np.ones((4, 4, 4), dtype=np.int32)), "has dtype int32"),
        "nan.pt": (lambda p: torch.save(torch.full((4, 4, 4), float("nan")).index_fill_(0, torch.tensor([0]), 1.0), p),
                   "has 48 non-finite values (NaN or Inf) of 64"),
        "inf.npy": (lambda p: np.save(p, np.where(np.eye(16)[:4].reshape(4, 4, 4) > 0, np.inf, 0.0)),
                    "has 4 non-finite values"),
        "dict.pt": (lambda p: torch.save({"a": good, "b": good}, p), "holds a dict of 2 tensors, not one tensor"),
        "garbage.pt": (lambda p: p.write_bytes(b"\x80\x02garbage" * 9), "cannot read features file"),
        "garbage.npy": (lambda p: p.write_bytes(b"not numpy"), "cannot read features file"),
        "two.safetensors": (lambda p: save_file({"a": good, "b": good.clone()}, str(p)), "holds a dict of 2 tensors"),
    }
    for name, (write, message) in bad.items():
        write(root / name)
        with pytest.raises(DataError) as err:
            load_feature_file(root / name, 4, grid)
        assert message in str(err.value) and str(root / name) in str(err.value), (name, str(err.value))
        assert "\n" not in str(err.value)
    torch.save(good, root / "a" / "x.jpg.npy")  # any content: two files for one id
    with pytest.raises(DataError, match=r"image 'a/x.jpg' has 2 features files \(x.jpg.pt, x.jpg.npy\)"):
        find_feature_file(root, "a/x.jpg")
    with pytest.raises(DataError, match="cannot name a features file"):
        find_feature_file(root, "../escape.jpg")
    assert find_feature_file(root, "/a/y.jpg") is None  # an absolute id lives under the root too


def test_features_json_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="has no features.json"):
        read_layout(tmp_path)
    (tmp_path / "features.json").write_text('{"stride": 8, "image_size": 30, "resize": "square", "dim": 4}')
    with pytest.raises(DataError, match="image_size 30 is not a multiple of stride 8"):
        read_layout(tmp_path)
    (tmp_path / "features.json").write_text('{"stride": 8, "resize": "fancy", "dim": 4}')
    with pytest.raises(DataError, match="missing image_size"):
        read_layout(tmp_path)
    (tmp_path / "features.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .*features.json"):
        read_layout(tmp_path)


def test_a_bad_file_found_during_a_run_is_one_line(synthetic_dsift, tmp_path, capsys):
    """Files are checked when read: a NaN in one file ends the run with rc 2 and one line naming
    the file, and no metrics.json."""
    import shutil

    root = tmp_path / "feats"
    shutil.copytree(synthetic_dsift, root)
    victim = root / "chelsea_warp_test_1.png.pt"
    feats = torch.load(victim)
    feats[3, 2, 1] = float("nan")
    torch.save(feats, victim)
    out = tmp_path / "run"
    rc = eval_main([*QUIET, *SYNTH, "backbone=precomputed", f"backbone.root={root}", f"out_dir={out}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("eval.py: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"features file {victim} has 1 non-finite values (NaN or Inf) of 8192" in lines[0]
    assert not (out / "metrics.json").exists()


def test_the_extractor_gives_ids_and_keys_on_them(tmp_path):
    """A backbone that needs ids gets them; two ids with the same pixels are two files (the key is
    the id, not the pixel digest), and the same id twice is read once."""
    root = _layout(tmp_path)
    a, b = torch.randn(4, 4, 4), torch.randn(4, 4, 4)
    save_feature_file(root, "a.png", a)
    save_feature_file(root, "b.png", b)
    ex = FeatureExtractor(PrecomputedFeatures(root=str(root)))
    image = torch.rand(3, 32, 32)
    out = ex(torch.stack([image, image, image]), ["a.png", "b.png", "a.png"])
    assert torch.equal(out.features, torch.stack([a, b, a])) and ex.backbone_calls == 2
    with pytest.raises(ValueError, match="reads features by image id"):
        ex(image[None])
    with pytest.raises(DataError, match=r"image has no features file .* e.g. 'c.png': looked for .*c.png.pt, .npy, .safetensors"):
        ex(image[None], ["c.png"])


def test_training_with_augmentation_is_refused(synthetic_dsift):
    cfg = load_config([*SYNTH, "data.n_pairs.train=2", "data.n_pairs.val=2", "backbone=precomputed",
                       f"backbone.root={synthetic_dsift}", "loss=gaussian_ce", "data.augment.enabled=true"])
    with pytest.raises(ConfigError, match="cannot follow data.augment's crops and flips"):
        build_run(cfg, "fit")


@pytest.mark.slow
def test_the_docs_export_script_writes_a_layout_semcorr_reads(tmp_path):
    """docs/export_features.py with a stand-in extractor (dense SIFT called image by image, as a
    foreign model would be): the precomputed run equals the direct one."""
    spec = importlib.util.spec_from_file_location("export_features", ROOT / "docs" / "export_features.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sift = DenseSift()
    root = tmp_path / "feats"
    n = script.export([*SYNTH, f"out_dir={root}"], lambda image, image_id: sift(image[None]).features[0],
                      stride=8, dim=128)
    assert n == 10 and read_layout(root).written_by["command"].startswith("docs/export_features.py")
    direct = _eval(tmp_path, "direct", *SYNTH, "backbone=dsift")
    again = _eval(tmp_path, "pre", *SYNTH, "backbone=precomputed", f"backbone.root={root}")
    _same_run(direct, again)


@pytest.mark.slow
def test_pf_willow_round_trip(pf_willow_root, tmp_path):
    """PF-WILLOW (its first 50 pairs) with dense SIFT: the precomputed run is the direct run."""
    data = ["data=pf_willow", f"data.root={pf_willow_root}", "data.max_pairs=50"]
    root = tmp_path / "feats"
    assert features_main([*data, "backbone=dsift", f"out_dir={root}"]) == 0
    direct = _eval(tmp_path, "direct", *data, "backbone=dsift")
    again = _eval(tmp_path, "pre", *data, "backbone=precomputed", f"backbone.root={root}")
    _same_run(direct, again)
