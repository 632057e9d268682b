"""Classify sentences with a checkpoint of a sentence-classification run
(``experiment=sst2_transformer``).

    python -m attention_lab.classify ckpt=outputs/runs/DATE/TIME/checkpoints/epoch007.ckpt \\
        "a gorgeous , witty film"

Arguments are ``key=value`` settings and sentences; without sentences, one is read per line of
standard input. Settings: ``ckpt`` (required); ``config``, the run's Hydra config (default:
``.hydra/config.yaml`` of the run directory that holds ``checkpoints/``). Prints, per sentence,
the label and its probability. The tokenizer and label names come from the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from attention_lab.commands import load_trained_run, run_command, trained_net
from attention_lab.data.tokenizer import PAD_ID, SubwordTokenizer
from attention_lab.errors import ConfigError
from attention_lab.tasks.text import LABEL_NAMES_KEY
from attention_lab.tasks.translation import TOKENIZERS_KEY

SETTINGS = ("ckpt", "config")


class Classifier:
    """A trained classifier: ``classifier(["a witty film"])`` -> [("positive", 0.93)]."""

    def __init__(self, model: nn.Module, tokenizer: SubwordTokenizer, labels: list[str]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = labels

    @torch.no_grad()
    def __call__(self, sentences: list[str], batch_size: int = 64) -> list[tuple[str, float]]:
        """(label, probability) per sentence; sentences longer than the model's max_len are cut."""
        results = []
        keep = self.model.text_encoder.max_len - 1  # room for <cls>
        for start in range(0, len(sentences), batch_size):
            pieces = self.tokenizer.encode_batch(sentences[start : start + batch_size])
            ids = [torch.tensor([self.tokenizer.cls_id, *p[:keep]]) for p in pieces]
            batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=PAD_ID)
            probs = self.model(batch).softmax(dim=-1)  # (B, K)
            best = probs.max(dim=-1)
            results += [
                (self.labels[i], p)
                for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)
            ]
        return results

    def classify_lines(self, lines: list[str]) -> list[str]:
        """``label<TAB>probability`` per line."""
        return [f"{label}\t{p:.3f}" for label, p in self(lines)]


def load_classifier(ckpt: str | Path, config: str | None = None) -> Classifier:
    """Model, weights, tokenizer and labels from a checkpoint of ``SequenceClassificationTask``."""
    checkpoint, cfg = load_trained_run(ckpt, config, LABEL_NAMES_KEY, "sentence classification")
    if TOKENIZERS_KEY not in checkpoint:  # a run with a pretrained checkpoint's tokenizer
        raise ConfigError(
            f"ckpt={ckpt} was trained with a pretrained checkpoint's tokenizer "
            f"(experiment=sst2_bert), which this command does not load yet"
        )
    tokenizer = SubwordTokenizer.from_str(checkpoint[TOKENIZERS_KEY]["src"])
    labels = list(checkpoint[LABEL_NAMES_KEY])
    decided = SimpleNamespace(vocab_size=tokenizer.vocab_size)
    return Classifier(trained_net(checkpoint, cfg, decided), tokenizer, labels)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints ``label<TAB>probability`` per sentence."""

    def load(settings: dict[str, str]):
        return load_classifier(settings["ckpt"], settings.get("config")).classify_lines

    return run_command(
        sys.argv[1:] if argv is None else argv, SETTINGS, load, "sentence classification"
    )


if __name__ == "__main__":
    sys.exit(main())
