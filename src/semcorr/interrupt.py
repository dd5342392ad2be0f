"""Runs stopped by a signal end with an exit code that says so: ``128 + signal``.

A scheduler (SLURM's time limit, Kubernetes, ``kill``) sends SIGTERM; a user types Ctrl-C
(SIGINT). Either way the run did not finish, and its exit code must not say it did:

============  =========  ==========================================================================
signal        exit code  where it arrives
============  =========  ==========================================================================
SIGINT        130        anywhere: Python raises ``KeyboardInterrupt``; inside ``trainer.fit`` /
                         ``trainer.test`` Lightning turns it into ``sys.exit(1)`` after shutting down
SIGTERM       143        inside a Lightning loop: Lightning notes it and raises ``SIGTERMException``
                         (a ``SystemExit`` with code None, i.e. exit 0) at the next batch boundary;
                         elsewhere: :func:`sigterm_raises` raises :class:`RunInterrupted`
============  =========  ==========================================================================

:func:`interrupting_signal` recognises all of these; :func:`semcorr.cli.common.run_main` maps them
to one line on stderr and the exit code, ``train.py`` records ``"status": "interrupted"`` and
``sweep.py`` never marks such a run done.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator, Optional


class RunInterrupted(Exception):
    """A run stopped by ``signum``; ``detail`` says what was kept (e.g. the last checkpoint)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = int(signum)
        self.detail = detail
        super().__init__(f"interrupted by {signal_name(signum)}" + (f"; {detail}" if detail else ""))

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: ``128 + signum`` (130, 143)."""
    return 128 + int(signum)


def interrupting_signal(err: BaseException) -> Optional[int]:
    """The signal that ended a run, judged from the exception it ended with; None when ``err``
    is not an interruption."""
    if isinstance(err, RunInterrupted):
        return err.signum
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, SIGTERMException):
        return signal.SIGTERM
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    # Lightning's answer to Ctrl-C inside a loop: sys.exit(1) while handling the KeyboardInterrupt
    if isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`RunInterrupted` (Python's default would end the
    process at once, without a summary or a message), except while another handler is in charge:
    Lightning installs its own during ``fit`` / ``test`` (calling this one too), and stops at the
    next batch boundary itself."""

    def handler(signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) is handler:  # nobody else is handling it
            raise RunInterrupted(signum)

    try:
        before = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
