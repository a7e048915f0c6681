"""Data poisoning (BadNets-style, Gu et al. 2017; in FL as in Bagdasaryan et al. 2020): the
malicious client trains on its data with ``poison_rate`` of it carrying the scenario's trigger and
relabelled to the target; ``scale`` > 1 boosts its update (model replacement). All of it is the
:class:`Threat` base behaviour."""
from __future__ import annotations

from .base import THREATS, Threat


@THREATS.register("poison")
class Poison(Threat):
    pass
