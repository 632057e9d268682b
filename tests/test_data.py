"""The MNIST DataModule on IDX files the tests write, and its offline behaviour."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets.mnist

from attention_lab.data.mnist import MNIST_MEAN, MNIST_STD, MNISTDataModule
from attention_lab.errors import ConfigError, DataNotFoundError
from tests.conftest import real_data_dir


def _setup(data_dir: Path, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(data_dir=str(data_dir), **{"val_size": 56, **kwargs})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_split_sizes_and_no_overlap(tiny_mnist: Path) -> None:
    datamodule = _setup(tiny_mnist)
    train_images = datamodule.train_set.tensors[0]
    val_images = datamodule.val_set.tensors[0]
    assert (len(train_images), len(val_images), len(datamodule.test_set)) == (200, 56, 64)
    seen = {bytes(image.numpy()) for image in train_images}
    assert not any(bytes(image.numpy()) in seen for image in val_images)


def test_split_is_deterministic_in_the_seed(tiny_mnist: Path) -> None:
    first, again, other = (_setup(tiny_mnist, seed=s) for s in (0, 0, 1))
    assert torch.equal(first.val_set.tensors[0], again.val_set.tensors[0])
    assert not torch.equal(first.val_set.tensors[0], other.val_set.tensors[0])


def test_batches_are_normalised_after_transfer(tiny_mnist: Path) -> None:
    datamodule = _setup(tiny_mnist, batch_size=16)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    normalised, same_labels = datamodule.on_after_batch_transfer((images, labels), 0)
    torch.testing.assert_close(normalised, (images.float() / 255 - MNIST_MEAN) / MNIST_STD)
    assert torch.equal(same_labels, labels)


def test_without_a_validation_split_every_training_image_is_used_in_file_order(
    tiny_mnist: Path,
) -> None:
    datamodule = _setup(tiny_mnist, val_size=0)
    raw = torchvision.datasets.MNIST(str(tiny_mnist), train=True, download=False)
    assert datamodule.val_set is None and datamodule.val_dataloader() == []
    assert torch.equal(datamodule.train_set.tensors[0], raw.data.unsqueeze(1))
    assert torch.equal(datamodule.train_set.tensors[1], raw.targets)


def test_without_normalisation_batches_are_totensor_values(tiny_mnist: Path) -> None:
    datamodule = _setup(tiny_mnist, batch_size=16, normalize=False)
    images, labels = next(iter(datamodule.train_dataloader()))
    as_floats, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    torch.testing.assert_close(as_floats, images.float() / 255, rtol=0, atol=0)
    assert as_floats.min() >= 0 and as_floats.max() <= 1


def test_missing_data_offline_names_the_folder_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError) as info:
        MNISTDataModule(data_dir=str(tmp_path / "empty")).prepare_data()
    message = str(info.value)
    assert str((tmp_path / "empty" / "MNIST" / "raw").resolve()) in message
    assert "data.data_dir" in message and "DATA_DIR" in message


def test_present_files_are_used_without_network(
    tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("tried to download although the files are there")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fail)
    MNISTDataModule(data_dir=str(tiny_mnist)).prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 256}, "data.val_size=256 leaves no training images"),
        ({"val_size": -1}, "data.val_size=-1 must be 0"),
        ({"batch_size": 0}, "data.batch_size=0"),
    ],
)
def test_bad_settings_name_the_key(tiny_mnist: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _setup(tiny_mnist, **kwargs)


@pytest.mark.integration
def test_real_mnist_split_is_55000_5000_10000() -> None:
    data_dir = real_data_dir()
    if data_dir is None:
        pytest.skip("real MNIST not found (set DATA_DIR or provide ../shared/data)")
    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=5000)
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (
        55000,
        5000,
        10000,
    )
