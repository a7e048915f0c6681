"""Aggregators: how the server turns a round's uploads into the next global model.

One module per rule in this package registers an :class:`Aggregator` subclass with
``@AGGREGATORS.register(name)``; :func:`create_aggregator` builds the scenario's one. The rules
run on plain state dicts (no Flower), so each is tested on hand-made updates.
"""
from __future__ import annotations

from ..registry import import_submodules
from .base import AGGREGATORS, Aggregate, Aggregator, create_aggregator, weighted_mean
from .compose import aggregator_class

import_submodules(__name__)

__all__ = ["AGGREGATORS", "Aggregate", "Aggregator", "aggregator_class", "create_aggregator", "weighted_mean"]
