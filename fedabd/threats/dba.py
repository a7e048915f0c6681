"""DBA, the distributed backdoor attack (Xie et al., "DBA: Distributed Backdoor Attacks against
Federated Learning", ICLR 2020).

The scenario's trigger is the global trigger; it is split into ``pieces`` local triggers and every
malicious client poisons its data with one piece only (the ``i``-th malicious client of the round, in
client-id order, takes piece ``i mod pieces``). Pieces are horizontal bands of the trigger's region
(the patch of a patch trigger, else the whole image), cut in raster order so that every band holds
an equal share of the region's rows; stamped together they give the global trigger exactly. The
server's ASR is measured with the assembled global trigger, as in the paper, and with every piece
(``asr_piece<i>`` in each round's row). ``pieces`` defaults to the number of malicious clients and
may not exceed it (a piece nobody carries is no attack).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..attacks import Attack
from .base import THREATS, Threat


@dataclass(frozen=True)
class DBASettings:
    pieces: Optional[int] = None  # None = the number of malicious clients

    def __post_init__(self) -> None:
        if self.pieces is not None and self.pieces < 2:
            raise ValueError(f"pieces must be >= 2, got {self.pieces}")


def trigger_region(attack: Attack) -> torch.Tensor:
    """``(H, W)`` bool: the pixels the trigger may change."""
    if hasattr(attack, "region_mask"):
        return attack.region_mask()[0]
    size = attack.info.image_size
    return torch.ones(size, size, dtype=torch.bool)


def piece_masks(region: torch.Tensor, pieces: int) -> list[torch.Tensor]:
    """``region`` cut into ``pieces`` bands of its rows (disjoint, together the whole region)."""
    rows = torch.nonzero(region.any(dim=1)).flatten()
    if len(rows) < pieces:
        raise ValueError(f"the trigger spans {len(rows)} rows; it cannot be cut into {pieces} pieces")
    masks = []
    for band in torch.tensor_split(rows, pieces):
        m = torch.zeros_like(region)
        m[band] = region[band]
        masks.append(m)
    return masks


@dataclass
class TriggerPiece(Attack):
    """One piece of a global trigger: the global trigger's pixels inside ``mask``, the image elsewhere."""

    base: Optional[Attack] = None
    mask: Optional[torch.Tensor] = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        stamped = self.base.apply(x)
        return torch.where(self.mask.to(x.device), stamped, x)


def split_trigger(attack: Attack, pieces: int) -> list[TriggerPiece]:
    return [TriggerPiece(name=f"{attack.name}_piece{i}", info=attack.info, target=attack.target, rate=attack.rate,
                         base=attack, mask=m) for i, m in enumerate(piece_masks(trigger_region(attack), pieces))]


@THREATS.register("dba")
class DBA(Threat):
    config_cls = DBASettings

    @classmethod
    def check(cls, cfg) -> None:
        from ..data import dataset_info
        from ..federated import scenario_attack

        pieces, attackers = cls.settings_from(cfg).pieces or cfg.attackers, cfg.attackers
        if pieces > attackers:
            raise ValueError(f"dba: {pieces} pieces need at least {pieces} malicious clients, the scenario has {attackers}")
        if pieces < 2:
            raise ValueError("dba needs at least 2 malicious clients (one trigger piece each)")
        attack = scenario_attack(cfg, dataset_info(cfg.dataset))
        if attack.clean_label:
            raise ValueError(f"dba splits a dirty-label trigger; {cfg.attack} is clean-label")
        piece_masks(trigger_region(attack), pieces)

    def pieces(self, info) -> list[TriggerPiece]:
        from ..federated import scenario_attack
        return split_trigger(scenario_attack(self.cfg, info), self.settings.pieces or self.cfg.attackers)

    def trigger(self, info, pid, rnd):
        from ..federated import malicious_clients
        pieces = self.pieces(info)
        order = sorted(malicious_clients(self.cfg, rnd))
        return pieces[order.index(pid) % len(pieces)] if pid in order else pieces[pid % len(pieces)]

    def eval_triggers(self, info):
        return {f"piece{i}": p for i, p in enumerate(self.pieces(info))}
