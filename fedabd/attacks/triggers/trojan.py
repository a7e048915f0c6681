"""Trojan-style additive triggers (Liu et al. 2018; patterns random from the seed, not optimised).

* ``trojan_3x3`` / ``trojan_8x8``: an additive coloured ``size`` x ``size`` patch (3 / 8 px at
  32x32, scaled with the image: 28 -> 3 / 7 px, 64 -> 6 / 16 px) placed ``margin`` px (default 1,
  scaled) from the bottom-right corner. Every pixel and channel gets an independent value
  ``±U[low, high]`` (default ±[0.5, 1]), so the patch is strong and coloured; the result is clipped.
* ``trojan_wm``: an additive full-image watermark: the image is cut into cells of ``cell`` px
  (2 at 32x32, scaled); a ``density`` fraction (default 25 %) of the cells, chosen from the seed,
  carries ``±amplitude`` (default 0.3, sign random per cell, the same on every channel: a grey
  watermark); the other cells are 0. The result is clipped.
"""
from __future__ import annotations

import math

import torch

from ...data.base import DatasetInfo
from ..base import ATTACKS, Attack
from ._common import PatchAttack, bottom_right, check_images, generator, scaled


class TrojanPatchAttack(PatchAttack):
    mode = "add"


def _signed_uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    mag = low + (high - low) * torch.rand(shape, generator=g)
    sign = torch.randint(0, 2, shape, generator=g).float().mul_(2).sub_(1)
    return mag * sign


def _trojan_patch(name: str, default_size: float):
    def factory(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, size: float = default_size,
                margin: float = 1.0, low: float = 0.5, high: float = 1.0) -> TrojanPatchAttack:
        if not 0.0 <= low <= high:
            raise ValueError(f"{name}: need 0 <= low <= high, got {low}, {high}")
        k = scaled(size, info.image_size)
        patch = _signed_uniform((info.channels, k, k), low, high, generator(seed))
        attack = TrojanPatchAttack(name=name, info=info, target=target, rate=rate,
                                   params={"size": float(size), "margin": float(margin),
                                           "low": float(low), "high": float(high)},
                                   patterns={"patch": patch})
        attack.positions = (bottom_right(info, k, scaled(margin, info.image_size)),)
        return attack

    factory.__name__ = name
    factory.__doc__ = f"Additive random coloured {int(default_size)}x{int(default_size)} patch (at 32x32)."
    return ATTACKS.register(name)(factory)


trojan_3x3 = _trojan_patch("trojan_3x3", 3.0)
trojan_8x8 = _trojan_patch("trojan_8x8", 8.0)


class WatermarkAttack(Attack):
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        return (x + self.patterns["watermark"].to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)


@ATTACKS.register("trojan_wm")
def trojan_wm(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, amplitude: float = 0.3,
              density: float = 0.25, cell: float = 2.0) -> WatermarkAttack:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"trojan_wm: density must be in (0, 1], got {density}")
    size = info.image_size
    cell_px = scaled(cell, size)
    n = math.ceil(size / cell_px)
    g = generator(seed)
    n_on = max(1, int(round(density * n * n)))
    on = torch.zeros(n * n)
    on[torch.randperm(n * n, generator=g)[:n_on]] = 1.0
    sign = torch.randint(0, 2, (n * n,), generator=g).float().mul_(2).sub_(1)
    cells = (on * sign * amplitude).view(n, n)
    wm = cells.repeat_interleave(cell_px, 0).repeat_interleave(cell_px, 1)[:size, :size]
    wm = wm.unsqueeze(0).repeat(info.channels, 1, 1).contiguous()
    return WatermarkAttack(name="trojan_wm", info=info, target=target, rate=rate,
                           params={"amplitude": float(amplitude), "density": float(density), "cell": float(cell)},
                           patterns={"watermark": wm})
