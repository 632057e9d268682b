"""Optimiser helpers: weight-decay parameter groups and a warm-up + cosine schedule.

**Extending a run re-plans its schedule.** The schedule is planned for the run's length
(``trainer.max_epochs`` × batches per epoch), and a checkpoint holds that plan. A run resumed
with another length (``trainer.max_epochs=2 ckpt_path=last`` after a 1-epoch run) would keep the
old plan, which had already decayed to its floor, and train every new step at the floor
learning rate. Instead, ``WarmupCosineLR`` keeps the plan made for the resumed run, the schedule
that a run of the new length follows from its first step: from the next step on the learning
rate is that schedule's (for the example, back up from the floor to 75% of ``lr``), and the run
logs a warning with both plans and the jump. Weights, optimiser moments and the step count are
restored as they were. A resume of the same length continues the saved schedule exactly.

torch's ``SequentialLR(LinearLR, CosineAnnealingLR)`` draws the same curve from two schedulers
and a hand-split step count; one ``LambdaLR`` factor, sized from the trainer's total steps when
fitting starts, is shorter to read and resumes from a checkpoint as one state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def decay_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Decay matrices (weights of linear layers, embeddings); leave biases and norms alone.

    A model may carry ``lr_scales``, a parameter-name prefix -> factor of the learning rate
    ``lr`` (a pretrained body fine-tuned more gently than its new head); those parameters get
    groups of their own with that ``lr``.
    """
    scales: dict[str, float] = getattr(model, "lr_scales", None) or {}
    grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next(
            (f for prefix, f in scales.items() if name == prefix or name.startswith(f"{prefix}.")),
            1.0,
        )
        grouped.setdefault((scale, param.dim() >= 2), []).append(param)
    groups = []
    for scale in sorted({scale for scale, _ in grouped}, reverse=True):
        for decay in (True, False):
            group = {
                "params": grouped.get((scale, decay), []),
                "weight_decay": weight_decay if decay else 0.0,
            }
            if scale != 1.0:
                if lr is None:
                    raise ValueError("the model has lr_scales but no learning rate was given")
                group["lr"] = lr * scale
            groups.append(group)
    return groups


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


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """A per-step ``LambdaLR`` of ``WarmupCosine`` that re-plans when a checkpoint planned for
    another run length is loaded (see the module docstring)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        planned = [dict(vars(factor)) for factor in self.lr_lambdas]
        super().load_state_dict(state_dict)
        saved = [dict(vars(factor)) for factor in self.lr_lambdas]
        if saved == planned:
            return
        for factor, plan in zip(self.lr_lambdas, planned, strict=True):
            vars(factor).update(plan)
        step = self.last_epoch
        before = [group["lr"] for group in self.optimizer.param_groups]
        factors = zip(self.base_lrs, self.lr_lambdas, strict=True)
        after = [base * factor(step) for base, factor in factors]
        for group, lr in zip(self.optimizer.param_groups, after, strict=True):
            group["lr"] = lr
        self._last_lr = after
        log.warning(
            "The checkpoint's learning-rate schedule was planned for %d steps, this run has %d "
            "(trainer.max_epochs or the batches per epoch changed): re-planned over %d steps "
            "(warm-up %d); at step %d the learning rate goes from %.3g to %.3g",
            saved[0]["total_steps"],
            planned[0]["total_steps"],
            planned[0]["total_steps"],
            planned[0]["warmup_steps"],
            step,
            before[0],
            after[0],
        )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``WarmupCosineLR``; Hydra passes the knobs, the task total_steps."""
    factor = WarmupCosine(
        warmup_steps=max(1, round(warmup_fraction * total_steps)),
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return WarmupCosineLR(optimizer, factor)


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
    ``decay_groups`` (with the factory's weight decay and learning rate), and the scheduler
    stepped every step."""
    keywords = getattr(optimizer_factory, "keywords", {})
    groups = decay_groups(model, keywords.get("weight_decay", 0.0), keywords.get("lr"))
    optimizer = optimizer_factory(params=groups)
    if scheduler_factory is None:
        return {"optimizer": optimizer}
    scheduler = scheduler_factory(optimizer, total_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
