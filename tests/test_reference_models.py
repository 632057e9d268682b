"""The references without attention (models/reference.py): the same calls as the transformers
they stand beside, padding that changes nothing, learning the toy tasks, and the ``tag`` and
``classify`` commands on their checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention_lab.cli import classify, tag
from attention_lab.data.chars import MAX_WORD_CHARS, char_ids, encode_chars
from attention_lab.data.ud import collate_tagged
from attention_lab.models.reference import BiLSTMTagger, CNNTextClassifier
from attention_lab.models.text import CharWordEncoder, TransformerTagger
from attention_lab.run.records import NO_ATTENTION
from attention_lab.run.training import train
from tests.conftest import ComposeFn
from tests.test_text_models import save_run_config

SMALL_LSTM = {"d_emb": 8, "hidden": 8, "n_layers": 2, "dropout": 0.0, "max_len": 32}


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_bilstm_tagger_gives_one_tag_per_word_and_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    net = BiLSTMTagger(vocab_size=30, num_tags=5, word_pooling=pooling, **SMALL_LSTM).eval()
    # Sentence 0: 3 words in 5 pieces; sentence 1: 2 words in 2 pieces, then padding.
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])
    with torch.no_grad():
        logits = net(ids, word_ids)  # (B, W, K)
        alone = net(ids[1:, :3], word_ids[1:, :3])
    assert logits.shape == (2, 3, 5)
    torch.testing.assert_close(logits[1, :2], alone[0], rtol=1e-5, atol=1e-5)


def test_bilstm_reads_both_directions() -> None:
    """A word's state depends on the words before it and on those after it."""
    torch.manual_seed(0)
    net = BiLSTMTagger(vocab_size=30, num_tags=5, **SMALL_LSTM).eval()
    word_ids = torch.tensor([[-1, 0, 1, 2]])
    with torch.no_grad():
        base = net(torch.tensor([[4, 10, 11, 12]]), word_ids)[0, 1]
        left = net(torch.tensor([[4, 15, 11, 12]]), word_ids)[0, 1]
        right = net(torch.tensor([[4, 10, 11, 16]]), word_ids)[0, 1]
    assert not torch.allclose(base, left) and not torch.allclose(base, right)


def test_words_are_spelt_in_a_fixed_code_ends_kept() -> None:
    assert char_ids("Ab") == [2 + ord("A"), 2 + ord("b")]
    assert char_ids("日") == [1]  # beyond Latin-1: one id for all
    long = "internationalisations"  # 21 characters: the first and last 10 are kept
    assert char_ids(long) == char_ids(long[:10] + long[-10:]) and MAX_WORD_CHARS == 20
    chars = encode_chars([["The", "dog"], ["Hi"]])
    assert chars.shape == (2, 2, 3)
    assert chars[1, 0].tolist() == [*char_ids("Hi"), 0] and chars[1, 1].sum() == 0


def test_tagging_batches_carry_their_words_spelt_out() -> None:
    items = [
        (
            torch.tensor([4, 9, 10]),
            torch.tensor([-1, 0, 1]),
            torch.tensor([1, 2]),
            ["a", "cat"],
            torch.tensor([False, True]),
        ),
        (
            torch.tensor([4, 11]),
            torch.tensor([-1, 0]),
            torch.tensor([3]),
            ["Go"],
            torch.tensor([False]),
        ),
    ]
    batch = collate_tagged(items)
    torch.testing.assert_close(batch.chars, encode_chars([["a", "cat"], ["Go"]]))


def test_char_encoder_ignores_padding_characters_and_words() -> None:
    torch.manual_seed(0)
    encoder = CharWordEncoder(6).eval()
    short = encode_chars([["cat", "is"]])  # L = 3
    with torch.no_grad():
        wide = encoder(torch.nn.functional.pad(short, (0, 4)))  # 4 more padding characters
        alone = encoder(short)
        padded_word = encoder(encode_chars([["cat", "is"], ["a", "b", "c"]]))[0, 2]
    torch.testing.assert_close(wide, alone)
    assert padded_word.abs().sum() == 0


@pytest.mark.parametrize("model", [BiLSTMTagger, TransformerTagger])
def test_taggers_with_chars_read_spelling_and_ignore_padding(model) -> None:
    torch.manual_seed(0)
    small = SMALL_LSTM if model is BiLSTMTagger else {"d_model": 16, "n_heads": 2, "max_len": 32}
    net = model(vocab_size=30, num_tags=5, chars=8, **small).eval()
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])
    words = [["Dogs", "run", "fast"], ["It", "works"]]
    with torch.no_grad():
        logits = net(ids, word_ids, chars=encode_chars(words))
        alone = net(ids[1:, :3], word_ids[1:, :3], chars=encode_chars(words[1:]))
        respelt = net(ids, word_ids, chars=encode_chars([["dogs", "run", "fast"], ["It", "works"]]))
    torch.testing.assert_close(logits[1, :2], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(respelt[0], logits[0])  # same pieces, other spelling
    with pytest.raises(ValueError, match=r"model.chars > 0\): pass chars"):
        net(ids, word_ids)


def test_cnn_classifier_ignores_padding_and_takes_short_sentences() -> None:
    torch.manual_seed(0)
    net = CNNTextClassifier(vocab_size=30, max_len=32, d_emb=8, n_filters=4).eval()
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    with torch.no_grad():
        logits = net(ids)
        alone = net(ids[1:, :3])  # shorter than the widest filter (5)
        single = net(torch.tensor([[4]]))
    assert logits.shape == (2, 2) and single.shape == (1, 2)
    torch.testing.assert_close(logits[1], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("hidden", 0, "hidden=0 must be positive"),
        ("word_pooling", "last", "word_pooling='last' is not known"),
    ],
)
def test_bilstm_bad_setting_is_one_clear_error(setting: str, value, message: str) -> None:
    settings = {"vocab_size": 30, "num_tags": 5, **SMALL_LSTM, setting: value}
    with pytest.raises(ValueError, match=message):
        BiLSTMTagger(**settings)


def test_cnn_bad_width_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"widths\[1\]=0 must be positive"):
        CNNTextClassifier(vocab_size=30, max_len=32, widths=(3, 0))


def test_bilstm_tagger_learns_the_toy_language_and_tags_from_its_checkpoint(
    compose_config: ComposeFn, tiny_ud: Path, capsys
) -> None:
    cfg = compose_config(
        "experiment=ud_pos_bilstm",
        "model.chars=16",  # and reads spelling: the command must spell the words out too
        "model.d_emb=32",
        "model.hidden=32",
        "model.dropout=0.0",
        "data.vocab_size=100",
        "data.batch_size=16",
        "task.optimizer.lr=1e-2",
        "trainer.max_epochs=10",
        "logger=csv",
        data_dir=tiny_ud,
    )
    save_run_config(cfg)
    metrics = train(cfg)
    assert metrics["attention"] == NO_ATTENTION
    assert metrics["test"]["test/acc"] > 0.95  # five tags, the commonest under a third
    run_dir = Path(metrics["best_checkpoint"]).parent.parent
    assert not (run_dir / "attention").exists()  # nothing to draw
    capsys.readouterr()
    assert tag.main([f"ckpt={metrics['best_checkpoint']}", "the run sees a dog ."]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "the/DET run/NOUN sees/VERB a/DET dog/NOUN ./PUNCT"
    ]


def test_cnn_classifier_learns_the_toy_phrases_and_classifies_from_its_checkpoint(
    compose_config: ComposeFn, tiny_sst2: Path, capsys
) -> None:
    cfg = compose_config(
        "experiment=sst2_cnn",
        "model.d_emb=32",
        "model.n_filters=16",
        "data.vocab_size=100",
        "data.batch_size=16",
        "task.optimizer.lr=3e-3",
        "trainer.max_epochs=6",
        "logger=csv",
        data_dir=tiny_sst2,
    )
    save_run_config(cfg)
    metrics = train(cfg)
    assert metrics["attention"] == NO_ATTENTION
    assert metrics["test"]["test/acc"] > 0.95  # the toy phrases are easy to tell apart
    capsys.readouterr()
    assert classify.main([f"ckpt={metrics['best_checkpoint']}", "warm and funny", "awful"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [label for label, _ in rows] == ["positive", "negative"]
