"""FLAME (Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022).

Each round, on the clients' updates ``U_i = W_i - G`` over the learnable weights only (BatchNorm's
running statistics are neither clustered, clipped nor perturbed; they are averaged over the admitted
clients):

1. Filtering: HDBSCAN (scikit-learn's ``sklearn.cluster.HDBSCAN``) on the pairwise cosine distances
   of the updates, ``min_cluster_size = n // 2 + 1`` and ``min_samples = 1``, one cluster allowed;
   the clients of the largest cluster are admitted, the others (HDBSCAN's outliers included)
   rejected. ``cluster_on="models"`` clusters the local models ``W_i`` instead (the paper's
   Algorithm 1 writes the distances on ``W_i``; its text speaks of updates).
2. Adaptive clipping: ``S = median(||U_1||, ..., ||U_n||)`` over **all** ``n`` updates (not only the
   admitted ones); each admitted update is scaled by ``min(1, S / ||U_i||)``.
3. Aggregation: the unweighted mean of the clipped admitted updates, added to ``G``.
4. Adaptive noise: Gaussian ``N(0, (lambda * S)^2)`` on every weight, ``lambda = 0.001`` (the paper's
   value for image classification), drawn from a generator seeded by the scenario seed and round.

With fewer than three uploads nothing is clustered (all are admitted); if HDBSCAN finds no cluster
every client is admitted and the round's info says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..federated import derive_seed
from .base import AGGREGATORS, Aggregate, Aggregator, apply_update, client_updates, weight_vector


@dataclass(frozen=True)
class FlameSettings:
    noise_lambda: float = 0.001             # lambda: noise std = lambda * median update norm
    min_cluster_size: Optional[int] = None  # None = n // 2 + 1 (an honest majority)
    cluster_on: str = "updates"             # or "models"

    def __post_init__(self) -> None:
        if self.noise_lambda < 0:
            raise ValueError(f"noise_lambda must be >= 0, got {self.noise_lambda}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if self.cluster_on not in ("updates", "models"):
            raise ValueError(f"cluster_on must be updates or models, got {self.cluster_on!r}")


def majority_cluster(vectors: np.ndarray, min_cluster_size: int | None = None) -> list[int] | None:
    """Indices of the largest HDBSCAN cluster of ``vectors`` under cosine distance (None: no cluster)."""
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics.pairwise import cosine_distances

    n = len(vectors)
    if n < 3:
        return list(range(n))
    dist = np.clip(cosine_distances(vectors), 0.0, None)
    labels = HDBSCAN(min_cluster_size=min_cluster_size or n // 2 + 1, min_samples=1, metric="precomputed", copy=True,
                     allow_single_cluster=True).fit_predict(dist)
    found = labels[labels >= 0]
    if found.size == 0:
        return None
    biggest = np.bincount(found).argmax()
    return np.flatnonzero(labels == biggest).tolist()


def flame_update(updates: np.ndarray, admitted: list[int], noise_lambda: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The aggregated update of the ``admitted`` rows (clipped to the median norm of all rows,
    averaged, plus noise) and that median norm."""
    norms = np.linalg.norm(updates, axis=1)
    bound = float(np.median(norms))
    scale = np.minimum(1.0, bound / np.maximum(norms[admitted], 1e-12))
    agg = (updates[admitted] * scale[:, None]).mean(axis=0)
    if noise_lambda > 0:
        agg = agg + rng.normal(0.0, noise_lambda * bound, size=agg.shape)
    return agg, bound


@AGGREGATORS.register("flame")
class Flame(Aggregator):
    config_cls = FlameSettings
    filters = True

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        s = self.settings
        keys, updates = client_updates(uploads, global_state)
        vectors = updates if s.cluster_on == "updates" else updates + weight_vector(global_state, keys)
        admitted = majority_cluster(vectors, s.min_cluster_size)
        info = {}
        if admitted is None:
            admitted, info["flame_no_cluster"] = list(range(len(uploads))), True
        rng = np.random.default_rng(derive_seed(self.cfg.seed, rnd, 13))
        agg, bound = flame_update(updates, admitted, s.noise_lambda, rng)
        chosen = [uploads[i] for i in admitted]
        state = apply_update(global_state, keys, agg, chosen)
        info.update(flame_median_norm=round(bound, 6),
                    set_aside=sorted({u.pid for u in uploads} - {u.pid for u in chosen}))
        return Aggregate(state, [u.pid for u in chosen], info)

