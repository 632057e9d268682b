"""What the data modules of sentences share: batches of sentences of similar length, and the
loaders of their three splits."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from attention_lab.errors import ConfigError


def check_batch_sizes(batch_size: int, eval_batch_size: int) -> None:
    """One ``ConfigError`` naming both settings unless both are positive."""
    if batch_size <= 0 or eval_batch_size <= 0:
        raise ConfigError(
            f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} "
            f"must be positive"
        )


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of sentences of similar length, so little of a batch is padding.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort each
    pool by length, cut it into batches and shuffle the batches. Seeded by ``seed`` and the
    epoch (Lightning calls ``set_epoch``), so runs repeat.
    """

    def __init__(
        self, lengths: Sequence[int], *, batch_size: int, seed: int = 0, pool_batches: int = 50
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool_size = batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently for each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = sorted(order[start : start + self.pool_size], key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        full_pools, rest = divmod(len(self.lengths), self.pool_size)
        per_pool = -(-self.pool_size // self.batch_size)
        return full_pools * per_pool + -(-rest // self.batch_size)


class SplitsDataModule(L.LightningDataModule):
    """A data module whose ``datasets`` "train", "val" and "test" each have ``lengths``:
    training batches of similar lengths (``BucketBatchSampler``), evaluation batches in the data's
    order. A subclass fills ``datasets`` in ``setup`` and says how samples are batched
    (``collate_fn``)."""

    def __init__(
        self,
        *,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_batch_sizes(batch_size, eval_batch_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    @property
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """What the loaders batch samples with."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = BucketBatchSampler(dataset.lengths, batch_size=self.batch_size, seed=self.seed)
        return self._loader(dataset, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], batch_size=self.eval_batch_size)

    def _loader(self, dataset: Dataset, **batching: Any) -> DataLoader:
        return DataLoader(
            dataset,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **batching,
        )
