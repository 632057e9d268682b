"""Word dropout (``model.word_dropout``): in training, whole words (a tagger's) or pieces (a
sentence classifier's) become <unk> at the rate asked for; <cls>, padding and a word's
spelling never do; evaluation sees the words as they are; a rate outside [0, 1) is one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from attention_lab.data.chars import encode_chars
from attention_lab.data.tokenizer import UNK_ID
from attention_lab.errors import ConfigError
from attention_lab.models.reference import BiLSTMTagger, CNNTextClassifier
from attention_lab.models.text import (
    TransformerTagger,
    TransformerTextClassifier,
    drop_pieces,
    drop_words,
)
from attention_lab.run.training import train
from tests.conftest import ComposeFn

IDS = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
WORD_IDS = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])  # <cls>, 3 words; 2 words
SMALL_TRANSFORMER = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "dropout": 0.0}
SMALL_LSTM = {"d_emb": 8, "hidden": 8, "n_layers": 1, "dropout": 0.0}


def test_drop_words_drops_whole_words_at_the_rate_and_keeps_cls_and_padding() -> None:
    torch.manual_seed(0)
    ids = torch.arange(5, 5 + 2 * 400).reshape(1, -1).repeat(500, 1)  # 500 rows, 400 words of 2
    word_ids = torch.arange(400).repeat_interleave(2).reshape(1, -1).repeat(500, 1)
    ids[:, -2:], word_ids[:, -2:] = 0, -1  # one padding word's place per row
    dropped = drop_words(ids, word_ids, 0.25, UNK_ID) == UNK_ID  # (B, T)
    assert not dropped[:, -2:].any()  # padding stays
    pairs = dropped[:, :-2].reshape(500, 399, 2)
    assert torch.equal(pairs[..., 0], pairs[..., 1])  # a word's pieces go together
    assert abs(pairs[..., 0].float().mean().item() - 0.25) < 0.01  # 199,500 words


def test_drop_pieces_keeps_cls_and_padding_and_drops_at_the_rate() -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (400, 500))
    ids[:, -50:] = 0
    dropped = drop_pieces(ids, 0.1, UNK_ID, pad_id=0) == UNK_ID
    assert not dropped[:, 0].any() and not dropped[:, -50:].any()
    assert abs(dropped[:, 1:-50].float().mean().item() - 0.1) < 0.005  # 179,600 pieces


def _tagger(model: type, **settings: Any) -> torch.nn.Module:
    small = SMALL_LSTM if model is BiLSTMTagger else SMALL_TRANSFORMER
    return model(vocab_size=30, max_len=32, num_tags=5, **small, **settings)


@pytest.mark.parametrize("model", [TransformerTagger, BiLSTMTagger])
def test_taggers_drop_words_in_training_only_and_keep_their_spelling(model: type) -> None:
    torch.manual_seed(0)
    net = _tagger(model, chars=8, word_dropout=0.5)
    plain = _tagger(model, chars=8)
    plain.load_state_dict(net.state_dict())
    chars = encode_chars([["Dogs", "run", "fast"], ["It", "works"]])
    with torch.no_grad():
        torch.manual_seed(1)
        trained = net.train()(IDS, WORD_IDS, chars=chars)
        torch.manual_seed(1)
        expected = plain.train()(drop_words(IDS, WORD_IDS, 0.5, UNK_ID), WORD_IDS, chars=chars)
        evaluated = net.eval()(IDS, WORD_IDS, chars=chars)
        unchanged = plain.eval()(IDS, WORD_IDS, chars=chars)
    torch.testing.assert_close(trained, expected)
    torch.testing.assert_close(evaluated, unchanged)
    assert not torch.allclose(trained, evaluated)  # seed 1 drops some of the five words


@pytest.mark.parametrize("model", [TransformerTextClassifier, CNNTextClassifier])
def test_classifiers_drop_pieces_in_training_only(model: type) -> None:
    small = {**SMALL_TRANSFORMER, "pooling": "mean"} if model is TransformerTextClassifier else {}
    torch.manual_seed(0)
    net = model(vocab_size=30, max_len=32, word_dropout=0.5, **small)
    plain = model(vocab_size=30, max_len=32, **small)
    plain.load_state_dict(net.state_dict())
    if model is CNNTextClassifier:  # its feature dropout would draw from the same generator
        net.dropout.p = plain.dropout.p = 0.0
    with torch.no_grad():
        torch.manual_seed(1)
        trained = net.train()(IDS)
        torch.manual_seed(1)
        expected = plain.train()(drop_pieces(IDS, 0.5, UNK_ID, pad_id=0))
        evaluated = net.eval()(IDS)
        unchanged = plain.eval()(IDS)
    torch.testing.assert_close(trained, expected)
    torch.testing.assert_close(evaluated, unchanged)
    assert not torch.allclose(trained, evaluated)


@pytest.mark.parametrize("value", [1.0, -0.1])
@pytest.mark.parametrize(
    "experiment", ["ud_pos_transformer", "ud_pos_bilstm", "sst2_transformer", "sst2_cnn"]
)
def test_word_dropout_out_of_range_is_one_error_naming_the_setting(
    compose_config: ComposeFn, tiny_ud: Path, tiny_sst2: Path, experiment: str, value: float
) -> None:
    tagging = experiment.startswith("ud_pos")
    cfg = compose_config(
        f"experiment={experiment}",
        f"model.word_dropout={value}",
        "data.vocab_size=100",
        "logger=none",
        data_dir=tiny_ud if tagging else tiny_sst2,
    )
    with pytest.raises(ConfigError, match=rf"^model\.word_dropout={value} must be in \[0, 1\)$"):
        train(cfg)
