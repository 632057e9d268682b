"""Multi30k task 1 (image captions, German <-> English) as a LightningDataModule.

The raw gzip files of the official repository (github.com/multi30k/dataset, data/task1/raw):
train 29,000 sentence pairs, val 1,014, test = test_2016_flickr 1,000, one sentence a line, the
two languages aligned line by line. Missing files are downloaded into ``data_dir/multi30k``.

A subword tokenizer (see ``tokenizer.py``) is trained on the training split only, one shared by
both languages or one per language, and cached as JSON beside the data. Sentences become
source = pieces + <eos> and target = <bos> + pieces + <eos>; those longer than ``max_len``
tokens are truncated, and how many were is logged. Batches are padded to their longest
sentence; training batches hold sentences of similar length (``order.BucketBatchSampler``).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from attention_lab.data.batching import SplitsDataModule
from attention_lab.data.download import download_missing
from attention_lab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    SubwordTokenizer,
    check_tokenizer_settings,
    fingerprint,
    load_or_train,
)
from attention_lab.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLIT_FILES = {"train": "train", "val": "val", "test": "test_2016_flickr"}
LANGUAGES = ("de", "en", "fr", "cs")


def multi30k_folder(data_dir: str | Path) -> Path:
    """Where the Multi30k files (and the cached tokenizers) live: ``data_dir/multi30k``."""
    return Path(data_dir) / "multi30k"


def split_file(folder: Path, split: str, lang: str) -> Path:
    """The gzip file of one split in one language, e.g. ``test_2016_flickr.en.gz``."""
    return folder / f"{SPLIT_FILES[split]}.{lang}.gz"


def ensure_multi30k(data_dir: str | Path, langs: Sequence[str]) -> Path:
    """Use the files in ``data_dir/multi30k``, downloading the missing ones; returns the folder."""
    folder = multi30k_folder(data_dir)
    files = [split_file(folder, split, lang) for split in SPLIT_FILES for lang in langs]
    download_missing(
        [(f"{MULTI30K_URL}/{path.name}", path) for path in files],
        name="Multi30k",
        expected=f"{{train,val,test_2016_flickr}}.{{{','.join(langs)}}}.gz",
    )
    return folder


def read_lines(path: Path) -> list[str]:
    """The lines of a gzip text file, each with its whitespace collapsed to single spaces."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [" ".join(line.split()) for line in file]


def read_pairs(folder: Path, split: str, src_lang: str, tgt_lang: str) -> tuple[list[str], ...]:
    """(source sentences, target sentences) of one split; empty or unequal files are errors."""
    src_path, tgt_path = split_file(folder, split, src_lang), split_file(folder, split, tgt_lang)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not any(lines):
            raise DataFormatError(f"{path} has no sentences; replace it with the Multi30k file")
    if len(src) != len(tgt):
        raise DataFormatError(
            f"{src_path} has {len(src):,} lines but {tgt_path} has {len(tgt):,}: the two sides "
            f"of a parallel corpus must be aligned line by line"
        )
    return src, tgt


class TranslationBatch(NamedTuple):
    """A padded batch: token ids for the model, the raw sentences for BLEU and samples."""

    src: Tensor  # (B, S) source ids ending with <eos>, padded with <pad>
    tgt: Tensor  # (B, T) target ids <bos> ... <eos>, padded with <pad>
    src_text: list[str]
    tgt_text: list[str]


class TranslationDataset(Dataset):
    """Sentence pairs as token-id tensors, with the raw text kept beside them."""

    def __init__(
        self,
        src_ids: list[list[int]],
        tgt_ids: list[list[int]],
        src_text: list[str],
        tgt_text: list[str],
    ) -> None:
        self.src_ids = [torch.tensor(ids, dtype=torch.long) for ids in src_ids]
        self.tgt_ids = [torch.tensor(ids, dtype=torch.long) for ids in tgt_ids]
        self.src_text = src_text
        self.tgt_text = tgt_text

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str, str]:
        return self.src_ids[index], self.tgt_ids[index], self.src_text[index], self.tgt_text[index]

    @property
    def lengths(self) -> list[int]:
        """Per pair, the longer of source and target, in tokens: what a batch pads to."""
        return [max(len(s), len(t)) for s, t in zip(self.src_ids, self.tgt_ids, strict=True)]


def collate_pairs(items: list[tuple[Tensor, Tensor, str, str]]) -> TranslationBatch:
    """Pad each side to its longest sentence in the batch."""
    src, tgt, src_text, tgt_text = zip(*items, strict=True)
    pad = torch.nn.utils.rnn.pad_sequence
    return TranslationBatch(
        src=pad(list(src), batch_first=True, padding_value=PAD_ID),  # (B, S)
        tgt=pad(list(tgt), batch_first=True, padding_value=PAD_ID),  # (B, T)
        src_text=list(src_text),
        tgt_text=list(tgt_text),
    )


class Multi30kDataModule(SplitsDataModule):
    """Multi30k task 1, ``src_lang`` -> ``tgt_lang``, as subword ids; see the module docstring.

    After ``prepare_data`` the tokenizers are known: ``src_tokenizer``, ``tgt_tokenizer`` (one
    object when ``shared_vocab``) and their sizes ``src_vocab_size``, ``tgt_vocab_size``, which
    ``training.py`` hands to the model.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        src_lang: str = "de",
        tgt_lang: str = "en",
        tokenizer: str = "bpe",
        vocab_size: int = 8000,
        shared_vocab: bool = True,
        tokenizer_dir: str | None = None,
        max_len: int = 128,
        batch_size: int = 128,
        **loading: Any,
    ) -> None:
        """``loading``: ``SplitsDataModule``'s eval_batch_size, num_workers, seed."""
        super().__init__(batch_size=batch_size, **loading)
        check_tokenizer_settings(kind=tokenizer, vocab_size=vocab_size)
        for name, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if lang not in LANGUAGES:
                raise ConfigError(
                    f"data.{name}={lang!r} is not a Multi30k language; choose one of "
                    f"{', '.join(LANGUAGES)}"
                )
        if src_lang == tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both {src_lang!r}")
        if max_len < 3:
            raise ConfigError(f"data.max_len={max_len} must be at least 3 (<bos>, a token, <eos>)")
        self.data_dir = data_dir
        self.src_lang = src_lang
        self.tgt_lang = tgt_lang
        self.tokenizer_kind = tokenizer
        self.vocab_size = vocab_size
        self.shared_vocab = shared_vocab
        self.tokenizer_dir = tokenizer_dir
        self.max_len = max_len
        self._tokenizers: tuple[SubwordTokenizer, SubwordTokenizer] | None = None

    @property
    def folder(self) -> Path:
        """``data_dir/multi30k``."""
        return multi30k_folder(self.data_dir)

    def prepare_data(self) -> None:
        ensure_multi30k(self.data_dir, (self.src_lang, self.tgt_lang))
        for split in SPLIT_FILES:
            read_pairs(self.folder, split, self.src_lang, self.tgt_lang)  # fail early on bad files
        self._load_tokenizers()

    def _cache_file(self, langs: str, texts: Sequence[str]) -> Path:
        folder = Path(self.tokenizer_dir) if self.tokenizer_dir else self.folder
        name = f"tokenizer-{self.tokenizer_kind}{self.vocab_size}-{langs}-{fingerprint(texts)}.json"
        return folder / name

    def _load_tokenizers(self) -> tuple[SubwordTokenizer, SubwordTokenizer]:
        """Train (on the training split only) or load from the cache, once."""
        if self._tokenizers is not None:
            return self._tokenizers
        src, tgt = read_pairs(self.folder, "train", self.src_lang, self.tgt_lang)
        settings = {"kind": self.tokenizer_kind, "vocab_size": self.vocab_size}
        if self.shared_vocab:
            texts = src + tgt
            langs = f"{self.src_lang}+{self.tgt_lang}"
            shared = load_or_train(texts, cache_file=self._cache_file(langs, texts), **settings)
            self._tokenizers = (shared, shared)
        else:
            self._tokenizers = tuple(
                load_or_train(texts, cache_file=self._cache_file(lang, texts), **settings)
                for lang, texts in ((self.src_lang, src), (self.tgt_lang, tgt))
            )
        return self._tokenizers

    @property
    def src_tokenizer(self) -> SubwordTokenizer:
        """The source-language tokenizer (trained or loaded on first use)."""
        return self._load_tokenizers()[0]

    @property
    def tgt_tokenizer(self) -> SubwordTokenizer:
        """The target-language tokenizer (the same object as the source's when shared)."""
        return self._load_tokenizers()[1]

    def synthetic_batch(
        self, length: int, generator: torch.Generator | None = None
    ) -> TranslationBatch:
        """A training batch made without the data, in the loaders' format: ``batch_size``
        pairs of a source of ``length`` tokens (pieces, <eos>) and a target of ``length + 1``
        (<bos>, pieces, <eos>), random pieces of the ``vocab_size`` setting, no padding.
        ``bench train`` times steps on it: a step's cost does not depend on which pieces."""
        if length < 2:
            raise ValueError(f"length={length}: a sentence needs a piece and <eos>")

        def sentence(start: list[int]) -> Tensor:
            shape = (length - 1,)
            pieces = torch.randint(len(SPECIAL_TOKENS), self.vocab_size, shape, generator=generator)
            return torch.tensor([*start, *pieces.tolist(), EOS_ID])

        pairs = [(sentence([]), sentence([BOS_ID]), "", "") for _ in range(self.batch_size)]
        return collate_pairs(pairs)

    @property
    def src_vocab_size(self) -> int:
        """Source vocabulary size, specials included."""
        return self.src_tokenizer.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        """Target vocabulary size, specials included."""
        return self.tgt_tokenizer.vocab_size

    def encode_source(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Source ids (pieces + <eos>, at most ``max_len``) and how many were truncated."""
        pieces = self.src_tokenizer.encode_batch(texts)
        truncated = sum(len(p) > self.max_len - 1 for p in pieces)
        return [[*p[: self.max_len - 1], EOS_ID] for p in pieces], truncated

    def encode_target(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Target ids (<bos> + pieces + <eos>, at most ``max_len``) and how many were truncated."""
        pieces = self.tgt_tokenizer.encode_batch(texts)
        truncated = sum(len(p) > self.max_len - 2 for p in pieces)
        return [[BOS_ID, *p[: self.max_len - 2], EOS_ID] for p in pieces], truncated

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in SPLIT_FILES:
            src_text, tgt_text = read_pairs(self.folder, split, self.src_lang, self.tgt_lang)
            src_ids, src_cut = self.encode_source(src_text)
            tgt_ids, tgt_cut = self.encode_target(tgt_text)
            if src_cut or tgt_cut:
                log.warning(
                    "Multi30k %s: truncated %d source and %d target sentences (of %d) to "
                    "data.max_len=%d tokens",
                    split,
                    src_cut,
                    tgt_cut,
                    len(src_text),
                    self.max_len,
                )
            self.datasets[split] = TranslationDataset(src_ids, tgt_ids, src_text, tgt_text)

    @property
    def collate_fn(self) -> Callable[[list[Any]], TranslationBatch]:
        """Pads source and target with the pad id the tokenizers share."""
        return collate_pairs
