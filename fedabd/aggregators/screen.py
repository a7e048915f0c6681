"""Teacher screening before aggregation (ours): each upload scored for a backdoor without data
(:mod:`fedabd.screening`), suspicious ones excluded (``mode: hard``) or down-weighted (``soft``).

It filters, so it composes by name: ``screen+distill`` (with ``abd``: ``screen+distill+abd``),
``flame+screen+distill``. The next rule receives the admitted uploads with their weights
(``Upload.trust``): distillation weights its ensemble by them, the weight-averaging rules their
mean. Alone, ``screen`` averages the admitted uploads (FedAvg weighted by samples x trust).
Every teacher's class, signals, score, weight and the decision go into the round's metrics
(``teachers``, under ``screen`` in a composition); if
exclusion leaves fewer than ``min_clients`` teachers the round fails with the usual message.
"""
from __future__ import annotations

import time

from ..federated import client_arch, derive_seed
from ..models import create_model
from ..screening import ScreenConfig, screen_models, screen_weights
from .base import AGGREGATORS, Aggregate, Aggregator, sample_weights, weighted_mean


@AGGREGATORS.register("screen")
class Screen(Aggregator):
    config_cls = ScreenConfig
    filters = True
    averages_weights = False
    compares_updates = False  # it queries the models: a distilled student may differ from the clients

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        from ..engine import RoundFailed

        t0 = time.perf_counter()
        models = []
        for up in uploads:
            m = create_model(client_arch(self.cfg, up.pid), num_classes=self.info.num_classes,
                             in_channels=self.info.channels, image_size=self.info.image_size)
            m.load_state_dict(up.state)
            models.append(m)
        results = screen_models(models, self.info, self.settings, seed=derive_seed(self.cfg.seed, rnd, 77),
                                device=self.device)
        factors = screen_weights([r["score"] for r in results], self.settings)
        per_client, weights = {}, {}
        for up, r, f in zip(uploads, results, factors):
            decision = "excluded" if f == 0.0 else ("down-weighted" if f < 1.0 else "kept")
            per_client[str(up.pid)] = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                                       "weight": round(f, 4), "decision": decision}
            if f > 0.0:
                weights[up.pid] = f
        info = {"teachers": per_client, "screen_seconds": round(time.perf_counter() - t0, 2)}
        if len(weights) < self.cfg.min_clients:
            listed = ", ".join(f"{p}: {v['score']:.2f}" for p, v in per_client.items())
            raise RoundFailed(f"round {rnd}: screening excluded {len(uploads) - len(weights)} of {len(uploads)} "
                              f"client models, leaving {len(weights)}; min_clients is {self.cfg.min_clients} "
                              f"(scores: {listed}); "
                              f"rounds up to {rnd - 1} are saved")
        kept = [u for u in uploads if u.pid in weights]
        if self.cfg.client_archs and len(set(self.cfg.client_archs)) > 1:
            state = global_state  # mixed architectures cannot be averaged: screening alone keeps the model
        else:
            trusted = [u.with_trust(weights[u.pid]) for u in kept]
            state = weighted_mean([u.state for u in trusted], sample_weights(trusted))
        return Aggregate(state, [u.pid for u in kept], info, weights=weights)
