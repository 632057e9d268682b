"""Vision Transformer (Dosovitskiy et al., 2021), from scratch.

"We split an image into fixed-size patches, linearly embed each of them, add position
embeddings, and feed the resulting sequence of vectors to a standard Transformer encoder. In order
to perform classification, we use the standard approach of adding an extra learnable
'classification token' to the sequence."
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from attention_lab.errors import check_choice, check_positive
from attention_lab.nn.blocks import Encoder, EncoderSpec
from attention_lab.nn.positional import build_positional

VIT_POOLINGS = ("cls", "mean")
VIT_STEMS = ("patch", "conv")
# The encoder's defaults; ViT is pre-norm ("Layernorm (LN) is applied before every block").
VIT_ENCODER = EncoderSpec(
    n_layers=6, d_model=64, n_heads=4, d_ff=128, dropout=0.1, activation="gelu", norm_first=True
)


def conv_stem(in_channels: int, d_model: int, patch_size: int) -> nn.Sequential:
    """A stack of stride-2 3x3 convolutions that ends on the same grid as ``patch_size`` patches.

    Xiao et al. (2021), "Early Convolutions Help Transformers See Better": replacing the patchify
    stem with a few 3x3 convolutions (BatchNorm, ReLU) and a 1x1 projection makes ViTs train
    more stably and generalise better on small data, for a few percent more compute; the ViT
    paper's "hybrid" models feed a ResNet's feature map to the encoder the same way. Channels
    double per convolution and reach ``d_model`` at the last; ``patch_size`` must be a power of 2.
    """
    n_convs = patch_size.bit_length() - 1
    widths = [in_channels] + [d_model >> (n_convs - 1 - i) for i in range(n_convs)]
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(widths):
        layers += [
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]  # (B, c_out, H/2, W/2)
    return nn.Sequential(
        *layers,
        nn.Conv2d(widths[-1], d_model, kernel_size=1),  # (B, E, H/p, W/p)
        Rearrange("b e h w -> b (h w) e"),  # (B, N, E)
    )


class VisionTransformer(nn.Module):
    """Patches -> embedding (linear, or ``conv_stem``) -> [class token] + positions -> pre-norm
    encoder -> MLP head.

    With ``stem="patch"`` (the paper's) the patch embedding is a linear map of each flattened
    patch, which is what a convolution with kernel and stride ``patch_size`` computes;
    ``attention_lab.pretrained`` maps torchvision's ``conv_proj`` onto it. ``stem="conv"`` puts
    ``conv_stem`` in its place: same tokens, same grid. torchvision's ViTs use
    ``layer_norm_eps=1e-6``.

    ``encoder``: ``EncoderSpec`` fields over ``VIT_ENCODER`` (n_layers, d_model, n_heads, d_ff,
    dropout, activation, attention, layer_norm_eps); always pre-norm.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        patch_size: int = 4,
        emb_dropout: float = 0.0,
        positional: str = "learned",
        class_token: bool = True,
        pooling: str = "cls",
        stem: str = "patch",
        **encoder: Any,
    ) -> None:
        super().__init__()
        spec = VIT_ENCODER.updated(encoder, model="VisionTransformer", fixed=("norm_first",))
        if patch_size <= 0 or image_size % patch_size != 0:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; pick a "
                f"patch_size that does (for 28: 2, 4, 7, 14; for 32: 2, 4, 8, 16)"
            )
        check_choice("pooling", pooling, VIT_POOLINGS)
        check_choice("stem", stem, VIT_STEMS)
        if stem == "conv" and patch_size & (patch_size - 1):
            raise ValueError(
                f"stem='conv' halves the image per convolution, so patch_size must be a power "
                f"of 2, not {patch_size}; set patch_size to 2, 4, 8, ... or stem=patch"
            )
        if stem == "conv" and spec.d_model < patch_size // 2:
            raise ValueError(
                f"stem='conv' halves the channels per convolution back from d_model, so "
                f"d_model={spec.d_model} is too narrow for patch_size={patch_size}; "
                f"widen d_model or set stem=patch"
            )
        if pooling == "cls" and not class_token:
            raise ValueError(
                "pooling='cls' needs the class token, but class_token=false; "
                "set class_token=true or pooling=mean"
            )
        check_positive(in_channels=in_channels, num_classes=num_classes)
        self.image_size = image_size
        self.patch_size = patch_size
        self.pooling = pooling
        grid = image_size // patch_size

        if stem == "patch":
            patch_dim = in_channels * patch_size * patch_size
            self.to_patch_embedding = nn.Sequential(
                Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size),
                nn.Linear(patch_dim, spec.d_model),
            )
        else:
            self.to_patch_embedding = conv_stem(in_channels, spec.d_model, patch_size)
        # The class token is one more token that every patch can write to; its final state is
        # what the head reads. Small random init as in the reference implementation.
        token = torch.randn(1, 1, spec.d_model) * 0.02
        self.cls_token = nn.Parameter(token) if class_token else None
        self.positional = build_positional(
            positional, d_model=spec.d_model, max_len=grid * grid + class_token
        )
        self.dropout = nn.Dropout(emb_dropout)
        self.encoder = Encoder(spec)
        self.mlp_head = nn.Linear(spec.d_model, num_classes)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches."""
        grid = self.image_size // self.patch_size
        return grid, grid

    def token_labels(self) -> list[str]:
        """A label per token, in order: 'cls', then each patch's (row, column)."""
        rows, cols = self.patch_grid
        patches = [f"({r},{c})" for r in range(rows) for c in range(cols)]
        return (["cls"] if self.cls_token is not None else []) + patches

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but image_size={self.image_size}"
            )
        x = self.to_patch_embedding(images)  # (B, N, E)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1+N, E)
        x = self.encoder(self.dropout(self.positional(x)))  # (B, 1+N, E)
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(dim=1)  # (B, E)
        return self.mlp_head(pooled)  # (B, num_classes)
