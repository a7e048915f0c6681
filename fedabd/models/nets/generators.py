"""Generators for data-free KD: ZSKT (Micaelli & Storkey 2019) and CMI (Fang et al. 2021)."""
from __future__ import annotations

import torch
from torch import nn

from .. import GENERATORS


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class _DCGenerator(nn.Module):
    """z -> Linear -> (B, 2w, s, s) -> BN -> up -> conv 2w->2w -> BN -> LReLU -> up -> conv 2w->w
    -> BN -> LReLU -> [crop to image_size] -> conv w->channels -> head.

    s = ceil(image_size / 4); when image_size is not a multiple of 4 the 4s x 4s map is
    centre-cropped to image_size before the last conv.
    """

    def __init__(self, nz: int, channels: int, image_size: int, width: int, head: nn.Module,
                 conv_bias: bool) -> None:
        super().__init__()
        self.nz, self.channels, self.image_size, self.width = nz, channels, image_size, width
        self.init_size = (image_size + 3) // 4
        w2 = 2 * width
        self.l1 = nn.Linear(nz, w2 * self.init_size ** 2)
        self.conv_blocks0 = nn.Sequential(nn.BatchNorm2d(w2))
        self.conv_blocks1 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w2, w2, 3, stride=1, padding=1, bias=conv_bias),
            nn.BatchNorm2d(w2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w2, width, 3, stride=1, padding=1, bias=conv_bias),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv_out = nn.Conv2d(width, channels, 3, stride=1, padding=1)
        self.head = head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.l1(z.reshape(z.shape[0], -1))
        out = out.reshape(out.shape[0], 2 * self.width, self.init_size, self.init_size)
        out = self.conv_blocks0(out)
        out = self.conv_blocks1(out)
        out = _center_crop(out, self.image_size)
        return self.head(self.conv_out(out))


@GENERATORS.register("zskt")
def zskt_generator(nz: int, channels: int, image_size: int, width: int = 64, **kw) -> nn.Module:
    """ZSKT generator; output passes through an affine BatchNorm (normalised image space)."""
    if kw:
        raise TypeError(f"unexpected arguments for zskt generator: {sorted(kw)}")
    return _DCGenerator(nz, channels, image_size, width, head=nn.BatchNorm2d(channels, affine=True),
                        conv_bias=True)


@GENERATORS.register("cmi")
def cmi_generator(nz: int, channels: int, image_size: int, width: int = 64, **kw) -> nn.Module:
    """CMI generator (width = ngf); output through a Sigmoid, i.e. [0, 1] pixel space."""
    if kw:
        raise TypeError(f"unexpected arguments for cmi generator: {sorted(kw)}")
    return _DCGenerator(nz, channels, image_size, width, head=nn.Sigmoid(), conv_bias=False)
