"""Optimiser helpers: weight-decay parameter groups and a warm-up + cosine schedule.

torch's ``SequentialLR(LinearLR, CosineAnnealingLR)`` draws the same curve from two schedulers
and a hand-split step count; one ``LambdaLR`` factor, sized from the trainer's total steps when
fitting starts, is shorter to read and resumes from a checkpoint as one state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (weights of linear layers, embeddings); leave biases and norms alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class WarmupCosine:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``min_lr_ratio``.

    A callable object rather than a lambda so that the scheduler state pickles with checkpoints.
    """

    def __init__(self, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, warmup_steps + 1)
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR with ``WarmupCosine``; Hydra passes the knobs, the task total_steps."""
    factor = WarmupCosine(
        warmup_steps=max(1, round(warmup_fraction * total_steps)),
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def optimizers_for(
    model: nn.Module,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None,
    *,
    total_steps: int,
) -> dict:
    """What ``LightningModule.configure_optimizers`` returns: the optimiser over
    ``decay_groups`` (with the factory's weight decay), and the scheduler stepped every step."""
    weight_decay = getattr(optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
    optimizer = optimizer_factory(params=decay_groups(model, weight_decay))
    if scheduler_factory is None:
        return {"optimizer": optimizer}
    scheduler = scheduler_factory(optimizer, total_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
