"""Random affine augmentation of a whole batch at once, on tensors.

One ``affine_grid`` + ``grid_sample`` call moves every image of the batch by its own random
rotation, scale and shift: no per-sample Python or PIL work in the data loader. Why not
torchvision's ``transforms.v2.RandomAffine``: on a batched tensor it draws one transform for the
whole batch, so per-image draws would need a per-sample loop in the data loader again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(
    images: Tensor,
    *,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rotate by U(-degrees, degrees), shift by up to ``translate`` of the size, scale by U(scale).

    images: (B, C, H, W) float -> (B, C, H, W); pixels moved in from outside are zero (black,
    before normalisation), as in torchvision's RandomAffine.
    """
    batch = images.size(0)

    def uniform(low: float, high: float) -> Tensor:
        draw = torch.rand(batch, generator=generator)  # drawn on the CPU, like the generator
        return (low + (high - low) * draw).to(images.device)

    angle = uniform(-degrees, degrees) * (math.pi / 180.0)  # (B,)
    factor = uniform(*scale)  # (B,)
    shift_x, shift_y = uniform(-translate, translate), uniform(-translate, translate)  # (B,)
    # affine_grid maps output coordinates to input ones, so the inverse scale zooms in by factor.
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack(
        [
            torch.stack([cos, -sin, 2 * shift_x], dim=-1),
            torch.stack([sin, cos, 2 * shift_y], dim=-1),
        ],
        dim=1,
    )  # (B, 2, 3), shifts in [-1, 1] grid units: 2 per image width
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
