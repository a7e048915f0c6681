"""SIG (Barni et al. 2019), clean-label: ``(1 - alpha) * x + alpha * v`` with the horizontal sinusoid
``v(i, j) = (1 + sin(2*pi*j*f/W)) / 2`` (in [0,1], constant along rows and channels), ``f = 6``.

Only target-class images are poisoned (labels kept). ``alpha`` (default 0.2) is used when
poisoning the training set (:meth:`poison_images`); ``test_strength`` (default: ``alpha``) is the
test-time trigger (:meth:`apply`). The original paper trains with a weaker signal than it tests
with (delta 20 vs ~30 of 255); pass e.g. ``test_strength=0.3`` to mimic that if the backdoor is
too weak at test time.
"""
from __future__ import annotations

import math

import torch

from ...data.base import DatasetInfo
from ..base import ATTACKS, Attack
from ._common import check_images


class SigAttack(Attack):
    def _blend(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        check_images(self, x)
        signal = self.patterns["signal"].to(device=x.device, dtype=x.dtype)
        return ((1 - alpha) * x + alpha * signal).clamp_(0.0, 1.0)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._blend(x, float(self.params["test_strength"]))

    def poison_images(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._blend(x, float(self.params["alpha"]))


def sinusoid(info: DatasetInfo, frequency: float) -> torch.Tensor:
    c, h, w = info.shape
    j = torch.arange(w, dtype=torch.float64)
    row = (1 + torch.sin(2 * math.pi * j * frequency / w)) / 2
    return row.float().view(1, 1, w).expand(c, h, w).contiguous()


@ATTACKS.register("sig")
def sig(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, alpha: float = 0.2,
        frequency: float = 6.0, test_strength: float | None = None) -> SigAttack:
    test_strength = alpha if test_strength is None else test_strength
    for name, a in (("alpha", alpha), ("test_strength", test_strength)):
        if not 0.0 < a <= 1.0:
            raise ValueError(f"sig: {name} must be in (0, 1], got {a}")
    return SigAttack(name="sig", info=info, target=target, rate=rate, clean_label=True,
                     params={"alpha": float(alpha), "frequency": float(frequency), "test_strength": float(test_strength)},
                     patterns={"signal": sinusoid(info, frequency)})
