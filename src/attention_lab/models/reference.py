"""Non-transformer references for the language tasks, in the same pipeline as the transformers.

They read the same subword pieces from the same data modules, train in the same tasks and
commands, and are called as the transformer models they stand beside, so that a gap between a
transformer and its published baselines can be put on the recipe or on the pipeline:

- ``BiLSTMTagger``: pieces -> embeddings -> a bidirectional LSTM -> pieces pooled into words ->
  a tag per word; the recurrent tagger of Plank et al. (2016), whose character model is a
  character CNN per word here (``chars`` > 0, shared with ``TransformerTagger``).
- ``CNNTextClassifier``: Kim's (2014) sentence CNN ("CNN-rand": embeddings learned from scratch,
  filters of widths 3, 4 and 5, max-over-time pooling, dropout, one linear layer).

Both take ``word_dropout`` as the transformers do (``models/text.py``).

Neither has attention: ``model.attention`` is not one of their settings, and their runs'
records say ``none``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attention_lab.data.tokenizer import UNK_ID
from attention_lab.errors import check_positive
from attention_lab.models.text import WordDropout, WordTagger, split_tagging_settings


class BiLSTMEncoder(nn.Module):
    """Token ids (B, T) -> embeddings -> ``n_layers`` bidirectional LSTM layers -> (B, T, E),
    E = 2 * ``hidden``. Padding (``pad_id``, at the end of each row) is left out of both
    directions (packed sequences), so a row's states do not depend on the batch it is in.
    torch.compile runs it in pieces: Dynamo breaks its graph at RNN modules and packing."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        d_emb: int = 128,
        hidden: int = 128,
        n_layers: int = 2,
        dropout: float = 0.25,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        check_positive(
            vocab_size=vocab_size, max_len=max_len, d_emb=d_emb, hidden=hidden, n_layers=n_layers
        )
        self.max_len = max_len
        self.pad_id = pad_id
        self.d_input = d_emb
        self.d_model = 2 * hidden
        self.embedding = nn.Embedding(vocab_size, d_emb, padding_idx=pad_id)
        self.lstm = nn.LSTM(
            d_emb,
            hidden,
            num_layers=n_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if n_layers > 1 else 0.0,  # between layers
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, extra: Tensor | None = None) -> Tensor:
        """ids: (B, T) -> (B, T, 2 * hidden); zeros at padding. ``extra`` (B, T, d_emb), if
        given, is added to the embeddings (a tagger's spelling features)."""
        lengths = (ids != self.pad_id).sum(dim=1).clamp_min(1)  # (B,)
        x = self.embedding(ids)  # (B, T, d_emb)
        if extra is not None:
            x = x + extra
        x = self.dropout(x)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=ids.size(1))
        return self.dropout(states)  # (B, T, 2 * hidden)


class BiLSTMTagger(WordTagger):
    """Pieces -> ``BiLSTMEncoder`` -> pieces pooled into words -> a tag's logits per word; called
    as ``TransformerTagger``: ``(ids, word_ids, n_words)``.

    ``settings``: ``WordTagger``'s tagging keywords (``TAGGING_KEYS``) and ``BiLSTMEncoder``'s
    (vocab_size, max_len, hidden, ...).
    """

    def __init__(self, *, num_tags: int, **settings: Any) -> None:
        tagging, encoder = split_tagging_settings(settings)
        super().__init__(BiLSTMEncoder(**encoder), num_tags=num_tags, **tagging)


class CNNTextClassifier(nn.Module):
    """Kim's sentence CNN over pieces: for each width w in ``widths``, ``n_filters`` filters
    of w consecutive embeddings, ReLU, the maximum over the sentence; the concatenated maxima,
    dropped out, under one linear layer. Called as ``TransformerTextClassifier``: ``(ids)``."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        num_classes: int = 2,
        d_emb: int = 128,
        widths: tuple[int, ...] = (3, 4, 5),
        n_filters: int = 100,
        dropout: float = 0.5,
        word_dropout: float = 0.0,
        pad_id: int = 0,
        unk_id: int = UNK_ID,
    ) -> None:
        super().__init__()
        check_positive(vocab_size=vocab_size, max_len=max_len, d_emb=d_emb, n_filters=n_filters)
        check_positive(**{f"widths[{i}]": width for i, width in enumerate(widths)})
        if num_classes <= 1:
            raise ValueError(f"num_classes={num_classes} must be at least 2")
        self.max_len = max_len
        self.pad_id = pad_id
        self.word_dropout = WordDropout(word_dropout, unk_id=unk_id, pad_id=pad_id)
        self.embedding = nn.Embedding(vocab_size, d_emb, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(d_emb, n_filters, int(w)) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_filters * len(widths), num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        """ids: (B, T), <cls> first -> logits (B, num_classes)."""
        ids = self.word_dropout(ids)  # training only
        # Windows start at every real position, the last ones reaching into padding (zero
        # embeddings), whatever padding the batch adds: a sentence scores alike in any batch.
        widest = max(conv.kernel_size[0] for conv in self.convs)
        ids = nn.functional.pad(ids, (0, widest - 1), value=self.pad_id)  # (B, T')
        real = ids != self.pad_id  # (B, T'); padding comes only at the end
        x = self.embedding(ids).transpose(1, 2)  # (B, d_emb, T')
        pooled = []
        for conv in self.convs:
            maps = torch.relu(conv(x))  # (B, F, T' - w + 1)
            starts = real[:, None, : maps.size(2)]  # (B, 1, T' - w + 1)
            pooled.append(maps.masked_fill(~starts, 0.0).amax(dim=2))  # (B, F); ReLU >= 0
        features = torch.cat(pooled, dim=1)  # (B, F * len(widths))
        return self.head(self.dropout(features))  # (B, num_classes)
