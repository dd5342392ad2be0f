"""The training sampler: a seeded order per epoch that can start part-way into an epoch.

The training order of epoch e is ``randperm`` seeded by (seed, e), so ``--resume`` replays exactly
the batches an uninterrupted run would have seen (:class:`semcorr.training.ResumeDataOrder` tells
the sampler where the restored trainer stands).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` per epoch, seeded by ``(seed, epoch)``.

    ``position``: optional callable returning ``(epoch, samples already consumed this epoch)``,
    read when iteration starts (set by :class:`ResumeDataOrder`); without it, the epoch is the
    last one given to :meth:`set_epoch` and iteration starts at the beginning.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.position: Optional[Callable[[], Tuple[int, int]]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, skip = (self.epoch, 0) if self.position is None else self.position()
        return iter(self.order(epoch)[skip:])

    def __len__(self) -> int:
        return self.n
