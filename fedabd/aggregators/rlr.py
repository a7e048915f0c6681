"""Robust learning rate (Ozdayi et al., "Defending against Backdoors in Federated Learning with
Robust Learning Rate", AAAI 2021).

Per coordinate of the learnable weights, the server counts the signs of the clients' updates: where
``|sum_i sign(U_i)| >= theta`` the coordinate moves by ``+eta`` times the FedAvg update, elsewhere by
``-eta`` times it (away from a direction only a minority pushes). The paper sets ``theta`` between
the number of corrupt agents and half the agents; the default is the scenario's malicious count + 1,
the smallest such value. ``eta`` is the server learning rate (1 = FedAvg where the signs agree).
Normalisation buffers are averaged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import AGGREGATORS, Aggregate, Aggregator, apply_update, client_updates, sample_weights


@dataclass(frozen=True)
class RLRSettings:
    threshold: Optional[int] = None  # theta; None = malicious + 1
    server_lr: float = 1.0           # eta

    def __post_init__(self) -> None:
        if self.threshold is not None and self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")


def robust_lr(updates: np.ndarray, theta: int, eta: float) -> np.ndarray:
    """Per coordinate ``+eta`` where at least ``theta`` more clients agree on the sign than not, else ``-eta``."""
    agreement = np.abs(np.sign(updates).sum(axis=0))
    return np.where(agreement >= theta, eta, -eta)


@AGGREGATORS.register("rlr")
class RobustLR(Aggregator):
    config_cls = RLRSettings

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        s = self.settings
        theta = s.threshold if s.threshold is not None else self.cfg.attackers + 1
        keys, updates = client_updates(uploads, global_state)
        lr = robust_lr(updates, theta, s.server_lr)
        agg = lr * (np.asarray(sample_weights(uploads)) @ updates)
        return Aggregate(apply_update(global_state, keys, agg, uploads), [u.pid for u in uploads],
                         {"rlr_flipped_fraction": round(float(np.mean(lr < 0)), 6)})
