"""Defences that plug into any Distiller (see :class:`fedabd.distill.base.Defense`).

``build_defense("sv+sr", sv={...}, sr={...})``: ABD's Shuffling Vaccine and/or Self-Retrospection,
each with its config overrides (paper defaults otherwise); "none" gives None.
"""
from __future__ import annotations

import dataclasses

import torch

from ..distill.base import Defense, FinalPhase, make_config

DEFENSES = ("none", "sv", "sr", "sv+sr")


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


def build_defense(spec: str = "none", sv: dict | None = None, sr: dict | None = None) -> CombinedDefense | None:
    from .abd.sr import SelfRetrospection, SRConfig
    from .abd.sv import ShufflingVaccine, SVConfig

    if spec not in DEFENSES:
        raise ValueError(f"unknown defence {spec!r}; choose one of: {', '.join(DEFENSES)}")
    if spec == "none":
        return None
    parts: dict[str, Defense] = {}
    if "sv" in spec.split("+"):
        parts["sv"] = ShufflingVaccine(make_config(SVConfig, {"paper": SVConfig()}, "paper", sv))
    if "sr" in spec.split("+"):
        parts["sr"] = SelfRetrospection(make_config(SRConfig, {"paper": SRConfig()}, "paper", sr))
    return CombinedDefense(parts)
