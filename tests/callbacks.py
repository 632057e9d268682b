"""Callbacks that tests add to a run (as ``+callbacks.NAME._target_=tests.callbacks...``)."""

from __future__ import annotations

import json
import os
import time

import lightning as L
import torch


class SlowDown(L.Callback):
    """Sleep after each training batch, so that a tiny run lasts long enough to interrupt."""

    def __init__(self, *, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


class SignalDuringValidation(L.Callback):
    """Send ``signum`` to this process when validation of ``epoch`` ends, as a user might."""

    def __init__(self, *, epoch: int, signum: int) -> None:
        self.epoch = epoch
        self.signum = signum

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


class SignalDuringTraining(L.Callback):
    """Send ``signum`` to this process as training batch ``batch`` of ``epoch`` starts."""

    def __init__(self, *, epoch: int, batch: int, signum: int) -> None:
        self.epoch = epoch
        self.batch = batch
        self.signum = signum

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


class RecordBatches(L.Callback):
    """Append each training batch's epoch, index and a fingerprint of its inputs to ``path``:
    which samples a run trained on, in which order."""

    def __init__(self, *, path: str) -> None:
        self.path = path

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        tensors = [t for t in torch.utils._pytree.tree_leaves(batch) if isinstance(t, torch.Tensor)]
        row = {"epoch": trainer.current_epoch, "batch": batch_idx}
        row["sums"] = [float(t.double().sum()) for t in tensors]
        with open(self.path, "a") as file:
            file.write(json.dumps(row) + "\n")


class RecordLearningRate(L.Callback):
    """Append each training step's learning rate (first parameter group) to ``path``."""

    def __init__(self, *, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with open(self.path, "a") as file:
            file.write(json.dumps({"step": trainer.global_step, "lr": lr}) + "\n")


class RecordParameterChange(L.Callback):
    """Write ``{parameter name: whether training changed it}`` of the task's model to ``path``."""

    def __init__(self, *, path: str) -> None:
        self.path = path
        self.before: dict = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        after = dict(pl_module.named_parameters())
        changed = {n: not bool(p.eq(after[n]).all()) for n, p in self.before.items()}
        with open(self.path, "w") as file:
            json.dump(changed, file)


class SaveTrainingWeights(L.Callback):
    """Save the task's weights at the end of each training epoch to ``folder/epochN.pt``: the
    weights training goes on from (after validation, whatever it evaluated)."""

    def __init__(self, *, folder: str) -> None:
        self.folder = folder

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.folder, exist_ok=True)
        weights = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}
        torch.save(weights, os.path.join(self.folder, f"epoch{trainer.current_epoch}.pt"))
