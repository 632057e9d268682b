"""Classify sentences with a checkpoint of a sentence-classification run
(``experiment=sst2_transformer``, or one over a pretrained body: ``sst2_minilm``).

    python -m attention_lab.cli.classify ckpt=outputs/runs/DATE/TIME/checkpoints/epoch007.ckpt \\
        "a gorgeous , witty film"

Arguments are ``key=value`` settings and sentences; without sentences, one is read per line of
standard input. Settings: ``ckpt`` (required); ``config``, the run's Hydra config (default:
``.hydra/config.yaml`` of the run directory that holds ``checkpoints/``). Prints, per sentence,
the label and its probability. The tokenizer and label names come from the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attention_lab.cli.common import TextPredictor, load_text_run, max_positions, run_command
from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.data.tokenizer import PAD_ID

SETTINGS = ("ckpt", "config")


class Classifier(TextPredictor):
    """A trained classifier: ``classifier(["a witty film"])`` -> [("positive", 0.93)], the label
    and its probability per sentence (``names``: the labels); longer sentences than the model
    takes are cut."""

    def _predict_batch(self, sentences: list[str]) -> list[tuple[str, float]]:
        best = self._logits(sentences).softmax(dim=-1).max(dim=-1)  # over (B, K)
        return [
            (self.names[i], p)
            for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)
        ]

    def _logits(self, sentences: list[str]) -> torch.Tensor:
        """(B, K) for a batch: [CLS] pieces [SEP] with a pretrained tokenizer, else <cls> pieces."""
        if isinstance(self.tokenizer, BertTokenizer):
            ids, padding = self.tokenizer.encode(sentences, max_len=max_positions(self.model))
            return self.model(ids, padding)
        keep = max_positions(self.model) - 1  # room for <cls>
        pieces = self.tokenizer.encode_batch(sentences)
        ids = [torch.tensor([self.tokenizer.cls_id, *p[:keep]]) for p in pieces]
        batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=PAD_ID)
        return self.model(batch)

    def classify_lines(self, lines: list[str]) -> list[str]:
        """``label<TAB>probability`` per line."""
        return [f"{label}\t{p:.3f}" for label, p in self(lines)]


def load_classifier(ckpt: str | Path, config: str | None = None) -> Classifier:
    """Model, weights, tokenizer and labels from a checkpoint of ``SequenceClassificationTask``
    (a from-scratch classifier, or one over a pretrained body)."""
    return Classifier(*load_text_run(ckpt, config, "sentence classification"))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints ``label<TAB>probability`` per sentence."""

    def load(settings: dict[str, str]):
        return load_classifier(settings["ckpt"], settings.get("config")).classify_lines

    return run_command(
        sys.argv[1:] if argv is None else argv, SETTINGS, load, "sentence classification"
    )


if __name__ == "__main__":
    sys.exit(main())
