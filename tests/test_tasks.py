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
