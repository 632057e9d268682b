"""Encoder-only transformers over subword ids: a tagger (a tag per word) and a sentence classifier.

Both put a linear head on ``TextEncoder``: embeddings scaled by sqrt(d_model) plus positions,
then the shared ``Encoder``, with padding (``pad_id``) masked as keys. The data prepends <cls>.

``word_dropout`` (training only) turns whole words into <unk> (``unk_id``) at random, as the
classic taggers do (Kiperwasser and Goldberg, 2016; Plank et al., 2016): the model must then
tag, or judge, from context and spelling, which is all it has for a word training never saw.

A tagger labels words, not pieces. ``word_pooling="first"`` reads a word's tag off its first
piece (as BERT does); ``"mean"`` off the mean of all its pieces, which sees a suffix such as
"-ts" in "▁cour ts" directly. Either way there is exactly one output per word.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from attention_lab.data.chars import CHAR_PAD, CHAR_VOCAB_SIZE
from attention_lab.data.tokenizer import UNK_ID
from attention_lab.errors import check_choice, check_positive
from attention_lab.nn.blocks import Encoder, EncoderSpec
from attention_lab.nn.positional import (
    POSITIONAL_KINDS,
    RelativePositionBias,
    alibi_bias,
    build_positional,
)

WORD_POOLINGS = ("first", "mean")
# Positions as a bias on every block's attention scores, nothing added to the embeddings.
SCORE_BIAS_KINDS = ("alibi", "relative")
SENTENCE_POOLINGS = ("cls", "mean")
TEXT_ENCODER = EncoderSpec(
    n_layers=4, d_model=128, n_heads=4, d_ff=512, dropout=0.1, activation="gelu", norm_first=True
)


class TextEncoder(nn.Module):
    """Token ids -> embeddings + positions -> N encoder blocks -> (B, T, E).

    ``encoder``: ``EncoderSpec`` fields over ``TEXT_ENCODER``; its ``dropout`` also drops out
    the embedded tokens. ``positional="alibi"`` adds no position embedding: every block's
    attention scores are biased by -m_h |i - j| instead (``nn.positional.alibi_bias``), so
    each head prefers near tokens, by its own slope. ``"relative"`` learns that bias for each
    signed offset j - i within ``relative_window`` (``nn.positional.RelativePositionBias``).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        positional: str = "sinusoidal",
        relative_window: int = 16,
        pad_id: int = 0,
        **encoder: Any,
    ) -> None:
        super().__init__()
        spec = TEXT_ENCODER.updated(encoder, model="TextEncoder")
        check_positive(vocab_size=vocab_size, max_len=max_len)
        self.pad_id = pad_id
        self.max_len = max_len
        self.d_model = self.d_input = d_model = spec.d_model
        # With N(0, 1/d_model) weights, scaling by sqrt(d_model) makes embeddings unit-scale,
        # like the positions they are added to (as in Seq2SeqTransformer).
        self.embed_scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        check_choice("positional", positional, (*POSITIONAL_KINDS, *SCORE_BIAS_KINDS))
        # ALiBi and relative positions add nothing to the embeddings; they bias every block's
        # attention scores by the offset between query and key.
        self.score_bias = positional if positional in SCORE_BIAS_KINDS else None
        self.n_heads = spec.n_heads
        self.relative_bias = (
            RelativePositionBias(spec.n_heads, relative_window)
            if positional == "relative"
            else None
        )
        if self.score_bias:
            self.positional = nn.Identity()
        else:
            self.positional = build_positional(positional, d_model=d_model, max_len=max_len)
        self.dropout = nn.Dropout(spec.dropout)
        self.encoder = Encoder(spec)

    def forward(self, ids: Tensor, extra: Tensor | None = None) -> Tensor:
        """ids: (B, T) -> (B, T, E); padding positions are never attended to. ``extra``
        (B, T, E), if given, is added to the scaled embeddings (a tagger's spelling features)."""
        padding = ids == self.pad_id  # (B, T), True = padding
        x = self.embedding(ids) * self.embed_scale  # (B, T, E)
        if extra is not None:
            x = x + extra
        x = self.dropout(self.positional(x))  # (B, T, E)
        if not self.score_bias:
            return self.encoder(x, key_padding_mask=padding)  # (B, T, E)
        # The same position bias for every sentence, with the padding folded in as -inf (one
        # float mask: PyTorch's attention warns, and a compiled model breaks its graph, on a
        # float attn_mask beside a boolean key_padding_mask).
        batch_size, length = ids.shape
        if self.relative_bias is not None:
            bias = self.relative_bias(length).to(x.dtype)  # (H, T, T), learned
        else:
            bias = alibi_bias(self.n_heads, length, ids.device).to(x.dtype)  # (H, T, T)
        bias = bias.expand(batch_size, -1, -1, -1).masked_fill(
            padding[:, None, None, :], float("-inf")
        )  # (B, H, T, T)
        return self.encoder(x, attn_mask=bias.reshape(-1, length, length))  # (B, T, E)


def reads_spelling(net: nn.Module) -> bool:
    """Whether a tagger's ``forward`` takes its words' characters (``chars``)."""
    return "chars" in inspect.signature(net.forward).parameters


def drop_words(ids: Tensor, word_ids: Tensor, p: float, unk_id: int) -> Tensor:
    """Word dropout: every piece of a word becomes ``unk_id`` when the word is dropped, each
    word with probability ``p``. ids, word_ids: (B, T), word_ids -1 for pieces of no word
    (<cls>, padding), which stay as they are. Returns new ids (B, T)."""
    # Every word has a piece, so its index is below T: one draw per index covers them all.
    dropped = torch.rand(ids.shape, device=ids.device) < p  # (B, T): word w dropped?
    hit = dropped.gather(1, word_ids.clamp_min(0)) & (word_ids >= 0)  # (B, T)
    return ids.masked_fill(hit, unk_id)


def drop_pieces(ids: Tensor, p: float, unk_id: int, pad_id: int) -> Tensor:
    """Word dropout for a sentence classifier: each piece becomes ``unk_id`` with probability
    ``p``; the first token (<cls>) and padding stay. ids: (B, T) -> new ids (B, T)."""
    hit = (torch.rand(ids.shape, device=ids.device) < p) & (ids != pad_id)  # (B, T)
    hit[:, 0] = False
    return ids.masked_fill(hit, unk_id)


class WordDropout(nn.Module):
    """Word dropout as a layer, like ``nn.Dropout``: in training, each word (all its pieces, given
    ``word_ids``; else each piece but the first, <cls>) becomes ``unk_id`` with probability
    ``p``, padding never; in evaluation the ids pass unchanged. ``p`` is below 1 (1 would leave
    no word to learn from)."""

    def __init__(self, p: float = 0.0, *, unk_id: int = UNK_ID, pad_id: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"word_dropout={p} must be in [0, 1)")
        self.p = p
        self.unk_id = unk_id
        self.pad_id = pad_id

    def forward(self, ids: Tensor, word_ids: Tensor | None = None) -> Tensor:
        """ids (and word_ids, -1 for pieces of no word): (B, T) -> ids (B, T)."""
        if not self.training or not self.p:
            return ids
        if word_ids is None:
            return drop_pieces(ids, self.p, self.unk_id, self.pad_id)
        return drop_words(ids, word_ids, self.p, self.unk_id)

    def extra_repr(self) -> str:
        return f"p={self.p}, unk_id={self.unk_id}"


def word_pooling_matrix(word_ids: Tensor, n_words: int, pooling: str) -> Tensor:
    """(B, T) word index per piece (-1: none) -> (B, W, T) weights that average pieces into words.

    ``pooling="first"`` keeps only each word's first piece.
    """
    words = torch.arange(n_words, device=word_ids.device)  # (W,)
    member = word_ids.unsqueeze(1) == words[None, :, None]  # (B, W, T)
    if pooling == "first":
        # cumsum counts the pieces of the word so far: the first has count 1.
        member = member & (member.cumsum(dim=-1) == 1)  # (B, W, T)
    weights = member.float()
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (B, W, T)


class CharWordEncoder(nn.Module):
    """A word's spelling: its characters (``data/chars.py``'s ids) -> embeddings -> a
    convolution over ``width`` neighbouring characters -> ReLU -> the maximum over the word
    (the character CNN of Ma and Hovy, 2016): (B, W, L) -> (B, W, features)."""

    def __init__(self, features: int, *, d_char: int = 32, width: int = 3) -> None:
        super().__init__()
        check_positive(chars=features)
        self.embedding = nn.Embedding(CHAR_VOCAB_SIZE, d_char, padding_idx=CHAR_PAD)
        self.conv = nn.Conv1d(d_char, features, width, padding=width // 2)

    def forward(self, chars: Tensor) -> Tensor:
        """chars: (B, W, L) -> (B, W, features); zeros for padding words."""
        batch, words, length = chars.shape
        flat = chars.reshape(batch * words, length)  # (B*W, L)
        x = self.embedding(flat).transpose(1, 2)  # (B*W, d_char, L)
        maps = torch.relu(self.conv(x))  # (B*W, F, L); ReLU >= 0, so 0 masks padding
        maps = maps.masked_fill((flat == CHAR_PAD)[:, None, :], 0.0)
        return maps.amax(dim=2).reshape(batch, words, -1)  # (B, W, F)


TAGGING_KEYS = ("word_pooling", "chars", "word_dropout", "unk_id")


def split_tagging_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tagger's keywords -> (``WordTagger``'s, its text encoder's)."""
    tagging = {key: value for key, value in settings.items() if key in TAGGING_KEYS}
    encoder = {key: value for key, value in settings.items() if key not in TAGGING_KEYS}
    return tagging, encoder


class WordTagger(nn.Module):
    """Pieces -> ``text_encoder`` (ids (B, T) -> states (B, T, E), with ``d_model``,
    ``d_input`` and ``max_len``) -> pieces pooled into words -> a tag's logits per word.

    With ``chars`` > 0 it reads each word's spelling too: a ``CharWordEncoder`` of that many
    features per word, projected to the encoder's input width and added to the embedding of
    every piece of the word, so the encoder sees it in context (as a BiLSTM tagger's word and
    character vectors enter its recurrence together). In training, ``word_dropout`` replaces
    a word's pieces, not its spelling, by <unk>.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        *,
        num_tags: int,
        word_pooling: str = "first",
        chars: int = 0,
        word_dropout: float = 0.0,
        unk_id: int = UNK_ID,
    ) -> None:
        super().__init__()
        check_choice("word_pooling", word_pooling, WORD_POOLINGS)
        check_positive(num_tags=num_tags)
        self.word_pooling = word_pooling
        self.word_dropout = WordDropout(word_dropout, unk_id=unk_id)
        self.text_encoder = text_encoder
        self.head = nn.Linear(text_encoder.d_model, num_tags)
        self.char_encoder = CharWordEncoder(chars) if chars else None
        self.char_projection = nn.Linear(chars, text_encoder.d_input) if chars else None

    @property
    def max_len(self) -> int:
        """Most pieces (with <cls>) a sentence may have."""
        return self.text_encoder.max_len

    def forward(
        self,
        ids: Tensor,
        word_ids: Tensor,
        n_words: int | None = None,
        chars: Tensor | None = None,
    ) -> Tensor:
        """ids, word_ids: (B, T) -> logits (B, W, num_tags), W = ``n_words`` or the most words.
        chars: (B, W', L) the words' characters, needed with ``chars`` > 0 (W' >= any word)."""
        if n_words is None:
            n_words = int(word_ids.max().item()) + 1
        ids = self.word_dropout(ids, word_ids)  # training only
        x = self.text_encoder(ids, self._spelling(word_ids, chars))  # (B, T, E)
        pool = word_pooling_matrix(word_ids, n_words, self.word_pooling)  # (B, W, T)
        return self.head(pool @ x)  # (B, W, num_tags)

    def _spelling(self, word_ids: Tensor, chars: Tensor | None) -> Tensor | None:
        """(B, T, D): each piece's word's spelling features, zeros for <cls> and padding."""
        if self.char_encoder is None:
            return None
        if chars is None:
            raise ValueError(
                "this tagger reads its words' characters (model.chars > 0): pass chars"
            )
        words = self.char_projection(self.char_encoder(chars))  # (B, W', D)
        index = word_ids.clamp_min(0)[..., None].expand(-1, -1, words.size(-1))  # (B, T, D)
        return words.gather(1, index) * (word_ids >= 0)[..., None].to(words.dtype)  # (B, T, D)


class TransformerTagger(WordTagger):
    """Pieces -> ``TextEncoder`` -> pieces pooled into words -> a tag's logits per word.

    ``settings``: ``WordTagger``'s tagging keywords (``TAGGING_KEYS``) and ``TextEncoder``'s
    (vocab_size, max_len, d_model, ...).
    """

    def __init__(self, *, num_tags: int, **settings: Any) -> None:
        tagging, encoder = split_tagging_settings(settings)
        super().__init__(TextEncoder(**encoder), num_tags=num_tags, **tagging)


class TransformerTextClassifier(nn.Module):
    """Pieces -> ``TextEncoder`` -> <cls> state or mean over non-padding -> class logits.

    ``settings`` are ``TextEncoder``'s keyword arguments (vocab_size, max_len, d_model, ...).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        pooling: str = "cls",
        word_dropout: float = 0.0,
        unk_id: int = UNK_ID,
        **settings: Any,
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, SENTENCE_POOLINGS)
        if num_classes <= 1:
            raise ValueError(f"num_classes={num_classes} must be at least 2")
        self.pooling = pooling
        self.text_encoder = TextEncoder(**settings)
        pad_id = self.text_encoder.pad_id
        self.word_dropout = WordDropout(word_dropout, unk_id=unk_id, pad_id=pad_id)
        self.head = nn.Linear(self.text_encoder.d_model, num_classes)

    @property
    def max_len(self) -> int:
        """Most pieces (with <cls>) a sentence may have."""
        return self.text_encoder.max_len

    def forward(self, ids: Tensor) -> Tensor:
        """ids: (B, T), <cls> first -> logits (B, num_classes)."""
        x = self.text_encoder(self.word_dropout(ids))  # (B, T, E); word dropout in training
        if self.pooling == "cls":
            return self.head(x[:, 0])  # (B, num_classes)
        keep = (ids != self.text_encoder.pad_id).unsqueeze(-1).float()  # (B, T, 1)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)  # (B, E)
        return self.head(pooled)  # (B, num_classes)
