"""CIFAR-style ResNet-18 (3x3 stem, no max-pool)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import MODELS
from ..staged import Stage, Staged


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Staged):
    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def stages(self) -> list[Stage]:
        out = [Stage(("conv1", "bn1"), self._stem)]
        for g in ("layer1", "layer2", "layer3", "layer4"):
            blocks = getattr(self, g)
            out += [Stage((f"{g}.{i}",), b, feature=i == len(blocks) - 1) for i, b in enumerate(blocks)]
        return out + [Stage(("linear",), self._head)]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(h), 1))


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return ResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, **kw)
