"""FedAvg (McMahan et al., AISTATS 2017): the sample-weighted mean of the client models."""
from __future__ import annotations

from .base import AGGREGATORS, Aggregate, Aggregator, sample_weights, weighted_mean


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        state = weighted_mean([u.state for u in uploads], sample_weights(uploads))
        return Aggregate(state, [u.pid for u in uploads])
