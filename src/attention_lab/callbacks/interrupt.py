"""SIGINT (Ctrl-C) and SIGTERM (a cluster's pre-emption) end training with a checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from attention_lab.errors import TrainingInterrupted
from attention_lab.run.checkpoints import LAST_CHECKPOINT

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CheckpointOnSignal(Checkpoint):
    """On SIGINT or SIGTERM, finish the current batch, save ``dirpath/last.ckpt`` and stop.

    Left alone, Python raises KeyboardInterrupt wherever SIGINT finds the program (half way
    through an optimiser step, say) and Lightning exits without a checkpoint; on SIGTERM
    Lightning exits with status 0, as if the run had finished. While training runs, the
    handlers installed here only note the signal; the next batch or epoch end saves a
    consistent checkpoint and raises ``TrainingInterrupted`` (exit status 130 or 143 from
    ``train.py``). A second SIGINT aborts at once, for a run that hangs.

    A signal in an epoch's last batch or in its validation never cuts that validation short:
    the last batch and validation run to their end, then the
    checkpoints and the epoch's records (loggers, ``history.jsonl``) are written, and the run
    stops before the next epoch; resumed, it goes on with that next epoch, so every epoch is
    recorded once and whole. Stopped in the middle of a training epoch, it resumes that epoch
    mid-way, on the batches it had not trained on (``data.order``): that epoch's training
    metrics then cover the batches after the resume only.

    A ``Checkpoint`` so that Lightning calls it after the model and after every
    ``ModelCheckpoint``: a signal that arrives during validation stops the run only once the
    epoch's checkpoints are saved.
    """

    def __init__(self, *, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._received: int | None = None
        self._stop: TrainingInterrupted | None = None  # saved at an epoch's end, raised after it
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = None
        self._stop = None
        # Python allows signal handlers in the main thread only.
        if threading.current_thread() is threading.main_thread():
            # Installed after Lightning's own SIGTERM handler, which this one replaces.
            self._previous = {signum: signal.signal(signum, self._note) for signum in SIGNALS}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._received == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self._received = signum
        log.warning(
            "Received %s: saving a checkpoint after this batch (Ctrl-C again aborts without it)",
            signal.Signals(signum).name,
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # In an epoch's last batch, the epoch's validation and checkpoints come first (saved
        # here, the resumed run would count the epoch as done and never validate it).
        if (
            self._received is not None
            and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            raise self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the epoch's last batch or its validation: the epoch's checkpoints are
        # saved by now (this callback runs after every ModelCheckpoint), but Lightning logs the
        # epoch's training metrics, and MetricsHistory writes its row, only after this hook. So
        # the run saves here and stops when the next epoch (or the end of training) begins:
        # every log then holds the epoch whole, and the resumed run starts with the next one.
        if self._received is not None and self._stop is None:
            self._stop = self._save(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop is not None:
            raise self._stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        if self._stop is not None:
            raise self._stop

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        self._restore()

    def _save(self, trainer: L.Trainer) -> TrainingInterrupted:
        """Save ``last.ckpt`` now; the error that stops the run, naming this checkpoint."""
        path = self.dirpath / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        return TrainingInterrupted(
            self._received,
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            checkpoint=str(path),
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
