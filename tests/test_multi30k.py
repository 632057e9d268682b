"""The subword tokenizer, the Multi30k DataModule on files the tests write, and the BLEU scores."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

import attention_lab.data.download as download
import attention_lab.data.multi30k as multi30k
from attention_lab.bleu import SIGNATURES, CorpusBLEU
from attention_lab.data.multi30k import Multi30kDataModule
from attention_lab.data.order import BucketBatchSampler
from attention_lab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    SubwordTokenizer,
)
from attention_lab.errors import ConfigError, DataFormatError, DataNotFoundError
from tests.conftest import make_tiny_multi30k, phrase_pairs, real_data_dir, write_gzip_lines


def _datamodule(data_dir: Path, **kwargs) -> Multi30kDataModule:
    datamodule = Multi30kDataModule(data_dir=str(data_dir), **{"vocab_size": 200, **kwargs})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture
def own_tiny_multi30k(tmp_path: Path) -> Path:
    """A tiny Multi30k of this test's own, to break or to cache into."""
    return make_tiny_multi30k(tmp_path / "data")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_tokenizer_round_trips_text(kind: str) -> None:
    texts = [text for pair in phrase_pairs() for text in pair]
    tokenizer = SubwordTokenizer.train(texts, kind=kind, vocab_size=120)
    assert [tokenizer.tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert 4 < tokenizer.vocab_size <= 120
    unseen = "Zwei Jungen spielen im Park und vor dem Haus."  # new words, known characters
    for text in [*texts[:20], unseen]:
        ids = tokenizer.encode(text)
        assert all(4 <= i < tokenizer.vocab_size for i in ids)  # no <unk>, no specials
        assert tokenizer.decode(ids) == text
    # A character never seen in training becomes <unk>, which decoding leaves out.
    assert UNK_ID in tokenizer.encode("Ein Hund!")
    assert tokenizer.decode(tokenizer.encode("Ein Hund!")) == "Ein Hund"
    # Special tokens are left out of the text, wherever they are.
    assert tokenizer.decode([BOS_ID, *tokenizer.encode("Ein Hund."), EOS_ID, PAD_ID]) == "Ein Hund."
    # Punctuation is its own piece: "Haus." is never learnt as one token.
    assert tokenizer.pieces("vor dem Haus.")[-1] == "."


def test_word_tokenizer_keeps_words_whole_and_the_commonest() -> None:
    texts = ["the cat sat on the mat .", "the dog did n't sit ."]
    tokenizer = SubwordTokenizer.train(texts, kind="word", vocab_size=10, cls_token=True)
    assert tokenizer.vocab_size == 10  # 5 specials and the 5 commonest words
    assert tokenizer.pieces("the .") == ["▁the", "▁."]
    assert tokenizer.encode("the zebra")[1] == UNK_ID
    pieces = tokenizer.encode_words(["the", "did", "n't", "zebra"])
    assert pieces.word_ids == [0, 1, 2, 3]  # one id per word, known or not


def test_tokenizer_training_is_repeatable_and_survives_json() -> None:
    texts = [de for de, _ in phrase_pairs()]
    first = SubwordTokenizer.train(texts, kind="bpe", vocab_size=100)
    again = SubwordTokenizer.train(texts, kind="bpe", vocab_size=100)
    assert first.to_str() == again.to_str()
    copy = SubwordTokenizer.from_str(first.to_str())
    assert copy.encode("Ein Mann läuft.") == first.encode("Ein Mann läuft.")


def test_unknown_tokenizer_kind_names_the_setting(tiny_multi30k: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.tokenizer='wordpiece' is not a known tokenizer"):
        Multi30kDataModule(data_dir=str(tiny_multi30k), tokenizer="wordpiece")
    with pytest.raises(ConfigError, match=r"data\.vocab_size=4 leaves no room"):
        Multi30kDataModule(data_dir=str(tiny_multi30k), vocab_size=4)


def test_batches_are_padded_per_batch_with_bos_and_eos(tiny_multi30k: Path) -> None:
    datamodule = _datamodule(tiny_multi30k, batch_size=8, eval_batch_size=16)
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 88, "val": 16, "test": 16}

    batch = next(iter(datamodule.train_dataloader()))
    assert batch.src.shape[0] == batch.tgt.shape[0] == len(batch.src_text) == 8
    src_lengths = (batch.src != PAD_ID).sum(1)
    tgt_lengths = (batch.tgt != PAD_ID).sum(1)
    assert src_lengths.max() == batch.src.size(1) and tgt_lengths.max() == batch.tgt.size(1)
    assert (batch.tgt[:, 0] == BOS_ID).all()
    for row, n in zip(batch.src, src_lengths, strict=True):
        assert row[n - 1] == EOS_ID and (row[n:] == PAD_ID).all()
    for row, n, text in zip(batch.tgt, tgt_lengths, batch.tgt_text, strict=True):
        assert row[n - 1] == EOS_ID and (row[n:] == PAD_ID).all()
        assert datamodule.tgt_tokenizer.decode(row.tolist()) == text

    # Validation keeps the file order, so its first sentences are the same every epoch.
    val = next(iter(datamodule.val_dataloader()))
    assert val.src_text == [de for de, _ in phrase_pairs()[88:104]]


def test_bucketing_covers_every_pair_once_and_groups_lengths() -> None:
    lengths = [(i * 7919) % 50 + 1 for i in range(1000)]
    sampler = BucketBatchSampler(lengths, batch_size=32, seed=0, pool_batches=10)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread / len(batches) < 10  # random batches would span about 45
    sampler.sampler.set_epoch(1)  # Lightning sets the epoch of a batch sampler's sampler
    assert list(sampler) != batches


def test_shared_or_separate_vocabularies(tiny_multi30k: Path) -> None:
    shared = _datamodule(tiny_multi30k, shared_vocab=True)
    assert shared.src_tokenizer is shared.tgt_tokenizer
    assert shared.src_vocab_size == shared.tgt_vocab_size
    separate = _datamodule(tiny_multi30k, shared_vocab=False)
    assert separate.src_tokenizer is not separate.tgt_tokenizer
    assert "▁Hund" in separate.src_tokenizer.tokenizer.get_vocab()
    assert "▁Hund" not in separate.tgt_tokenizer.tokenizer.get_vocab()


def test_tokenizer_is_cached_by_its_settings_and_reused(
    own_tiny_multi30k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _datamodule(own_tiny_multi30k, tokenizer="bpe", vocab_size=150)
    (cached,) = (own_tiny_multi30k / "multi30k").glob("tokenizer-*.json")
    assert cached.name.startswith("tokenizer-bpe150-de+en-")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the tokenizer is cached")

    monkeypatch.setattr(SubwordTokenizer, "train", no_training)
    again = _datamodule(own_tiny_multi30k, tokenizer="bpe", vocab_size=150)
    assert again.src_tokenizer.to_str() == first.src_tokenizer.to_str()
    monkeypatch.undo()
    _datamodule(own_tiny_multi30k, tokenizer="unigram", vocab_size=150)
    assert len(list((own_tiny_multi30k / "multi30k").glob("tokenizer-*.json"))) == 2


def test_long_sentences_are_truncated_and_counted(
    tiny_multi30k: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        datamodule = _datamodule(tiny_multi30k, max_len=6)
    assert "Multi30k train: truncated" in caplog.text and "data.max_len=6" in caplog.text
    train = datamodule.datasets["train"]
    assert max(train.lengths) == 6
    assert all(ids[-1] == EOS_ID for ids in train.src_ids + train.tgt_ids)


def test_missing_data_offline_names_the_folder_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(download, "download", no_network)
    with pytest.raises(DataNotFoundError) as info:
        Multi30kDataModule(data_dir=str(tmp_path / "empty")).prepare_data()
    message = str(info.value)
    assert str((tmp_path / "empty" / "multi30k").resolve()) in message
    assert "data.data_dir" in message and "DATA_DIR" in message and "train.de.gz" in message


def test_missing_files_are_downloaded_and_present_ones_used(
    own_tiny_multi30k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = own_tiny_multi30k / "multi30k"
    stash = own_tiny_multi30k / "stash"
    stash.mkdir()
    shutil.move(folder / "val.en.gz", stash / "val.en.gz")
    fetched = []

    def fake_download(url: str, destination: Path) -> None:
        fetched.append(url)
        shutil.copy(stash / Path(url).name, destination)

    monkeypatch.setattr(download, "download", fake_download)
    _datamodule(own_tiny_multi30k)
    assert fetched == [f"{multi30k.MULTI30K_URL}/val.en.gz"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ({"val.en.gz": []}, r"val\.en\.gz has no sentences"),
        ({"test_2016_flickr.en.gz": ["A dog."] * 3}, r"has 16 lines but .* has 3"),
    ],
)
def test_empty_or_mismatched_files_are_clear_errors(
    own_tiny_multi30k: Path, lines: dict[str, list[str]], message: str
) -> None:
    for name, content in lines.items():
        write_gzip_lines(own_tiny_multi30k / "multi30k" / name, content)
    with pytest.raises(DataFormatError, match=message):
        Multi30kDataModule(data_dir=str(own_tiny_multi30k)).prepare_data()


def test_bleu_variants() -> None:
    # SacreBLEU's 13a splits punctuation off words but keeps apostrophes and hyphens inside
    # them (not a hyphen after a digit) and number separators; -lc lowercases.
    spaced = CorpusBLEU(lowercase_tokenized=True)
    spaced.update(
        ["A man's T-shirt, 1,000 times a 3-year-old."],
        ["a man's t-shirt , 1,000 times a 3 - year-old ."],
    )
    assert float(spaced.compute()) == pytest.approx(1.0)
    assert spaced.signature == SIGNATURES["bleu_lc"] == "nrefs:1|case:lc|eff:no|tok:13a|smooth:exp"
    references = ["A man in a red shirt is riding a bike on the street."]
    lowercase = ["a man in a red shirt is riding a bike on the street ."]
    cased, lowercased = CorpusBLEU(), CorpusBLEU(lowercase_tokenized=True)
    cased.update(references, references)
    assert float(cased.compute()) == pytest.approx(1.0)
    cased.reset()
    cased.update(lowercase, references)
    lowercased.update(lowercase, references)
    assert float(cased.compute()) < 1.0  # "a" and "A" differ for SacreBLEU
    assert float(lowercased.compute()) == pytest.approx(1.0)


@pytest.mark.integration
def test_real_multi30k_sizes_and_tokenizer(tmp_path: Path) -> None:
    data_dir = real_data_dir("multi30k")
    if data_dir is None:
        pytest.skip("real Multi30k not found (set DATA_DIR or provide ../shared/data)")
    datamodule = Multi30kDataModule(
        data_dir=str(data_dir), vocab_size=8000, tokenizer_dir=str(tmp_path)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 29000, "val": 1014, "test": 1000}
    assert datamodule.src_vocab_size == 8000
    text = datamodule.datasets["test"].tgt_text[0]
    assert datamodule.tgt_tokenizer.decode(datamodule.tgt_tokenizer.encode(text)) == text
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.src.shape[0] == 128 and batch.src.dtype == torch.long
