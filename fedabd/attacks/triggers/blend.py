"""Blended injection (Chen et al. 2017): ``(1 - alpha) * x + alpha * noise``.

``noise`` is a fixed ``(C,H,W)`` image of independent ``U[0,1]`` values drawn from the seed;
``alpha`` defaults to the paper's 0.2.
"""
from __future__ import annotations

import torch

from ...data.base import DatasetInfo
from ..base import ATTACKS, Attack
from ._common import check_images, generator


class BlendAttack(Attack):
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        alpha = float(self.params["alpha"])
        noise = self.patterns["noise"].to(device=x.device, dtype=x.dtype)
        return ((1 - alpha) * x + alpha * noise).clamp_(0.0, 1.0)


@ATTACKS.register("blend")
def blend(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, alpha: float = 0.2) -> BlendAttack:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"blend: alpha must be in (0, 1], got {alpha}")
    noise = torch.rand(info.shape, generator=generator(seed))
    return BlendAttack(name="blend", info=info, target=target, rate=rate, params={"alpha": float(alpha)},
                       patterns={"noise": noise})
