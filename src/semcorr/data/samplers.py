"""Samplers: a seeded training order per epoch that can start part-way into an epoch, and the
evaluation shards of a distributed run. Both shard the dataset themselves (the Trainer runs with
``use_distributed_sampler=False``), so one process and N processes see the same pairs.

The training order of epoch e is ``randperm`` seeded by (seed, e), so ``--resume`` replays exactly
the batches an uninterrupted run would have seen (:class:`semcorr.training.ResumeDataOrder` tells
the sampler where the restored trainer stands). Under N processes rank r takes every N-th element
of that order, starting at r (the order is padded to a multiple of N by repeating its head, as
``torch.utils.data.DistributedSampler`` does: every rank must run the same number of steps).

Evaluation is never padded: :class:`ShardSampler` gives rank r the indices r, r + N, ..., so every
pair is scored exactly once (ranks may differ by one pair; nothing in evaluation waits per step).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import Sampler


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` per epoch, seeded by ``(seed, epoch)``; this rank's
    share of it (every ``world_size``-th element from ``rank``, padded as described above).

    ``position``: optional callable returning ``(epoch, samples this rank already consumed this
    epoch)``, read when iteration starts (set by :class:`ResumeDataOrder`); without it, the epoch is
    the last one given to :meth:`set_epoch` and iteration starts at the beginning.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        _check_rank(rank, world_size)
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.world_size = rank, world_size
        self.position: Optional[Callable[[], Tuple[int, int]]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        full = torch.randperm(self.n, generator=gen).tolist()
        if self.world_size == 1:
            return full
        total = len(self) * self.world_size
        padded = (full * math.ceil(total / max(len(full), 1)))[:total]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, skip = (self.epoch, 0) if self.position is None else self.position()
        return iter(self.order(epoch)[skip:])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s evaluation indices: ``rank, rank + world_size, ...`` below ``n``, in order,
    without padding (the shards of all ranks partition ``range(n)``)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        _check_rank(rank, world_size)
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
