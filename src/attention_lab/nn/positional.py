"""Position encodings: the paper's fixed sinusoids, a learned table, and ALiBi's distance bias.

"PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))"
(Vaswani et al., 2017, section 3.5)

The first two are added to the token embeddings; ALiBi (Press et al., 2022, "Train Short, Test
Long") adds nothing to them and biases each head's attention scores by its distance instead, and
``RelativePositionBias`` learns such a bias for each signed offset, so it tells left from right.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POSITIONAL_KINDS = ("sinusoidal", "learned", "none")  # added to the embeddings


def sinusoidal_encoding(length: int, d_model: int) -> Tensor:
    """The (length, d_model) table of the paper's sinusoids; d_model must be even."""
    if d_model % 2 != 0:
        raise ValueError(f"sinusoidal position encoding needs an even d_model, got {d_model}")
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    # 10000^(-2i / d_model), computed in log space for precision.
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )  # (d_model / 2,)
    angles = position * inv_freq  # (length, d_model / 2)
    table = torch.empty(length, d_model)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table  # (length, d_model)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoids; kept as a non-persistent buffer, so checkpoints stay small."""

    def __init__(self, *, d_model: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_encoding(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, E) -> (B, T, E)."""
        _check_length(x, self.table.size(0))
        return x + self.table[: x.size(1)].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned (max_len, d_model) table, initialised small as in BERT and ViT."""

    def __init__(self, *, d_model: int, max_len: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, E) -> (B, T, E)."""
        _check_length(x, self.table.size(0))
        return x + self.table[: x.size(1)]


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's head-specific slopes: "a geometric sequence that starts at 2^(-8/n) and uses that
    same value as its ratio" (section 3): 1/2, 1/4, ..., 1/256 for 8 heads. (H,)"""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


def alibi_bias(n_heads: int, length: int, device: torch.device | None = None) -> Tensor:
    """(H, T, T) additive attention bias -m_h |i - j|: near tokens count more, each head with its
    own reach. Symmetric in i and j (both directions, as an encoder reads; the paper's decoder
    sees only j <= i), as MosaicBERT uses it."""
    position = torch.arange(length, device=device, dtype=torch.float32)
    distance = (position[None, :] - position[:, None]).abs()  # (T, T)
    return -alibi_slopes(n_heads).to(device)[:, None, None] * distance  # (H, T, T)


class RelativePositionBias(nn.Module):
    """A learned attention bias b[h, clip(j - i, -window, window)] per head h, for query i and key
    j: relative positions clipped at a window, as Shaw et al. (2018) clip theirs (they
    hypothesised that precise relative position is not useful beyond a certain distance), one
    learned scalar per head and offset added to the scores, as T5 (Raffel et al., 2020) does for
    buckets of offsets (here one per offset inside the window), shared by every block.

    ALiBi's bias depends on |j - i| only, so a word cannot tell the word before it from the one
    after it ("the X" and "X the" look alike); this one depends on the sign too. It starts as
    ALiBi within the window (-m_h |j - i|), so training sets out from ALiBi's locality.
    """

    def __init__(self, n_heads: int, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"relative_window={window} must be at least 1")
        self.window = window
        distance = torch.arange(-window, window + 1, dtype=torch.float32).abs()  # (2w+1,)
        self.bias = nn.Parameter(-alibi_slopes(n_heads)[:, None] * distance)  # (H, 2w+1)

    def forward(self, length: int) -> Tensor:
        """The (H, T, T) bias for a sequence of ``length`` tokens."""
        position = torch.arange(length, device=self.bias.device)
        offset = position[None, :] - position[:, None]  # (T, T): j - i
        return self.bias[:, offset.clamp(-self.window, self.window) + self.window]  # (H, T, T)

    def extra_repr(self) -> str:
        return f"n_heads={self.bias.size(0)}, window={self.window}"


def _check_length(x: Tensor, max_len: int) -> None:
    if x.size(1) > max_len:
        raise ValueError(f"sequence of length {x.size(1)} is longer than max_len={max_len}")


def build_positional(kind: str, *, d_model: int, max_len: int) -> nn.Module:
    """``sinusoidal``, ``learned`` or ``none`` (identity: the model sees a bag of tokens)."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model=d_model, max_len=max_len)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model=d_model, max_len=max_len)
    if kind == "none":
        return nn.Identity()
    raise ValueError(
        f"positional={kind!r} is not a known position encoding; choose one of "
        f"{', '.join(POSITIONAL_KINDS)}"
    )
