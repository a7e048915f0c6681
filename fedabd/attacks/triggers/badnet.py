"""BadNets (Gu et al. 2017) patch triggers, stamped over the image (replace, not add).

* ``badnet_grid``: a 3x3-cell black/white checkerboard (white in the corners) in the bottom-right
  corner. Cell size ``cell`` px at 32x32 (default 1, i.e. the paper's 3x3 px), scaled with the image
  (28 -> 3x3 px, 40 -> 3x3 px, 64 -> 6x6 px).
* ``badnet_sq``: a white ``size`` x ``size`` square (default 4 at 32x32) ``margin`` px (default 1)
  from the bottom-right corner; both scaled with the image (28 -> 4 px / 1 px, 64 -> 8 px / 2 px).

Neither pattern is random: ``seed`` is accepted and ignored.
"""
from __future__ import annotations

import torch

from ...data.base import DatasetInfo
from ..base import ATTACKS
from ._common import PatchAttack, bottom_right, checkerboard, scaled


class BadNetAttack(PatchAttack):
    mode = "replace"


@ATTACKS.register("badnet_grid")
def badnet_grid(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, cell: float = 1.0) -> BadNetAttack:
    cell_px = scaled(cell, info.image_size)
    patch = checkerboard(3, cell_px, info.channels)
    attack = BadNetAttack(name="badnet_grid", info=info, target=target, rate=rate,
                          params={"cell": float(cell)}, patterns={"patch": patch})
    attack.positions = (bottom_right(info, patch.shape[-1], 0),)
    return attack


@ATTACKS.register("badnet_sq")
def badnet_sq(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0,
              size: float = 4.0, margin: float = 1.0) -> BadNetAttack:
    k = scaled(size, info.image_size)
    patch = torch.ones(info.channels, k, k)
    attack = BadNetAttack(name="badnet_sq", info=info, target=target, rate=rate,
                          params={"size": float(size), "margin": float(margin)}, patterns={"patch": patch})
    attack.positions = (bottom_right(info, k, scaled(margin, info.image_size)),)
    return attack
