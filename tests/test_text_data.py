"""CoNLL-U and SST-2 reading, their data modules, and the tokenizer's pre-split words and <cls>."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from attention_lab.data import SST2DataModule, UDDataModule
from attention_lab.data.sst2 import read_tsv, tree_to_example
from attention_lab.data.tokenizer import CLS_ID, PAD_ID, SubwordTokenizer
from attention_lab.data.ud import IGNORE_INDEX, UPOS_TAGS, read_conllu
from attention_lab.errors import ConfigError, DataFormatError, DataNotFoundError
from tests.conftest import make_tiny_ud, toy_tagged_sentences, write_conllu

# Two sentences as UD writes them: comments, a multiword token ("don't" = do + n't) and an
# empty node (8.1), which are not words to tag.
CONLLU = """\
# sent_id = 1
# text = I don't know.
1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t_\t_
2\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t_\t_
3\tcoffee\tcoffee\tNOUN\tNN\t_\t2\tobj\t_\t_
3.1\tlikes\tlike\tVERB\tVBZ\t_\t_\t_\t2:conj\t_
4\tand\tand\tCCONJ\tCC\t_\t5\tcc\t_\t_
5\tBill\tBill\tPROPN\tNNP\t_\t2\tconj\t_\t_
6\ttea\ttea\tNOUN\tNN\t_\t5\torphan\t_\t_
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_conllu_skips_comments_multiword_tokens_and_empty_nodes(tmp_path: Path) -> None:
    path = _write(tmp_path / "two.conllu", CONLLU)  # no blank line at the end: still read
    first, second = read_conllu(path)
    assert first.words == ["I", "do", "n't", "know", "."]
    assert first.tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert second.words == ["Sue", "likes", "coffee", "and", "Bill", "tea"]
    assert second.tags == ["PROPN", "VERB", "NOUN", "CCONJ", "PROPN", "NOUN"]
    assert (first.line, second.line) == (4, 11)  # the line of each sentence's first word
    assert read_conllu(path, "xpos")[0].tags == ["PRP", "VBP", "RB", "VB", "."]


def test_conllu_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "two.conllu.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write(CONLLU)
    assert len(read_conllu(path)) == 2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (CONLLU.replace("4\tknow\tknow", "4\tknow"), 7, "10 tab-separated columns"),
        (CONLLU.replace("5\tBill", "five\tBill"), 16, "not a word index"),
        ("# only a comment\n\n", 1, "no sentence"),
        ("", 1, "no sentence"),
    ],
)
def test_bad_conllu_is_one_error_naming_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path / "bad.conllu", text)
    with pytest.raises(DataFormatError, match=message) as err:
        read_conllu(path)
    assert f"{path}, line {line}:" in str(err.value)


def test_unknown_tag_column_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.tag_column='lemma'"):
        read_conllu(_write(tmp_path / "two.conllu", CONLLU), "lemma")
    with pytest.raises(ConfigError, match=r"data\.tag_column"):
        UDDataModule(data_dir=str(tmp_path), tag_column="deprel")


def test_tokenizer_gives_the_word_of_each_piece_and_a_cls_token() -> None:
    texts = [" ".join(w for w, _ in s) for s in toy_tagged_sentences(100, 0)]
    tokenizer = SubwordTokenizer.train(texts, kind="bpe", vocab_size=60, cls_token=True)
    assert tokenizer.cls_id == CLS_ID == tokenizer.tokenizer.token_to_id("<cls>")
    words = ["the", "unseenword", "sees", "."]
    pieces = tokenizer.encode_words(words)
    assert pieces.word_ids[0] == 0 and pieces.word_ids[-1] == 3
    assert sorted(set(pieces.word_ids)) == [0, 1, 2, 3]  # every word has a piece, in order
    assert pieces.word_ids == sorted(pieces.word_ids)
    assert len(pieces.word_ids) > len(words)  # "unseenword" is split into several pieces
    # "." is one piece, not "▁" + ".": the bare word-start marker is dropped.
    assert tokenizer.id_to_piece([pieces.ids[-1]]) == ["."]
    assert pieces.word_ids.count(3) == 1
    without = SubwordTokenizer.train(texts, kind="bpe", vocab_size=60)
    with pytest.raises(ValueError, match="no <cls>"):
        without.cls_id  # noqa: B018


def test_ud_datamodule_on_tiny_files(tiny_ud: Path) -> None:
    dm = UDDataModule(data_dir=str(tiny_ud), vocab_size=100, batch_size=8, eval_batch_size=16)
    dm.prepare_data()
    dm.setup()
    assert dm.tag_names == list(UPOS_TAGS) and dm.num_tags == 17
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [240, 40, 40]
    batch = next(iter(dm.val_dataloader()))
    assert batch.ids.shape == batch.word_ids.shape and (batch.ids[:, 0] == CLS_ID).all()
    for i, words in enumerate(batch.words):
        n_tags = int((batch.tags[i] != IGNORE_INDEX).sum())
        assert n_tags == len(words)  # one tag per word, the multiword token and empty node gone
        real = batch.ids[i] != PAD_ID
        assert int(batch.word_ids[i][real].max()) == len(words) - 1
        assert (batch.word_ids[i][~real] == -1).all()
    assert sum(len(b.words) for b in dm.train_dataloader()) == 240


def test_ud_batches_mark_the_words_training_never_has(tmp_path: Path) -> None:
    root = make_tiny_ud(tmp_path, sizes=(40, 8, 8))
    novel = [("the", "DET"), ("zebra", "NOUN"), ("sees", "VERB"), ("Zebra", "PROPN")]
    dev = root / "ud_english_ewt" / "en_ewt-ud-dev.conllu.gz"
    write_conllu(dev, [novel, *toy_tagged_sentences(3, seed=1)])
    dm = UDDataModule(data_dir=str(root), vocab_size=60, batch_size=8, eval_batch_size=16)
    dm.prepare_data()
    dm.setup()
    training_words = {w for s in dm.sentences("train") for w in s.words}
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for batch in loader:
            assert batch.unseen.shape == batch.tags.shape
            for i, words in enumerate(batch.words):
                expected = [w not in training_words for w in words]
                assert batch.unseen[i, : len(words)].tolist() == expected, split
                assert not batch.unseen[i, len(words) :].any()  # padding is not a word
    (batch,) = list(dm.val_dataloader())
    row = batch.words.index([w for w, _ in novel])
    assert batch.unseen[row, :4].tolist() == [False, True, False, True]  # forms, case and all


def test_ud_unknown_upos_tag_names_file_and_line(tmp_path: Path, tiny_ud: Path) -> None:
    folder = tmp_path / "ud_english_ewt"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        name = f"en_ewt-ud-{split}.conllu"
        text = gzip.decompress((tiny_ud / "ud_english_ewt" / f"{name}.gz").read_bytes()).decode()
        if split == "dev":
            text = text.replace("\tPUNCT\t", "\tPUNKT\t", 1)
        _write(folder / name, text)
    dm = UDDataModule(data_dir=str(tmp_path), vocab_size=100)
    with pytest.raises(DataFormatError, match=r"en_ewt-ud-dev\.conllu, line \d+: tag 'PUNKT'"):
        dm.prepare_data()


def test_missing_data_offline_names_the_setting(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("attention_lab.data.download.download", offline)
    monkeypatch.setattr("attention_lab.data.sst2._fetch", offline)
    with pytest.raises(DataNotFoundError, match=r"data\.data_dir=.*DATA_DIR") as err:
        UDDataModule(data_dir=str(tmp_path)).prepare_data()
    assert "ud_english_ewt" in str(err.value)
    with pytest.raises(DataNotFoundError, match=r"data\.data_dir=.*DATA_DIR"):
        SST2DataModule(data_dir=str(tmp_path)).prepare_data()


def test_sst2_reads_tsv_and_rejects_a_label_outside_0_1(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.tsv", "sentence\tlabel\na fine film\t1\nflat\t0\n")
    assert read_tsv(good) == (["a fine film", "flat"], [1, 0])
    bad = _write(tmp_path / "bad.tsv", "sentence\tlabel\na fine film\t1\nso-so\t2\n")
    with pytest.raises(DataFormatError, match=rf"{bad}, line 3: .*label 0 or 1"):
        read_tsv(bad)
    with pytest.raises(DataFormatError, match="line 1: the header"):
        read_tsv(_write(tmp_path / "nohead.tsv", "a fine film\t1\n"))
    with pytest.raises(DataFormatError, match="line 1: no sentence"):
        read_tsv(_write(tmp_path / "empty.tsv", "sentence\tlabel\n"))


def test_treebank_trees_become_binary_examples() -> None:
    tree = "(4 (2 -LRB-) (3 (3 A) (4 (4 Gorgeous) (2 film))) (2 -RRB-))"
    assert tree_to_example(tree) == ("( a gorgeous film )", 1)
    assert tree_to_example("(1 (1 Dull) (2 .))") == ("dull .", 0)
    assert tree_to_example("(2 (2 Neutral) (2 .))") is None


def test_sst2_datamodule_on_tiny_files(tiny_sst2: Path) -> None:
    dm = SST2DataModule(data_dir=str(tiny_sst2), vocab_size=100, max_len=4, batch_size=8)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [160, 32, 32]
    batch = next(iter(dm.val_dataloader()))
    assert batch.ids.size(1) <= 4 and (batch.ids[:, 0] == CLS_ID).all()  # truncated to max_len
    assert set(batch.labels.tolist()) <= {0, 1} and len(batch.texts) == 32
    assert list(dm.label_names) == ["negative", "positive"]
