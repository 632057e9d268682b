"""Language tasks as LightningModules: tagging words (token classification) and classifying
sentences (sequence classification), over the models of ``models/text.py``.

Both keep the data module's tokenizer and label names in their checkpoints, so the commands
``python -m attention_lab.cli.tag`` and ``python -m attention_lab.cli.classify`` need no data.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics import MaxMetric, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from attention_lab.attention_maps import AttentionMap, AttentionSnapshot
from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.data.tokenizer import PAD_ID
from attention_lab.data.ud import IGNORE_INDEX
from attention_lab.models.bert import Bert
from attention_lab.models.text import reads_spelling, word_pooling_matrix
from attention_lab.nn.blocks import keep_attention_weights
from attention_lab.optim import OptimizerFactory, SchedulerFactory
from attention_lab.run.checkpoints import PRETRAINED_ARCHITECTURE_KEY
from attention_lab.tasks.base import Task
from attention_lab.tasks.translation import TOKENIZERS_KEY

LABEL_NAMES_KEY = "label_names"  # checkpoint entry: the tag or class names, in index order
BERT_TOKENIZER_KEY = "bert_tokenizer"  # checkpoint entry: a pretrained body's tokenizer (JSON)


class _TextTask(Task):
    """What both tasks share: optimisers, the best validation accuracy, checkpoint contents."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_classes: int,
        label_smoothing: float,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        for split in ("train", "val", "test"):
            metric = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
            setattr(self, f"{split}_acc", metric)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps the best accuracy so far

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """logits (N, K), targets (N,) -> mean cross-entropy over the non-padding targets."""
        return F.cross_entropy(
            logits,
            targets,
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.hparams.label_smoothing,
        )

    def _log_split(self, split: str, loss: Tensor, logits: Tensor, targets: Tensor, n: int) -> None:
        accuracy = getattr(self, f"{split}_acc")
        accuracy(logits, targets)
        on_step = split == "train"
        self.log(
            f"{split}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def _outputs(self, batch: Sequence) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, logits (N, K), targets (N,)) of ``batch``."""
        raise NotImplementedError

    def loss(self, batch: Sequence) -> Tensor:
        return self._outputs(batch)[0]

    def _step(self, batch: Sequence, split: str) -> Tensor:
        """Loss of ``batch``, with the split's metrics updated and logged."""
        loss, logits, targets = self._outputs(batch)
        self._log_split(split, loss, logits, targets, n=batch[0].size(0))
        return loss

    def training_step(self, batch: Sequence, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Sequence, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # its batches must not count towards the best
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # JSON strings, lists and plain dicts load with weights_only=True: the commands need
        # neither the data nor the pretrained files.
        datamodule = self.trainer.datamodule
        tokenizer = datamodule.tokenizer
        if isinstance(tokenizer, BertTokenizer):  # a pretrained checkpoint's own WordPiece
            checkpoint[BERT_TOKENIZER_KEY] = tokenizer.to_str()
        else:
            checkpoint[TOKENIZERS_KEY] = {"src": tokenizer.to_str()}
        body = getattr(self.net, "body", None)
        if isinstance(body, Bert):
            checkpoint[PRETRAINED_ARCHITECTURE_KEY] = dict(body.settings)
        checkpoint[LABEL_NAMES_KEY] = list(datamodule.label_names)

    def _pad_id(self) -> int:
        """The data's padding id (a pretrained tokenizer's own), <pad> without a trainer."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, "pad_id", PAD_ID)

    def _piece_labels(self, ids: Tensor) -> list[list[str]]:
        """Each token's piece; padding labelled "" (``plot_heads`` leaves it out)."""
        tokenizer, pad_id = self.trainer.datamodule.tokenizer, self._pad_id()
        rows = ids.tolist()
        return [
            ["" if i == pad_id else piece for i, piece in zip(row, pieces, strict=True)]
            for row, pieces in zip(rows, map(tokenizer.id_to_piece, rows), strict=True)
        ]


class TokenClassificationTask(_TextTask):
    """Cross-entropy on a tag per word (padding ignored) for a ``TransformerTagger``.

    Logs ``{train,val,test}/loss``, ``{train,val,test}/acc`` (the fraction of words tagged
    right), ``{val,test}/f1`` (macro-F1 over the tags), ``{val,test}/acc_unseen`` (accuracy on
    the words whose form the training split never has, when the batches say which:
    ``TaggingBatch.unseen``) and ``val/acc_best``. At test it draws the per-tag confusion matrix
    (rows: gold, columns: predicted, each row normalised) to
    ``<run dir>/confusion/test.png`` and to W&B.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        num_tags: int,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(net, optimizer, scheduler, num_tags, label_smoothing)
        self.takes_chars = reads_spelling(net)
        self.val_f1 = MulticlassF1Score(num_tags, average="macro", ignore_index=IGNORE_INDEX)
        self.test_f1 = MulticlassF1Score(num_tags, average="macro", ignore_index=IGNORE_INDEX)
        self.test_confusion = MulticlassConfusionMatrix(num_tags, ignore_index=IGNORE_INDEX)
        for split in ("val", "test"):  # unseen words tagged right, and all unseen words
            setattr(self, f"{split}_unseen_right", SumMetric())
            setattr(self, f"{split}_unseen_words", SumMetric())

    def forward(
        self, ids: Tensor, word_ids: Tensor, n_words: int, chars: Tensor | None = None
    ) -> Tensor:
        """ids, word_ids: (B, T), chars (B, W, L) -> logits (B, W, num_tags). ``chars`` go to
        the nets that read spelling (a ``chars`` argument), and only to them."""
        if self.takes_chars:
            return self.net(ids, word_ids, n_words, chars)
        return self.net(ids, word_ids, n_words)

    def _outputs(self, batch: Sequence) -> tuple[Tensor, Tensor, Tensor]:
        ids, word_ids, tags = batch[0], batch[1], batch[2]
        logits = self(ids, word_ids, tags.size(1), _chars(batch)).flatten(0, 1)  # (B*W, K)
        targets = tags.flatten()  # (B*W,)
        return self._loss(logits, targets), logits, targets

    def _step(self, batch: Sequence, split: str) -> Tensor:
        loss, logits, targets = self._outputs(batch)
        self._log_split(split, loss, logits, targets, n=batch[0].size(0))
        if split != "train":
            f1 = getattr(self, f"{split}_f1")
            f1(logits, targets)
            self.log(f"{split}/f1", f1, on_step=False, on_epoch=True)
        if split == "test":
            self.test_confusion(logits, targets)
        if split != "train" and len(batch) > 4:
            unseen = batch[4].flatten() & (targets != IGNORE_INDEX)  # (B*W,)
            right = unseen & (logits.argmax(dim=-1) == targets)  # (B*W,)
            getattr(self, f"{split}_unseen_right").update(right.sum())
            getattr(self, f"{split}_unseen_words").update(unseen.sum())
        return loss

    def unseen_accuracy(self, split: str) -> float | None:
        """Accuracy on the words unseen in training over the epoch of ``split`` (None when
        there were none), and the counts reset for the next epoch."""
        right, words = (getattr(self, f"{split}_unseen_{name}") for name in ("right", "words"))
        total = float(words.compute()) if words.update_called else 0.0
        accuracy = float(right.compute()) / total if total else None
        right.reset()
        words.reset()
        return accuracy

    def _log_unseen_accuracy(self, split: str) -> None:
        accuracy = self.unseen_accuracy(split)
        if accuracy is not None:
            self.log(f"{split}/acc_unseen", accuracy)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_unseen_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_unseen_accuracy("test")
        matrix = self.test_confusion.compute().cpu()  # (K, K), rows gold, columns predicted
        self.test_confusion.reset()
        if not self.trainer.is_global_zero:
            return
        names = list(self.trainer.datamodule.label_names)
        folder = Path(self.trainer.default_root_dir) / "confusion"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "test.png"
        plot_confusion(matrix, names, "test: gold (rows) vs predicted, row-normalised").savefig(
            path, dpi=90
        )
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="test/confusion", images=[str(path)])

    def attention_maps(self, batch: Sequence) -> AttentionSnapshot:
        """Every layer's per-head attention over the words of the samples in ``batch``.

        Piece-level weights are turned into word-level ones: a word's row is the mean of its
        pieces' rows, its column the sum of its pieces' columns (so rows still sum to 1).
        <cls> is kept as a word of its own.
        """
        ids, word_ids, words = batch[0], batch[1], batch[3]
        # <cls> (and a pretrained tokenizer's [SEP]) become word 0, the words 1..W; padding none.
        units = torch.where(ids == self._pad_id(), -1, word_ids + 1)  # (N, T)
        n_units = int(units.max().item()) + 1
        rows = word_pooling_matrix(units, n_units, "mean")  # (N, W+1, T)
        columns = (rows > 0).float()  # (N, W+1, T)
        with keep_attention_weights(self.net) as blocks:
            self(ids, word_ids, n_units - 1, _chars(batch))
            layers = [block.attention_weights for block in blocks]  # each (N, H, T, T)
        labels = [["<cls>", *w] + [""] * (n_units - 1 - len(w)) for w in words]
        maps = []
        for i, weights in enumerate(layers):
            pooled = (
                rows[:, None] @ weights @ columns[:, None].transpose(-1, -2)
            )  # (N, H, W+1, W+1)
            maps.append(AttentionMap(f"layer{i}", pooled, labels, labels))
        return AttentionSnapshot(maps)


class SequenceClassificationTask(_TextTask):
    """Cross-entropy on a label per sentence for a ``TransformerTextClassifier`` (called as
    ``net(ids)``) or a ``BertSentimentClassifier`` (whose ``forward`` takes a
    ``key_padding_mask``: it is given the batch's padding, since a pretrained vocabulary's pad
    id is its own).

    Logs ``{train,val,test}/loss``, ``{train,val,test}/acc`` and ``val/acc_best``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        num_classes: int = 2,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(net, optimizer, scheduler, num_classes, label_smoothing)
        self.takes_padding = "key_padding_mask" in inspect.signature(net.forward).parameters

    def forward(self, ids: Tensor, padding: Tensor | None = None) -> Tensor:
        """ids, padding (True at padding): (B, T) -> logits (B, num_classes)."""
        return self.net(ids, padding) if self.takes_padding else self.net(ids)

    def _outputs(self, batch: Sequence) -> tuple[Tensor, Tensor, Tensor]:
        ids, labels = batch[0], batch[1]
        logits = self(ids, _padding(batch))  # (B, K)
        return self._loss(logits, labels), logits, labels

    def attention_maps(self, batch: Sequence) -> AttentionSnapshot:
        """Every layer's per-head attention over the tokens (<cls> and pieces) of ``batch``."""
        ids, padding = batch[0], _padding(batch)
        length = int((~padding).sum(dim=1).max().item())
        ids, padding = ids[:, :length], padding[:, :length]  # (N, T): no column of padding only
        with keep_attention_weights(self.net) as blocks:
            self(ids, padding)
            layers = [block.attention_weights for block in blocks]  # each (N, H, T, T)
        labels = self._piece_labels(ids)
        return AttentionSnapshot(
            [AttentionMap(f"layer{i}", w, labels, labels) for i, w in enumerate(layers)]
        )


def _chars(batch: Sequence) -> Tensor | None:
    """A tagging batch's words spelt out (B, W, L), or None for a batch without them."""
    return batch[5] if len(batch) > 5 else None


def _padding(batch: Sequence) -> Tensor:
    """The batch's padding mask (B, T), True at padding; from <pad> ids for a batch without."""
    return batch[3] if len(batch) > 3 else batch[0] == PAD_ID


def plot_confusion(matrix: Tensor, names: list[str], title: str) -> Figure:
    """A (K, K) confusion matrix as a heat map, each row divided by its total."""
    counts = matrix.float()
    shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)  # (K, K)
    size = 2.0 + 0.3 * len(names)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = list(range(len(names)))
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
