"""Nothing silently wrong: non-finite features and plans are refused, losses propagate NaN,
training that diverges stops (one line, W&B marked failed, summary "failed"), last.ckpt is the
final state, a resumed run's logs are the whole run's, bad annotation files are named, and a huge
image is decoded small with answers in its original pixels. (Command-line one-liners:
tests/test_bad_inputs.py; the table: docs/errors.md.)"""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from runs import TINY_VIT
from semcorr.backbones.base import FeatureMap
from semcorr.builder import build_run
from semcorr.checkpoint import read_checkpoint
from semcorr.cli import train as train_cli
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.errors import NumericalError, SemcorrError
from semcorr.losses.combined import CombinedLoss
from semcorr.losses.gaussian_ce import GaussianCELoss
from semcorr.losses.ot_nll import OTNLLLoss
from semcorr.matchers.base import Matcher, MatchResult, cosine_similarity

from test_datasets_ap10k import ap10k_root  # noqa: F401  (fixtures of the loaders' formats)
from test_datasets_folder import folder_root  # noqa: F401
from test_datasets_pf_pascal import pascal_root  # noqa: F401
from test_datasets_spair import spair_root  # noqa: F401
from test_datasets_tss import tss_root  # noqa: F401
from test_losses import make_batch, make_maps

SMALL = ["data=synthetic", "data.image_size=56", "data.batch_size=2", "data.n_pairs.train=8",
         "data.n_pairs.val=2", "data.n_keypoints=8", "trainer.enable_progress_bar=false",
         "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "plots.n_pairs=0",
         "head=resnet_bottleneck"]


# ------------------------------------------------------------------------------------------------
# non-finite features and plans
# ------------------------------------------------------------------------------------------------
def _pair_batch(k=3):
    return {"src_kps": torch.tensor([[[20.0, 30.0], [50.0, 60.0], [80.0, 10.0]]])[:, :k],
            "trg_frame": torch.tensor([[1.0, 1.0, 0.0, 0.0]]), "src_id": ["a.png"],
            "trg_id": ["b.png"], "pair_id": ["a.png->b.png"]}


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (FeatureMap(torch.randn(1, 32, 12, 12, generator=g), 8),
            FeatureMap(torch.randn(1, 32, 12, 12, generator=g), 8))


@pytest.mark.parametrize("matcher", ["nn", "ot", "gwot"])
@pytest.mark.parametrize("side,value", [("trg", float("nan")), ("src", float("inf"))])
def test_non_finite_features_are_refused_naming_the_image(matcher, side, value, make_config):
    """One bad value in one channel of one cell of a (1, 32, 12, 12) map: a clear error naming the
    image (before, every GW-OT / OT score went NaN and every keypoint to cell 0, silently)."""
    extra = ["matcher.n_steps=3"] if matcher != "nn" else []
    net = build_run(make_config("backbone=dsift", f"matcher={matcher}", *extra), "predict").net
    src, trg = _maps()
    assert torch.isfinite(net.match(_pair_batch(), src, trg).scores).all()
    bad = trg if side == "trg" else src
    bad.features[0, 5, 7, 3] = value
    with pytest.raises(NumericalError) as err:
        net.match(_pair_batch(), src, trg)
    name = "target image 'b.png'" if side == "trg" else "source image 'a.png'"
    assert f"in 1 of 144 cells of {name}" in str(err.value) and "\n" not in str(err.value)


class NaNMatcher(Matcher):
    def forward(self, src, trg, sym_pairs=None, similarity=None):
        scores = cosine_similarity(src, trg)
        scores[:, 4, 9] = float("nan")
        return MatchResult(scores=scores)


def test_a_non_finite_plan_is_refused_naming_the_pair(make_config):
    net = build_run(make_config("backbone=dsift"), "predict").net
    net.matcher = NaNMatcher()
    with pytest.raises(NumericalError, match=r"matcher NaNMatcher returned non-finite scores .* "
                                             r"for pair 'a.png->b.png'"):
        net.match(_pair_batch(), *_maps())


def _nan_row_result(src, trg):
    scores = cosine_similarity(src, trg).float() / 0.1
    scores = torch.log_softmax(scores, -1)
    return scores


@pytest.mark.parametrize("loss", ["ot_nll", "ot_nll_all", "gaussian_ce_scores", "gaussian_ce", "combined"])
def test_losses_propagate_non_finite_plans(loss):
    """A NaN plan row under a counted keypoint (or a NaN feature) gives a NaN loss, never a
    dropped keypoint and a finite (or zero) loss without gradient."""
    batch = make_batch(b=1, k=4)
    src, trg = make_maps(b=1)
    fn = {"ot_nll": OTNLLLoss(), "ot_nll_all": OTNLLLoss(negatives="all", pos_radius=1),
          "gaussian_ce_scores": GaussianCELoss(logits_from="scores"), "gaussian_ce": GaussianCELoss(),
          "combined": CombinedLoss(terms={"gaussian_ce": 1.0, "ot_nll": 0.5})}[loss]
    scores = _nan_row_result(src, trg)
    value, _ = fn(batch, src, trg, MatchResult(scores=scores))
    assert torch.isfinite(value)
    from semcorr.losses.common import keypoint_cells

    src_idx, _, mask = keypoint_cells(batch, src, trg)
    k = int(mask[0].nonzero()[0])
    if loss == "gaussian_ce":  # its logits come from the features
        src.features[0, :, 0, 0] = float("nan")
        trg.features[0, 3, 1, 1] = float("nan")
    else:
        scores = scores.clone()
        scores[0, src_idx[0, k]] = float("nan")  # the plan row of one counted keypoint
    value, _ = fn(batch, src, trg, MatchResult(scores=scores))
    assert torch.isnan(value), value


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _wandb_exit_code(out_dir: Path) -> int:
    """The exit code recorded in an offline W&B run's ``.wandb`` file (a LevelDB-style log of
    protobuf records: 32 KiB blocks, each record chunk with a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(str(out_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    data = Path(files[0]).read_bytes()
    pos, chunk, codes = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "exit":
                codes.append(record.exit.exit_code)
            chunk = b""
    assert codes, "no exit record"
    return codes[-1]


class NaNAtStep:
    """Wraps a loss: from the ``step``-th training call on, the loss is NaN."""

    def __init__(self, loss, step):
        self.loss, self.step, self.calls = loss, step, 0

    def __call__(self, batch, src, trg, result):
        value, logs = self.loss(batch, src, trg, result)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.step:
                value = value * float("nan")
        return value, logs


@pytest.mark.slow
def test_diverged_training_stops_marks_wandb_failed_and_the_summary(tmp_path, capsys, monkeypatch):
    import semcorr.builder as builder

    real = builder.build_loss
    monkeypatch.setattr(builder, "build_loss", lambda cfg: NaNAtStep(real(cfg), step=2))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    rc = train_cli.main([*TINY_VIT, *SMALL, "trainer.max_steps=4", "checkpointing.every_n_steps=1",
                         "logger.wandb=true", "logger.mode=offline", f"out_dir={out}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    last = out / "checkpoints" / "last.ckpt"
    assert lines[0] == (f"train.py: error: training diverged at step 2: non-finite loss (train/loss = "
                        f"nan); the run stopped; last good checkpoint: {last} (step 1)")
    assert read_checkpoint(last)["global_step"] == 1
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["status"] == "failed" and "TrainingDiverged" in summary["error"]
    assert summary["last_checkpoint_step"] == 1
    assert _wandb_exit_code(out) == 1


@pytest.mark.slow
def test_resumed_logs_are_the_whole_runs_and_last_ckpt_is_final(tmp_path):
    """A 6-step run saving last.ckpt every 4 steps ends with last.ckpt at step 6 (Lightning alone
    left step 4 there); a run cut at step 2 (mid-epoch) and resumed has the uninterrupted run's
    CSV log, history and epoch numbers."""
    from test_train import StopAt

    common = [*TINY_VIT, *SMALL, "logger.wandb=false", "trainer.max_steps=6",
              "checkpointing.every_n_steps=4", "trainer.val_check_interval=3",
              "trainer.limit_val_batches=1"]
    full = train_cli.fit(train_cli.train_config([*common, f"out_dir={tmp_path / 'full'}"]))
    assert full["status"] == "finished" and full["last_checkpoint_step"] == 6
    assert read_checkpoint(full["last_checkpoint"])["global_step"] == 6
    cut = tmp_path / "cut"
    part = train_cli.fit(train_cli.train_config([*common, f"out_dir={cut}"]), callbacks=[StopAt(2)])
    assert part["global_step"] == 2 and read_checkpoint(part["last_checkpoint"])["global_step"] == 2
    assert train_cli.main(["--resume", str(cut)]) == 0
    resumed = json.loads((cut / "train_summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["global_step"] == 6
    assert resumed["history"] == full["history"]

    def rows(run):
        with open(run / "csv" / "metrics.csv", newline="") as f:
            return [(r["step"], r["epoch"], r.get("train/loss", ""), r.get("val/pck@0.1", ""))
                    for r in csv.DictReader(f) if r.get("train/loss") or r.get("val/pck@0.1")]

    assert rows(cut) == rows(tmp_path / "full")
    assert [r[0] for r in rows(cut) if r[2]] == [str(s) for s in range(6)]


# ------------------------------------------------------------------------------------------------
# annotation files of every loader
# ------------------------------------------------------------------------------------------------
def _willow(tmp_path: Path) -> Path:
    folder = tmp_path / "PF-dataset-WILLOW" / "car(G)"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        scipy.io.savemat(folder / f"{name}.mat", {"pts_coord": np.full((2, 10), 5.0)})
    return tmp_path


def _damage(path: Path, how: str) -> None:
    if how.startswith("truncate"):
        path.write_bytes(path.read_bytes()[: int(how.split("-")[1])])
    elif how == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        raise ValueError(how)


LOADER_FILES = [  # (data, fixture, damaged file, damage, read a sample too)
    *[("pf_willow", None, "PF-dataset-WILLOW/car(G)/a.mat", f"truncate-{n}", False) for n in (0, 100, 200)],
    ("pf_willow", None, "PF-dataset-WILLOW/car(G)/b.mat", "binary", False),
    ("spair", "spair_root", "PairAnnotation/test/000001-2008_000001-2008_000002:cat.json", "truncate-100", False),
    ("spair", "spair_root", "Layout/large/test.txt", "binary", False),
    ("pf_pascal", "pascal_root", "test_pairs.csv", "binary", False),
    ("pf_pascal", "pascal_root", "test_pairs.csv", "truncate-120", False),
    ("ap10k", "ap10k_root", "annotations/ap10k-test-split1.json", "truncate-200", False),
    ("folder", "folder_root", "pairs.json", "truncate-50", False),
    ("tss", "tss_root", "PASCAL/pair001/flip_gt.txt", "binary", False),
    ("tss", "tss_root", "FG3DCar/pair001/flow1.flo", "truncate-100", True),
    ("tss", "tss_root", "JODS/pair001/flow2.flo", "binary", True),
]


@pytest.mark.parametrize("data,fixture,rel,how,sample", LOADER_FILES,
                         ids=[f"{d}-{Path(r).name}-{h}" for d, _, r, h, _ in LOADER_FILES])
def test_every_loaders_bad_annotation_file_is_named(data, fixture, rel, how, sample, request, tmp_path):
    root = request.getfixturevalue(fixture) if fixture else _willow(tmp_path)
    _damage(root / rel, how)
    cfg = load_config([f"data={data}", f"data.root={root}", "data.image_size=64"])
    with pytest.raises(SemcorrError) as err:
        dataset = dataset_from_config(cfg.data, "test", divisor=8)
        if sample:
            for i in range(len(dataset)):
                dataset[i]
    assert str(root / rel) in str(err.value) and "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------
# a huge image
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_match_decodes_a_huge_jpeg_small_and_answers_in_original_pixels(tmp_path):
    """An 8000 x 6000 JPEG matched at 224 px is decoded at 1/8 (never a full-size float image):
    the command's peak memory grows by well under a gigabyte (4.66 GB before). And a pair blown
    up 8x gives the small pair's matches, in the big images' pixels."""
    import skimage.data

    from semcorr.cli.match import main as match_main
    from semcorr.data.base import load_image_reduced

    big = np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])  # 256 x 256
    crops = {"src": big[40:168, 40:200], "trg": big[32:160, 24:184]}  # target = source + (16, 8)
    for name, crop in crops.items():
        Image.fromarray(crop).resize((160 * 8, 128 * 8), Image.NEAREST).save(tmp_path / f"{name}.jpg", quality=95)
    image, factor, hw = load_image_reduced(tmp_path / "src.jpg", keep=320)
    assert factor == 2 and hw == (1024, 1280) and tuple(image.shape[-2:]) == (512, 640)
    cells = np.array([[43.5, 35.5], [83.5, 67.5], [123.5, 91.5], [59.5, 99.5]])  # small-image cells
    points = (cells + 0.5) * 8 - 0.5
    out = tmp_path / "out"
    rc = match_main([str(tmp_path / "src.jpg"), str(tmp_path / "trg.jpg"), "--points",
                     ";".join(f"{x:g},{y:g}" for x, y in points), "backbone=dsift", "matcher=nn",
                     "data.image_size=160", "data.resize=longer_side", "logger.wandb=false",
                     f"out_dir={out}"])
    assert rc == 0
    record = json.loads((out / "matches.json").read_text())
    assert record["src_size"] == [1280, 1024] and record["trg_size"] == [1280, 1024]  # (width, height)
    got = np.array([m["trg"] for m in record["matches"]])
    want = (cells + [16, 8] + 0.5) * 8 - 0.5
    assert np.abs(got - want).max() < 1.0, got - want

    # memory: an 8000 x 6000 JPEG at 224 px, measured in a fresh process
    rng = np.random.default_rng(0)
    tile = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    tile.resize((8000, 6000), Image.BILINEAR).save(tmp_path / "huge.jpg", quality=85)
    script = (
        "import resource, sys\n"
        "from semcorr.cli.match import main\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"rc = main([{str(tmp_path / 'huge.jpg')!r}, {str(tmp_path / 'huge.jpg')!r}, '--points', '4000,3000',"
        f" 'backbone=dsift', 'data.image_size=224', 'out_dir={tmp_path / 'huge_out'}'])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(rc, (after - before) / 1024)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    rc, grown_mb = proc.stdout.split()[-2:]
    assert rc == "0", proc.stderr[-2000:]
    assert float(grown_mb) < 400, grown_mb  # the full-size float image alone is 576 MB
    record = json.loads((tmp_path / "huge_out" / "matches.json").read_text())
    assert record["src_size"] == [8000, 6000]  # (width, height)
    cell = 8 * 8000 / 224  # a dense-SIFT cell in original pixels: argmax answers its centre
    assert np.abs(np.array(record["matches"][0]["trg"]) - [4000, 3000]).max() <= cell / 2 + 1


@pytest.mark.parametrize("name,mode,orientation", [("photo.jpg", None, 6), ("palette.png", "P", 1),
                                                   ("grey.png", "L", 1)])
def test_reduced_decoding_keeps_orientation_colours_and_frame(name, mode, orientation, tmp_path):
    """Decoding at 1/k: EXIF orientation applied, original size reported as displayed, and a
    keypoint at original p lies at (p + 0.5) / k - 0.5 of the reduced image."""
    from dataset_fixtures import assert_on_colours, painted, save

    from semcorr.data.base import load_image, load_image_reduced

    kps = [(100.0, 80.0), (700.0, 500.0), (1000.0, 300.0)]
    save(tmp_path / name, painted(640, 1200, kps, half=12), mode=mode, exif_orientation=orientation)
    image, factor, hw = load_image_reduced(tmp_path / name, keep=200)
    assert hw == (640, 1200) and factor >= 2 and min(image.shape[-2:]) >= 200, (hw, factor)
    assert tuple(image.shape[-2:]) == (-(-640 // factor), -(-1200 // factor))
    reduced = (torch.tensor(kps) + 0.5) / factor - 0.5
    if mode is None:  # colour: check the painted squares; grey / palette: the whole picture
        assert_on_colours(image, reduced, torch.ones(3, dtype=torch.bool), tol=0.25)
    full = torch.nn.functional.avg_pool2d(load_image(tmp_path / name)[None], factor, ceil_mode=True)[0]
    assert (image - full).abs().mean() < 0.05
