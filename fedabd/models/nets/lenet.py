"""LeNet-5 (and a half-width variant) for small images."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import MODELS
from ..pool import max_pool2x2
from ..staged import Stage, Staged


def _conv1_padding(image_size: int) -> int:
    # Classic LeNet-5 sees 32x32 inputs; pad smaller images (e.g. 28x28 MNIST) by 2 so the
    # spatial pipeline matches the classic one (28 -> 28 -> 14 -> 10 -> 5).
    return 2 if image_size < 32 else 0


class LeNet5(Staged):
    """conv(c1@5x5) - relu - maxpool - conv(c2@5x5) - relu - maxpool - fc - relu - fc - relu - fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: tuple[int, int, int, int] = (6, 16, 120, 84)) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"LeNet5 needs image_size >= 16, got {image_size}")
        c1, c2, f1, f2 = widths
        pad = _conv1_padding(image_size)
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5, padding=pad)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        s = image_size + 2 * pad - 4  # conv1
        s = s // 2                     # pool1
        s = s - 4                      # conv2
        s = s // 2                     # pool2
        self.feat_size = s
        # identity when the input has the nominal size; lets other sizes through as well
        self.pool = nn.AdaptiveAvgPool2d((s, s))
        self.fc1 = nn.Linear(c2 * s * s, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def stages(self) -> list[Stage]:
        return [Stage(("conv1",), self._block1, feature=True), Stage(("conv2",), self._block2, feature=True),
                Stage(("pool", "fc1"), self._fc1), Stage(("fc2",), self._fc2), Stage(("fc3",), self.fc3)]

    def _block1(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2x2(F.relu(self.conv1(x)))

    def _block2(self, h: torch.Tensor) -> torch.Tensor:
        return max_pool2x2(F.relu(self.conv2(h)))

    def _fc1(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-2:] != (self.feat_size, self.feat_size):
            h = self.pool(h)
        return F.relu(self.fc1(torch.flatten(h, 1)))

    def _fc2(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(h))


@MODELS.register("lenet5")
def lenet5(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size, widths=(6, 16, 120, 84), **kw)


@MODELS.register("lenet5_half")
def lenet5_half(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size, widths=(3, 8, 60, 42), **kw)
