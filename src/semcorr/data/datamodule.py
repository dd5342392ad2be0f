"""One LightningDataModule for every dataset."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import lightning as L
from torch.utils.data import DataLoader

from semcorr.registry import build
from semcorr.data.base import PairDataset
from semcorr.data.samplers import EpochShuffleSampler, ShardSampler
from semcorr.errors import ConfigError
from semcorr.data.schema import collate

SPLITS = ("train", "val", "test")


class CorrespondenceDataModule(L.LightningDataModule):
    """Serves the splits of a pair dataset; under N processes each rank gets its own shard
    (:mod:`semcorr.data.samplers`: training padded to equal lengths, evaluation exact), so the
    Trainer runs with ``use_distributed_sampler=False``.

    Args:
        make_dataset: ``make_dataset(split) -> PairDataset`` (see :func:`semcorr.builder.build_datamodule`).
        batch_size, num_workers: DataLoader settings.
        train_transform: optional paired augmentation applied to the training split only.
        seed: seeds the training shuffle, so a resumed run sees the same order.
    """

    def __init__(
        self,
        make_dataset: Callable[[str], PairDataset],
        batch_size: int = 8,
        num_workers: int = 0,
        train_transform: Optional[Callable] = None,
        val_split: str = "val",
        test_split: str = "test",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.make_dataset = make_dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_transform = train_transform
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        self.datasets: Dict[str, PairDataset] = {}
        self.train_sampler = None  # set by train_dataloader()
        # optional () -> (epoch, samples consumed): where a resumed run stands (semcorr.data.samplers)
        self.train_position: Optional[Callable[[], tuple]] = None

    def dataset(self, split: str) -> PairDataset:
        if split not in self.datasets:
            ds = self.make_dataset(split)
            if split == "train" and self.train_transform is not None:
                ds.transform = self.train_transform
            if split == "train" and split not in (self.val_split, self.test_split):
                ds.image_digests = False  # training reads no feature cache: no hashing
            self.datasets[split] = ds
        return self.datasets[split]

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in ("fit", None):
            self.dataset("train")
            self.dataset(self.val_split)
        if stage in ("validate",):
            self.dataset(self.val_split)
        if stage in ("test", None):
            self.dataset(self.test_split)

    def rank_and_world(self) -> tuple[int, int]:
        """(global rank, number of processes) of the attached Trainer; (0, 1) without one."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        rank, world = self.rank_and_world()
        sampler = None
        if shuffle:  # seeded per epoch and resumable mid-epoch (semcorr.data.samplers)
            sampler = self.train_sampler = EpochShuffleSampler(len(dataset), self.seed, rank, world)
            sampler.position = self.train_position
        elif world > 1:
            if len(dataset) < world:
                raise ConfigError(f"the {split} split has {len(dataset)} pairs: too few for "
                                  f"{world} processes (every process needs at least one)")
            sampler = ShardSampler(len(dataset), rank, world)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, shuffle=False)


def dataset_from_config(data_cfg, split: str, divisor: int) -> PairDataset:
    """Build the dataset that the ``data`` config section describes, for one split."""
    return build("data", data_cfg, split=split, divisor=divisor)
