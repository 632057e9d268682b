"""Tag words with a checkpoint of a tagging run (``experiment=ud_pos_transformer``, or one over a
pretrained body: ``ud_pos_minilm``).

    python -m attention_lab.cli.tag ckpt=outputs/runs/DATE/TIME/checkpoints/epoch011.ckpt \\
        "The old man the boat ."

Arguments are ``key=value`` settings and sentences, whose words are separated by spaces (as in
the treebank: "do n't", "boat ."); without sentences, one is read per line of standard input.
Settings: ``ckpt`` (required); ``config``, the run's Hydra config (default: ``.hydra/config.yaml``
of the run directory that holds ``checkpoints/``). Prints each sentence as word/TAG pairs. The
tokenizer and the tag names are read from the checkpoint, so no data is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attention_lab.cli.common import TextPredictor, load_text_run, max_positions, run_command
from attention_lab.data.chars import encode_chars
from attention_lab.data.tokenizer import PAD_ID
from attention_lab.data.ud import encode_sentences
from attention_lab.errors import ConfigError
from attention_lab.models.text import reads_spelling

SETTINGS = ("ckpt", "config")


class Tagger(TextPredictor):
    """A trained tagger with its tokenizer: ``tagger([["The", "dog"]])`` -> [["DET", "NOUN"]]
    (``names``: the tag set)."""

    def _predict_batch(self, sentences: list[list[str]]) -> list[list[str]]:
        ids, word_ids = encode_sentences(self.tokenizer, sentences)
        max_len = max_positions(self.model)
        if too_long := [len(i) for i in ids if len(i) > max_len]:
            raise ConfigError(
                f"a sentence has {too_long[0]} pieces, more than the model's max_len={max_len}; "
                f"split it into shorter sentences"
            )
        pad = torch.nn.utils.rnn.pad_sequence
        pad_id = getattr(self.tokenizer, "pad_id", PAD_ID)  # a pretrained tokenizer's own
        ids_t = pad([torch.tensor(i) for i in ids], batch_first=True, padding_value=pad_id)
        words_t = pad([torch.tensor(w) for w in word_ids], batch_first=True, padding_value=-1)
        n_words = max(len(s) for s in sentences)
        if reads_spelling(self.model):
            logits = self.model(ids_t, words_t, n_words, encode_chars(sentences))
        else:
            logits = self.model(ids_t, words_t, n_words)
        best = logits.argmax(dim=-1)  # (B, W)
        return [
            [self.names[t] for t in row[: len(words)]]
            for row, words in zip(best.tolist(), sentences, strict=True)
        ]

    def tag_lines(self, lines: list[str]) -> list[str]:
        """Each line's words (split at spaces) as ``word/TAG`` pairs."""
        sentences = [line.split() for line in lines]
        return [
            " ".join(f"{w}/{t}" for w, t in zip(words, tags, strict=True))
            for words, tags in zip(sentences, self(sentences), strict=True)
        ]


def load_tagger(ckpt: str | Path, config: str | None = None) -> Tagger:
    """Model, weights, tokenizer and tag names from a checkpoint of ``TokenClassificationTask``."""
    return Tagger(*load_text_run(ckpt, config, "tagging"))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints one line of word/TAG pairs per sentence."""

    def load(settings: dict[str, str]):
        return load_tagger(settings["ckpt"], settings.get("config")).tag_lines

    return run_command(sys.argv[1:] if argv is None else argv, SETTINGS, load, "tagging")


if __name__ == "__main__":
    sys.exit(main())
