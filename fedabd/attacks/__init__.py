"""Backdoor attacks: a registry of small pure trigger transforms plus their poisoning rule.

Factory: ``factory(info: DatasetInfo, target: int, rate: float, seed: int, **params) -> Attack``.
Every random pattern is drawn from ``seed``; :meth:`Attack.tensors` + :meth:`Attack.config`
are everything needed to rebuild the exact trigger later (:func:`attack_from_saved`).
"""
from __future__ import annotations

from ..registry import import_submodules
from .base import ATTACKS, Attack, PoisonResult, attack_from_saved, create_attack, poison_dataset


import_submodules(__name__ + ".triggers")

__all__ = ["ATTACKS", "Attack", "PoisonResult", "attack_from_saved", "create_attack", "poison_dataset"]
