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

from attention_lab.checkpoints import LAST_CHECKPOINT
from attention_lab.errors import TrainingInterrupted

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

    A ``Checkpoint`` so that Lightning calls it after the model and after every
    ``ModelCheckpoint``: a signal that arrives during validation stops the run only once the
    epoch's checkpoints are saved.
    """

    def __init__(self, *, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = None
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
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        self._restore()

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        if self._received is None:
            return
        path = self.dirpath / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        raise TrainingInterrupted(
            self._received,
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            checkpoint=str(path),
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
