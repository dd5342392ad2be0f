"""Progress bars with rate and ETA (tqdm): one per long loop of a run.

:class:`ConsoleProgress` replaces Lightning's bar (``trainer.enable_progress_bar=true``, the
default): training counts optimiser steps (with the last loss), validation and evaluation count
pairs (the backbone's feature extraction happens inside these loops, batch by batch, so their
rate is the pipeline's). Bars go to stderr, on global rank 0 only; a validation bar disappears
when it is done, the others stay as one finished line.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Dict, Optional

from lightning.pytorch.callbacks.progress import ProgressBar
from tqdm import tqdm  # the text bar: also in notebooks without ipywidgets

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def make_bar(total: Optional[float], desc: str, unit: str, leave: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr with rate and ETA (``unit``/s, or s/``unit`` below one per second).
    It follows the terminal's size; a terminal that reports none (0 x 0: a bare pty, e.g.
    ``script`` or some CI runners; tqdm then hides every bar) gets :data:`UNSIZED_COLUMNS` x
    :data:`UNSIZED_ROWS`."""
    finite = total is not None and math.isfinite(total)
    sized = terminal_columns(sys.stderr) != 0
    return tqdm(total=int(total) if finite else None, desc=desc, unit=unit, leave=leave,
                initial=initial, file=sys.stderr, dynamic_ncols=sized,
                ncols=None if sized else UNSIZED_COLUMNS, nrows=None if sized else UNSIZED_ROWS,
                mininterval=0.5,
                bar_format=BAR_FORMAT if finite else None, smoothing=0.1)


UNSIZED_COLUMNS, UNSIZED_ROWS = 100, 24


def terminal_columns(stream: Any) -> Optional[int]:
    """The width of the terminal ``stream`` writes to (0 when it reports none), None when it is
    not a terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


def loader_pairs(loader: Any, batches: float) -> Optional[float]:
    """Pairs one loop over ``loader`` serves (its sampler's share, at most ``batches`` batches)."""
    if loader is None:
        return None
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
        if loader is None:
            return None
    try:
        n = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
    except TypeError:
        return None
    size = getattr(loader, "batch_size", None) or 1
    return min(n, batches * size) if math.isfinite(batches) else n


def _first(counts: Any) -> float:
    """The batch count of the first dataloader (``trainer.num_*_batches`` is a list)."""
    if isinstance(counts, (list, tuple)):
        return float(counts[0]) if counts else float("inf")
    return float(counts)


def batch_pairs(batch: Any) -> int:
    """Pairs in a batch of the sample schema (``src_img`` (B, 3, H, W))."""
    try:
        return int(batch["src_img"].shape[0])
    except (TypeError, KeyError, AttributeError, IndexError):
        return 1


class ConsoleProgress(ProgressBar):
    """Training steps, validation pairs and test pairs, each a tqdm bar with rate and ETA.

    Args:
        description: the evaluation bar's label (e.g. ``evaluating pf_willow (test)``).
    """

    def __init__(self, description: str = "evaluating") -> None:
        super().__init__()
        self.description = description
        self.enabled = True
        self.bars: Dict[str, tqdm] = {}

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _open(self, key: str, total: Optional[float], desc: str, unit: str, leave: bool,
              initial: int = 0) -> None:
        self._close(key)
        if self.enabled:
            self.bars[key] = make_bar(total, desc, unit, leave, initial)

    def _close(self, key: str) -> None:
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()

    # training: optimiser steps
    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None and trainer.max_epochs and math.isfinite(self.total_train_batches):
            total = trainer.max_epochs * math.ceil(self.total_train_batches / trainer.accumulate_grad_batches)
        self._open("train", total, "training", "step", leave=True, initial=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.bars.get("train")
        if bar is None:
            return
        if trainer.global_step > bar.n:
            bar.update(trainer.global_step - bar.n)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            bar.set_postfix_str(f"loss {float(loss.detach()):.4g}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close("train")

    # validation and test: pairs
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        total = loader_pairs(trainer.val_dataloaders, _first(trainer.num_val_batches))
        self._open("val", total, "validating", "pair", leave=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if "val" in self.bars:
            self.bars["val"].update(batch_pairs(batch))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._close("val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        total = loader_pairs(trainer.test_dataloaders, _first(trainer.num_test_batches))
        self._open("test", total, self.description, "pair", leave=True)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if "test" in self.bars:
            self.bars["test"].update(batch_pairs(batch))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._close("test")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for key in list(self.bars):
            self._close(key)
