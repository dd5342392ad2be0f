"""Paired comparison of finished evaluation runs:
``semcorr-compare RUN_A RUN_B [RUN_C ...] [out_dir=DIR] [key=value ...] [--allow-protocol-mismatch]``.

Prints, for every run after the first, its difference from RUN_A per category and overall with a
paired-bootstrap 95 % interval and a paired permutation p-value (and the left/right subsets when
both runs stored them), and writes ``compare.md``, ``compare.json``, ``compare.png`` and
``pck_curves_per_category.png`` into ``out_dir`` (default ``runs/compare-<date>-<time>-<random>``,
unique per call; a folder holding another run's results needs ``--overwrite``, as for
``semcorr-eval``: :mod:`semcorr.rundir`). Logic: :mod:`semcorr.compare`.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Optional, Sequence

from pathlib import Path

from semcorr.cli.common import run_main
from semcorr.errors import ConfigError
from semcorr.rundir import check_run_folder, claim_run_folder, unique_run_name

USAGE = """usage: semcorr-compare RUN_A RUN_B [RUN_C ...] [out_dir=DIR] [bootstrap=N] [permutations=N]
                       [seed=S] [curve_max_alpha=A] [--allow-protocol-mismatch] [--overwrite]
                       [--help]

RUN_*: evaluation run folders (metrics.json + predictions.jsonl). Every run after the first is
compared with RUN_A on the same pairs (aligned by pair id): difference, paired-bootstrap 95 %
interval (bootstrap=2000 resamples, stratified by category) and paired permutation p-value
(permutations=10000 random swaps). Runs of different datasets, splits, pair sets or protocols
are refused; --allow-protocol-mismatch scores each run under its own protocol instead.
out_dir: default runs/compare-<date>-<time>-<random>; a folder with another run's results is
refused unless --overwrite.
"""

_INTS = ("bootstrap", "permutations", "seed")


def parse(argv: Sequence[str]):
    """(run folders, out_dir or None, overwrite, :class:`CompareSettings`) from the command line."""
    if any(token in ("-h", "--help") for token in argv):  # before anything heavy is imported
        sys.stdout.write(USAGE)
        raise SystemExit(0)
    from semcorr.compare import CompareSettings  # numpy, torch: once the arguments are parsed

    runs, out_dir, values = [], None, {}
    allow = overwrite = False
    known = {f.name for f in fields(CompareSettings)} - {"allow_protocol_mismatch"}
    for token in argv:
        if token == "--allow-protocol-mismatch":
            allow = True
        elif token == "--overwrite":
            overwrite = True
        elif token.startswith("--"):
            raise ConfigError(f"unknown flag {token}; valid: --allow-protocol-mismatch, --overwrite, --help")
        elif "=" in token:
            key, value = token.split("=", 1)
            if key == "out_dir":
                out_dir = value
            elif key in known:
                try:
                    values[key] = int(value) if key in _INTS else float(value)
                except ValueError:
                    raise ConfigError(f"{key} must be a number, got {value!r}") from None
            else:
                raise ConfigError(f"unknown key {key!r}; valid: out_dir, {', '.join(sorted(known))}")
        else:
            runs.append(token)
    if len(runs) < 2:
        raise ConfigError("semcorr-compare needs at least two run folders (RUN_A RUN_B ...)")
    return runs, out_dir, overwrite, CompareSettings(**values, allow_protocol_mismatch=allow)


def compare(argv: Sequence[str]) -> int:
    runs, out_dir, overwrite, settings = parse(argv)
    from semcorr.compare import compare_runs, format_comparison, write_comparison

    out_dir = Path(out_dir or f"runs/compare-{unique_run_name()}").expanduser()
    check_run_folder(out_dir, overwrite)  # before the work, creating nothing
    result = compare_runs(runs, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = claim_run_folder(out_dir, overwrite)  # --overwrite: an earlier comparison's files go
    try:
        written = write_comparison(result, out_dir)
    finally:
        lock.release()
    sys.stdout.write(format_comparison(result))
    sys.stdout.write(f"\n{result['seconds']:.1f} s; wrote " + ", ".join(str(p) for p in written.values()) + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(compare, argv, "semcorr-compare")


if __name__ == "__main__":
    raise SystemExit(main())
