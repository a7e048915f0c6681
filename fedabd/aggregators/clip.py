"""Norm clipping with weak differential-privacy noise (Sun et al., "Can You Really Backdoor
Federated Learning?", 2019).

Each client's update ``U_i = W_i - G`` (learnable weights only) is scaled to at most the norm bound
``M``: ``U_i * min(1, M / ||U_i||)``; the clipped updates are averaged with FedAvg's sample weights
and Gaussian noise ``N(0, sigma^2)`` is added to every weight of the new global model ("weak DP":
the noise is far too small for a privacy guarantee; it only blurs what clipping leaves of a
backdoor). ``M`` is an absolute bound and depends on the model and the local training: pick it from
the honest update norms a run logs (``clip_median_norm`` in every round's row); ``noise_std = 0``
is clipping alone. Normalisation buffers are averaged, never clipped or perturbed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..federated import derive_seed
from .base import AGGREGATORS, Aggregate, Aggregator, apply_update, client_updates, sample_weights


@dataclass(frozen=True)
class ClipSettings:
    norm_bound: float = 3.0    # M
    noise_std: float = 0.025   # sigma of the weak-DP noise on every weight

    def __post_init__(self) -> None:
        if not self.norm_bound > 0:
            raise ValueError(f"norm_bound must be > 0, got {self.norm_bound}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


def clip_rows(updates: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled to an L2 norm of at most ``bound`` (rows within it are unchanged)."""
    norms = np.linalg.norm(updates, axis=1)
    return updates * np.minimum(1.0, bound / np.maximum(norms, 1e-12))[:, None]


@AGGREGATORS.register("clip")
class NormClip(Aggregator):
    config_cls = ClipSettings

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        s = self.settings
        keys, updates = client_updates(uploads, global_state)
        norms = np.linalg.norm(updates, axis=1)
        agg = np.asarray(sample_weights(uploads)) @ clip_rows(updates, s.norm_bound)
        if s.noise_std > 0:
            agg = agg + np.random.default_rng(derive_seed(self.cfg.seed, rnd, 17)).normal(0.0, s.noise_std, agg.shape)
        return Aggregate(apply_update(global_state, keys, agg, uploads), [u.pid for u in uploads],
                         {"clip_median_norm": round(float(np.median(norms)), 6),
                          "clipped": [u.pid for u, n in zip(uploads, norms) if n > s.norm_bound]})
