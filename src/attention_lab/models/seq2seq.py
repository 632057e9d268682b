"""The encoder-decoder transformer for translation (Vaswani et al., 2017, section 3).

"The encoder maps an input sequence of symbol representations (x_1, ..., x_n) to a sequence of
continuous representations z = (z_1, ..., z_n). Given z, the decoder then generates an output
sequence (y_1, ..., y_m) of symbols one element at a time." (section 3)

Token ids in, logits out: the model knows the id of the padding token and nothing else about
the vocabulary. Masks follow the project convention (see ``nn/attention.py``): the blocks take
``nn.MultiheadAttention``'s masks, True = ignore, built here in ``encode`` and ``decode`` only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attention_lab.errors import check_positive
from attention_lab.nn.attention import causal_mask
from attention_lab.nn.blocks import DecoderBlock, Encoder, EncoderSpec, final_norm
from attention_lab.nn.positional import build_positional

# The settings of both stacks (n_layers each); the base model of the paper is 6 layers of 512.
SEQ2SEQ_ENCODER = EncoderSpec(
    n_layers=3, d_model=256, n_heads=8, d_ff=512, dropout=0.1, activation="relu", norm_first=True
)


class Seq2SeqTransformer(nn.Module):
    """Embeddings + positions -> N encoder blocks; embeddings + positions -> N decoder blocks
    attending to the encoder output -> linear projection to target-vocabulary logits.

    ``tie_embeddings`` shares the target embedding matrix with the output projection;
    ``share_embeddings`` the source embedding with the target's too, for one vocabulary of both
    languages: the paper's three-way sharing ("we share the same weight matrix between the two
    embedding layers and the pre-softmax linear transformation", section 3.4).

    ``stacks``: ``EncoderSpec`` fields over ``SEQ2SEQ_ENCODER``, for the encoder and the decoder
    alike; its ``dropout`` also drops out the embedded tokens.
    """

    def __init__(
        self,
        *,
        src_vocab_size: int,
        tgt_vocab_size: int,
        positional: str = "sinusoidal",
        max_len: int = 256,
        tie_embeddings: bool = True,
        share_embeddings: bool = False,
        pad_id: int = 0,
        **stacks: Any,
    ) -> None:
        super().__init__()
        spec = SEQ2SEQ_ENCODER.updated(stacks, model="Seq2SeqTransformer")
        check_positive(
            src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, max_len=max_len
        )
        self.d_model = d_model = spec.d_model
        self.max_len = max_len
        self.pad_id = pad_id
        # "In the embedding layers, we multiply those weights by sqrt(d_model)" (3.4): with the
        # N(0, 1/d_model) initialisation below, embeddings enter with unit scale, like positions.
        self.embed_scale = math.sqrt(d_model)
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(
                f"share_embeddings=True needs one vocabulary for both languages, but "
                f"src_vocab_size={src_vocab_size} and tgt_vocab_size={tgt_vocab_size} "
                f"(set data.shared_vocab=true)"
            )
        self.src_embedding = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embedding = (
            self.src_embedding if share_embeddings else nn.Embedding(tgt_vocab_size, d_model)
        )
        self.src_positional = build_positional(positional, d_model=d_model, max_len=max_len)
        self.tgt_positional = build_positional(positional, d_model=d_model, max_len=max_len)
        self.dropout = nn.Dropout(spec.dropout)
        self.encoder = Encoder(spec)
        self.decoder = nn.ModuleList(DecoderBlock(spec) for _ in range(spec.n_layers))
        # Pre-norm leaves the residual stream unnormalised, so the decoder stack needs one norm
        # at the end too (the Encoder has its own).
        self.decoder_norm = final_norm(spec)
        self.to_logits = nn.Linear(d_model, tgt_vocab_size, bias=False)

        for embedding in dict.fromkeys((self.src_embedding, self.tgt_embedding)):  # once each
            nn.init.normal_(embedding.weight, std=d_model**-0.5)
        if tie_embeddings:
            self.to_logits.weight = self.tgt_embedding.weight

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, S) token ids -> memory (B, S, E) and its padding mask (B, S), True = padding."""
        src_padding = src == self.pad_id  # (B, S)
        x = self.src_embedding(src) * self.embed_scale  # (B, S, E)
        x = self.dropout(self.src_positional(x))
        return self.encoder(x, key_padding_mask=src_padding), src_padding  # (B, S, E), (B, S)

    def decode(self, tgt: Tensor, memory: Tensor, src_padding: Tensor) -> Tensor:
        """Logits for the token after each target position.

        tgt: (B, T) token ids, starting with the start token; memory: (B, S, E) and
        src_padding: (B, S) from ``encode`` -> logits (B, T, V_tgt). Position t sees tgt[:, :t+1]
        only, so one call scores a whole reference (teacher forcing) or extends a prefix.
        """
        tgt_padding = tgt == self.pad_id  # (B, T)
        later_positions = ~causal_mask(tgt.size(1), device=tgt.device)  # (T, T), True = ignore
        x = self.tgt_embedding(tgt) * self.embed_scale  # (B, T, E)
        x = self.dropout(self.tgt_positional(x))
        for block in self.decoder:
            x = block(
                x,
                memory,
                self_attn_mask=later_positions,
                tgt_key_padding_mask=tgt_padding,
                memory_key_padding_mask=src_padding,
                self_attn_is_causal=True,
            )  # (B, T, E)
        return self.to_logits(self.decoder_norm(x))  # (B, T, V_tgt)

    def decode_step(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_padding: Tensor,
        cache: list[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits for the token after the last of ``tgt``, computing that position only.

        The same numbers as ``decode(tgt, memory, src_padding)[:, -1]`` for generation, one
        token at a time: each decoder block gets the newest position as its input and the
        inputs of the earlier positions, kept in ``cache``, as the keys and values of its
        self-attention, so earlier positions are not run through the blocks again.
        tgt: (B, T) ids; cache: per decoder block (B, T-1, E), as returned by the previous
        call (None for the first token). Returns logits (B, V_tgt) and the cache for the next.
        """
        cached = 0 if cache is None else cache[0].size(1)
        if cached != tgt.size(1) - 1:
            raise ValueError(
                f"decode_step needs the cache of the {tgt.size(1) - 1} earlier positions of tgt, "
                f"got {cached}: start from one token and feed each returned cache back"
            )
        tgt_padding = tgt == self.pad_id  # (B, T)
        x = self.tgt_positional(self.tgt_embedding(tgt) * self.embed_scale)[:, -1:]  # (B, 1, E)
        new_cache = []
        for i, block in enumerate(self.decoder):
            context = x if cache is None else torch.cat([cache[i], x], dim=1)  # (B, T, E)
            new_cache.append(context)
            x = block(
                x,
                memory,
                tgt_key_padding_mask=tgt_padding,
                memory_key_padding_mask=src_padding,
                context=context,
            )  # (B, 1, E)
        return self.to_logits(self.decoder_norm(x))[:, 0], new_cache  # (B, V_tgt)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """src: (B, S), tgt: (B, T) token ids -> next-token logits (B, T, V_tgt)."""
        memory, src_padding = self.encode(src)  # (B, S, E), (B, S)
        return self.decode(tgt, memory, src_padding)  # (B, T, V_tgt)
