"""Sweep runner: a 2x2 grid writes one summary row per run, and a re-run skips finished runs."""

import csv

import pytest

from semcorr.cli.sweep import grid_runs, load_sweep, main, run_name

SWEEP = """
name: test_grid
mode: eval
base: [data=synthetic, backbone=dsift, data.image_size=64, data.n_pairs.test=4,
       data.n_keypoints=8, logger.wandb=false, trainer.enable_progress_bar=false,
       plots.n_pairs=0, plots.dense_warp=false]
grid:
  matcher: [nn, ot]
  matcher.transfer.method: [argmax, soft_argmax]
"""


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_2x2_summary_and_resume(tmp_path):
    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(SWEEP)
    out = tmp_path / "out"
    assert main([str(spec_path), f"out_dir={out}"]) == 0
    rows = read_rows(out / "summary.csv")
    assert [(r["matcher"], r["matcher.transfer.method"]) for r in rows] == [
        ("nn", "argmax"), ("nn", "soft_argmax"), ("ot", "argmax"), ("ot", "soft_argmax")]
    assert all(r["status"] == "done" for r in rows)
    for r in rows:
        assert 0.0 <= float(r["pck@0.1"]) <= 100.0 and float(r["seconds"]) > 0
    assert len({r["pck@0.1"] for r in rows}) > 1  # the overrides reached the runs
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == 5  # header + 4 rows
    # interrupted sweep: one run lost its result -> only that one runs again
    (out / rows[2]["run"] / "sweep_result.json").unlink()
    assert main([str(spec_path), f"out_dir={out}"]) == 0
    again = read_rows(out / "summary.csv")
    assert [r["status"] for r in again] == ["done (skipped)", "done (skipped)", "done", "done (skipped)"]
    assert [r["pck@0.1"] for r in again] == [r["pck@0.1"] for r in rows]


def test_sweep_file_checks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: fit\ngrid: {matcher: [nn]}\n")
    with pytest.raises(ValueError, match="mode"):
        load_sweep(bad)
    bad.write_text("grid: {matcher: nn}\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_sweep(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("grid: {matcher: [nn, gwot], head: [none]}\n")
    cells = grid_runs(load_sweep(ok))
    assert cells == [{"matcher": "nn", "head": "none"}, {"matcher": "gwot", "head": "none"}]
    assert run_name(cells[1]) == "matcher-gwot__head-none"


def test_every_sweep_file_builds():
    from semcorr.config import PACKAGED_CONFIGS, load_config

    files = sorted((PACKAGED_CONFIGS / "sweep").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_sweep(path)
        for cell in grid_runs(spec):
            load_config([*spec.base, *(f"{k}={v}" for k, v in cell.items())])
        assert set(spec.labels) <= {run_name(cell) for cell in grid_runs(spec)}, path.name
