"""Words as characters, for models that read a word's spelling (``model.chars``).

A fixed code, the same for every data set and needing no vocabulary: 0 is padding, 1 any
character beyond Latin-1, 2 + its code point any other. Long words keep their first and last
``MAX_WORD_CHARS // 2`` characters: capitals and prefixes at the start, suffixes at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

CHAR_PAD, CHAR_OTHER = 0, 1
CHAR_VOCAB_SIZE = 2 + 256
MAX_WORD_CHARS = 20


def char_ids(word: str, max_chars: int = MAX_WORD_CHARS) -> list[int]:
    """A word's character ids, at most ``max_chars`` (its two ends when it is longer)."""
    if len(word) > max_chars:
        half = max_chars // 2
        word = word[:half] + word[len(word) - (max_chars - half) :]
    return [2 + ord(c) if ord(c) < 256 else CHAR_OTHER for c in word]


def encode_chars(sentences: Sequence[Sequence[str]], max_chars: int = MAX_WORD_CHARS) -> Tensor:
    """(B, W, L) character ids of each word of each sentence, padded with ``CHAR_PAD``: W the
    most words of a sentence, L the most characters of a word (at least 1)."""
    words = max((len(s) for s in sentences), default=0)
    coded = [[char_ids(w, max_chars) for w in sentence] for sentence in sentences]
    length = max((len(c) for sentence in coded for c in sentence), default=0) or 1
    empty = [CHAR_PAD] * length
    rows = [
        [ids + [CHAR_PAD] * (length - len(ids)) for ids in sentence]
        + [empty] * (words - len(sentence))
        for sentence in coded
    ]
    return torch.tensor(rows, dtype=torch.long).reshape(len(sentences), words, length)
