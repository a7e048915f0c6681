"""Defences that plug into any Distiller (see :class:`fedabd.distill.base.Defense`).

``build_defense("sv+sr", sv={...}, sr={...})``: ABD's Shuffling Vaccine and/or Self-Retrospection,
each with its settings (the authors' defaults otherwise); "none" gives None.
"""
from __future__ import annotations

from ..registry import import_submodules
from .base import DEFENSES, CombinedDefense, build_defense, defense_settings, parse_spec

import_submodules(__name__ + ".abd")

__all__ = ["DEFENSES", "CombinedDefense", "build_defense", "defense_settings", "parse_spec"]
