"""Wide-ResNet (Zagoruyko & Komodakis), the implementation used by ZSKT and CMI."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import MODELS
from ..staged import Stage, Staged


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.equal_in_out:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.conv_shortcut(x)
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(int(nb_layers))
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Staged):
    def __init__(self, depth: int, num_classes: int, widen_factor: int = 1, in_channels: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.channels = ch
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def stages(self) -> list[Stage]:
        out = [Stage(("conv1",), self.conv1)]
        for g in ("block1", "block2", "block3"):
            blocks = getattr(self, g).layer
            out += [Stage((f"{g}.layer.{i}",), b, feature=i == len(blocks) - 1) for i, b in enumerate(blocks)]
        return out + [Stage(("bn1", "fc"), self._head)]

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn1(h))), 1))


def wide_resnet(num_classes: int, in_channels: int, image_size: int, depth: int = 16, width: int = 1,
                drop_rate: float = 0.0, **kw) -> nn.Module:
    """Generic WRN-depth-width factory (image_size is accepted for the contract; pooling is adaptive)."""
    if kw:
        raise TypeError(f"unexpected arguments for wide_resnet: {sorted(kw)}")
    return WideResNet(depth, num_classes, widen_factor=width, in_channels=in_channels, drop_rate=drop_rate)


def _register(name: str, depth: int, width: int) -> None:
    def factory(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
        return wide_resnet(num_classes, in_channels, image_size, depth=depth, width=width, **kw)

    factory.__name__ = name
    factory.__doc__ = f"WRN-{depth}-{width}"
    MODELS.register(name)(factory)


for _depth, _width in [(16, 1), (16, 2), (40, 1), (40, 2)]:
    _register(f"wrn{_depth}_{_width}", _depth, _width)
