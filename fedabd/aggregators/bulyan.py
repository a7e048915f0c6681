"""Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
ICML 2018): a Byzantine-resilient selection followed by a coordinate-wise robust mean.

With ``n`` uploads of which at most ``f`` are Byzantine (``n >= 4f + 3``):

1. Selection: ``theta = n - 2f`` uploads, chosen as the paper does by applying Krum again and again
   to what is left (each pass moves the upload with the lowest Krum score, computed on the remaining
   set, into the selection). ``selection="multikrum"`` takes the ``theta`` lowest Krum scores of one
   pass instead: Flower 1.42's Bulyan does this (cheaper, and not the paper's rule).
2. Aggregation: per coordinate, the mean of the ``beta = theta - 2f`` selected values closest to
   the selected values' coordinate-wise median.

``f`` (``byzantine``) defaults to the scenario's number of malicious clients. A scenario that
samples fewer than ``4f + 3`` clients per round is refused when it loads; a round in which fewer
than ``4f + 3`` uploads arrive keeps the previous global model (as Flower's Bulyan skips the round).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import AGGREGATORS, Aggregate, Aggregator, per_tensor, stacked_states
from .multikrum import krum_scores


@dataclass(frozen=True)
class BulyanSettings:
    byzantine: Optional[int] = None  # f; None = the scenario's malicious count
    selection: str = "krum_iterative"  # the paper's; "multikrum" = Flower's one-pass selection

    def __post_init__(self) -> None:
        if self.byzantine is not None and self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, got {self.byzantine}")
        if self.selection not in ("krum_iterative", "multikrum"):
            raise ValueError(f"selection must be krum_iterative or multikrum, got {self.selection!r}")


def bulyan_select(flat: np.ndarray, f: int, theta: int, iterative: bool = True) -> list[int]:
    """Indices (into the rows of ``flat``) of the ``theta`` uploads Bulyan keeps, in selection order."""
    if not iterative:
        return np.argsort(krum_scores(flat, f), kind="stable")[:theta].tolist()
    left, chosen = list(range(len(flat))), []
    while len(chosen) < theta:
        best = left[int(np.argmin(krum_scores(flat[left], f)))]
        chosen.append(best)
        left.remove(best)
    return chosen


def closest_to_median_mean(stacked: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate, the mean of the ``beta`` values (clients on axis 0) closest to their median."""
    med = np.median(stacked, axis=0)
    idx = np.argsort(np.abs(stacked - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(stacked, idx, axis=0).mean(axis=0)


def _byzantine(settings: BulyanSettings, cfg) -> int:
    return settings.byzantine if settings.byzantine is not None else cfg.attackers


@AGGREGATORS.register("bulyan")
class Bulyan(Aggregator):
    config_cls = BulyanSettings
    filters = True

    @classmethod
    def check(cls, cfg) -> None:
        f = _byzantine(cls.settings_from(cfg), cfg)
        if cfg.per_round < 4 * f + 3:
            raise ValueError(f"bulyan needs at least 4f + 3 = {4 * f + 3} clients per round (f = {f}); "
                             f"the scenario samples {cfg.per_round}")

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        f = _byzantine(self.settings, self.cfg)
        n = len(uploads)
        if n < 4 * f + 3:
            return Aggregate(global_state, [], {"skipped": f"{n} uploads, bulyan needs 4f + 3 = {4 * f + 3}"})
        theta, beta = n - 2 * f, n - 4 * f
        flat = stacked_states(uploads)
        keep = bulyan_select(flat, f, theta, self.settings.selection == "krum_iterative")
        chosen = [uploads[i] for i in keep]
        state = per_tensor([u.state for u in chosen], lambda a: closest_to_median_mean(a, beta))
        return Aggregate(state, [u.pid for u in chosen],
                         {"set_aside": sorted({u.pid for u in uploads} - {u.pid for u in chosen})})
