"""Hand-written transformer parts: attention, position encodings, blocks."""

from attention_lab.nn.attention import (
    ATTENTION_KINDS,
    MultiHeadAttention,
    build_attention,
    causal_mask,
    scaled_dot_product_attention,
)
from attention_lab.nn.blocks import (
    DecoderBlock,
    Encoder,
    EncoderBlock,
    EncoderSpec,
    FeedForward,
    keep_attention_weights,
)
from attention_lab.nn.positional import build_positional, sinusoidal_encoding

__all__ = [
    "ATTENTION_KINDS",
    "DecoderBlock",
    "Encoder",
    "EncoderBlock",
    "EncoderSpec",
    "FeedForward",
    "MultiHeadAttention",
    "build_attention",
    "build_positional",
    "causal_mask",
    "keep_attention_weights",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
