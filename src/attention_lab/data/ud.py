"""Universal Dependencies treebanks (CoNLL-U) for part-of-speech tagging, as a LightningDataModule.

Default: UD English EWT, ``en_ewt-ud-{train,dev,test}.conllu`` (12,544 / 2,001 / 2,077
sentences), read gzipped (``.conllu.gz``) or plain. Missing files are downloaded from the
treebank's GitHub repository (github.com/UniversalDependencies/<treebank>, branch master) into
``data_dir/<treebank in lower case, "-" as "_">``, e.g. ``ud_english_ewt``.

CoNLL-U: one word per line in 10 tab-separated columns, a blank line after each sentence,
comment lines starting with "#". Only lines whose ID is an integer are words: a multiword token
("1-2  don't") spans words that follow it on their own lines, and an empty node ("8.1") is not
in the surface sentence. The tag is UPOS (column 4, the 17 universal tags) or XPOS (column 5).

Words are given, so the subword tokenizer (trained on the training words) encodes each sentence
as <cls> + the pieces of its words, with the word index of every piece; the tags stay one per
word. Training batches hold sentences of similar length.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.data.chars import encode_chars
from attention_lab.data.download import download_missing
from attention_lab.data.text import TextDataModule
from attention_lab.data.tokenizer import (
    PAD_ID,
    SubwordTokenizer,
)
from attention_lab.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

UD_URL = "https://raw.githubusercontent.com/UniversalDependencies/{treebank}/master/{name}"
SPLITS = {"train": "train", "val": "dev", "test": "test"}
TAG_COLUMNS = {"upos": 3, "xpos": 4}  # 0-based column of each tag set
UPOS_TAGS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
IGNORE_INDEX = -100  # the tag of padding: cross-entropy and the metrics skip it
WORD_ID = re.compile(r"\d+")
MULTIWORD_ID = re.compile(r"\d+-\d+")
EMPTY_NODE_ID = re.compile(r"\d+\.\d+")


@dataclass
class TaggedSentence:
    """One sentence: its words and a tag per word, and the line where it starts (for errors)."""

    words: list[str]
    tags: list[str]
    line: int


def read_conllu(path: Path, tag_column: str = "upos") -> list[TaggedSentence]:
    """The sentences of a CoNLL-U file (gzip or plain), tagged with ``tag_column``.

    Malformed lines (not 10 columns, an ID that is none of "3", "3-4", "3.1") and a file with no
    sentence raise one ``DataFormatError`` naming the file and the line.
    """
    if tag_column not in TAG_COLUMNS:
        raise ConfigError(
            f"data.tag_column={tag_column!r} is not a tag column; choose one of "
            f"{', '.join(TAG_COLUMNS)}"
        )
    column = TAG_COLUMNS[tag_column]
    opener = gzip.open if path.suffix == ".gz" else open
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    with opener(path, "rt", encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if words:
                    sentences.append(TaggedSentence(words, tags, start))
                words, tags = [], []
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise DataFormatError(
                    f"{path}, line {number}: a CoNLL-U word line has 10 tab-separated columns, "
                    f"this one has {len(fields)}: {line[:80]!r}"
                )
            word_id = fields[0]
            if MULTIWORD_ID.fullmatch(word_id) or EMPTY_NODE_ID.fullmatch(word_id):
                continue  # not a word of the surface sentence
            if not WORD_ID.fullmatch(word_id):
                raise DataFormatError(
                    f"{path}, line {number}: ID {word_id!r} is not a word index (3), a multiword "
                    f"range (3-4) or an empty node (3.1)"
                )
            if not words:
                start = number
            words.append(fields[1])
            tags.append(fields[column])
    if words:
        sentences.append(TaggedSentence(words, tags, start))
    if not sentences:
        raise DataFormatError(
            f"{path}, line 1: no sentence in the file; replace it with the UD file"
        )
    return sentences


def check_tags(path: Path, sentences: Sequence[TaggedSentence], tag_names: Sequence[str]) -> None:
    """One ``DataFormatError`` naming the file and line of the first tag outside ``tag_names``."""
    known = set(tag_names)
    for sentence in sentences:
        for offset, tag in enumerate(sentence.tags):
            if tag not in known:
                raise DataFormatError(
                    f"{path}, line {sentence.line + offset}: tag {tag!r} is not one of the "
                    f"{len(known)} tags ({', '.join(sorted(known)[:20])}, ...)"
                )


class TaggingBatch(NamedTuple):
    """A padded batch of sentences: pieces for the model, tags and words per sentence."""

    ids: Tensor  # (B, T) <cls> + pieces, padded with <pad>
    word_ids: Tensor  # (B, T) the word of each piece; -1 for <cls> and padding
    tags: Tensor  # (B, W) a tag index per word, IGNORE_INDEX for padding
    words: list[list[str]]
    unseen: Tensor  # (B, W) True where the word's form never occurs in the training split
    chars: Tensor | None = None  # (B, W, L) each word's characters (data/chars.py)


# One sentence: pieces, word index per piece, tags, words, and which words training never saw.
TaggedItem = tuple[Tensor, Tensor, Tensor, list[str], Tensor]


class TaggingDataset(Dataset):
    """Sentences as piece ids, word indices and tag indices."""

    def __init__(
        self,
        ids: list[list[int]],
        word_ids: list[list[int]],
        tags: list[list[int]],
        words: list[list[str]],
        known_words: set[str] | frozenset[str],
    ) -> None:
        self.ids = [torch.tensor(i, dtype=torch.long) for i in ids]
        self.word_ids = [torch.tensor(w, dtype=torch.long) for w in word_ids]
        self.tags = [torch.tensor(t, dtype=torch.long) for t in tags]
        self.words = words
        self.unseen = [torch.tensor([w not in known_words for w in ws]) for ws in words]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> TaggedItem:
        return (
            self.ids[index],
            self.word_ids[index],
            self.tags[index],
            self.words[index],
            self.unseen[index],
        )

    @property
    def lengths(self) -> list[int]:
        """Pieces per sentence (<cls> included): what a batch pads to."""
        return [len(i) for i in self.ids]


def collate_tagged(items: list[TaggedItem], pad_id: int = PAD_ID) -> TaggingBatch:
    """Pad pieces with ``pad_id`` (word -1), tags with ``IGNORE_INDEX`` and ``unseen`` with
    False; spell the words out (``chars``) for the models that read characters."""
    ids, word_ids, tags, words, unseen = zip(*items, strict=True)
    pad = torch.nn.utils.rnn.pad_sequence
    return TaggingBatch(
        ids=pad(list(ids), batch_first=True, padding_value=pad_id),  # (B, T)
        word_ids=pad(list(word_ids), batch_first=True, padding_value=-1),  # (B, T)
        tags=pad(list(tags), batch_first=True, padding_value=IGNORE_INDEX),  # (B, W)
        words=list(words),
        unseen=pad(list(unseen), batch_first=True, padding_value=False),  # (B, W)
        chars=encode_chars(words),  # (B, W, L)
    )


def encode_sentences(
    tokenizer: SubwordTokenizer | BertTokenizer, sentences: Sequence[Sequence[str]]
) -> tuple[list[list[int]], list[list[int]]]:
    """(<cls> + pieces, -1 + word index per piece) of each sentence of words; with a pretrained
    checkpoint's tokenizer, its [CLS] pieces [SEP] (-1 for both)."""
    if isinstance(tokenizer, BertTokenizer):
        return tokenizer.encode_words(sentences)
    ids, word_ids = [], []
    for pieces in tokenizer.encode_words_batch(sentences):
        ids.append([tokenizer.cls_id, *pieces.ids])
        word_ids.append([-1, *pieces.word_ids])
    return ids, word_ids


def treebank_folder(data_dir: str | Path, treebank: str) -> Path:
    """``data_dir/ud_english_ewt`` for the treebank ``UD_English-EWT``."""
    return Path(data_dir) / treebank.lower().replace("-", "_")


class UDDataModule(TextDataModule):
    """A UD treebank's train / dev / test sentences for tagging; see the module docstring.

    After ``prepare_data``: ``tokenizer`` and its size ``vocab_size`` (the setting of that name
    is the most pieces it may have), ``tag_names`` and ``num_tags``, which ``training.py``
    hands to the model. ``max_len`` is the most pieces (with <cls>) a sentence may have;
    a longer one is an error naming its file and line, since truncating would drop words.
    """

    def __init__(
        self,
        *,
        treebank: str = "UD_English-EWT",
        file_prefix: str = "en_ewt",
        tag_column: str = "upos",
        max_len: int = 512,
        **settings: Any,
    ) -> None:
        """``settings``: ``TextDataModule``'s (data_dir, tokenizer, vocab_size, batch sizes...)."""
        super().__init__(max_len=max_len, **settings)
        if tag_column not in TAG_COLUMNS:
            raise ConfigError(
                f"data.tag_column={tag_column!r} is not a tag column; choose one of "
                f"{', '.join(TAG_COLUMNS)}"
            )
        self.treebank = treebank
        self.file_prefix = file_prefix
        self.tag_column = tag_column
        self._sentences: dict[str, list[TaggedSentence]] = {}
        self._tag_names: list[str] | None = None

    collate = staticmethod(collate_tagged)
    accepts_pretrained = True

    @property
    def folder(self) -> Path:
        """Where the treebank's files (and the cached tokenizer) live."""
        return treebank_folder(self.data_dir, self.treebank)

    def split_file(self, split: str) -> Path:
        """The split's file: ``.conllu.gz`` if there, else ``.conllu`` (what a download gives)."""
        name = f"{self.file_prefix}-ud-{SPLITS[split]}.conllu"
        gzipped = self.folder / f"{name}.gz"
        return gzipped if gzipped.is_file() else self.folder / name

    def prepare_data(self) -> None:
        files = [self.split_file(split) for split in SPLITS]
        download_missing(
            [(UD_URL.format(treebank=self.treebank, name=path.name), path) for path in files],
            name=self.treebank,
            expected=f"{self.file_prefix}-ud-{{train,dev,test}}.conllu[.gz]",
        )
        self.tokenizer  # noqa: B018  (trained or loaded here, once)
        for split in SPLITS:
            self.sentences(split)  # fail early on bad files
        self.tag_names  # noqa: B018  (unknown tags fail here)

    def sentences(self, split: str) -> list[TaggedSentence]:
        """The split's tagged sentences (read once)."""
        if split not in self._sentences:
            self._sentences[split] = read_conllu(self.split_file(split), self.tag_column)
        return self._sentences[split]

    @property
    def tag_names(self) -> list[str]:
        """The tag set, in index order: the 17 UPOS tags, or the XPOS tags of the three splits.

        A UPOS tag outside the 17 is an error naming its file and line.
        """
        if self._tag_names is None:
            if self.tag_column == "upos":
                names = list(UPOS_TAGS)
            else:
                found = {t for split in SPLITS for s in self.sentences(split) for t in s.tags}
                names = sorted(found)
            for split in SPLITS:
                check_tags(self.split_file(split), self.sentences(split), names)
            self._tag_names = names
        return self._tag_names

    @property
    def label_names(self) -> list[str]:
        """``tag_names``, under the name the tasks read."""
        return self.tag_names

    @property
    def num_tags(self) -> int:
        """Size of the tag set."""
        return len(self.tag_names)

    def training_texts(self) -> list[str]:
        """The training sentences, words joined by spaces."""
        return [" ".join(s.words) for s in self.sentences("train")]

    def synthetic_item(self, ids: Tensor, generator: torch.Generator | None) -> TaggedItem:
        """``ids`` cut into words of 1.5 pieces on average, each with a random UPOS tag (the
        treebank's own tag set is known only from its files); no word unseen."""
        starts = torch.rand(len(ids) - 1, generator=generator) < 2 / 3  # a word starts here
        starts[0] = True
        word_ids = torch.cat([torch.tensor([-1]), starts.long().cumsum(0) - 1])  # (T,)
        n_words = int(word_ids[-1]) + 1
        tags = torch.randint(len(UPOS_TAGS), (n_words,), generator=generator)  # (W,)
        return ids, word_ids, tags, ["word"] * n_words, torch.zeros(n_words, dtype=torch.bool)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        index = {name: i for i, name in enumerate(self.tag_names)}
        known_words = frozenset(w for s in self.sentences("train") for w in s.words)
        for split in SPLITS:
            sentences = self.sentences(split)
            ids, word_ids = encode_sentences(self.tokenizer, [s.words for s in sentences])
            for sentence, pieces in zip(sentences, ids, strict=True):
                if len(pieces) > self.max_tokens:
                    raise DataFormatError(
                        f"{self.split_file(split)}, line {sentence.line}: the sentence has "
                        f"{len(pieces)} pieces with <cls>, more than "
                        f"{self.max_tokens} (data.max_len={self.max_len}, or the pretrained "
                        f"checkpoint's positions); raise data.max_len"
                    )
            tags = [[index[t] for t in s.tags] for s in sentences]
            words = [s.words for s in sentences]
            self.datasets[split] = TaggingDataset(ids, word_ids, tags, words, known_words)
