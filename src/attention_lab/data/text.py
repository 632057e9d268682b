"""What the sentence data modules (``ud.py``, ``sst2.py``) share: the settings, a subword
tokenizer with <cls> trained on the training text and cached, and the data loaders.

A module that sets ``accepts_pretrained`` (SST-2, UD) also takes, as ``data.tokenizer``, a
pretrained BERT checkpoint (a directory or a hub id): its own WordPiece tokenizer then replaces
the subword one, with the checkpoint's special-token ids, and sentences are cut at the checkpoint's
``max_position_embeddings`` (read from its ``config.json``; no model is imported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attention_lab.data.batching import SplitsDataModule
from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.data.tokenizer import (
    CLS_ID,
    PAD_ID,
    TOKENIZER_KINDS,
    SubwordTokenizer,
    check_tokenizer_settings,
    fingerprint,
    load_or_train,
)
from attention_lab.errors import ConfigError
from attention_lab.hub import resolve_bert_dir

TOKENIZER_SETTING = "data.tokenizer"


class TextDataModule(SplitsDataModule):
    """Base of a data module whose splits are "train", "val" and "test" datasets of sentences.

    A subclass sets ``collate`` and ``folder`` and gives ``training_texts``; ``setup`` fills
    ``datasets``, each with a ``lengths`` property (training batches hold similar lengths).
    ``vocab_size`` is the tokenizer's number of ids; the setting of that name (kept as
    ``max_pieces``) is the most it may have.
    """

    collate: Callable[[list[Any]], Any]
    accepts_pretrained = False  # whether data.tokenizer may name a pretrained BERT checkpoint

    def __init__(
        self,
        *,
        data_dir: str,
        max_len: int,
        tokenizer: str = "bpe",
        vocab_size: int = 8000,
        tokenizer_dir: str | None = None,
        **loading: Any,
    ) -> None:
        """``loading``: ``SplitsDataModule``'s batch_size, eval_batch_size, num_workers, seed."""
        super().__init__(**loading)
        self.pretrained = self.accepts_pretrained and tokenizer not in TOKENIZER_KINDS
        if not self.pretrained:
            check_tokenizer_settings(kind=tokenizer, vocab_size=vocab_size)
        if max_len < 2:
            raise ConfigError(f"data.max_len={max_len} must be at least 2 (<cls> and a piece)")
        self.data_dir = data_dir
        self.tokenizer_kind = tokenizer
        self.max_pieces = vocab_size
        self.tokenizer_dir = tokenizer_dir
        self.max_len = max_len
        self._tokenizer: SubwordTokenizer | BertTokenizer | None = None
        self._max_positions: int | None = None

    @property
    def folder(self) -> Path:
        """Where the data files (and, by default, the cached tokenizer) live."""
        raise NotImplementedError

    def training_texts(self) -> list[str]:
        """The text the tokenizer learns from: the training split's, one string per sentence."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> SubwordTokenizer | BertTokenizer:
        """The subword tokenizer with <cls>, trained on ``training_texts`` or read from the cache
        (``tokenizer_dir``, else ``folder``); or the pretrained checkpoint's own tokenizer."""
        if self._tokenizer is None and self.pretrained:
            folder = resolve_bert_dir(self.tokenizer_kind, TOKENIZER_SETTING)
            self._tokenizer = BertTokenizer.from_pretrained(str(folder), TOKENIZER_SETTING)
            config = folder / "config.json"
            if config.exists():
                positions = json.loads(config.read_text()).get("max_position_embeddings")
                self._max_positions = int(positions) if positions else None
        elif self._tokenizer is None:
            texts = self.training_texts()
            folder = Path(self.tokenizer_dir) if self.tokenizer_dir else self.folder
            name = f"tokenizer-{self.tokenizer_kind}{self.max_pieces}-cls-{fingerprint(texts)}.json"
            self._tokenizer = load_or_train(
                texts,
                kind=self.tokenizer_kind,
                vocab_size=self.max_pieces,
                cache_file=folder / name,
                cls_token=True,
            )
        return self._tokenizer

    @property
    def max_tokens(self) -> int:
        """Most tokens per sentence: ``max_len``, capped by a pretrained checkpoint's position
        table (``max_position_embeddings``)."""
        self.tokenizer  # noqa: B018  (reads the checkpoint's config, once)
        return min(self.max_len, self._max_positions or self.max_len)

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id (a pretrained checkpoint's own, else <pad>)."""
        return self.tokenizer.pad_id if self.pretrained else PAD_ID

    @property
    def vocab_size(self) -> int:
        """The tokenizer's number of ids, special tokens included."""
        return self.tokenizer.vocab_size

    def synthetic_batch(self, length: int, generator: torch.Generator | None = None) -> Any:
        """A training batch made without the data, in the loaders' format: ``batch_size``
        sentences of ``length`` tokens each (<cls> then random piece ids; no padding) with
        random labels. ``bench train`` times steps on it: a step's cost does not depend on
        which pieces a sentence holds."""
        if length < 2:
            raise ValueError(f"length={length}: a sentence needs <cls> and at least one piece")
        vocab = self.tokenizer.vocab_size if self.pretrained else self.max_pieces
        cls_id = self.tokenizer.cls_id if self.pretrained else CLS_ID
        items = []
        for _ in range(self.batch_size):
            ids = torch.randint(CLS_ID + 1, vocab, (length,), generator=generator)  # (T,)
            ids[0] = cls_id
            items.append(self.synthetic_item(ids, generator))
        return self.collate_fn(items)

    def synthetic_item(self, ids: Tensor, generator: torch.Generator | None) -> Any:
        """One sample as the datasets give it, around the token ids ``ids`` (T,)."""
        raise NotImplementedError

    @property
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """What the loaders batch samples with: ``collate``, padding with the tokenizer's pad id."""
        return partial(type(self).collate, pad_id=self.pad_id)
