"""Data-free (and vanilla) knowledge distillation behind one :class:`Distiller` interface."""
from __future__ import annotations

from ..registry import import_submodules
from .base import DISTILLERS, Defense, DistillResult, Distiller, create_distiller, make_config

import_submodules(__name__ + ".methods")

__all__ = ["DISTILLERS", "Defense", "DistillResult", "Distiller", "create_distiller", "make_config"]
