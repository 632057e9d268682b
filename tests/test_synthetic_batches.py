"""Batches the data modules make without their data (what ``bench train`` times steps on) have
the format of their loaders' batches, and a task's ``loss`` is what its training step returns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attention_lab.data import MNISTDataModule, Multi30kDataModule, SST2DataModule, UDDataModule
from attention_lab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID
from attention_lab.data.ud import UPOS_TAGS
from attention_lab.tasks import ImageClassificationTask

LENGTH = 7


@pytest.fixture
def datamodule(
    request: pytest.FixtureRequest,
    tiny_mnist: Path,
    tiny_multi30k: Path,
    tiny_ud: Path,
    tiny_sst2: Path,
    tmp_path: Path,
):
    """Each data module on its tiny data set, batches of 4."""
    settings = {"batch_size": 4}
    text = {**settings, "vocab_size": 100, "tokenizer_dir": str(tmp_path)}
    made = {
        "mnist": lambda: MNISTDataModule(data_dir=str(tiny_mnist), val_size=56, **settings),
        "multi30k": lambda: Multi30kDataModule(
            data_dir=str(tiny_multi30k), **{**text, "vocab_size": 200}
        ),
        "ud": lambda: UDDataModule(data_dir=str(tiny_ud), **text),
        "sst2": lambda: SST2DataModule(data_dir=str(tiny_sst2), **text),
    }[request.param]()
    made.prepare_data()
    made.setup("fit")
    return made


def _is_named(batch) -> bool:
    return hasattr(batch, "_fields")  # TranslationBatch, TaggingBatch, TextBatch


@pytest.mark.parametrize("datamodule", ["mnist", "multi30k", "ud", "sst2"], indirect=True)
def test_a_synthetic_batch_has_the_format_of_a_loaders_batch(datamodule) -> None:
    real = next(iter(datamodule.train_dataloader()))
    made = datamodule.synthetic_batch(LENGTH, torch.Generator().manual_seed(0))
    # The same NamedTuple; MNIST: (images, labels), which the default collate makes a list.
    assert type(made) is type(real) if _is_named(real) else len(made) == len(real) == 2
    for field, (mine, theirs) in enumerate(zip(made, real, strict=True)):
        assert type(mine) is type(theirs), field
        if isinstance(theirs, Tensor):
            assert (mine.dtype, mine.dim()) == (theirs.dtype, theirs.dim()), field
        assert len(mine) == 4, field  # the data module's batch_size
    if not _is_named(made):
        images, labels = made
        assert images.shape == (4, 1, 28, 28) and int(labels.max()) < 10
        return
    # Model input fits the embedding the data would size, and holds no padding.
    model_ids = made.src if hasattr(made, "src") else made.ids
    assert model_ids.shape == (4, LENGTH)
    assert int(model_ids.min()) > 0 and int(model_ids.max()) < (
        200 if hasattr(made, "src") else 100
    )
    if hasattr(made, "src"):  # <bos> ... <eos> targets, one token longer
        assert made.tgt.shape == (4, LENGTH + 1)
        assert (made.tgt[:, 0] == BOS_ID).all() and (made.tgt[:, -1] == EOS_ID).all()
        assert (made.src[:, -1] == EOS_ID).all()
        return
    assert (made.ids[:, 0] == CLS_ID).all()
    if hasattr(made, "word_ids"):  # every piece after <cls> in a word, every word tagged
        assert (made.word_ids[:, 0] == -1).all() and (made.word_ids[:, 1:] >= 0).all()
        n_words = made.word_ids.max(dim=1).values + 1  # (B,)
        assert (made.tags >= 0).sum(dim=1).tolist() == n_words.tolist()
        assert int(made.tags.max()) < len(UPOS_TAGS) and not made.unseen.any()
    else:
        assert not made.padding.any() and set(made.labels.tolist()) <= {0, 1}


@pytest.mark.parametrize("divide", [False, True])
def test_the_training_step_returns_the_tasks_loss(divide: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    task = ImageClassificationTask(
        net, torch.optim.AdamW, num_classes=10, divide_loss_by_batch_size=divide
    )
    images, labels = MNISTDataModule(data_dir=".", batch_size=8).synthetic_batch()
    batch = (images.float() / 255.0, labels)
    expected = nn.functional.cross_entropy(net(batch[0]), labels) / (8 if divide else 1)
    torch.testing.assert_close(task.loss(batch), expected)
    with pytest.warns(UserWarning, match="trainer"):  # self.log outside a Trainer: a warning
        torch.testing.assert_close(task.training_step(batch, 0), expected)
