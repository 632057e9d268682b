"""Translate sentences with a checkpoint of a seq2seq run (``experiment=multi30k_transformer``).

    python -m attention_lab.cli.translate ckpt=outputs/runs/DATE/TIME/checkpoints/last.ckpt \\
        "Ein Mann fährt Fahrrad."
    zcat test.de.gz | python -m attention_lab.cli.translate ckpt=PATH decoding=greedy

Arguments are ``key=value`` settings and sentences; without sentences, one is read per line of
standard input. Settings: ``ckpt`` (required); ``config``, the run's Hydra config (default:
``.hydra/config.yaml`` of the run directory that holds ``checkpoints/``); ``decoding`` (beam |
greedy), ``beam_size``, ``length_penalty``, ``max_extra_len`` (default: the run's test settings).
The tokenizers are read from the checkpoint, so no data is needed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from attention_lab.cli.common import load_trained_run, parse_args, trained_net
from attention_lab.data.tokenizer import BOS_ID, EOS_ID, SubwordTokenizer
from attention_lab.errors import AttentionLabError, ConfigError
from attention_lab.models.decoding import beam_search, greedy_decode
from attention_lab.models.seq2seq import Seq2SeqTransformer
from attention_lab.tasks.translation import DECODINGS, TOKENIZERS_KEY

log = logging.getLogger(__name__)

SETTINGS = ("ckpt", "config", "decoding", "beam_size", "length_penalty", "max_extra_len")


class Translator:
    """A trained model with its tokenizers: ``translator(["Ein Hund."])`` -> ["A dog."]."""

    def __init__(
        self,
        model: Seq2SeqTransformer,
        src_tokenizer: SubwordTokenizer,
        tgt_tokenizer: SubwordTokenizer,
        *,
        decoding: str = "beam",
        beam_size: int = 5,
        length_penalty: float = 0.6,
        max_extra_len: int = 50,
    ) -> None:
        if decoding not in DECODINGS:
            raise ConfigError(
                f"decoding={decoding!r} is not known; choose one of {', '.join(DECODINGS)}"
            )
        if beam_size < 1:
            raise ConfigError(f"beam_size={beam_size} must be at least 1 (1 is greedy decoding)")
        self.model = model.eval()
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decoding = decoding
        self.beam_size = beam_size
        self.length_penalty = length_penalty
        self.max_extra_len = max_extra_len

    def __call__(self, sentences: list[str], batch_size: int = 64) -> list[str]:
        """Detokenised translations, one per sentence (sources longer than the model's
        ``max_len`` are cut to fit, with a logged warning)."""
        translations = []
        for start in range(0, len(sentences), batch_size):
            translations += self._translate_batch(sentences[start : start + batch_size])
        return translations

    def _translate_batch(self, sentences: list[str]) -> list[str]:
        keep = self.model.max_len - 1  # room for <eos>
        pieces = self.src_tokenizer.encode_batch(sentences)
        if too_long := sum(len(p) > keep for p in pieces):
            log.warning("%d sentences cut to the model's %d source tokens", too_long, keep)
        ids = [[*p[:keep], EOS_ID] for p in pieces]
        src = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(i) for i in ids], batch_first=True, padding_value=self.model.pad_id
        )  # (B, S)
        settings = {"bos_id": BOS_ID, "eos_id": EOS_ID, "max_len": src.size(1) + self.max_extra_len}
        if self.decoding == "beam":
            out = beam_search(
                self.model,
                src,
                beam_size=self.beam_size,
                length_penalty=self.length_penalty,
                **settings,
            )
        else:
            out = greedy_decode(self.model, src, **settings)
        return [self.tgt_tokenizer.decode(sentence) for sentence in out]


def load_translator(ckpt: str | Path, config: str | None = None, **settings: Any) -> Translator:
    """Model, weights and tokenizers from a checkpoint written by ``TranslationTask``."""
    checkpoint, cfg = load_trained_run(ckpt, config, TOKENIZERS_KEY, "translation")
    src_tokenizer = SubwordTokenizer.from_str(checkpoint[TOKENIZERS_KEY]["src"])
    tgt_tokenizer = SubwordTokenizer.from_str(checkpoint[TOKENIZERS_KEY]["tgt"])

    data_decided = SimpleNamespace(
        src_vocab_size=src_tokenizer.vocab_size,
        tgt_vocab_size=tgt_tokenizer.vocab_size,
        max_len=cfg.data.max_len,
    )
    model = trained_net(checkpoint, cfg, data_decided)
    hparams = checkpoint.get("hyper_parameters", {})
    defaults = {
        "decoding": hparams.get("test_decoding", "beam"),
        "beam_size": hparams.get("beam_size", 5),
        "length_penalty": hparams.get("length_penalty", 0.6),
        "max_extra_len": hparams.get("max_extra_len", 50),
    }
    return Translator(model, src_tokenizer, tgt_tokenizer, **{**defaults, **settings})


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints one translation per line."""
    settings, sentences = parse_args(sys.argv[1:] if argv is None else argv, SETTINGS)
    try:
        if "ckpt" not in settings:
            raise ConfigError("ckpt=PATH is required (a checkpoint of a translation run)")
        numbers = {"beam_size": int, "length_penalty": float, "max_extra_len": int}
        decoding = {k: numbers.get(k, str)(v) for k, v in settings.items() if k in numbers}
        if "decoding" in settings:
            decoding["decoding"] = settings["decoding"]
        translator = load_translator(settings["ckpt"], settings.get("config"), **decoding)
    except (AttentionLabError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not sentences:
        sentences = [line.strip() for line in sys.stdin if line.strip()]
    for translation in translator(sentences):
        print(translation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
