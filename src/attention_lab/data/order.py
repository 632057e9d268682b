"""The order of training batches, a function of the seed and the epoch only, so that a run
stopped in the middle of an epoch resumes on the very batches it had not trained on.

Lightning restores a checkpoint's weights, optimiser and loop counters, and the run's random
states come back with ``RNGStateCheckpoint``; what it cannot restore is a data loader's place in
its epoch. With PyTorch's ``shuffle=True`` the order of an epoch is drawn from the global
generator when the epoch's iterator is made, so a resumed epoch trains on a fresh shuffle: some
samples twice, others not at all, and every later epoch's order moves too. Here each epoch's
batches come from a generator seeded by ``(seed, epoch)``, and the data module keeps in its
checkpoint state how far into which epoch training got (``ResumableOrder``); resumed, the first
epoch's iterator starts at the next batch. A stopped and resumed run then trains on exactly the
batches of an unbroken one, in the same order (``tests/test_reliability.py``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import Sampler

# Lightning's warning on a mid-epoch resume, which it gives unless the loader itself is stateful.
MID_EPOCH_RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


class EpochPermutation(Sampler[int]):
    """A fresh permutation of ``range(size)`` each epoch, drawn from a generator seeded by
    ``(seed, epoch)``: the same epoch always gives the same order, whatever ran before it."""

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch."""
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        """The generator of this epoch's draws."""
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=self.generator()).tolist())

    def __len__(self) -> int:
        return self.size


def _cut(indices: list[int], batch_size: int) -> list[list[int]]:
    """``indices`` in batches of ``batch_size``, the last one shorter."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def processes() -> tuple[int, int]:
    """(number of processes, this one's rank) of a distributed run; (1, 0) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class EpochBatches(Sampler[list[int]]):
    """Batches of sample indices whose order depends on the seed and the epoch only.

    The epoch lives in ``self.sampler`` (an ``EpochPermutation``): Lightning calls
    ``set_epoch`` on a batch sampler's ``sampler``, not on the batch sampler itself.
    ``resume(epoch, done)`` makes the next iteration that epoch's, without its first ``done``
    batches; ``len`` stays the whole epoch's (Lightning counts a resumed epoch's batches from it).
    In a distributed run every process makes the same epoch and takes every n-th batch, as many
    as each of them can have (the trainer configs set ``use_distributed_sampler: false``).
    """

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self.sampler = EpochPermutation(size, seed=seed)
        self._skip = 0

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the sampler's epoch, in order, for all processes."""
        raise NotImplementedError

    def batches_per_epoch(self) -> int:
        """``len(self.epoch_batches())``, without making them."""
        raise NotImplementedError

    def resume(self, epoch: int, done: int) -> None:
        """Start the next iteration at batch ``done`` of ``epoch`` (at the start of the next
        epoch when ``done`` is the whole epoch)."""
        if done >= len(self):
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._skip = done

    def __iter__(self) -> Iterator[list[int]]:
        count, rank = processes()
        mine = self.epoch_batches()[rank::count][: len(self)]
        skip, self._skip = self._skip, 0  # a resume skips once
        return iter(mine[skip:])

    def __len__(self) -> int:
        """Batches a process trains on in an epoch."""
        return self.batches_per_epoch() // processes()[0]


class ShuffledBatches(EpochBatches):
    """A fresh permutation of ``size`` samples each epoch, cut into ``batch_size`` batches (the
    last one shorter), as ``DataLoader(shuffle=True)`` makes them."""

    def __init__(self, size: int, *, batch_size: int, seed: int = 0) -> None:
        super().__init__(size, seed=seed)
        self.batch_size = batch_size

    def epoch_batches(self) -> list[list[int]]:
        return _cut(list(self.sampler), self.batch_size)

    def batches_per_epoch(self) -> int:
        return -(-self.sampler.size // self.batch_size)


class BucketBatchSampler(EpochBatches):
    """Shuffled batches of sentences of similar length, so little of a batch is padding.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort each
    pool by length, cut it into batches and shuffle the batches.
    """

    def __init__(
        self, lengths: Sequence[int], *, batch_size: int, seed: int = 0, pool_batches: int = 50
    ) -> None:
        super().__init__(len(lengths), seed=seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool_size = batch_size * pool_batches

    def epoch_batches(self) -> list[list[int]]:
        generator = self.sampler.generator()
        order = torch.randperm(len(self.lengths), generator=generator).tolist()  # = the sampler's
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = sorted(order[start : start + self.pool_size], key=self.lengths.__getitem__)
            batches += _cut(pool, self.batch_size)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def batches_per_epoch(self) -> int:
        full_pools, rest = divmod(len(self.lengths), self.pool_size)
        per_pool = -(-self.pool_size // self.batch_size)
        return full_pools * per_pool + -(-rest // self.batch_size)


def loader_generator(seed: int) -> torch.Generator:
    """A ``DataLoader``'s own generator. Each iterator a loader makes draws its workers' base
    seed from it, else from the global generator: a resumed run, which makes one iterator more
    than the run it continues, would then draw different dropout masks from there on."""
    return torch.Generator().manual_seed(seed)


class ResumableOrder(L.LightningDataModule):
    """A data module whose checkpoint state says how far into which epoch training got.

    Lightning saves ``state_dict`` in each checkpoint and, on resume, calls ``load_state_dict``
    before it asks for the training loader; a subclass passes its ``EpochBatches`` through
    ``training_order`` so that the first iteration after a resume starts where training stopped.
    """

    _resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        # Batches whose training step ran this epoch (all of them once the epoch has ended);
        # the loader itself cannot say, as Lightning fetches a batch ahead of the one it trains.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def training_order(self, sampler: EpochBatches) -> EpochBatches:
        """``sampler``, set to resume where the loaded checkpoint stopped (once)."""
        if self._resume_at is not None:
            sampler.resume(*self._resume_at)
            self._resume_at = None
        return sampler


@contextmanager
def exact_resume(datamodule: L.LightningDataModule) -> Iterator[None]:
    """Within it, a ``ResumableOrder``'s mid-epoch resume goes without Lightning's warning that
    it may be unreliable: the data module's state makes it exact."""
    with warnings.catch_warnings():
        if isinstance(datamodule, ResumableOrder):
            warnings.filterwarnings(
                "ignore", message=re.escape(MID_EPOCH_RESUME_WARNING), category=PossibleUserWarning
            )
        yield
