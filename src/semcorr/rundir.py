"""Run folders are never shared by accident.

- :func:`unique_run_name`: the default ``out_dir`` name, ``runs/<date>-<time>-<random>``: unique
  within a second and across processes (and hosts);
- :class:`RunLock`: ``<out_dir>/.semcorr.lock``, an advisory ``flock`` held for the whole run. The
  kernel drops it when the process ends, however it ends (``kill -9`` included), so a lock is
  never stale; a second run into a folder in use stops with one line naming the holder;
- :func:`check_run_folder` (before anything is built, creating nothing) and
  :func:`claim_run_folder` (once the run is built: create, lock, clear): a new run into a folder
  that holds another run's results (:data:`RESULTS`) stops with one line unless ``--overwrite``
  is given, which removes those results first. ``--resume`` continues in its own folder, results
  and all.

Only global rank 0 claims the folder (the other processes of a distributed run write nothing).
"""

from __future__ import annotations

import datetime
import errno
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import IO, List, Optional

from semcorr.errors import ConfigError

LOCK_NAME = ".semcorr.lock"
# what a semcorr run leaves in its out_dir: files, then folders (removed by --overwrite)
RESULT_FILES = ("config.yaml", "metrics.json", "predictions.jsonl", "train_summary.json",
                "matches.json", "keypoints.png", "pck_curve.png", "dense_warp.png", "matches.png",
                "sweep_result.json", "pck_curve_per_category.png",
                "compare.md", "compare.json", "compare.png", "pck_curves_per_category.png", "pca.png")
RESULT_FOLDERS = ("checkpoints", "val_matches", "csv")
RESULTS = RESULT_FILES + RESULT_FOLDERS

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]


def unique_run_name(now: Optional[datetime.datetime] = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<6 hex>``: sorts by start time; the random part (24 bits from the OS)
    keeps runs started in the same second apart, in any process on any host (and the run lock
    catches the one-in-sixteen-million collision)."""
    now = now or datetime.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def previous_results(folder: str | Path) -> List[str]:
    """The names of :data:`RESULTS` present in ``folder`` (a folder counts when not empty)."""
    folder = Path(folder)
    found = []
    for name in RESULTS:
        path = folder / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


class RunLock:
    """An exclusive, advisory lock on a run folder (``flock`` on ``<folder>/.semcorr.lock``), held
    until :meth:`release` or the end of the process. The file records who holds it (pid, host,
    start time, command), for the message of a run that finds it taken."""

    def __init__(self, folder: str | Path, handle: Optional[IO[str]]) -> None:
        self.folder = Path(folder)
        self._handle = handle

    @classmethod
    def acquire(cls, folder: str | Path) -> "RunLock":
        """Lock ``folder`` (which must exist); :class:`ConfigError` naming the holder when another
        run holds it."""
        folder = Path(folder)
        if fcntl is None:
            return cls(folder, None)
        handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.close()
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise ConfigError(in_use_message(folder)) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}: {' '.join(sys.argv)}\n")
        handle.flush()
        return cls(folder, handle)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def in_use(folder: str | Path) -> bool:
    """Whether another process holds ``folder``'s run lock (tested without taking it)."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def in_use_message(folder: Path) -> str:
    try:
        holder = (folder / LOCK_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        holder = ""
    return (f"out_dir {folder} is in use by another run ({holder or 'holder unknown'}); "
            "choose another out_dir or wait for that run to end")


def results_message(folder: Path, found: List[str]) -> str:
    return (f"out_dir {folder} holds another run's results ({', '.join(found)}); choose another "
            "out_dir, or pass --overwrite to replace them (or --resume to continue a training run)")


def check_run_folder(folder: str | Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, creating nothing, a folder another run is using, or (a new run without
    ``overwrite``) one holding another run's results. Run before anything is built."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    if in_use(folder):
        raise ConfigError(in_use_message(folder))
    found = previous_results(folder)
    if found and not (overwrite or resume):
        raise ConfigError(results_message(folder, found))


def claim_run_folder(folder: str | Path, overwrite: bool = False, resume: bool = False) -> RunLock:
    """Lock an existing ``folder`` for this run, checking again what :func:`check_run_folder`
    checked (another run may have started meanwhile); with ``overwrite`` (and not ``resume``),
    remove the previous run's :data:`RESULTS`. Release the lock when the run ends."""
    folder = Path(folder)
    lock = RunLock.acquire(folder)
    try:
        found = previous_results(folder)
        if found and not resume:
            if not overwrite:
                raise ConfigError(results_message(folder, found))
            for name in found:
                path = folder / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
