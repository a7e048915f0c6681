"""Norm-bounded "invisible" triggers (in the spirit of Li et al. 2020, patterns random from the seed).

* ``l0_inv``: ``x * (1 - mask) + pattern * mask``. ``mask`` (``(1,H,W)``, all channels) covers
  ``round(fraction * H * W)`` pixel positions chosen from the seed (default 1.5 %: 15 of 1024 at
  32x32, 12 of 784 at 28x28); ``pattern`` is 0 or 1 per masked pixel and channel (random), so the
  changed pixels are few but saturated.
* ``l2_inv``: ``x + delta`` with ``delta`` a seeded Gaussian image rescaled to the fixed L2 norm
  ``rms * sqrt(C*H*W)`` (per-pixel RMS ``rms``, default 0.1: L2 = 5.54 at 3x32x32, 2.8 at 1x28x28).
  Clipping to [0,1] removes the negative half on saturated backgrounds (e.g. MNIST's black).
"""
from __future__ import annotations

import math

import torch

from ...data.base import DatasetInfo
from ..base import ATTACKS, Attack
from ._common import check_images, generator


class L0Attack(Attack):
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        mask = self.patterns["mask"].to(device=x.device, dtype=x.dtype)
        pattern = self.patterns["pattern"].to(device=x.device, dtype=x.dtype)
        return (x * (1 - mask) + pattern * mask).clamp_(0.0, 1.0)


@ATTACKS.register("l0_inv")
def l0_inv(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, fraction: float = 0.015) -> L0Attack:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"l0_inv: fraction must be in (0, 1], got {fraction}")
    c, h, w = info.shape
    g = generator(seed)
    n = max(1, int(round(fraction * h * w)))
    mask = torch.zeros(h * w)
    mask[torch.randperm(h * w, generator=g)[:n]] = 1.0
    mask = mask.view(1, h, w)
    pattern = torch.randint(0, 2, (c, h, w), generator=g).float() * mask
    return L0Attack(name="l0_inv", info=info, target=target, rate=rate, params={"fraction": float(fraction)},
                    patterns={"mask": mask, "pattern": pattern})


class AdditiveAttack(Attack):
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        return (x + self.patterns["delta"].to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)


@ATTACKS.register("l2_inv")
def l2_inv(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, rms: float = 0.1) -> AdditiveAttack:
    if rms <= 0:
        raise ValueError(f"l2_inv: rms must be > 0, got {rms}")
    delta = torch.randn(info.shape, generator=generator(seed))
    norm = rms * math.sqrt(delta.numel())
    delta = delta * (norm / delta.norm())
    return AdditiveAttack(name="l2_inv", info=info, target=target, rate=rate, params={"rms": float(rms)},
                          patterns={"delta": delta})
