"""Checkpoint averaging: the model that validation, the checkpoints and the test see is the mean
of the weights at the end of the last training epochs ("we used a single model obtained by
averaging the last 5 checkpoints", Vaswani et al., 2017, section 6.1).

Training itself goes on from its own weights; only what is evaluated and saved is averaged.
A checkpoint written while averaging holds the mean as its ``state_dict`` (so ``trainer.test``
and the commands read the averaged model) and the training weights beside it, which a resumed
fit goes on from, with the running sum in the callback's state.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from attention_lab.errors import ConfigError

TRAINING_WEIGHTS = "training_state_dict"  # the checkpoint key of the weights training goes on from


class AverageLastEpochs(L.Callback):
    """From epoch ``max_epochs - epochs`` on, each epoch's final weights join an equal-weight
    running mean, and validation (and so ``ModelCheckpoint``'s choice of the best epoch) sees
    the mean of the epochs so far. The fit ends with the mean in the module, so a test of the
    final weights (a run without validation, ``data.val_size=0``, has no best checkpoint) sees
    it too. ``epochs=0`` leaves the run as it is.

    Floating-point tensors of the ``state_dict`` are averaged; others (integer buffers) are the
    latest epoch's. The sum is kept in float32 on the weights' device.
    """

    def __init__(self, epochs: int = 0) -> None:
        if epochs < 0:
            raise ConfigError(
                f"callbacks.average_last_epochs.epochs={epochs} must be 0 (off) or positive"
            )
        self.epochs = epochs
        self._sum: dict[str, Tensor] = {}
        self._count = 0
        self._last_epoch = -1  # the last epoch whose weights joined the sum
        # The weights training goes on from, while validation sees the mean.
        self._training: dict[str, Tensor] | None = None

    def _averaging(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's weights join the mean."""
        max_epochs = trainer.max_epochs or 0
        return bool(self.epochs) and trainer.current_epoch >= max_epochs - self.epochs

    def average(self) -> dict[str, Tensor]:
        """The float32 mean so far of each floating-point tensor (empty before the first
        averaged epoch)."""
        return {name: total / self._count for name, total in self._sum.items()}

    def _add(self, weights: dict[str, Tensor]) -> None:
        for name, value in weights.items():
            if value.is_floating_point():
                total = self._sum.get(name)
                self._sum[name] = value.float() if total is None else total + value.float()
        self._count += 1

    def _averaged_state(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """``weights`` with every floating-point tensor replaced by its mean."""
        mean = self.average()
        return {
            name: mean[name].to(value.dtype) if name in mean else value
            for name, value in weights.items()
        }

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or not self._averaging(trainer):
            return
        weights = _copy(pl_module.state_dict())
        if trainer.current_epoch > self._last_epoch:  # once an epoch, however often validated
            self._add(weights)
            self._last_epoch = trainer.current_epoch
        self._training = weights
        pl_module.load_state_dict(self._averaged_state(weights))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._training is not None:
            pl_module.load_state_dict(self._training)
            self._training = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch that was not validated (no validation split, or check_val_every_n_epoch > 1)
        # joins the mean here, before its checkpoints are saved (Lightning calls checkpoint
        # callbacks after this one). A validated epoch joined when its first validation began.
        if self._averaging(trainer) and trainer.current_epoch > self._last_epoch:
            self._add(_copy(pl_module.state_dict()))
            self._last_epoch = trainer.current_epoch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The final model is the mean. Lightning calls this hook (not on_train_end) also when
        # a resumed run had no epoch left to train, whose module holds the training weights.
        if self._count:
            pl_module.load_state_dict(self._averaged_state(pl_module.state_dict()))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._count and trainer.state.fn == "fit":
            # Saved mid-validation (Ctrl-C), the module holds the mean: keep what training had.
            training = self._training if self._training is not None else checkpoint["state_dict"]
            checkpoint[TRAINING_WEIGHTS] = training
            checkpoint["state_dict"] = self._averaged_state(training)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A resumed fit goes on from the training weights; a test keeps the mean it loaded.
        if TRAINING_WEIGHTS in checkpoint and trainer.state.fn == "fit":
            pl_module.load_state_dict(checkpoint[TRAINING_WEIGHTS])

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self._sum, "count": self._count, "last_epoch": self._last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sum = dict(state_dict["sum"])
        self._count = int(state_dict["count"])
        self._last_epoch = int(state_dict["last_epoch"])


def _copy(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in weights.items()}
