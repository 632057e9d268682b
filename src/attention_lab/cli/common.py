"""What the commands on a checkpoint share (``translate``, ``tag``, ``classify``): reading the
command line, the checkpoint and its run's config, and rebuilding the trained model."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.data.tokenizer import SubwordTokenizer
from attention_lab.errors import AttentionLabError, ConfigError
from attention_lab.run.checkpoints import load_trained
from attention_lab.run.training import build_model, fill_model_settings_from_data
from attention_lab.tasks.text import BERT_TOKENIZER_KEY, LABEL_NAMES_KEY
from attention_lab.tasks.translation import TOKENIZERS_KEY


def parse_args(argv: list[str], settings: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split the command line into ``key=value`` settings (keys in ``settings``) and sentences."""
    found, sentences = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in settings:
            found[key] = value
        else:
            sentences.append(arg)
    return found, sentences


def load_trained_run(
    ckpt: str | Path, config: str | None, key: str, kind: str
) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint (read safely by ``checkpoints.load_trained``) and its run's config; the
    checkpoint must hold ``key``, which only a ``kind`` run writes."""
    checkpoint, cfg = load_trained(ckpt, config)
    if key not in checkpoint:
        raise ConfigError(f"ckpt={ckpt} holds no {key}: not a checkpoint of a {kind} run")
    return checkpoint, cfg


def sentence_tokenizer(checkpoint: dict[str, Any], ckpt: str | Path) -> Any:
    """The tokenizer a tagging or classification run kept in its checkpoint: the project's
    subword tokenizer, or a pretrained checkpoint's own WordPiece (``BertTokenizer``)."""
    if BERT_TOKENIZER_KEY in checkpoint:
        return BertTokenizer.from_str(checkpoint[BERT_TOKENIZER_KEY])
    if TOKENIZERS_KEY in checkpoint:
        return SubwordTokenizer.from_str(checkpoint[TOKENIZERS_KEY]["src"])
    raise ConfigError(f"ckpt={ckpt} holds no tokenizer: it was not written by a language run")


def max_positions(model: nn.Module) -> int:
    """Most tokens the model takes: a pretrained body's position table, or ``max_len``."""
    body = getattr(model, "body", None)
    return body.settings["max_len"] if body is not None else model.max_len


def trained_net(checkpoint: dict[str, Any], cfg: DictConfig, data_decided: Any) -> nn.Module:
    """The run's model, with the settings the data decided (``data_decided``'s attributes) and
    the checkpoint's weights, in eval mode and not compiled."""
    fill_model_settings_from_data(cfg, data_decided)
    if "compile" in cfg.model:  # commands run a few sentences: compiling costs more than it saves
        cfg.model.compile = False
    model = build_model(cfg)
    prefix = "net."
    model.load_state_dict(
        {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    )
    return model.eval()


def load_text_run(
    ckpt: str | Path, config: str | None, kind: str
) -> tuple[nn.Module, SubwordTokenizer | BertTokenizer, list[str]]:
    """A language run's model (its weights, eval mode), tokenizer and output names (labels or
    tags), from its checkpoint alone; ``kind`` names the run in errors ("tagging")."""
    checkpoint, cfg = load_trained_run(ckpt, config, LABEL_NAMES_KEY, kind)
    tokenizer = sentence_tokenizer(checkpoint, ckpt)
    names = list(checkpoint[LABEL_NAMES_KEY])
    decided = SimpleNamespace(vocab_size=tokenizer.vocab_size, num_tags=len(names))
    return trained_net(checkpoint, cfg, decided), tokenizer, names


class TextPredictor:
    """A trained language model with its tokenizer and output names (labels or tags), run on
    batches of sentences in eval mode: ``predictor(sentences)`` -> one prediction each."""

    def __init__(
        self, model: nn.Module, tokenizer: SubwordTokenizer | BertTokenizer, names: list[str]
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.names = names

    @torch.no_grad()
    def __call__(self, sentences: list, batch_size: int = 64) -> list:
        predictions = []
        for start in range(0, len(sentences), batch_size):
            predictions += self._predict_batch(sentences[start : start + batch_size])
        return predictions

    def _predict_batch(self, sentences: list) -> list:
        raise NotImplementedError


def run_command(
    argv: list[str],
    settings: Sequence[str],
    load: Callable[[dict[str, str]], Callable[[list[str]], list[str]]],
    kind: str,
) -> int:
    """A command's ``main``: settings and sentences (else standard input, one per line) from
    ``argv``; ``load(settings)`` gives the function from sentences to output lines."""
    found, sentences = parse_args(argv, settings)
    try:
        if "ckpt" not in found:
            raise ConfigError(f"ckpt=PATH is required (a checkpoint of a {kind} run)")
        predict = load(found)
    except (AttentionLabError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not sentences:
        sentences = [line.strip() for line in sys.stdin if line.strip()]
    try:
        for line in predict(sentences):
            print(line)
    except AttentionLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
