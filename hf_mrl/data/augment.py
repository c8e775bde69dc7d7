"""Batched, seeded image augmentations on normalised float tensors (B, 3, H, W)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["translate", "strong_augment"]


def translate(images: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random integer translations by up to `max_shift` pixels, zero padded (the weak augmentation)."""
    b, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    # One gather of each sample's window from the flattened padded image (a third of the time of a row gather then a
    # column gather; the same values, only copied).
    rows = (dy[:, None] + torch.arange(h)[None]) * (w + 2 * max_shift)
    cols = dx[:, None] + torch.arange(w)[None]
    index = (rows[:, :, None] + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index.to(images.device)).view(b, c, h, w)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def strong_augment(images: torch.Tensor, gen: torch.Generator, cutout: int = 10) -> torch.Tensor:
    """FixMatch-style strong augmentation for digits, in the spirit of RandAugment + Cutout.

    Random affine (rotation +-20 deg, scale 0.8-1.2, shear +-0.3, shift +-15%), per-sample contrast and
    brightness, colour inversion with probability 0.25, and a `cutout` x `cutout` erased square. No flips:
    they change a digit's identity.
    """
    b, _, h, w = images.shape
    angle = _uniform(gen, b, -20, 20) * math.pi / 180
    scale = _uniform(gen, b, 0.8, 1.2)
    shear = _uniform(gen, b, -0.3, 0.3)
    tx, ty = _uniform(gen, b, -0.3, 0.3), _uniform(gen, b, -0.3, 0.3)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, tx], -1), torch.stack([sin, cos, ty], -1)], dim=1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(gen, b, 0.5, 1.5).view(b, 1, 1, 1).to(x)
    brightness = _uniform(gen, b, -0.3, 0.3).view(b, 1, 1, 1).to(x)
    x = (x - mean) * contrast + mean + brightness
    invert = (torch.rand(b, generator=gen) < 0.25).view(b, 1, 1, 1).to(x)
    x = x * (1 - 2 * invert)
    cy = torch.randint(0, h, (b,), generator=gen).view(b, 1, 1)
    cx = torch.randint(0, w, (b,), generator=gen).view(b, 1, 1)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)  # (B, H, W)
    return x.masked_fill(hole[:, None].to(x.device), 0.0)
