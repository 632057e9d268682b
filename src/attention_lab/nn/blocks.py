"""Transformer building blocks: the position-wise feed-forward net, encoder and decoder blocks.

"Each layer has two sub-layers. The first is a multi-head self-attention mechanism, and the second
is a simple, position-wise fully connected feed-forward network. We employ a residual connection
around each of the two sub-layers, followed by layer normalization." (Vaswani et al., 2017, 3.1)

That is post-norm (``norm_first=False``). Pre-norm (``norm_first=True``) normalises the input of
each sub-layer instead and leaves the residual stream untouched; it trains more stably without
a careful warm-up and is what ViT uses. The choice is a setting, never implicit.

Every block and stack is built from one ``EncoderSpec``: the settings that every model on these
blocks shares (depth, width, heads, feed-forward width, dropout, activation, norm placement,
attention kind). A model keeps its own defaults as a spec and lays its configuration's keyword
arguments over them (``EncoderSpec.updated``), so no model repeats the eight arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor, nn

from attention_lab.errors import check_choice, check_positive
from attention_lab.nn.attention import build_attention

# "gelu" is the exact (erf) GELU of BERT and ViT; "gelu_tanh" its tanh approximation (GPT-2).
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh")}
DEFAULT_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's; pretrained models bring their own (BERT 1e-12)


@dataclass(frozen=True)
class EncoderSpec:
    """The settings of one encoder (or decoder) stack, as nanoGPT's ``GPTConfig``.

    ``attention`` is the ``model.attention`` kind, handed to ``build_attention`` by each block;
    ``dropout`` serves the attention weights, the sub-layer outputs and the feed-forward net.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = True
    attention: str = "scratch"
    layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS

    def __post_init__(self) -> None:
        check_positive(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff
        )

    def updated(
        self, settings: Mapping[str, Any], *, model: str, fixed: tuple[str, ...] = ()
    ) -> EncoderSpec:
        """This spec (a model's defaults) with ``settings``, the model's keyword arguments, laid
        over it. ``fixed`` fields are the model's own (ViT is pre-norm, BERT post-norm): setting
        one, or anything that is not a field, is a ``TypeError`` naming ``model``."""
        fields = {field.name for field in dataclasses.fields(self)} - set(fixed)
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise TypeError(
                f"{model} got unexpected settings {', '.join(unknown)}; its encoder settings "
                f"are {', '.join(sorted(fields))}"
            )
        return dataclasses.replace(self, **settings)


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied to each position alike (section 3.3)."""

    def __init__(
        self, *, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, E) -> (B, T, E)."""
        return self.net(x)


class EncoderBlock(nn.Module):
    """Self-attention, Add & Norm, feed-forward, Add & Norm.

    Set ``keep_attention`` (see ``keep_attention_weights``) to store the per-head attention
    weights of the next forward pass in ``attention_weights``; off by default, so ordinary
    training steps never ask the attention for its weights.
    """

    attention_weight_names = ("attention_weights",)

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.self_attn = _attention(spec)
        self.ff = _feed_forward(spec)
        self.norm1, self.norm2 = _norms(spec, 2)
        self.dropout = nn.Dropout(spec.dropout)
        self.norm_first = spec.norm_first
        self.keep_attention = False
        self.attention_weights: Tensor | None = None

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, T, E) -> (B, T, E); key_padding_mask: (B, T), True = padding; attn_mask:
        ``nn.MultiheadAttention``'s (T, T) or (B*H, T, T), e.g. a float position bias."""
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), key_padding_mask, attn_mask)
            return x + self.dropout(self.ff(self.norm2(x)))
        x = self.norm1(x + self._self_attention(x, key_padding_mask, attn_mask))
        return self.norm2(x + self.dropout(self.ff(x)))

    def _self_attention(
        self, x: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None
    ) -> Tensor:
        out, weights = self.self_attn(
            x,
            x,
            x,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            need_weights=self.keep_attention,
            average_attn_weights=False,
        )  # (B, T, E), (B, H, T, T) or None
        if self.keep_attention:
            self.attention_weights = weights.detach()
        return self.dropout(out)


class Encoder(nn.Module):
    """N encoder blocks, and the final norm that pre-norm needs (its residual stream is raw)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(spec) for _ in range(spec.n_layers))
        self.final_norm = final_norm(spec)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, T, E) -> (B, T, E); key_padding_mask: (B, T), True = padding; attn_mask:
        as ``EncoderBlock``'s, the same for every block."""
        for block in self.blocks:
            x = block(x, key_padding_mask, attn_mask)  # (B, T, E)
        return self.final_norm(x)


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; each with
    Add & Norm.

    "In addition to the two sub-layers in each encoder layer, the decoder inserts a third
    sub-layer, which performs multi-head attention over the output of the encoder stack ...
    We also modify the self-attention sub-layer in the decoder stack to prevent positions from
    attending to subsequent positions." (section 3.1)

    With ``keep_attention`` set, the next forward pass stores the per-head weights of both
    attentions: ``self_attention_weights`` (B, H, T, T), target over target, and
    ``cross_attention_weights`` (B, H, T, S), target over source: the alignment map.
    """

    attention_weight_names = ("self_attention_weights", "cross_attention_weights")

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.self_attn = _attention(spec)
        self.cross_attn = _attention(spec)
        self.ff = _feed_forward(spec)
        self.norm1, self.norm2, self.norm3 = _norms(spec, 3)
        self.dropout = nn.Dropout(spec.dropout)
        self.norm_first = spec.norm_first
        self.keep_attention = False
        self.self_attention_weights: Tensor | None = None
        self.cross_attention_weights: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        self_attn_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        context: Tensor | None = None,
        self_attn_is_causal: bool = False,
    ) -> Tensor:
        """x: (B, T, E), memory (the encoder output): (B, S, E) -> (B, T, E).

        Masks in ``nn.MultiheadAttention``'s convention (True = ignore): ``self_attn_mask``
        (T, T), the causal mask ``~causal_mask(T)``; ``tgt_key_padding_mask`` (B, T) and
        ``memory_key_padding_mask`` (B, S), True = padding.

        ``context`` serves incremental decoding: the block's inputs at all target positions so
        far (B, T_ctx, E), ending with x's. Self-attention then takes its keys and values from
        the context, and only x's positions are computed; the masks are (T, T_ctx) and
        (B, T_ctx), and a single newest position needs no causal mask.

        ``self_attn_is_causal`` is ``nn.MultiheadAttention``'s hint that ``self_attn_mask`` is the
        causal mask: the flash kernel then skips the key blocks it hides.
        """
        masks = (self_attn_mask, tgt_key_padding_mask, self_attn_is_causal)
        if self.norm_first:
            keys = None if context is None else self.norm1(context)
            x = x + self._self_attention(self.norm1(x), keys, *masks)
            x = x + self._cross_attention(self.norm2(x), memory, memory_key_padding_mask)
            return x + self.dropout(self.ff(self.norm3(x)))
        x = self.norm1(x + self._self_attention(x, context, *masks))
        x = self.norm2(x + self._cross_attention(x, memory, memory_key_padding_mask))
        return self.norm3(x + self.dropout(self.ff(x)))

    def _self_attention(
        self,
        x: Tensor,
        keys: Tensor | None,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        keys = x if keys is None else keys  # x itself keeps one fused q/k/v projection
        out, weights = self.self_attn(
            x,
            keys,
            keys,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            need_weights=self.keep_attention,
            average_attn_weights=False,
            is_causal=is_causal,
        )  # (B, T, E), (B, H, T, T_ctx) or None
        if self.keep_attention:
            self.self_attention_weights = weights.detach()
        return self.dropout(out)

    def _cross_attention(
        self, x: Tensor, memory: Tensor, key_padding_mask: Tensor | None
    ) -> Tensor:
        out, weights = self.cross_attn(
            x,
            memory,
            memory,
            key_padding_mask=key_padding_mask,
            need_weights=self.keep_attention,
            average_attn_weights=False,
        )  # (B, T, E), (B, H, T, S) or None
        if self.keep_attention:
            self.cross_attention_weights = weights.detach()
        return self.dropout(out)


def final_norm(spec: EncoderSpec) -> nn.Module:
    """The norm at the end of a pre-norm stack (its residual stream is raw); post-norm has none."""
    return nn.LayerNorm(spec.d_model, eps=spec.layer_norm_eps) if spec.norm_first else nn.Identity()


def _attention(spec: EncoderSpec) -> nn.Module:
    return build_attention(
        spec.attention, d_model=spec.d_model, n_heads=spec.n_heads, dropout=spec.dropout
    )


def _feed_forward(spec: EncoderSpec) -> FeedForward:
    return FeedForward(
        d_model=spec.d_model, d_ff=spec.d_ff, dropout=spec.dropout, activation=spec.activation
    )


def _norms(spec: EncoderSpec, count: int) -> tuple[nn.LayerNorm, ...]:
    return tuple(nn.LayerNorm(spec.d_model, eps=spec.layer_norm_eps) for _ in range(count))


@contextmanager
def keep_attention_weights(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, every attention block of ``model`` keeps its weights.

    Yields the blocks, in order (for a seq2seq model: encoder blocks, then decoder blocks).
    After a forward pass each block holds the tensors named in its ``attention_weight_names``:
    ``attention_weights`` (B, H, T, T) for an ``EncoderBlock``; ``self_attention_weights``
    (B, H, T, T) and ``cross_attention_weights`` (B, H, T, S) for a ``DecoderBlock``.
    Weights are dropped again on exit.
    """
    blocks = [m for m in model.modules() if hasattr(m, "keep_attention")]
    for block in blocks:
        block.keep_attention = True
    try:
        yield blocks
    finally:
        for block in blocks:
            block.keep_attention = False
            for name in getattr(block, "attention_weight_names", ("attention_weights",)):
                setattr(block, name, None)
