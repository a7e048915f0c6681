"""Threats: what a malicious client does to its data and to its update.

One module per threat registers a :class:`Threat` subclass with ``@THREATS.register(name)``; the
scenario's ``threat`` (default ``poison``) and ``threat_settings`` choose and configure it. A threat
sees the scenario, the round and its own client, never the server's internals.
"""
from __future__ import annotations

from ..registry import import_submodules
from .base import THREATS, Threat, create_threat

import_submodules(__name__)

__all__ = ["THREATS", "Threat", "create_threat"]
