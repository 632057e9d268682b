"""Training batches in an order fixed by the seed and the epoch, resumable mid-epoch
(``attention_lab.data.order``); a whole run stopped and resumed is in test_reliability.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attention_lab.data.mnist as mnist
import attention_lab.data.order as order
from attention_lab.data import MNISTDataModule
from attention_lab.data.order import (
    BucketBatchSampler,
    EpochPermutation,
    ResumableOrder,
    ShuffledBatches,
)
from attention_lab.errors import ConfigError


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_a_permutation_depends_on_the_seed_and_the_epoch_only() -> None:
    first = EpochPermutation(100, seed=3)
    torch.manual_seed(0)
    permutation = list(first)
    assert sorted(permutation) == list(range(100))
    torch.manual_seed(1)  # the global generator has no say
    assert list(EpochPermutation(100, seed=3)) == permutation
    first.set_epoch(1)
    assert list(first) != permutation
    first.set_epoch(0)
    assert list(first) == permutation
    assert list(EpochPermutation(100, seed=4)) != permutation


def test_shuffled_batches_cover_every_sample_once_an_epoch() -> None:
    batches = ShuffledBatches(10, batch_size=4, seed=0)
    assert len(batches) == 3
    epoch0 = list(batches)
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(_flat(epoch0)) == list(range(10))
    batches.sampler.set_epoch(1)  # what Lightning calls before each epoch
    assert list(batches) != epoch0 and sorted(_flat(list(batches))) == list(range(10))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ShuffledBatches(50, batch_size=8, seed=1),
        lambda: BucketBatchSampler([i % 7 + 1 for i in range(50)], batch_size=8, seed=1),
    ],
    ids=["shuffled", "bucketed"],
)
def test_a_resume_starts_at_the_batch_after_the_last_one_trained(make) -> None:
    reference = make()
    reference.sampler.set_epoch(2)
    epoch2 = list(reference)
    reference.sampler.set_epoch(3)
    epoch3 = list(reference)

    resumed = make()
    resumed.resume(2, 5)  # epoch 2's first 5 batches were trained
    assert list(resumed) == epoch2[5:]
    assert list(resumed) == epoch2  # the skip is for one iteration only
    assert len(resumed) == len(epoch2)  # Lightning counts the rest of the epoch from len

    at_the_end = make()
    at_the_end.resume(2, len(epoch2))  # stopped after the epoch's last batch
    assert list(at_the_end) == epoch3


def test_the_loaders_leave_the_global_generator_alone(tiny_mnist: Path) -> None:
    # A plain DataLoader draws its workers' base seed from the global generator for every
    # iterator it makes: a resumed run, which makes one more, would draw other dropout masks.
    datamodule = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=32, val_size=56)
    datamodule.setup("fit")
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        list(loader)
    assert torch.equal(torch.rand(1), expected)


def test_the_state_is_only_kept_while_fitting_and_used_once() -> None:
    datamodule = ResumableOrder()
    assert datamodule.state_dict() == {}  # no trainer: nothing to resume
    datamodule.load_state_dict({"epoch": 4, "batches_done": 2})
    first = datamodule.training_order(ShuffledBatches(20, batch_size=4))
    assert first.sampler.epoch == 4 and len(list(first)) == 3
    second = datamodule.training_order(ShuffledBatches(20, batch_size=4))
    assert second.sampler.epoch == 0 and len(list(second)) == 5


def test_an_unknown_shuffle_is_one_error_naming_the_setting(tiny_mnist: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data.shuffle='random' must be one of seeded, torch"):
        MNISTDataModule(data_dir=str(tiny_mnist), shuffle="random")


def test_each_process_of_a_distributed_run_takes_its_share_of_the_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = list(ShuffledBatches(50, batch_size=8, seed=2))  # 7 batches
    shares = []
    for rank in range(3):
        monkeypatch.setattr(order, "processes", lambda rank=rank: (3, rank))
        batches = ShuffledBatches(50, batch_size=8, seed=2)
        assert len(batches) == 2  # as many as every process can have: 7 // 3
        shares.append(list(batches))
        batches.resume(0, 1)
        assert list(batches) == shares[-1][1:]
    assert shares == [whole[0:6:3], whole[1:6:3], whole[2:6:3]]


def test_pytorchs_shuffle_is_refused_in_a_distributed_run(
    tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datamodule = MNISTDataModule(data_dir=str(tiny_mnist), val_size=56, shuffle="torch")
    datamodule.setup("fit")
    monkeypatch.setattr(mnist, "processes", lambda: (2, 0))
    with pytest.raises(ConfigError, match=r"^data.shuffle=torch gives every process all"):
        datamodule.train_dataloader()
