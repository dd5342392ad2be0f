"""Sweep runner: a 2x2 grid writes one summary row per run, and a re-run skips finished runs;
cells share the sweep's process (and score as an isolated one); --search runs and resumes an
Optuna study."""

import csv
import json
import sys

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
def test_sweep_2x2_summary_and_resume(tmp_path, monkeypatch, capsys):
    import semcorr.cli.sweep_cells as cells

    def no_process(*args, **kwargs):
        raise AssertionError("a cell that can share the sweep's process started its own")

    monkeypatch.setattr(cells.subprocess, "Popen", no_process)  # how run_process starts a cell
    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(SWEEP)
    out = tmp_path / "out"
    assert main([str(spec_path), f"out_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert "sweep test_grid" in err and "4/4" in err  # the live line, with rate and ETA
    assert "matcher-ot__method-soft_argmax: done, pck@0.1 " in err  # one line per finished cell
    for cell in grid_runs(load_sweep(spec_path)):
        result = json.loads((out / run_name(cell) / "sweep_result.json").read_text())
        assert result["in_process"] is True
        assert "(in the sweep's process)" in (out / run_name(cell) / "run.log").read_text()
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
    # the sweep as it ran (sweep.yaml) re-runs it: here every cell is done
    assert main(["--config", str(out / "sweep.yaml")]) == 0
    assert {r["status"] for r in read_rows(out / "summary.csv")} == {"done (skipped)"}


@pytest.mark.slow
def test_an_isolated_cell_scores_as_an_in_process_one(tmp_path):
    spec_path = tmp_path / "one.yaml"
    spec_path.write_text(SWEEP.replace("matcher: [nn, ot]", "matcher: [ot]").replace(
        "[argmax, soft_argmax]", "[soft_argmax]"))
    assert main([str(spec_path), f"out_dir={tmp_path / 'shared'}"]) == 0
    assert main([str(spec_path), f"out_dir={tmp_path / 'own'}", "--isolate"]) == 0
    shared = read_rows(tmp_path / "shared" / "summary.csv")[0]
    own = read_rows(tmp_path / "own" / "summary.csv")[0]
    assert shared["pck@0.1"] == own["pck@0.1"] and shared["pck@0.05"] == own["pck@0.05"]
    name = shared["run"]
    assert json.loads((tmp_path / "own" / name / "sweep_result.json").read_text())["in_process"] is False
    assert "$ " + sys.executable in (tmp_path / "own" / name / "run.log").read_text()


@pytest.mark.slow
def test_search_runs_n_trials_and_resumes_its_study(tmp_path):
    pytest.importorskip("optuna", reason="sweep.py --search needs the search extra (optuna)")
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(SWEEP + "space:\n  matcher: [nn, ot]\n  matcher.transfer.method: [argmax, soft_argmax]\n")
    out = tmp_path / "out"
    assert main([str(spec_path), f"out_dir={out}", "--search", "3"]) == 0
    assert (out / "study.db").is_file()
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    rows = read_rows(out / "summary.csv")
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert all(0.0 <= float(r["pck@0.1"]) <= 100.0 for r in rows)
    # a re-started search continues the study: one more trial to reach 4
    assert main([str(spec_path), f"out_dir={out}", "--search", "4"]) == 0
    assert len(list(out.glob("trial-*"))) == 4 and len(read_rows(out / "summary.csv")) == 4
    assert main([str(spec_path), f"out_dir={out}", "--search", "4"]) == 0  # nothing left to run
    assert len(list(out.glob("trial-*"))) == 4


def test_search_objective_and_pruning_callback():
    pytest.importorskip("optuna", reason="sweep.py --search needs the search extra (optuna)")
    from types import SimpleNamespace

    from semcorr.cli.sweep_cells import RunFailed
    from semcorr.cli.sweep_search import PruneTrial, objective_value

    assert objective_value({"pck": {"0.05": 10.0, "0.1": 20.0}}, "pck@0.1") == 20.0
    assert objective_value({"val_best": 33.0}, "pck@0.1") == 33.0  # training without eval_after
    with pytest.raises(RunFailed, match="nan"):
        objective_value({"pck": {"0.1": float("nan")}}, "pck@0.1")  # a NaN is an error, not a 0
    with pytest.raises(RunFailed, match="no pck@0.2"):
        objective_value({"pck": {"0.1": 5.0}}, "pck@0.2")

    class Trial:
        def __init__(self, prune):
            self.reports, self.prune = [], prune

        def report(self, value, step):
            self.reports.append((value, step))

        def should_prune(self):
            return self.prune

    for prune in (False, True):
        trial = Trial(prune)
        callback = PruneTrial(trial)
        trainer = SimpleNamespace(sanity_checking=False, global_step=7, should_stop=False,
                                  checkpoint_callback=SimpleNamespace(monitor="val/pck@0.1"),
                                  callback_metrics={"val/pck@0.1": 41.5})
        callback.on_validation_end(trainer, None)
        assert trial.reports == [(41.5, 7)]
        assert trainer.should_stop is prune and callback.pruned_at == (7 if prune else None)


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
