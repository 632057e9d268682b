"""SST-2, binary sentiment of movie-review sentences, as a LightningDataModule.

Files ``data_dir/sst2/{train,dev,test}.tsv.gz``: gzip TSV with a header ``sentence<TAB>label``,
label 0 (negative) or 1 (positive). train holds GLUE's 67,349 phrases, dev GLUE's 872 sentences,
test the 1,821 labelled test sentences of the original treebank (GLUE's own test has no labels).
Missing files are downloaded: train and dev from GLUE's SST-2.zip, test built from the
treebank's ``trees/test.txt`` (root sentiment 0-1 negative, 3-4 positive, 2 dropped; leaves
joined and lower-cased as GLUE ships them).

Sentences become <cls> + subword pieces (the tokenizer is trained on train only), at most
``max_len`` tokens; longer ones are truncated and how many were is logged. With
``tokenizer=<a BERT checkpoint dir or hub id>`` they become that checkpoint's [CLS] pieces [SEP],
padded with its [PAD] id and cut at ``max_len`` or its position table, whichever is shorter
(``experiment=sst2_bert``); the project's special-token ids are then not used.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from attention_lab.data.text import TextDataModule
from attention_lab.data.tokenizer import (
    PAD_ID,
)
from attention_lab.errors import DataFormatError, DataNotFoundError

log = logging.getLogger(__name__)

GLUE_SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
TREEBANK_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
SPLIT_FILES = {"train": "train.tsv.gz", "val": "dev.tsv.gz", "test": "test.tsv.gz"}
LABEL_NAMES = ("negative", "positive")
HEADER = "sentence\tlabel"
LEAF = re.compile(r"\(\d ([^()\s]+)\)")


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """(sentences, labels) of one split; a bad header, line or label names the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    sentences, labels = [], []
    with opener(path, "rt", encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if number == 1:
                if line != HEADER:
                    raise DataFormatError(
                        f"{path}, line 1: the header must be 'sentence<TAB>label', not {line!r}"
                    )
                continue
            if not line.strip():
                continue
            sentence, sep, label = line.rpartition("\t")
            if not sep or label.strip() not in ("0", "1"):
                raise DataFormatError(
                    f"{path}, line {number}: expected 'sentence<TAB>label' with label 0 or 1, "
                    f"got {line[:80]!r}"
                )
            sentences.append(" ".join(sentence.split()))
            labels.append(int(label))
    if not sentences:
        raise DataFormatError(f"{path}, line 1: no sentence in the file; replace it with SST-2's")
    return sentences, labels


def _write_tsv(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    partial = path.with_name(path.name + ".part")
    with gzip.open(partial, "wt", encoding="utf-8") as file:
        file.write(HEADER + "\n")
        file.writelines(f"{sentence}\t{label}\n" for sentence, label in rows)
    partial.replace(path)


def tree_to_example(tree: str) -> tuple[str, int] | None:
    """A treebank line "(3 (2 It) ...)" -> (lower-cased sentence, 0 or 1); None if neutral."""
    root = int(tree.strip()[1])
    if root == 2:
        return None
    words = [w.replace("-LRB-", "(").replace("-RRB-", ")") for w in LEAF.findall(tree)]
    return " ".join(words).lower(), int(root > 2)


def _fetch(url: str, timeout_s: float = 60.0) -> zipfile.ZipFile:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return zipfile.ZipFile(io.BytesIO(response.read()))


def ensure_sst2(data_dir: str | Path) -> Path:
    """Use the files in ``data_dir/sst2``, downloading the missing ones; returns the folder."""
    folder = Path(data_dir) / "sst2"
    missing = [split for split, name in SPLIT_FILES.items() if not (folder / name).is_file()]
    if not missing:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if {"train", "val"} & set(missing):
            glue = _fetch(GLUE_SST2_URL)
            for split, member in (("train", "SST-2/train.tsv"), ("val", "SST-2/dev.tsv")):
                lines = glue.read(member).decode("utf-8").splitlines()[1:]
                rows = [(s, int(y)) for s, _, y in (line.rpartition("\t") for line in lines)]
                _write_tsv(folder / SPLIT_FILES[split], rows)
        if "test" in missing:
            trees = _fetch(TREEBANK_URL).read("trees/test.txt").decode("utf-8").splitlines()
            rows = [ex for ex in map(tree_to_example, trees) if ex is not None]
            _write_tsv(folder / SPLIT_FILES["test"], rows)
        log.info("Downloaded SST-2 into %s", folder)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise DataNotFoundError(
            f"SST-2 is not complete in {folder.resolve()} ({', '.join(missing)} missing) and "
            f"could not be downloaded from {GLUE_SST2_URL} and {TREEBANK_URL} ({err}). Put "
            f"{{train,dev,test}}.tsv.gz there, or point data.data_dir=... (or the DATA_DIR "
            f"environment variable) at a folder that has sst2/."
        ) from err
    return folder


class TextBatch(NamedTuple):
    """A padded batch of sentences with their labels."""

    ids: Tensor  # (B, T) <cls> + pieces (or [CLS] pieces [SEP]), padded with the pad id
    labels: Tensor  # (B,)
    texts: list[str]
    padding: Tensor  # (B, T) True at padding


class TextDataset(Dataset):
    """Sentences as token-id tensors, with labels and the raw text."""

    def __init__(self, ids: list[list[int]], labels: list[int], texts: list[str]) -> None:
        self.ids = [torch.tensor(i, dtype=torch.long) for i in ids]
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        return self.ids[index], self.labels[index], self.texts[index]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]


def collate_texts(items: list[tuple[Tensor, Tensor, str]], pad_id: int = PAD_ID) -> TextBatch:
    """Pad each sentence to the longest in the batch with ``pad_id``."""
    ids, labels, texts = zip(*items, strict=True)
    lengths = torch.tensor([len(i) for i in ids])  # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=pad_id)
    return TextBatch(
        ids=padded,  # (B, T)
        labels=torch.stack(list(labels)),  # (B,)
        texts=list(texts),
        padding=torch.arange(padded.size(1)) >= lengths[:, None],  # (B, T)
    )


class SST2DataModule(TextDataModule):
    """SST-2 train / dev / test as <cls> + subword ids; see the module docstring.

    After ``prepare_data``: ``tokenizer`` and its size ``vocab_size`` (the setting of that name
    is the most pieces it may have) and ``label_names``.
    """

    label_names = LABEL_NAMES
    collate = staticmethod(collate_texts)
    accepts_pretrained = True

    def __init__(self, *, max_len: int = 128, **settings: Any) -> None:
        """``settings``: ``TextDataModule``'s (data_dir, tokenizer, vocab_size, batch sizes...)."""
        super().__init__(max_len=max_len, **settings)
        self._splits: dict[str, tuple[list[str], list[int]]] = {}

    @property
    def folder(self) -> Path:
        """``data_dir/sst2``."""
        return Path(self.data_dir) / "sst2"

    def split(self, name: str) -> tuple[list[str], list[int]]:
        """(sentences, labels) of a split (read once)."""
        if name not in self._splits:
            self._splits[name] = read_tsv(self.folder / SPLIT_FILES[name])
        return self._splits[name]

    def prepare_data(self) -> None:
        ensure_sst2(self.data_dir)
        for name in SPLIT_FILES:
            self.split(name)  # fail early on bad files
        self.tokenizer  # noqa: B018  (trained or loaded here, once)

    def training_texts(self) -> list[str]:
        """The training phrases."""
        return self.split("train")[0]

    def synthetic_item(
        self, ids: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, str]:
        """``ids`` with a random label."""
        return ids, torch.randint(len(self.label_names), (), generator=generator), ""

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """<cls> + pieces (at most ``max_len`` in all) per text, and how many were truncated;
        with a pretrained tokenizer, [CLS] pieces [SEP] (at most ``max_tokens``)."""
        if self.pretrained:
            return self.tokenizer.encode_each(texts, max_len=self.max_tokens)
        pieces = self.tokenizer.encode_batch(texts)
        keep = self.max_len - 1
        cls_id = self.tokenizer.cls_id
        return [[cls_id, *p[:keep]] for p in pieces], sum(len(p) > keep for p in pieces)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name in SPLIT_FILES:
            texts, labels = self.split(name)
            ids, cut = self.encode(texts)
            if cut:
                log.warning(
                    "SST-2 %s: truncated %d sentences to %d tokens", name, cut, self.max_tokens
                )
            self.datasets[name] = TextDataset(ids, labels, texts)
