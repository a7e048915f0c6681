"""The Threat interface: a malicious client's poisoning, training and crafting of its update.

A threat is built from the scenario (``Threat(cfg)``); its typed settings come from
``cfg.threat_settings`` (checked when the scenario loads). A malicious client in round ``rnd``:

1. poisons its data with :meth:`Threat.trigger` (the scenario's trigger, or a piece of it);
2. trains with :meth:`Threat.train` (plain local training, or with an attacker's objective);
3. sends :meth:`Threat.craft` of its update (by default the scenario's ``scale`` boost, i.e. model
   replacement when ``scale`` > 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..attacks import Attack
    from ..config import ScenarioConfig
    from ..data import DatasetInfo, ImageSet
    from ..train import TrainConfig

THREATS: Registry[type["Threat"]] = Registry("threat")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class NoSettings:
    """A threat without settings of its own."""


class Threat:
    config_cls: ClassVar[type] = NoSettings

    def __init__(self, cfg: "ScenarioConfig") -> None:
        self.cfg = cfg
        self.settings = self.settings_from(cfg)

    @classmethod
    def settings_from(cls, cfg: "ScenarioConfig"):
        from ..distill.base import settings_with
        return settings_with(cls.config_cls, cfg.threat_settings)

    @classmethod
    def check(cls, cfg: "ScenarioConfig") -> None:
        """What the threat needs of the scenario beyond its settings (ValueError naming the problem)."""

    def trigger(self, info: "DatasetInfo", pid: int, rnd: int) -> "Attack":
        """The trigger client ``pid`` poisons its data with in round ``rnd``."""
        from ..federated import scenario_attack
        return scenario_attack(self.cfg, info)

    def eval_triggers(self, info: "DatasetInfo") -> dict[str, "Attack"]:
        """Triggers evaluated besides the scenario's own every round (``asr_<name>`` in the rows)."""
        return {}

    def train(self, model: torch.nn.Module, data: "ImageSet", clean: "ImageSet", train_cfg: "TrainConfig",
              device: torch.device, seed: int, start: StateDict | None) -> dict:
        """Local training on the poisoned ``data`` (``clean``: the client's data before poisoning)."""
        from ..train import train_classifier
        return train_classifier(model, data, train_cfg, device, seed=seed)

    def craft(self, start: StateDict, state: StateDict) -> StateDict:
        """The update sent: the trained ``state`` with its update from ``start`` boosted by ``scale``."""
        s = self.cfg.scale
        if s == 1.0:
            return state
        return {k: (start[k] + s * (v - start[k])) if v.is_floating_point() else v for k, v in state.items()}


def create_threat(cfg: "ScenarioConfig") -> Threat:
    return THREATS.get(cfg.threat)(cfg)
