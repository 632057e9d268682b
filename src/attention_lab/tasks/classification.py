"""Image classification as a LightningModule: one shared step, torchmetrics per split."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from attention_lab.attention_maps import AttentionMap, AttentionSnapshot
from attention_lab.nn.blocks import keep_attention_weights
from attention_lab.optim import OptimizerFactory, SchedulerFactory
from attention_lab.tasks.base import Task


class ImageClassificationTask(Task):
    """Cross-entropy training of any ``net`` that maps images (B, C, H, W) to logits (B, K).

    Logs ``{train,val,test}/loss``, ``{train,val,test}/acc`` (the fraction of all samples right,
    not a mean over classes) and ``val/acc_best``.

    ``divide_loss_by_batch_size`` reproduces the course-lab ViT notebook's
    ``loss = criterion(y_hat, y) / len(x)``: the loss that is differentiated is the batch mean
    divided once more by the batch size (the logged ``*/loss`` stays the plain mean). Adam's
    step is invariant to a constant loss scale except through its ``eps``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        divide_loss_by_batch_size: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.divide_loss_by_batch_size = divide_loss_by_batch_size
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        # In the checkpoint, so that a resumed run keeps the best accuracy so far.
        self.val_acc_best.persistent(True)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> logits (B, K)."""
        return self.net(images)

    def _loss_and_logits(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch's mean cross-entropy and its logits (B, K)."""
        images, labels = batch
        logits = self(images)  # (B, K)
        return self.criterion(logits, labels), logits

    def _differentiated(self, loss: Tensor, batch_size: int) -> Tensor:
        return loss / batch_size if self.divide_loss_by_batch_size else loss

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self._differentiated(self._loss_and_logits(batch)[0], batch[0].size(0))

    def _shared_step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        images, labels = batch
        loss, logits = self._loss_and_logits(batch)
        accuracy = getattr(self, f"{split}_acc")
        accuracy(logits, labels)
        on_step = split == "train"
        # sync_dist: under DDP the epoch loss is the mean over all processes, like the metrics.
        self.log(
            f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return self._differentiated(loss, images.size(0))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # its batches must not count towards the best
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def attention_maps(self, batch: tuple[Tensor, Tensor]) -> AttentionSnapshot:
        """Every layer's per-head attention for ``batch``, labelled by the net's tokens.

        The net must have ``token_labels()``; if it has a class token and a ``patch_grid``,
        the images come along for the rollout overlay.
        """
        images, _ = batch
        with keep_attention_weights(self.net) as blocks:
            self.net(images)
            layers = [block.attention_weights for block in blocks]  # each (N, H, T, T)
        labels = [self.net.token_labels()] * images.size(0)
        maps = [AttentionMap(f"layer{i}", w, labels, labels) for i, w in enumerate(layers)]
        grid = getattr(self.net, "patch_grid", None)
        if getattr(self.net, "cls_token", None) is None or grid is None:
            return AttentionSnapshot(maps)
        return AttentionSnapshot(maps, images=images, patch_grid=grid)
