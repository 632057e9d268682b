"""MNIST as a LightningDataModule.

The IDX files are decoded once into uint8 tensors; batches are converted to floats in [0, 1]
(and normalised, unless ``normalize=False``) after they reach the device, so the data loader does
no per-sample image work. ``val_size=0`` trains on all 60,000 training images in their file order
and has no validation split, as the course notebooks do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import MNIST

from attention_lab.data.augment import random_affine
from attention_lab.data.batching import check_batch_sizes
from attention_lab.data.order import ResumableOrder, ShuffledBatches, loader_generator, processes
from attention_lab.errors import ConfigError, DataNotFoundError

SHUFFLES = ("seeded", "torch")
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def ensure_mnist(data_dir: str | Path) -> None:
    """Use the MNIST files under ``data_dir/MNIST/raw``, downloading them when missing."""
    try:
        for train in (True, False):
            MNIST(str(data_dir), train=train, download=True)
    except (RuntimeError, OSError) as err:
        raise DataNotFoundError(
            f"MNIST is not in {Path(data_dir).resolve() / 'MNIST' / 'raw'} and could not be "
            f"downloaded ({_first_line(err)}). Put the four IDX files there, or point "
            f"data.data_dir=... (or the DATA_DIR environment variable) at a folder that has "
            f"MNIST/raw."
        ) from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def synthetic_images(
    batch_size: int,
    *,
    channels: int = 1,
    size: int = 28,
    num_classes: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random uint8 images (B, C, size, size) and labels (B,), as the MNIST loaders batch them."""
    shape = (batch_size, channels, size, size)
    images = torch.randint(256, shape, dtype=torch.uint8, generator=generator)
    return images, torch.randint(num_classes, (batch_size,), generator=generator)


class MNISTDataModule(ResumableOrder):
    """MNIST with a seeded train/validation split (55,000/5,000 by default) and the test set.

    ``val_size=0``: no validation split; the training set is all training images, in the order
    of the file (``torchvision``'s order, which the course notebooks shuffle from).
    ``normalize``: standardise pixels with the MNIST mean and std; False gives ``ToTensor``'s
    [0, 1] values, as the course notebooks feed them.
    ``augment`` holds the keyword arguments of ``random_affine`` (degrees, translate, scale),
    applied to training batches only; None for none.
    ``shuffle``: "seeded", each epoch's batches in an order of the seed and the epoch, so that a
    run resumes mid-epoch on the batches it had left (``data.order``); "torch", PyTorch's
    ``DataLoader(shuffle=True)``, which draws each epoch's order from the global generator, as
    the course notebooks' loop does (a run then resumes exactly at epoch boundaries only).
    """

    def __init__(
        self,
        *,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_size: int = 5000,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = True,
        augment: dict | None = None,
        shuffle: str = "seeded",
    ) -> None:
        super().__init__()
        check_batch_sizes(batch_size, eval_batch_size)
        if val_size < 0:
            raise ConfigError(
                f"data.val_size={val_size} must be 0 (no validation split) or positive"
            )
        if shuffle not in SHUFFLES:
            raise ConfigError(f"data.shuffle={shuffle!r} must be one of {', '.join(SHUFFLES)}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.seed = seed
        self.normalize = normalize
        self.augment = dict(augment) if augment else None
        self.shuffle = shuffle
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def prepare_data(self) -> None:
        ensure_mnist(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = MNIST(self.data_dir, train=True, download=False)
        test = MNIST(self.data_dir, train=False, download=False)
        n_train = len(train.targets)
        if self.val_size >= n_train:
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images "
                f"({n_train} in {self.data_dir}); choose data.val_size < {n_train}"
            )
        images = train.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        if self.val_size == 0:
            self.train_set = TensorDataset(images, train.targets)
        else:
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            self.train_set = TensorDataset(images[train_idx], train.targets[train_idx])
            self.val_set = TensorDataset(images[val_idx], train.targets[val_idx])
        self.test_set = TensorDataset(test.data.unsqueeze(1), test.targets)

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        images = images.float() / 255.0  # (B, 1, 28, 28)
        if self.augment and self.trainer is not None and self.trainer.training:
            images = random_affine(images, **self.augment)
        if not self.normalize:
            return images, labels
        return (images - MNIST_MEAN) / MNIST_STD, labels

    def synthetic_batch(
        self, length: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """A training batch made without the data: ``batch_size`` random images and labels in
        the loaders' format (``on_after_batch_transfer`` makes them model input). What
        ``bench train`` times steps on; ``length`` is not used (the model cuts images into
        tokens)."""
        return synthetic_images(self.batch_size, generator=generator)

    def _loader(self, dataset: TensorDataset, **batching: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # "torch": the plain loaders of the notebooks, whose draws share the global generator
            generator=loader_generator(self.seed) if self.shuffle == "seeded" else None,
            **batching,
        )

    def train_dataloader(self) -> DataLoader:
        if self.shuffle == "torch":
            if processes()[0] > 1:
                raise ConfigError(
                    "data.shuffle=torch gives every process all the training batches; "
                    "use data.shuffle=seeded in a distributed run"
                )
            return self._loader(self.train_set, batch_size=self.batch_size, shuffle=True)
        order = ShuffledBatches(len(self.train_set), batch_size=self.batch_size, seed=self.seed)
        return self._loader(self.train_set, batch_sampler=self.training_order(order))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:  # val_size=0: Lightning runs no validation for an empty list
            return []
        return self._loader(self.val_set, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, batch_size=self.eval_batch_size)
