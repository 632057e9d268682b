"""A callback that draws what the model attends to, for a fixed set of validation samples.

At the end of validation every ``every_n_epochs`` epochs (and at the last epoch), and at test,
it runs the first ``num_samples`` samples of the first batch through the model with attention
weights kept, and writes per-layer, per-head heat maps (plus, for image models with a class
token, the attention rollout over the image) as PNG files under ``<run dir>/attention/`` and to
every W&B logger. Ordinary training steps never ask for attention weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from attention_lab.attention_maps import (
    AttentionSnapshot,
    attention_rollout,
    plot_heads,
    plot_rollout,
)
from attention_lab.errors import ConfigError


class AttentionMapCallback(L.Callback):
    """Log attention maps of ``num_samples`` fixed validation (and test) samples.

    The LightningModule provides them through ``attention_maps(batch) -> AttentionSnapshot``.
    """

    def __init__(self, *, output_dir: str, every_n_epochs: int = 5, num_samples: int = 2) -> None:
        super().__init__()
        if every_n_epochs <= 0 or num_samples <= 0:
            raise ConfigError(
                f"callbacks.attention_maps.every_n_epochs={every_n_epochs} and "
                f"num_samples={num_samples} must be positive"
            )
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self._batch: Any = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def _keep_first_samples(self, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if batch_idx != 0 or dataloader_idx != 0:
            return
        size = len(batch[0])
        if size < self.num_samples:
            raise ConfigError(
                f"callbacks.attention_maps.num_samples={self.num_samples} but the first "
                f"evaluation batch has only {size} samples; lower num_samples or raise "
                f"data.eval_batch_size (or add evaluation data)"
            )
        self._batch = [part[: self.num_samples] for part in batch]

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Checked during the sanity check too, so a bad setting stops the run before training.
        if trainer.sanity_checking or self._due(trainer):
            self._keep_first_samples(batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._keep_first_samples(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._due(trainer):
            self._log(trainer, pl_module, tag=f"epoch{trainer.current_epoch:03d}")
        self._batch = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, tag="test")
        self._batch = None

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            snapshot: AttentionSnapshot = pl_module.attention_maps(self._batch)
        pl_module.train(was_training)

        figures = self._figures(snapshot, tag)
        folder = self.output_dir / "attention" / tag
        folder.mkdir(parents=True, exist_ok=True)
        by_key: dict[str, list[str]] = {}
        for key, file_name, figure in figures:
            path = folder / file_name
            figure.savefig(path, dpi=90)
            by_key.setdefault(key, []).append(str(path))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, paths in by_key.items():
                    logger.log_image(key=f"attention/{tag_kind(tag)}/{key}", images=paths)

    def _figures(self, snapshot: AttentionSnapshot, tag: str) -> list[tuple[str, str, Figure]]:
        """(W&B key, file name, figure) for every map and sample, and the rollouts."""
        figures = []
        for attention_map in snapshot.maps:
            safe_name = attention_map.name.replace("/", "_")
            for i, weights in enumerate(attention_map.weights):  # (H, T, S)
                title = f"{attention_map.name}, sample {i} ({tag})"
                figure = plot_heads(
                    weights, attention_map.query_labels[i], attention_map.key_labels[i], title
                )
                figures.append((attention_map.name, f"{safe_name}_sample{i}.png", figure))
        if snapshot.images is not None and snapshot.patch_grid is not None:
            rollout = attention_rollout([m.weights for m in snapshot.maps])  # (N, T, T)
            for i, image in enumerate(snapshot.images):
                figure = plot_rollout(image, rollout[i], snapshot.patch_grid, f"sample {i} ({tag})")
                figures.append(("rollout", f"rollout_sample{i}.png", figure))
        return figures


def tag_kind(tag: str) -> str:
    """'val' for an epoch tag, 'test' for the test tag: W&B panels stay one per layer."""
    return "test" if tag == "test" else "val"
