"""The defence registry, composition of defences by name, and their settings.

A defence is a :class:`fedabd.distill.base.Defense` subclass with a frozen ``config_cls``
dataclass (defaults: the published method's), registered by its own module with
``@DEFENSES.register(name)``. A spec joins names with ``+`` (``"sv+sr"``); ``"none"`` is no defence.
"""
from __future__ import annotations

import dataclasses

import torch

from ..distill.base import Defense, FinalPhase, settings_with
from ..registry import Registry, UnknownNameError

DEFENSES: Registry[type[Defense]] = Registry("defence")


def parse_spec(spec: str) -> list[str]:
    """The registered defence names of ``spec`` in order ([] for "none"); errors name the bad part."""
    if spec == "none":
        return []
    parts = spec.split("+")
    for p in parts:
        if p not in DEFENSES:
            raise UnknownNameError(f"unknown defence {p!r} in {spec!r}; choose 'none' or a '+'-joined list of: "
                                   f"{', '.join(DEFENSES.names())}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"defence spec {spec!r} names a part twice")
    return parts


def defense_settings(name: str, overrides: dict | None):
    """Defence ``name``'s typed config: its defaults plus ``overrides`` (ValueError naming a bad key)."""
    return settings_with(DEFENSES.get(name).config_cls, overrides)


class CombinedDefense(Defense):
    """Several defences as one: losses and gradients add up, weights multiply, states merge."""

    def __init__(self, parts: dict[str, Defense]) -> None:
        self.parts = parts

    @property
    def final_phase_fraction(self) -> float:  # type: ignore[override]
        return max(p.final_phase_fraction for p in self.parts.values())

    @property
    def final_phase_optimizer(self) -> FinalPhase:  # type: ignore[override]
        """That of the part with the longest final phase (only SR has one)."""
        part = max(self.parts.values(), key=lambda p: p.final_phase_fraction)
        return part.final_phase_optimizer

    def setup(self, distiller) -> None:
        for p in self.parts.values():
            p.setup(distiller)

    def generator_loss(self, distiller, x, t_logits):
        return sum((p.generator_loss(distiller, x, t_logits) for p in self.parts.values()), 0.0)

    def sample_weights(self, distiller, x, t_logits):
        weights = [w for p in self.parts.values() if (w := p.sample_weights(distiller, x, t_logits)) is not None]
        if not weights:
            return None
        return torch.stack(weights).prod(0)

    def enter_final_phase(self, distiller) -> None:
        for p in self.parts.values():
            p.enter_final_phase(distiller)

    def final_phase_step(self, distiller, x) -> dict:
        out: dict = {}
        for p in self.parts.values():
            if p.final_phase_fraction > 0:
                out.update(p.final_phase_step(distiller, x))
        return out

    def state(self) -> dict:
        return {name: p.state() for name, p in self.parts.items()}

    def config_json(self) -> dict:
        return {name: dataclasses.asdict(p.cfg) for name, p in self.parts.items()}


def build_defense(spec: str = "none", **settings: dict | None) -> CombinedDefense | None:
    """The defences of ``spec``, each configured from ``settings[name]`` (e.g. ``sv={...}``); None for "none"."""
    parts = parse_spec(spec)
    if not parts:
        return None
    return CombinedDefense({p: DEFENSES.get(p)(defense_settings(p, settings.get(p))) for p in parts})
