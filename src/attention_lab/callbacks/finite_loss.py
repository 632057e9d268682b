"""Stop a run at the first NaN or infinite loss, before it can reach the weights or a checkpoint.

Lightning's ``EarlyStopping(check_finite=True)`` checks only the monitored validation metric,
after an epoch of updates from the bad loss; ``torch.autograd.detect_anomaly`` slows every step.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from attention_lab.errors import NonFiniteLossError


class StopOnNonFiniteLoss(L.Callback):
    """Raise ``NonFiniteLossError`` naming the metric, epoch and step of a NaN or inf value.

    The training loss is checked before its backward pass, so the optimiser step it would
    poison never runs. Validation metrics are checked when validation ends, before
    ``ModelCheckpoint`` (which Lightning always calls last) could save weights that produce
    them. Checkpoints already on disk are left as they are: the last one is the last good one.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(self._message(trainer, "train/loss", loss))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and not torch.isfinite(value).all():
                raise NonFiniteLossError(self._message(trainer, key, value))

    @staticmethod
    def _message(trainer: L.Trainer, key: str, value: Tensor) -> str:
        saved = [
            Path(path)
            for callback in trainer.checkpoint_callbacks
            for path in (
                getattr(callback, "best_model_path", ""),
                getattr(callback, "last_model_path", ""),
            )
            if path and Path(path).is_file()
        ]
        last = max(saved, key=lambda path: path.stat().st_mtime, default=None)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        return (
            f"{key} is {value.float().mean().item()} at epoch {trainer.current_epoch} step "
            f"{trainer.global_step}: training stopped; {kept}. Lower task.optimizer.lr, keep "
            f"trainer.gradient_clip_val, or check the data"
        )
