"""A callback that keeps each epoch's metrics and training throughput in the run directory.

``<run dir>/history.jsonl`` gets one JSON line per epoch: every logged epoch metric (losses,
accuracies, BLEU...), the epoch, the step, and ``train/samples_per_s``: training samples over the
time spent in training batches alone (validation, checkpointing and start-up excluded), so two
attention kinds can be compared on the work they differ in. The report reads it; no logger is
needed. (Lightning's ``ThroughputMonitor`` sends per-step throughput to a logger; this file is
per epoch, logger-free, and what the report and the committed run records read.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from attention_lab.run.records import append_history


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return len(first)


class MetricsHistory(L.Callback):
    """Append every epoch's metrics to ``output_dir/history.jsonl`` (rank 0 only)."""

    def __init__(self, *, output_dir: str) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self._samples = 0
        self._seconds = 0.0
        self._batch_started = 0.0
        self._pending: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_pending(trainer)
        self._samples, self._seconds = 0, 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._seconds += time.perf_counter() - self._batch_started
        self._samples += _batch_size(batch)

    @property
    def samples_per_s(self) -> float:
        """Training samples per second of batch time in the epoch so far."""
        return self._samples / self._seconds if self._seconds > 0 else math.nan

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("train/samples_per_s", self.samples_per_s)
        self._pending = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train/samples_per_s": self.samples_per_s,
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_end: a run stopped by a signal at its last epoch ends in on_train_end.
        self._write_pending(trainer)

    def _write_pending(self, trainer: L.Trainer) -> None:
        # Lightning reduces an epoch's training metrics only after on_train_epoch_end, so the
        # row is written when the next epoch starts, or when training ends.
        if self._pending is None or not trainer.is_global_zero:
            return
        row = dict(self._pending)
        for key, value in trainer.callback_metrics.items():
            if not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = (
                    value.item() if isinstance(value, torch.Tensor) else float(value)
                )
        append_history(self.output_dir, row)
        self._pending = None
