"""Vectorised, seeded, differentiable augmentations of synthetic batches (CMI's and Fast's views,
the KD steps' translation and flip): per-sample affine crops by ``grid_sample``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _affine(x: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
            flip: torch.Tensor) -> torch.Tensor:
    """Per-sample crop by affine sampling: output pixel (u, v) in [-1, 1] reads the input at
    (sx*u*flip + tx, sy*v + ty); zero padding outside. ``scale`` is (N, 2) = (sx, sy)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = scale[:, 0] * torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = scale[:, 1]
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_translate_flip(x: torch.Tensor, hflip: bool, generator: torch.Generator,
                          pad: int | None = None) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` (default H/8) pixels: an integer translation
    (exact pixel copies), plus a horizontal flip with probability 1/2 when ``hflip``."""
    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    dx = torch.randint(-pad, pad + 1, (n,), generator=generator).float() * 2 / w
    dy = torch.randint(-pad, pad + 1, (n,), generator=generator).float() * 2 / h
    flip = (torch.rand(n, generator=generator) < 0.5) & hflip
    return _affine(x, torch.ones(n, 2), dx, dy, flip)


def random_resized_crop(x: torch.Tensor, hflip: bool, generator: torch.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized crop (area fraction in ``scale``, aspect ratio in ``ratio``), resized back to
    the input size with bilinear sampling, plus an optional horizontal flip."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    sx = (area * r).sqrt().clamp(max=1.0)
    sy = (area / r).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    flip = (torch.rand(n, generator=generator) < 0.5) & hflip
    return _affine(x, torch.stack([sx, sy], 1), tx, ty, flip)
