"""Helpers shared by the benchmark scripts of this folder (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import os


def rss_mb() -> float:
    """Resident set size of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that timers measure it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
