"""BERT (Devlin et al., 2019) over our shared ``Encoder``, and the course's sentiment model on it.

"BERT's model architecture is a multi-layer bidirectional Transformer encoder based on the
original implementation described in Vaswani et al. (2017)." The input representation is "the
sum of the token embeddings, the segmentation embeddings and the position embeddings", then
layer normalisation and dropout; the blocks are post-norm with a GELU feed-forward and
LayerNorm eps 1e-12; the pooler is a dense layer with tanh on the final state of [CLS].

``Bert`` has the sizes and parameters of Hugging Face's ``BertModel`` so that
``attention_lab.pretrained`` can map a checkpoint onto it; its attention is any
``model.attention`` kind. One difference in training only: our feed-forward has dropout after
its activation, where BERT has none (no effect in eval mode, nor with dropout 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from attention_lab.errors import check_choice, check_positive
from attention_lab.models.text import WORD_POOLINGS, word_pooling_matrix
from attention_lab.nn.blocks import Encoder, EncoderSpec
from attention_lab.nn.positional import build_positional

# BERT-base: 12 post-norm layers of 768 ("BERT_BASE (L=12, H=768, A=12)"), GELU, eps 1e-12.
BERT_ENCODER = EncoderSpec(
    n_layers=12,
    d_model=768,
    n_heads=12,
    d_ff=3072,
    dropout=0.1,
    activation="gelu",
    norm_first=False,
    layer_norm_eps=1e-12,
)


class BertOutput(NamedTuple):
    """What ``Bert`` returns."""

    last_hidden_state: Tensor  # (B, T, E)
    pooled: Tensor | None  # (B, E): tanh(W h_[CLS] + b), or None without a pooler


class Bert(nn.Module):
    """Token + position + token-type embeddings -> LayerNorm -> post-norm encoder [-> pooler].

    ``encoder``: ``EncoderSpec`` fields over ``BERT_ENCODER`` (BERT-base); always post-norm, as
    the original transformer.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 30522,
        max_len: int = 512,
        type_vocab_size: int = 2,
        pad_id: int = 0,
        pooler: bool = True,
        **encoder: Any,
    ) -> None:
        super().__init__()
        spec = BERT_ENCODER.updated(encoder, model="Bert", fixed=("norm_first",))
        check_positive(vocab_size=vocab_size, type_vocab_size=type_vocab_size)
        self.pad_id = pad_id
        # What a run's checkpoint keeps to rebuild this model without the pretrained files (the
        # attention kind is the run's setting, not the architecture's).
        body = {"vocab_size": vocab_size, "max_len": max_len, "type_vocab_size": type_vocab_size}
        stack = dataclasses.asdict(spec)
        del stack["norm_first"], stack["attention"]
        self.settings = {**body, **stack, "pad_id": pad_id}
        d_model = spec.d_model
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.positional = build_positional("learned", d_model=d_model, max_len=max_len)
        self.token_type_embedding = nn.Embedding(type_vocab_size, d_model)
        self.embedding_norm = nn.LayerNorm(d_model, eps=spec.layer_norm_eps)
        self.dropout = nn.Dropout(spec.dropout)
        self.encoder = Encoder(spec)
        self.pooler = nn.Linear(d_model, d_model) if pooler else None

    @property
    def d_model(self) -> int:
        """Width of the hidden states."""
        return self.token_embedding.embedding_dim

    def forward(
        self,
        tokens: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> BertOutput:
        """tokens: (B, T) ids -> hidden states (B, T, E) and pooled [CLS] state (B, E).

        key_padding_mask: (B, T), True = padding; None takes the positions holding ``pad_id``.
        (Hugging Face's ``attention_mask`` is its negation: 1 = token.) token_type_ids: (B, T),
        the segment of each token; None means all segment 0.
        """
        if key_padding_mask is None:
            key_padding_mask = tokens == self.pad_id  # (B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)  # (B, T)
        x = self.positional(self.token_embedding(tokens))  # (B, T, E)
        x = self.embedding_norm(x + self.token_type_embedding(token_type_ids))  # (B, T, E)
        x = self.encoder(self.dropout(x), key_padding_mask)  # (B, T, E)
        pooled = None if self.pooler is None else torch.tanh(self.pooler(x[:, 0]))  # (B, E)
        return BertOutput(x, pooled)


class _FineTuned(nn.Module):
    """A pretrained ``Bert`` body under a new head: frozen (only the head trains) or fine-tuned,
    the body then at ``body_lr_scale`` times the task's learning rate (``lr_scales``, read by
    ``attention_lab.optim``). A frozen body still follows ``train()`` (its dropout is active in
    training), as in the course."""

    def __init__(self, body: Bert, *, dropout: float, freeze_body: bool, body_lr_scale: float):
        super().__init__()
        check_positive(body_lr_scale=body_lr_scale)
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.body.requires_grad_(not freeze_body)
        self.lr_scales = {} if freeze_body else {"body": body_lr_scale}


BERT_POOLINGS = ("cls_tanh", "mean")


class BertSentimentClassifier(_FineTuned):
    """The course's sentiment model: a linear layer on tanh of BERT's last [CLS] state.

    Not BERT's pooler (which is trained on next-sentence prediction): the course reads
    ``last_hidden_state[:, 0]``, applies tanh and one ``nn.Linear`` (``pooling="cls_tanh"``).
    ``pooling="mean"`` averages the last states of the tokens instead (padding left out), which
    is how sentence-transformers reads a sentence off a model such as all-MiniLM-L6-v2. Unlike
    the course, padding is masked.
    """

    def __init__(
        self,
        *,
        body: Bert,
        num_classes: int = 2,
        dropout: float = 0.0,
        freeze_body: bool = True,
        body_lr_scale: float = 1.0,
        pooling: str = "cls_tanh",
    ) -> None:
        super().__init__(
            body, dropout=dropout, freeze_body=freeze_body, body_lr_scale=body_lr_scale
        )
        check_positive(num_classes=num_classes)
        check_choice("pooling", pooling, BERT_POOLINGS)
        self.pooling = pooling
        self.head = nn.Linear(body.d_model, num_classes)

    def forward(
        self,
        tokens: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """tokens: (B, T) ids, [CLS] first -> logits (B, num_classes)."""
        if key_padding_mask is None:
            key_padding_mask = tokens == self.body.pad_id  # (B, T)
        hidden = self.body(tokens, key_padding_mask, token_type_ids).last_hidden_state
        if self.pooling == "cls_tanh":
            pooled = torch.tanh(hidden[:, 0])  # (B, E)
        else:
            keep = (~key_padding_mask).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)  # (B, E)
        return self.head(self.dropout(pooled))  # (B, num_classes)


class BertTagger(_FineTuned):
    """A tag per word over a pretrained BERT: a word's state is its first WordPiece's
    (``word_pooling="first"``, as BERT's paper tags) or the mean of its pieces', then a linear
    head. Called as ``TransformerTagger``: ``(ids, word_ids, n_words)``."""

    def __init__(
        self,
        *,
        body: Bert,
        num_tags: int,
        word_pooling: str = "first",
        dropout: float = 0.0,
        freeze_body: bool = False,
        body_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(
            body, dropout=dropout, freeze_body=freeze_body, body_lr_scale=body_lr_scale
        )
        check_choice("word_pooling", word_pooling, WORD_POOLINGS)
        check_positive(num_tags=num_tags)
        self.word_pooling = word_pooling
        self.head = nn.Linear(body.d_model, num_tags)

    def forward(self, ids: Tensor, word_ids: Tensor, n_words: int | None = None) -> Tensor:
        """ids, word_ids: (B, T), -1 for [CLS], [SEP] and padding -> logits (B, W, num_tags)."""
        if n_words is None:
            n_words = int(word_ids.max().item()) + 1
        hidden = self.body(ids).last_hidden_state  # (B, T, E)
        pool = word_pooling_matrix(word_ids, n_words, self.word_pooling)  # (B, W, T)
        return self.head(self.dropout(pool.to(hidden.dtype) @ hidden))  # (B, W, num_tags)
