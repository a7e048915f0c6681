"""Shared helpers for the trigger modules (not auto-imported: the name starts with ``_``).

Geometry is defined on a 32x32 reference image (the paper's size) and scaled to the dataset's
``image_size`` with :func:`scaled`, so that at 32x32 every size is exactly the paper's.
"""
from __future__ import annotations

import torch

from ...data.base import DatasetInfo
from ..base import Attack

REFERENCE_SIZE = 32


def scaled(n: float, size: int) -> int:
    """``n`` pixels at the 32x32 reference -> pixels at ``size`` (at least 1)."""
    return max(1, int(round(n * size / REFERENCE_SIZE)))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def checkerboard(cells: int, cell_px: int, channels: int) -> torch.Tensor:
    """``(C, cells*cell_px, cells*cell_px)`` black/white checkerboard, white in the corners."""
    idx = torch.arange(cells)
    board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2 == 0).float()
    board = board.repeat_interleave(cell_px, 0).repeat_interleave(cell_px, 1)
    return board.unsqueeze(0).repeat(channels, 1, 1)


def check_images(attack: Attack, x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != attack.info.shape:
        raise ValueError(f"{attack.name}: expected images (N,{','.join(map(str, attack.info.shape))}), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{attack.name}: expected float pixel-space images in [0,1], got {x.dtype}")


def bottom_right(info: DatasetInfo, patch: int, margin: int) -> tuple[int, int]:
    """Top-left corner of a ``patch`` x ``patch`` square ``margin`` px from the bottom-right corner."""
    top = info.image_size - margin - patch
    if top < 0:
        raise ValueError(f"a {patch}px patch with a {margin}px margin does not fit a {info.image_size}px image")
    return top, top


class PatchAttack(Attack):
    """Patches at fixed positions (``self.positions``: ``(top, left)`` per patch, derived by the
    factory from ``info`` and ``params`` without randomness, so a rebuild gets the same ones).

    ``patterns['patch']`` is ``(C,k,k)``, shared by every position. Mode ``replace`` stamps it
    (``x[region] = patch``), mode ``add`` adds it (``x[region] += patch``), then clips to [0,1].
    """

    mode: str = "replace"
    positions: tuple[tuple[int, int], ...] = ()

    def region_mask(self) -> torch.Tensor:
        """``(1,H,W)`` bool: the pixels the trigger may change."""
        k = self.patterns["patch"].shape[-1]
        m = torch.zeros(1, self.info.image_size, self.info.image_size, dtype=torch.bool)
        for top, left in self.positions:
            m[:, top:top + k, left:left + k] = True
        return m

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        out = x.clone()
        patch = self.patterns["patch"].to(device=x.device, dtype=x.dtype)
        k = patch.shape[-1]
        for top, left in self.positions:
            region = out[:, :, top:top + k, left:left + k]
            if self.mode == "replace":
                region.copy_(patch.expand_as(region))
            else:
                region.add_(patch)
        return out.clamp_(0.0, 1.0)
