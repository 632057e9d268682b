"""The tagger and the sentence classifier: one output per word, padding that changes nothing,
learning a toy tagging task, and the ``tag`` and ``classify`` commands on trained checkpoints."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from attention_lab.cli import classify, tag
from attention_lab.data.ud import IGNORE_INDEX
from attention_lab.models.text import (
    TransformerTagger,
    TransformerTextClassifier,
    word_pooling_matrix,
)
from attention_lab.nn.attention import ATTENTION_KINDS, PORTABLE_KINDS
from attention_lab.run.training import train
from attention_lab.tasks.text import TokenClassificationTask
from tests.conftest import CONF_DIR, ComposeFn, TinyDataFn


def save_run_config(cfg: DictConfig) -> None:
    """Write ``cfg`` where Hydra writes a run's config, which the commands read."""
    folder = Path(cfg.paths.output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")


SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0, "max_len": 32}


def test_word_pooling_reads_first_pieces_or_averages_all() -> None:
    word_ids = torch.tensor([[-1, 0, 1, 1, 1, 2, -1]])  # <cls>, w0, w1 in 3 pieces, w2, pad
    first = word_pooling_matrix(word_ids, 3, "first")[0]  # (W, T)
    mean = word_pooling_matrix(word_ids, 3, "mean")[0]
    expected_first = torch.zeros(3, 7)
    expected_first[0, 1] = expected_first[1, 2] = expected_first[2, 5] = 1.0
    torch.testing.assert_close(first, expected_first)
    torch.testing.assert_close(mean[1], torch.tensor([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0]))
    torch.testing.assert_close(mean[[0, 2]], expected_first[[0, 2]])


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_tagger_gives_one_tag_per_word_and_ignores_padding(attention: str, pooling: str) -> None:
    torch.manual_seed(0)
    net = TransformerTagger(
        vocab_size=30, num_tags=5, word_pooling=pooling, attention=attention, **SMALL
    ).eval()
    # Sentence 0: 3 words in 5 pieces; sentence 1: 2 words in 2 pieces, then padding.
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])
    with torch.no_grad():
        logits = net(ids, word_ids)  # (B, W, K)
        alone = net(ids[1:, :3], word_ids[1:, :3])
    assert logits.shape == (2, 3, 5)
    torch.testing.assert_close(logits[1, :2], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_ignores_padding(attention: str, pooling: str) -> None:
    torch.manual_seed(0)
    net = TransformerTextClassifier(
        vocab_size=30, num_classes=2, pooling=pooling, attention=attention, **SMALL
    ).eval()
    ids = torch.tensor([[4, 10, 11, 12], [4, 20, 0, 0]])
    with torch.no_grad():
        logits = net(ids)
        alone = net(ids[1:, :2])
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits[1], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positional", ["alibi", "relative"])
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_score_bias_tagger_ignores_padding_and_every_kind_agrees(
    attention: str, positional: str
) -> None:
    torch.manual_seed(0)
    settings = {"vocab_size": 30, "num_tags": 5, "positional": positional, **SMALL}
    reference = TransformerTagger(**settings, attention="scratch").eval()
    net = TransformerTagger(**settings, attention=attention).eval()
    net.load_state_dict(reference.state_dict())
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])
    with torch.no_grad():
        logits = net(ids, word_ids)
        alone = net(ids[1:, :3], word_ids[1:, :3])
        torch.testing.assert_close(logits, reference(ids, word_ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1, :2], alone[0], rtol=1e-5, atol=1e-5)
    # Order matters to it, as to a tagger with position embeddings: swapped words, other tags.
    swapped = torch.tensor([[4, 13, 14, 12, 10, 11]])
    with torch.no_grad():
        assert not torch.allclose(net(swapped, word_ids[:1])[0, 1], logits[0, 1], atol=1e-4)


@pytest.mark.parametrize("attention", PORTABLE_KINDS)
def test_relative_positions_learn_through_every_portable_kind(attention: str) -> None:
    torch.manual_seed(0)
    settings = {"vocab_size": 30, "num_tags": 5, "positional": "relative", **SMALL}
    reference = TransformerTagger(**settings, attention="scratch")
    net = TransformerTagger(**settings, attention=attention)
    net.load_state_dict(reference.state_dict())
    ids = torch.tensor([[4, 10, 11, 12, 13, 14], [4, 20, 21, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, -1, -1]])
    for model in (reference, net):
        model.eval()  # no dropout: the two must compute the same thing
        model(ids, word_ids).logsumexp(-1).sum().backward()
    grad = net.text_encoder.relative_bias.bias.grad
    assert grad is not None and grad.abs().sum() > 0
    torch.testing.assert_close(grad, reference.text_encoder.relative_bias.bias.grad)


TINY_TAGGER = [
    "experiment=ud_pos_transformer",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.d_ff=64",
    "model.dropout=0.0",
    "data.vocab_size=100",
    "data.batch_size=16",
    "task.optimizer.lr=3e-3",
    "logger=csv",
]


@pytest.fixture(scope="module")
def trained_tagger(tiny_ud: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Metrics of a short training run on the toy language (12 epochs of 15 steps)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY_TAGGER, "trainer.max_epochs=12"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path_factory.mktemp("tagger_run"))
        cfg.paths.data_dir = str(tiny_ud)
    save_run_config(cfg)
    return train(cfg)


def test_tagger_learns_the_toy_language_far_above_chance(trained_tagger: dict) -> None:
    # Five tags; the most frequent (DET, NOUN) are under a third of the words.
    assert trained_tagger["test"]["test/acc"] > 0.95
    assert trained_tagger["test"]["test/f1"] > 0.9
    run_dir = Path(trained_tagger["best_checkpoint"]).parent.parent
    assert (run_dir / "confusion" / "test.png").is_file()
    assert len(list((run_dir / "attention" / "test").glob("layer*_sample*.png"))) == 4


def test_tag_command_prints_a_tag_per_word(trained_tagger: dict, capsys) -> None:
    ckpt = trained_tagger["best_checkpoint"]
    sentences = ["the run sees a dog .", "a happy dog watch every city !"]
    assert tag.main([f"ckpt={ckpt}", *sentences]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "the/DET run/NOUN sees/VERB a/DET dog/NOUN ./PUNCT",  # "run" after a determiner
        "a/DET happy/ADJ dog/NOUN watch/VERB every/DET city/NOUN !/PUNCT",  # after a noun
    ]


def test_tag_command_without_a_checkpoint_is_one_error(tmp_path: Path, capsys) -> None:
    assert tag.main(["the dog ."]) == 2
    assert "ckpt=PATH is required" in capsys.readouterr().err
    assert tag.main([f"ckpt={tmp_path / 'none.ckpt'}", "the dog ."]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_resumed_tagging_run_continues(compose_config: ComposeFn, tiny_ud: Path) -> None:
    first = train(compose_config(*TINY_TAGGER, "trainer.max_epochs=1", data_dir=tiny_ud))
    resumed = train(
        compose_config(*TINY_TAGGER, "trainer.max_epochs=2", "ckpt_path=last", data_dir=tiny_ud)
    )
    assert (first["epochs"], resumed["epochs"]) == (1, 2)
    assert resumed["steps"] == 2 * first["steps"]


TEXT_EXPERIMENTS = ["ud_pos_transformer", "sst2_transformer"]


def tiny_text_run(
    compose_config: ComposeFn, tiny_data_for: TinyDataFn, experiment: str, *overrides: str
) -> DictConfig:
    """A smoke run of a text experiment (one batch) on the tiny data of its kind."""
    data_dir, data_setting, _, _ = tiny_data_for(compose_config(f"experiment={experiment}"))
    return compose_config(
        f"experiment={experiment}", data_setting, "debug=smoke", *overrides, data_dir=data_dir
    )


@pytest.mark.parametrize("experiment", TEXT_EXPERIMENTS)
def test_text_experiments_run_in_mixed_precision(
    compose_config: ComposeFn, tiny_data_for: TinyDataFn, experiment: str
) -> None:
    cfg = tiny_text_run(
        compose_config,
        tiny_data_for,
        experiment,
        "trainer.precision=bf16-mixed",
        "trainer.accelerator=cpu",
        "model.d_model=16",
        "model.n_layers=1",
        "logger=none",
    )
    assert math.isfinite(train(cfg)["test"]["test/loss"])


@pytest.mark.parametrize("experiment", TEXT_EXPERIMENTS)
def test_commands_read_a_checkpoint_with_learned_relative_positions(
    compose_config: ComposeFn, tiny_data_for: TinyDataFn, experiment: str, capsys
) -> None:
    # The relative bias is a parameter of the checkpoint: the commands must rebuild and load it.
    cfg = tiny_text_run(
        compose_config,
        tiny_data_for,
        experiment,
        *TINY_TAGGER[1:6],
        "model.positional=relative",
        "logger=csv",
    )
    save_run_config(cfg)
    ckpt = train(cfg)["best_checkpoint"]
    capsys.readouterr()  # the training run's output
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]  # house rule
    assert any(key.endswith("relative_bias.bias") for key in state)
    if experiment.startswith("ud"):
        assert tag.main([f"ckpt={ckpt}", "the dog sees a city ."]) == 0
        words = capsys.readouterr().out.split()
        assert [w.rsplit("/", 1)[0] for w in words] == ["the", "dog", "sees", "a", "city", "."]
    else:
        assert classify.main([f"ckpt={ckpt}", "warm and funny"]) == 0
        label, probability = capsys.readouterr().out.split("\t")
        assert label in ("positive", "negative") and 0.5 <= float(probability) <= 1.0


def test_classify_command_prints_label_and_probability(
    compose_config: ComposeFn, tiny_sst2: Path, capsys
) -> None:
    cfg = compose_config(
        "experiment=sst2_transformer",
        "model.d_model=32",
        "model.n_layers=1",
        "model.dropout=0.0",
        "data.vocab_size=100",
        "data.batch_size=16",
        "task.optimizer.lr=3e-3",
        "trainer.max_epochs=6",
        "logger=csv",
        data_dir=tiny_sst2,
    )
    save_run_config(cfg)
    metrics = train(cfg)
    assert metrics["test"]["test/acc"] > 0.95  # the toy phrases are easy to tell apart
    capsys.readouterr()  # the training run's output
    assert classify.main([f"ckpt={metrics['best_checkpoint']}", "warm and funny", "awful"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [label for label, _ in rows] == ["positive", "negative"]
    assert all(0.5 <= float(p) <= 1.0 for _, p in rows)


def test_accuracy_on_unseen_words_counts_only_them() -> None:
    class Fixed(torch.nn.Module):  # predicts tag 0 for every word
        def forward(self, ids: torch.Tensor, word_ids: torch.Tensor, n_words: int) -> torch.Tensor:
            logits = torch.zeros(ids.size(0), n_words, 3)
            logits[..., 0] = 1.0
            return logits

    task = TokenClassificationTask(Fixed(), partial(torch.optim.SGD, lr=0.1), num_tags=3)
    ids = torch.ones(2, 4, dtype=torch.long)
    tags = torch.tensor([[0, 1, 0], [2, 0, IGNORE_INDEX]])  # the last word is padding
    unseen = torch.tensor([[True, True, False], [True, False, True]])
    batch = (ids, torch.zeros(2, 4, dtype=torch.long), tags, [["a"] * 3, ["b"] * 2], unseen)
    for _ in range(2):  # two batches of one epoch
        task._step(batch, "test")
    # Unseen real words: tags 0, 1, 2 (padding's True ignored), of which tag 0 is right.
    assert task.unseen_accuracy("test") == pytest.approx(1 / 3)
    assert task.unseen_accuracy("test") is None  # counts reset; no batch since
    task._step(batch[:4], "test")  # batches that do not say which words are unseen
    assert task.unseen_accuracy("test") is None
