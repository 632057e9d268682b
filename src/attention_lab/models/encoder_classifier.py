"""An encoder-only transformer that classifies images read as a sequence of tokens.

How an image becomes tokens decides what attention can do. Pixel rows (28 tokens of 28 pixels
for MNIST) or patches (49 tokens of 4x4 pixels) give attention something to mix. A single token
holding the whole image does not: softmax over one key is always 1, so every attention layer
returns the value projection of its input and the "transformer" is an MLP. ``tokens="flat"``
keeps that variant (a linear embedding of all 784 pixels as the one token) for comparison, not to
recommend it. The course's assignment notebook feeds a single token too, but a different one: the
image cropped to its first 512 pixels, with no embedding (``models/course.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from attention_lab.errors import check_choice, check_positive
from attention_lab.nn.blocks import Encoder, EncoderSpec
from attention_lab.nn.positional import build_positional

TOKENIZATIONS = ("rows", "patches", "flat")
POOLINGS = ("mean", "cls")
ENCODER_CLASSIFIER_ENCODER = EncoderSpec(
    n_layers=2, d_model=64, n_heads=4, d_ff=256, dropout=0.1, activation="gelu", norm_first=True
)


def image_to_tokens(images: Tensor, tokens: str, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, F): N tokens of F pixel values each."""
    if tokens == "rows":
        return rearrange(images, "b c h w -> b h (c w)")
    if tokens == "patches":
        return rearrange(
            images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size
        )
    if tokens == "flat":
        return rearrange(images, "b c h w -> b 1 (c h w)")
    raise ValueError(f"tokens={tokens!r} is not known; choose one of {', '.join(TOKENIZATIONS)}")


def token_grid(image_size: int, tokens: str, patch_size: int) -> tuple[int, int]:
    """(number of tokens, pixel values per token) for one channel-first square image."""
    if tokens == "rows":
        return image_size, image_size
    if tokens == "patches":
        return (image_size // patch_size) ** 2, patch_size * patch_size
    return 1, image_size * image_size


class EncoderClassifier(nn.Module):
    """Tokens -> linear embedding + positions -> N encoder blocks -> pooling -> linear head.

    ``encoder``: ``EncoderSpec`` fields over ``ENCODER_CLASSIFIER_ENCODER``; its ``dropout``
    also drops out the embedded tokens.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        tokens: str = "rows",
        patch_size: int = 4,
        positional: str = "sinusoidal",
        pooling: str = "mean",
        **encoder: Any,
    ) -> None:
        super().__init__()
        spec = ENCODER_CLASSIFIER_ENCODER.updated(encoder, model="EncoderClassifier")
        check_positive(image_size=image_size, in_channels=in_channels, num_classes=num_classes)
        check_choice("tokens", tokens, TOKENIZATIONS)
        if tokens == "patches" and (patch_size <= 0 or image_size % patch_size != 0):
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; "
                f"pick a patch_size that does (for 28: 2, 4, 7, 14)"
            )
        check_choice("pooling", pooling, POOLINGS)

        self.image_size = image_size
        self.tokens = tokens
        self.patch_size = patch_size
        self.pooling = pooling
        n_tokens, token_dim = token_grid(image_size, tokens, patch_size)
        self.to_embedding = nn.Linear(token_dim * in_channels, spec.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.d_model)) if pooling == "cls" else None
        self.positional = build_positional(
            positional, d_model=spec.d_model, max_len=n_tokens + (pooling == "cls")
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.encoder = Encoder(spec)
        self.head = nn.Linear(spec.d_model, num_classes)

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of patches when the tokens are patches, else None."""
        if self.tokens != "patches":
            return None
        grid = self.image_size // self.patch_size
        return grid, grid

    def token_labels(self) -> list[str]:
        """A label per token, in order: 'cls' if pooled from it, then rows, patches or 'image'."""
        if self.tokens == "rows":
            labels = [f"row {r}" for r in range(self.image_size)]
        elif self.tokens == "patches":
            grid = self.image_size // self.patch_size
            labels = [f"({r},{c})" for r in range(grid) for c in range(grid)]
        else:
            labels = ["image"]
        return (["cls"] if self.cls_token is not None else []) + labels

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        x = image_to_tokens(images, self.tokens, self.patch_size)  # (B, N, F)
        x = self.to_embedding(x)  # (B, N, E)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1+N, E)
        x = self.encoder(self.dropout(self.positional(x)))  # (B, N, E)
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(dim=1)  # (B, E)
        return self.head(pooled)  # (B, num_classes)
