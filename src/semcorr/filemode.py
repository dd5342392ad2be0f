"""The mode a new file gets from the user's umask, for files first created by ``tempfile.mkstemp``
(always 0600) and then renamed into place: ``metrics.json``, ``train_summary.json``, feature-cache
files. Collaborators on shared storage read them as they read any file the user writes."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it
    (``/proc/self/status``); elsewhere set and restored at once."""
    status = Path("/proc/self/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` would give a new file (0644 under umask 022)."""
    return 0o666 & ~current_umask()
