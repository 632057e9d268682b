"""What every task shares: the wrapped model, its optimiser and learning-rate schedule, and
hyper-parameters kept plain."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor, nn

from attention_lab.optim import OptimizerFactory, SchedulerFactory, optimizers_for


class Task(L.LightningModule):
    """A LightningModule around ``net`` (a pure ``nn.Module``, built by ``model:``).

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``); the scheduler
    receives ``total_steps`` and is stepped every optimisation step (``attention_lab.optim``).
    The subclass's other constructor arguments become ``hparams``: plain values only, so that
    checkpoints load with ``torch.load(weights_only=True)``. The whole run config is in the run
    directory and in the loggers.
    """

    def __init__(
        self, net: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def loss(self, batch: Any) -> Tensor:
        """The loss a training step differentiates, for ``batch`` as the task's data module
        yields it (after ``on_after_batch_transfer``): no metric updated, nothing logged.
        ``training_step`` returns it, and ``bench train`` times a step of exactly this
        (``attention_lab.bench.training``)."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizers_for(
            self.net,
            self.optimizer_factory,
            self.scheduler_factory,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
