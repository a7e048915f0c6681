"""Multi-Krum (Blanchard et al., NeurIPS 2017): score each client by the summed squared distance
to its ``n - f - 2`` nearest other clients, keep the ``m`` lowest scores, FedAvg those.

``f`` (``byzantine``) defaults to the scenario's number of malicious clients and ``m``
(``select``) to the clients sampled per round minus ``f``; ``m = 1`` is Krum. The distances and
the tie order are those of Flower 1.42's MultiKrum, so the two select the same clients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import AGGREGATORS, Aggregate, Aggregator, sample_weights, stacked_states, weighted_mean


@dataclass(frozen=True)
class MultiKrumSettings:
    byzantine: Optional[int] = None  # f; None = the scenario's malicious count
    select: Optional[int] = None     # m; None = clients per round - f (at least 1)

    def __post_init__(self) -> None:
        if self.byzantine is not None and self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, got {self.byzantine}")
        if self.select is not None and self.select < 1:
            raise ValueError(f"select must be >= 1, got {self.select}")


def krum_scores(flat: np.ndarray, f: int) -> np.ndarray:
    """Krum score of every row of ``flat`` (clients x weights)."""
    norms = np.square(flat).sum(axis=1)
    dist = norms[:, None] + norms[None, :] - 2 * flat @ flat.T
    k = max(1, len(flat) - f - 2)
    return np.array([np.sum(row[np.argsort(row)[1:k + 1]]) for row in dist])


def multikrum_select(flat: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the ``m`` rows with the lowest Krum scores, lowest first."""
    return np.argsort(krum_scores(flat, f))[:m].tolist()


@AGGREGATORS.register("multikrum")
class MultiKrum(Aggregator):
    config_cls = MultiKrumSettings
    filters = True

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        s, cfg = self.settings, self.cfg
        f = s.byzantine if s.byzantine is not None else cfg.attackers
        m = s.select if s.select is not None else max(1, cfg.per_round - f)
        flat = stacked_states(uploads)
        chosen = [uploads[i] for i in multikrum_select(flat, f, m)]
        state = weighted_mean([u.state for u in chosen], sample_weights(chosen))
        return Aggregate(state, [u.pid for u in chosen],
                         {"set_aside": sorted({u.pid for u in uploads} - {u.pid for u in chosen})})
