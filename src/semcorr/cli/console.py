"""A quiet console: what the libraries under semcorr print that says nothing about the run.

By default a run's console holds its progress bars (:mod:`semcorr.progress`), its results (the
PCK table) and where every output went. :func:`quiet_console` filters, for the duration of a
command (``--verbose`` turns it off):

- Lightning's start-up lines (``GPU available: ...``, ``TPU available: ...``, the litlogger
  tip, the model summary): everything the ``lightning`` loggers say below WARNING;
- warnings that are known not to apply (:data:`NOISE`): the ``LeafSpec`` deprecation inside
  Lightning, ``Found N module(s) in eval mode`` (the frozen blocks of a partly trained DINOv2
  are in eval mode on purpose), the mid-epoch resume "unreliable results" warning (the
  training sampler makes a mid-epoch resume exact: :class:`semcorr.training.ResumeDataOrder`),
  and the "does not have many workers" hint for the in-process data loading every test uses.

W&B's own console output is silenced where the logger is made
(:func:`semcorr.cli.loggers.make_loggers`). This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, List, Tuple

# (message regex, why it does not apply) of the warnings filtered by default
NOISE: Tuple[Tuple[str, str], ...] = (
    (r".*LeafSpec.*", "a deprecation inside Lightning's pytree helper, not in semcorr"),
    (r"Found \d+ module\(s\) in eval mode", "frozen DINOv2 blocks are in eval mode on purpose"),
    (r".*can cause unreliable results", "ResumeDataOrder makes a mid-epoch resume exact"),
    (r".*The anonymous setting has no effect", "a W&B deprecation triggered by Lightning"),
)
_QUIET: ContextVar[bool] = ContextVar("semcorr_quiet_console", default=False)
# the module loggers Lightning's rank_zero_info and model summary write through (their levels are
# raised while quiet: Lightning adds its own console handler when it is imported, after start-up)
INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                "lightning_utilities.core.rank_zero", "lightning.pytorch.callbacks.model_summary",
                "lightning.pytorch.utilities.model_summary", "lightning.pytorch.accelerators.cuda",
                "lightning.fabric.accelerators.cuda")
QUIET_LOGGERS = ("lightning", "lightning_fabric", "pytorch_lightning", "lightning_utilities")


class LibraryNoise(logging.Filter):
    """Drops records of the :data:`QUIET_LOGGERS` below WARNING and any record whose message is
    one of :data:`NOISE`."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p, _ in NOISE]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in QUIET_LOGGERS and record.levelno < logging.WARNING:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a malformed record is not ours to judge)
            return True
        return not any(p.match(message) for p in self.patterns)


def console_is_quiet() -> bool:
    """Whether the code runs inside :func:`quiet_console` without ``--verbose`` (W&B is then
    made silent too)."""
    return _QUIET.get()


@contextmanager
def quiet_console(verbose: bool = False) -> Iterator[None]:
    """Filter library noise (see the module docstring) inside the ``with`` block; nothing with
    ``verbose``. Warnings filters are restored on exit; the logging filter is removed."""
    if verbose:
        yield
        return
    noise = LibraryNoise()
    attached: List[logging.Handler | logging.Logger] = []
    for name in ("", *QUIET_LOGGERS, "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.addFilter(noise)  # records logged on these loggers directly
        attached.append(logger)
        for handler in logger.handlers:
            handler.addFilter(noise)  # records propagated from child loggers
            attached.append(handler)
    levels = {name: logging.getLogger(name).level for name in INFO_LOGGERS}
    for name in INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    token = _QUIET.set(True)
    with warnings.catch_warnings():
        for pattern, _ in NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            _QUIET.reset(token)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            for item in attached:
                item.removeFilter(noise)
