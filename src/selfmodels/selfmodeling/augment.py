"""The paper's CIFAR-10 augmentation, on tensors and from an explicit generator (deterministic).

Per image: a random affine map (rotation uniform in +-15 degrees, translation uniform in +-10% of
the width and height) followed by a horizontal flip with probability 1/2; pixels sampled bilinearly,
zeros outside the image. Equivalent in distribution to torchvision's
``RandomAffine(15, translate=(0.1, 0.1))`` + ``RandomHorizontalFlip()``, which cannot be imported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine_flip(
    images: torch.Tensor, generator: torch.Generator, degrees: float = 15.0, translate: float = 0.1
) -> torch.Tensor:
    """Augment a batch (B, C, H, W); the random draws come from ``generator`` (on the CPU)."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(degrees)  # (B,)
    # affine_grid works in [-1, 1] coordinates: a shift of t * width is 2t there.
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * translate * 2  # (B, 2)
    flip = torch.rand(b, generator=generator) < 0.5  # (B,)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)  # a flip negates the output x coordinate
    theta = torch.stack(
        [torch.stack([cos * sign, -sin, shift[:, 0]], 1), torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1
    ).to(images)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
