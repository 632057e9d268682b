"""Vision Transformer (Dosovitskiy et al., 2021), from scratch.

"We split an image into fixed-size patches, linearly embed each of them, add position
embeddings, and feed the resulting sequence of vectors to a standard Transformer encoder. In order
to perform classification, we use the standard approach of adding an extra learnable
'classification token' to the sequence."
"""

from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from attention_lab.nn.blocks import DEFAULT_LAYER_NORM_EPS, Encoder
from attention_lab.nn.positional import build_positional

VIT_POOLINGS = ("cls", "mean")


class VisionTransformer(nn.Module):
    """Patches -> linear embedding -> [class token] + positions -> pre-norm encoder -> MLP head.

    The patch embedding is a linear map of each flattened patch, which is what a convolution
    with kernel and stride ``patch_size`` computes; ``attention_lab.pretrained`` maps
    torchvision's ``conv_proj`` onto it. torchvision's ViTs use ``layer_norm_eps=1e-6``.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        patch_size: int = 4,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 6,
        d_ff: int = 128,
        dropout: float = 0.1,
        emb_dropout: float = 0.0,
        activation: str = "gelu",
        positional: str = "learned",
        class_token: bool = True,
        pooling: str = "cls",
        attention: str = "scratch",
        layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        if patch_size <= 0 or image_size % patch_size != 0:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; pick a "
                f"patch_size that does (for 28: 2, 4, 7, 14; for 32: 2, 4, 8, 16)"
            )
        if pooling not in VIT_POOLINGS:
            raise ValueError(
                f"pooling={pooling!r} is not known; choose one of {', '.join(VIT_POOLINGS)}"
            )
        if pooling == "cls" and not class_token:
            raise ValueError(
                "pooling='cls' needs the class token, but class_token=false; "
                "set class_token=true or pooling=mean"
            )
        for name, value in {"in_channels": in_channels, "num_classes": num_classes}.items():
            if value <= 0:
                raise ValueError(f"{name}={value} must be positive")
        self.image_size = image_size
        self.patch_size = patch_size
        self.pooling = pooling
        grid = image_size // patch_size
        patch_dim = in_channels * patch_size * patch_size

        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size),
            nn.Linear(patch_dim, d_model),
        )
        # The class token is one more token that every patch can write to; its final state is
        # what the head reads. Small random init as in the reference implementation.
        self.cls_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if class_token else None
        self.positional = build_positional(
            positional, d_model=d_model, max_len=grid * grid + class_token
        )
        self.dropout = nn.Dropout(emb_dropout)
        self.encoder = Encoder(
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            activation=activation,
            norm_first=True,  # ViT is pre-norm
            attention=attention,
            layer_norm_eps=layer_norm_eps,
        )
        self.mlp_head = nn.Linear(d_model, num_classes)

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
