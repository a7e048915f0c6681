"""Coordinate-wise trimmed mean (Yin et al., ICML 2018): per weight, drop the ``floor(beta * n)``
largest and smallest client values and average the rest (unweighted; Flower's FedTrimmedAvg rule)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import AGGREGATORS, Aggregate, Aggregator, per_tensor


@dataclass(frozen=True)
class TrimmedMeanSettings:
    beta: float = 0.2  # fraction cut at each end

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta}")


def trimmed_mean(stacked: np.ndarray, beta: float) -> np.ndarray:
    n = stacked.shape[0]
    cut = int(beta * n)
    part = np.partition(stacked, (cut, n - cut - 1), axis=0)
    return np.mean(part[cut:n - cut], axis=0)


@AGGREGATORS.register("fedtrimmedavg")
class FedTrimmedAvg(Aggregator):
    config_cls = TrimmedMeanSettings

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        beta = self.settings.beta
        state = per_tensor([u.state for u in uploads], lambda a: trimmed_mean(a, beta))
        return Aggregate(state, [u.pid for u in uploads], {"trimmed_per_side": int(beta * len(uploads))})
