"""What the data modules of sentences share: batches of sentences of similar length, and the
loaders of their three splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from attention_lab.data.order import BucketBatchSampler, ResumableOrder, loader_generator
from attention_lab.errors import ConfigError


def check_batch_sizes(batch_size: int, eval_batch_size: int) -> None:
    """One ``ConfigError`` naming both settings unless both are positive."""
    if batch_size <= 0 or eval_batch_size <= 0:
        raise ConfigError(
            f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} "
            f"must be positive"
        )


class SplitsDataModule(ResumableOrder):
    """A data module whose ``datasets`` "train", "val" and "test" each have ``lengths``:
    training batches of similar lengths (``order.BucketBatchSampler``, resumable mid-epoch),
    evaluation batches in the data's order. A subclass fills ``datasets`` in ``setup`` and says
    how samples are batched (``collate_fn``)."""

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
        return self._loader(dataset, batch_sampler=self.training_order(sampler))

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
            generator=loader_generator(self.seed),
            **batching,
        )
