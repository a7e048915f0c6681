"""Coordinate-wise median (Yin et al., ICML 2018): every weight is the median over the clients
(the mean of the two middle values for an even count, as numpy and Flower's FedMedian compute it)."""
from __future__ import annotations

import numpy as np

from .base import AGGREGATORS, Aggregate, Aggregator, per_tensor


@AGGREGATORS.register("fedmedian")
class FedMedian(Aggregator):
    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        state = per_tensor([u.state for u in uploads], lambda a: np.median(a, axis=0))
        return Aggregate(state, [u.pid for u in uploads])
