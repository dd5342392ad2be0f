"""Atomic file writes: a file appears under its final name complete, or not at all.

Every result semcorr writes (``metrics.json``, ``predictions.jsonl``, ``train_summary.json``,
``config.yaml``, figures, sweep summaries, feature-cache entries, checkpoints) goes through
:func:`atomic_open`:

1. the content is written to a temporary file *beside* the target (same folder, so the same
   filesystem: the rename below never becomes a copy), named ``.<name>.<random>.tmp``;
2. the file is flushed and ``fsync``-ed;
3. it is renamed over the target (``os.replace``, atomic on POSIX), and the folder is ``fsync``-ed
   so the rename itself survives a power loss.

A full disk, an exception or a ``kill -9`` at any point before the rename leaves the previous
file untouched (at worst a ``.tmp`` file beside it; a failure inside this process removes it).

The new file gets the mode an ordinary ``open(path, "w")`` would give it: ``0o666`` minus the
process's umask (``tempfile.mkstemp`` alone creates ``0o600``, which hides results from the
user's group).

Example::

    with atomic_open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional

TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``);
    elsewhere by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """``fsync`` a folder (makes a rename in it durable); a no-op where folders cannot be opened."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_pattern(path: str | Path) -> str:
    """The glob pattern of the temporary files :func:`atomic_open` makes for ``path``."""
    return f".{Path(path).name}.*{TMP_SUFFIX}"


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: Optional[str] = None,
                newline: Optional[str] = None) -> Iterator[IO[Any]]:
    """Open a file for writing whose content replaces ``path`` only once the ``with`` block ends
    without an exception (steps in the module docstring).

    Args:
        path: the target; its folder must exist.
        mode: ``"w"`` (text, ``encoding`` default UTF-8) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        text = mode == "w"
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None,
                       newline=newline if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        failed = write_error(err)
        if failed is None:
            raise
        # name the target: a full disk is "No space left on device: '<path>'", whatever the writer
        raise OSError(failed.errno, failed.strerror, str(path)) from err
    fsync_dir(path.parent)


def write_error(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` behind a failed write: ``err`` itself, or the one ``torch.save`` wraps (it
    reports a full disk as ``RuntimeError: ... unexpected pos``, with the ``OSError`` as its
    context); None for anything else (an interrupt, a bug)."""
    if isinstance(err, OSError) and err.errno is not None:
        return err
    inner = err.__cause__ or err.__context__
    if isinstance(err, RuntimeError) and isinstance(inner, OSError) and inner.errno is not None:
        return inner
    return None


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def non_finite_paths(data: Any, prefix: str = "") -> List[str]:
    """The keys (``a.b[2].c``) of every NaN / Infinity float in nested dicts and lists."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix or "(top level)"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in non_finite_paths(v, f"{prefix}[{i}]")]
    return []


def finite_or_null(data: Any) -> Any:
    """``data`` with every NaN / Infinity float replaced by None (JSON ``null``)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    return data


def write_json(path: str | Path, data: Any, non_finite: str = "error") -> Path:
    """Write strict JSON atomically: never ``NaN`` or ``Infinity`` (not JSON; most readers
    reject them, Python's accepts them silently).

    Args:
        non_finite: ``"error"``: a non-finite number raises ``ValueError`` naming its key and
            nothing is written; ``"null"``: each becomes ``null`` and the top-level object gets
            ``"non_finite": [keys]`` saying which (the reason a value is missing).
    """
    if non_finite not in ("error", "null"):
        raise ValueError(f"non_finite must be 'error' or 'null', got {non_finite!r}")
    bad = non_finite_paths(data)
    if bad:
        if non_finite == "error" or not isinstance(data, dict):
            raise ValueError(f"refusing to write {path}: non-finite value(s) at {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        data = {**finite_or_null(data), "non_finite": bad}
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
    return Path(path)
