"""``--help`` answers fast (torch is imported only after parsing) and says what a user needs: every
group with its files, every top-level key with type and default, the packaged experiments and
sweeps, examples; one docs page lists every packaged experiment and sweep."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semcorr.cli.help import help_text, key_lines, topic_help
from semcorr.config import EXPERIMENT, RunConfig, available
from semcorr.registry import GROUPS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _run(script: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                          text=True, env=ENV, timeout=120)
    return proc, time.perf_counter() - t0


def _timed_help(script: str) -> tuple[int, float, float]:
    """(exit code, wall seconds, CPU seconds of the process) of ``script --help`` (a script of the
    repository, or ``semcorr.cli.<name>`` run as a module, as its console script does)."""
    target = ["-m", script] if script.startswith("semcorr.") else [str(ROOT / script)]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *target, "--help"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("script", ["eval.py", "train.py", "sweep.py", "semcorr.cli.match",
                                    "semcorr.cli.features", "semcorr.cli.compare"])
def test_help_answers_in_under_two_seconds(script):
    """Under 2 s of wall time on an idle machine. On a shared, loaded one (this project's test
    machines run at load averages of 4-12 on 2 cores) the wall time is stretched by the others'
    work, so the bound is scaled by the load per core; the CPU time the command itself takes is
    held to 2 s always (importing torch alone takes more)."""
    _timed_help(script)  # warm the file cache: a cold disk's first start is not the CLI's
    code, wall, cpu = _timed_help(script)
    assert code == 0
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    assert cpu < 2.0, f"{script} --help used {cpu:.2f} s of CPU"
    assert wall < 2.0 * max(1.0, load), f"{script} --help took {wall:.2f} s (load per core {load:.1f})"


@pytest.mark.parametrize("module", ["eval", "train", "match", "sweep", "features", "compare"])
def test_help_imports_neither_torch_nor_lightning(module):
    code = (f"import sys\nfrom semcorr.cli.{module} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'timm', 'wandb') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_help_lists_groups_keys_presets_and_examples():
    text = help_text("eval.py")
    for group in GROUPS:
        for name in available(group):
            assert name in text, f"{group} file {name} missing"
    for name in available(EXPERIMENT) + available("sweep"):
        assert name in text
    for line in key_lines(RunConfig):  # every top-level key with its type and default
        key, rest = line.split(":", 1)
        if key in GROUPS:
            continue
        assert f"{key}: {rest.split('=')[0].strip()} =" in text.replace("\n      ", " "), key
    for needle in ("ckpt=RUN", "out_dir=DIR", "--config FILE", "--verbose", "examples:",
                   "python eval.py --config runs/x/config.yaml", "experiment=NAME"):
        assert needle in text
    assert "metric.alphas: List[float] = [0.05, 0.1, 0.15]" in text
    assert "seed: int = 0" in text


def test_help_topics():
    metric = topic_help("metric")
    assert "metric.threshold_by: Optional[str] = null  # bbox | bbox_kp | image" in metric
    data = topic_help("data")
    assert "data.subset: str = per_category" in data and "data kind 'pf_willow'" in data
    assert topic_help("nonsense") is None


def test_help_topic_from_the_command_line(capsys):
    from semcorr.cli.eval import main

    with pytest.raises(SystemExit) as stop:
        main(["--help", "logger"])
    assert stop.value.code == 0
    assert "logger.wandb: Optional[bool] = null" in capsys.readouterr().out
    assert main(["--help", "nonsense"]) == 2
    assert "topics:" in capsys.readouterr().err


def test_sweep_and_match_help_are_plain_text():
    proc, _ = _run("sweep.py", "--help")
    assert proc.returncode == 0
    for name in available("sweep"):
        assert name in proc.stdout
    assert "``" not in proc.stdout and "::" not in proc.stdout  # no raw reST
    assert "--search N" in proc.stdout and "examples:" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli.match", "--help"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and "--points" in proc.stdout and "--config FILE" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli.features", "--help"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and "--format F" in proc.stdout and "--mirrored" in proc.stdout
    assert "backbone=precomputed" in proc.stdout and "top-level keys" in proc.stdout


def test_one_docs_page_lists_every_packaged_experiment_and_sweep():
    page = (ROOT / "docs" / "presets.md").read_text()
    for name in available(EXPERIMENT) + available("sweep"):
        assert f"`{name}`" in page, f"docs/presets.md does not describe {name}"
    gwot = (ROOT / "docs" / "gwot.md").read_text()
    assert "sweep=gwot_sensitivity" not in gwot  # not the syntax: python sweep.py gwot_sensitivity


def test_sweep_files_describe_themselves():
    from semcorr.cli.help import description

    for name in available("sweep"):
        assert description("sweep", name), f"sweep {name} has no description"
