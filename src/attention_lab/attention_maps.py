"""Attention maps: what a model attended to, as tensors, as rollout, and as figures.

Tasks turn a batch into an ``AttentionSnapshot`` (the weights of each attention module with the
labels of its queries and keys); ``callbacks.attention_maps`` decides when, and where it goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # figures without pyplot: no display, no global state
from torch import Tensor

MAX_TICKS = 30  # label at most this many tokens per axis, so the labels stay readable


@dataclass
class AttentionMap:
    """The weights of one attention module for a few samples."""

    name: str  # for example "layer0", or "decoder/layer2/cross"
    weights: Tensor  # (N, H, T, S)
    query_labels: list[list[str]]  # N lists of T labels
    key_labels: list[list[str]]  # N lists of S labels


@dataclass
class AttentionSnapshot:
    """Every attention map of one forward pass, and the inputs needed to overlay a rollout.

    ``images`` and ``patch_grid`` are set by image models with a class token at position 0
    followed by the patches in row-major order; the rollout is then drawn over the images.
    """

    maps: list[AttentionMap]
    images: Tensor | None = None  # (N, C, H, W)
    patch_grid: tuple[int, int] | None = None


def attention_rollout(layers: list[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input.

    Each layer's head-averaged weights are mixed with the identity for the residual connection,
    ``residual * I + (1 - residual) * A``, rows renormalised, and the layers multiplied in order.
    layers: L tensors (N, H, T, T) -> (N, T, T).
    """
    if not layers:
        raise ValueError("attention_rollout needs at least one layer")
    n, _, t, _ = layers[0].shape
    identity = torch.eye(t, device=layers[0].device).expand(n, t, t)  # (N, T, T)
    rollout = identity
    for weights in layers:
        mixed = residual * identity + (1.0 - residual) * weights.float().mean(dim=1)  # (N, T, T)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout  # (N, T, T)
    return rollout


def _label_axes(ax, query_labels: list[str] | None, key_labels: list[str] | None) -> None:
    """Token labels on the axes given labels (None: no ticks), thinned to at most MAX_TICKS."""
    for labels, set_ticks, rotation in (
        (key_labels, ax.set_xticks, 90),
        (query_labels, ax.set_yticks, 0),
    ):
        if labels is None:
            set_ticks([])
            continue
        step = max(1, -(-len(labels) // MAX_TICKS))
        positions = list(range(0, len(labels), step))
        set_ticks(positions, [labels[i] for i in positions], rotation=rotation, fontsize=6)


def _unpadded(labels: list[str]) -> int:
    """How many labels there are before the trailing "" ones (at least one)."""
    return max(1, max((i + 1 for i, label in enumerate(labels) if label), default=0))


def plot_heads(
    weights: Tensor, query_labels: list[str], key_labels: list[str], title: str
) -> Figure:
    """One heat map per head of one sample's weights (H, T, S), axes labelled by token.

    Trailing positions labelled "" (the padding of a batch's shorter samples) are left out.
    """
    queries, keys = _unpadded(query_labels), _unpadded(key_labels)
    weights = weights.detach().float().cpu()[:, :queries, :keys]
    query_labels, key_labels = query_labels[:queries], key_labels[:keys]
    n_heads = weights.size(0)
    cols = min(n_heads, 4)
    rows = -(-n_heads // cols)
    size = 2.2 + 0.06 * max(weights.shape[-2:])
    fig = Figure(figsize=(cols * size, rows * size))
    axes = fig.subplots(rows, cols, squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= n_heads:
            ax.axis("off")
            continue
        image = ax.imshow(weights[head].numpy(), cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_title(f"head {head}", fontsize=8)
        # Tokens on the outer panels only (queries left, keys below): laying out every panel's
        # tick labels was most of the time a run spent on its maps.
        outer_left, lowest = head % cols == 0, head + cols >= n_heads
        _label_axes(ax, query_labels if outer_left else None, key_labels if lowest else None)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    axes[0, 0].set_ylabel("query")
    axes[-1, 0].set_xlabel("key")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_rollout(image: Tensor, rollout: Tensor, patch_grid: tuple[int, int], title: str) -> Figure:
    """The class token's rollout over the patches, upsampled and laid over the image.

    image: (C, H, W); rollout: (T, T) with the class token at 0 and patches after it.
    """
    rows, cols = patch_grid
    relevance = rollout[0, 1:].float().reshape(1, 1, rows, cols)  # (1, 1, rows, cols)
    height, width = image.shape[-2:]
    heat = F.interpolate(relevance, size=(height, width), mode="nearest")[0, 0]  # (H, W)
    heat = (heat / heat.max().clamp_min(1e-12)).cpu()
    picture = image.detach().float().cpu()
    picture = (picture - picture.min()) / (picture.max() - picture.min()).clamp_min(1e-12)
    fig = Figure(figsize=(5, 2.6))
    axes = fig.subplots(1, 2)
    shown = picture[0] if picture.size(0) == 1 else picture.permute(1, 2, 0)
    for ax in axes:
        ax.imshow(shown.numpy(), cmap="gray")
        ax.axis("off")
    axes[1].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
    axes[0].set_title("input", fontsize=8)
    axes[1].set_title("rollout from the class token", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
