"""Translation as a LightningModule: teacher-forced training, decoding and BLEU at evaluation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric

from attention_lab.attention_maps import AttentionMap, AttentionSnapshot
from attention_lab.bleu import CorpusBLEU
from attention_lab.data.multi30k import TranslationBatch
from attention_lab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer
from attention_lab.models.decoding import beam_search, greedy_decode
from attention_lab.models.seq2seq import Seq2SeqTransformer
from attention_lab.nn.blocks import DecoderBlock, EncoderBlock, keep_attention_weights
from attention_lab.optim import OptimizerFactory, SchedulerFactory
from attention_lab.tasks.base import Task

log = logging.getLogger(__name__)

DECODINGS = ("greedy", "beam")
SAMPLE_COLUMNS = ["source", "reference", "hypothesis"]
TOKENIZERS_KEY = "tokenizers"  # checkpoint entry: {"src": json, "tgt": json}


class TranslationTask(Task):
    """Trains a ``Seq2SeqTransformer`` with label-smoothed cross-entropy on the next target token
    (padding ignored); evaluates perplexity and the BLEU of decoded translations.

    Logs ``train/loss``; ``{val,test}/loss`` (label-smoothed, the training objective) and
    ``{val,test}/ppl`` (exp of the plain per-token cross-entropy); ``{val,test}/bleu`` and
    ``{val,test}/bleu_lc`` (see ``attention_lab.bleu``), ``val/bleu_best``; and each validation,
    a W&B table ``val/samples`` of the first ``n_samples`` validation sentences.

    Validation decodes with ``val_decoding`` ("greedy", cheap) the first ``val_bleu_sentences``
    sentences (None: all); test decodes everything with ``test_decoding`` ("beam"). Outputs are
    at most ``max_extra_len`` tokens longer than their source. Texts come from the data module's
    target tokenizer (``trainer.datamodule.tgt_tokenizer``).
    """

    def __init__(
        self,
        net: Seq2SeqTransformer,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        label_smoothing: float = 0.1,
        val_decoding: str = "greedy",
        test_decoding: str = "beam",
        beam_size: int = 5,
        length_penalty: float = 0.6,
        max_extra_len: int = 50,
        val_bleu_sentences: int | None = None,
        n_samples: int = 8,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        for name, value in (("val_decoding", val_decoding), ("test_decoding", test_decoding)):
            if value not in DECODINGS:
                choices = ", ".join(DECODINGS)
                raise ValueError(f"{name}={value!r} is not a known decoding; choose from {choices}")
        if beam_size < 1:
            raise ValueError(f"beam_size={beam_size} must be at least 1 (1 is greedy decoding)")
        if max_extra_len < 1:
            raise ValueError(f"max_extra_len={max_extra_len} must be at least 1")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()
        self.val_bleu, self.test_bleu = CorpusBLEU(), CorpusBLEU()
        self.val_bleu_lc = CorpusBLEU(lowercase_tokenized=True)
        self.test_bleu_lc = CorpusBLEU(lowercase_tokenized=True)
        self.val_bleu_best = MaxMetric()
        self.decoded = 0  # sentences decoded so far in this evaluation epoch
        self.samples: list[list[str]] = []

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src: (B, S), tgt_in: (B, T) -> next-token logits (B, T, V)."""
        return self.net(src, tgt_in)

    def _logits_and_targets(self, batch: TranslationBatch) -> tuple[Tensor, Tensor]:
        """Teacher-forced next-token logits (B*(T-1), V) and the tokens they predict."""
        tgt_in, tgt_out = batch.tgt[:, :-1], batch.tgt[:, 1:]  # (B, T-1), (B, T-1)
        return self(batch.src, tgt_in).flatten(0, 1), tgt_out.flatten()

    def _smoothed_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(
            logits, targets, ignore_index=PAD_ID, label_smoothing=self.hparams.label_smoothing
        )

    def loss(self, batch: TranslationBatch) -> Tensor:
        """The label-smoothed cross-entropy per target token."""
        return self._smoothed_loss(*self._logits_and_targets(batch))

    def _losses(self, batch: TranslationBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(label-smoothed loss, plain cross-entropy, number of target tokens), per token."""
        logits, targets = self._logits_and_targets(batch)
        loss = self._smoothed_loss(logits, targets)
        with torch.no_grad():
            nll = F.cross_entropy(logits, targets, ignore_index=PAD_ID)
        return loss, nll, (targets != PAD_ID).sum()

    def training_step(self, batch: TranslationBatch, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        n_pairs = batch.src.size(0)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n_pairs)
        return loss

    def validation_step(self, batch: TranslationBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: TranslationBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _evaluation_step(self, batch: TranslationBatch, split: str) -> None:
        loss, nll, n_tokens = self._losses(batch)
        getattr(self, f"{split}_loss").update(loss, weight=n_tokens)
        getattr(self, f"{split}_nll").update(nll, weight=n_tokens)

        n_decode = len(batch.src_text) if split == "test" else self._val_to_decode(batch)
        if n_decode == 0:
            return
        decoding = self.hparams.test_decoding if split == "test" else self.hparams.val_decoding
        hypotheses = self.translate_ids(batch.src[:n_decode], decoding=decoding)
        sources, references = batch.src_text[:n_decode], batch.tgt_text[:n_decode]
        getattr(self, f"{split}_bleu").update(hypotheses, references)
        getattr(self, f"{split}_bleu_lc").update(hypotheses, references)
        self.decoded += n_decode
        if split == "val":
            wanted = self.hparams.n_samples - len(self.samples)
            rows = zip(sources[:wanted], references[:wanted], hypotheses[:wanted], strict=True)
            self.samples += [list(row) for row in rows]

    def _val_to_decode(self, batch: TranslationBatch) -> int:
        """How many sentences of this validation batch to decode: up to ``val_bleu_sentences``
        in the epoch, and in the sanity check only enough to see that decoding runs."""
        limit = self.hparams.val_bleu_sentences
        if self.trainer.sanity_checking:
            limit = min(limit if limit is not None else math.inf, max(self.hparams.n_samples, 1))
        if limit is None:
            return len(batch.src_text)
        return int(max(0, min(len(batch.src_text), limit - self.decoded)))

    def labelled_attention(
        self, batch: TranslationBatch | Sequence
    ) -> list[tuple[str, Tensor, list[list[str]], list[list[str]]]]:
        """Every attention module's weights in a teacher-forced pass over ``batch``, labelled.

        ``batch``: a ``TranslationBatch`` or its fields in order (src, tgt, ...). Returns, for
        each encoder layer, then each decoder layer's self- and cross-attention, a tuple
        (name, weights (N, H, T, S), query labels, key labels): "encoder/layer{i}" (source over
        source), "decoder/layer{i}/self" (target over target), "decoder/layer{i}/cross" (target
        over source: the alignment). Labels are subword pieces, <pad> included. These are the
        fields of an attention-map callback's map of one module.
        """
        src, tgt_in = batch[0], batch[1][:, :-1]  # (N, S), (N, T)
        src_pieces = [self.trainer.datamodule.src_tokenizer.id_to_piece(r) for r in src.tolist()]
        tgt_pieces = [self.tgt_tokenizer.id_to_piece(r) for r in tgt_in.tolist()]
        maps = []
        with keep_attention_weights(self.net) as blocks:  # the weights are dropped on exit
            self.net(src, tgt_in)
            for i, block in enumerate(b for b in blocks if isinstance(b, EncoderBlock)):
                maps.append((f"encoder/layer{i}", block.attention_weights, src_pieces, src_pieces))
            for i, block in enumerate(b for b in blocks if isinstance(b, DecoderBlock)):
                name = f"decoder/layer{i}"
                maps += [
                    (f"{name}/self", block.self_attention_weights, tgt_pieces, tgt_pieces),
                    (f"{name}/cross", block.cross_attention_weights, tgt_pieces, src_pieces),
                ]
        return maps

    def attention_maps(self, batch: TranslationBatch | Sequence) -> AttentionSnapshot:
        """What the attention-map callback draws: ``labelled_attention`` as a snapshot."""
        return AttentionSnapshot(
            [AttentionMap(*fields) for fields in self.labelled_attention(batch)]
        )

    @property
    def tgt_tokenizer(self) -> SubwordTokenizer:
        """The data module's target tokenizer, which turns generated ids back into text."""
        return self.trainer.datamodule.tgt_tokenizer

    def translate_ids(self, src: Tensor, *, decoding: str = "beam") -> list[str]:
        """src: (B, S) source ids -> B detokenised translations."""
        max_len = src.size(1) + self.hparams.max_extra_len
        settings = {"bos_id": BOS_ID, "eos_id": EOS_ID, "max_len": max_len}
        if decoding == "beam":
            ids = beam_search(
                self.net,
                src,
                beam_size=self.hparams.beam_size,
                length_penalty=self.hparams.length_penalty,
                **settings,
            )
        else:
            ids = greedy_decode(self.net, src, **settings)
        return [self.tgt_tokenizer.decode(sentence) for sentence in ids]

    def on_validation_epoch_start(self) -> None:
        self.decoded, self.samples = 0, []

    def on_test_epoch_start(self) -> None:
        self.decoded = 0

    def on_train_start(self) -> None:
        # The sanity-check batches must not count towards the best validation BLEU.
        self.val_bleu_best.reset()

    def on_validation_epoch_end(self) -> None:
        bleu = self._log_epoch_metrics("val")
        if self.trainer.sanity_checking:
            return
        if bleu is not None:
            self.val_bleu_best(bleu)
            self.log("val/bleu_best", self.val_bleu_best.compute())
        self._log_samples()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, split: str) -> Tensor | None:
        """Log loss, perplexity and (when anything was decoded) BLEU; returns the BLEU."""
        loss, nll = getattr(self, f"{split}_loss"), getattr(self, f"{split}_nll")
        self.log(f"{split}/loss", loss.compute(), prog_bar=True)
        self.log(f"{split}/ppl", torch.exp(nll.compute()), prog_bar=split == "val")
        loss.reset()
        nll.reset()
        scores = {}
        for name in ("bleu", "bleu_lc"):
            metric = getattr(self, f"{split}_{name}")
            if self.decoded:
                scores[name] = 100 * metric.compute()
                self.log(f"{split}/{name}", scores[name], prog_bar=name == "bleu")
            metric.reset()
        return scores.get("bleu")

    def _log_samples(self) -> None:
        if not self.samples:
            return
        for source, reference, hypothesis in self.samples[:2]:
            log.info("source: %s\nreference: %s\nhypothesis: %s", source, reference, hypothesis)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="val/samples", columns=SAMPLE_COLUMNS, data=self.samples)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The vocabularies travel with the weights (as JSON strings, which load with
        # weights_only=True): ``python -m attention_lab.cli.translate`` then needs no data.
        datamodule = self.trainer.datamodule
        checkpoint[TOKENIZERS_KEY] = {
            "src": datamodule.src_tokenizer.to_str(),
            "tgt": datamodule.tgt_tokenizer.to_str(),
        }
