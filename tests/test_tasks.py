"""The classification task's metrics mean what the README says they mean."""

from __future__ import annotations

import torch
from torch import nn

from attention_lab.tasks import ImageClassificationTask


def test_accuracy_is_the_fraction_of_all_samples_right() -> None:
    # Nine samples of class 0, all right; one of class 1, wrong. The fraction right is 0.9;
    # a mean over classes ("macro" averaging, torchmetrics' default) would say 0.5.
    task = ImageClassificationTask(nn.Identity(), optimizer=torch.optim.SGD, num_classes=2)
    logits = torch.tensor([[1.0, 0.0]] * 10)
    labels = torch.tensor([0] * 9 + [1])
    task.test_acc(logits, labels)
    assert abs(task.test_acc.compute().item() - 0.9) < 1e-6


def test_the_loss_can_be_divided_by_the_batch_size_as_the_course_vit_notebook() -> None:
    images, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    plain = ImageClassificationTask(nn.Identity(), optimizer=torch.optim.SGD, num_classes=3)
    divided = ImageClassificationTask(
        nn.Identity(), optimizer=torch.optim.SGD, num_classes=3, divide_loss_by_batch_size=True
    )
    expected = nn.functional.cross_entropy(images, labels)
    torch.testing.assert_close(plain.training_step((images, labels), 0), expected)
    torch.testing.assert_close(divided.training_step((images, labels), 0), expected / 8)
