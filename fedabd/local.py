"""A transport without Flower: every sampled client trains in this process, one after another, and
the round goes to the same :class:`fedabd.engine.RoundEngine` the Flower ServerApp feeds.

:func:`simulate_local` has the signature of :func:`fedabd.server.simulation.simulate`, so
``run_scenario(cfg, simulate_local)`` writes the same run folder. It suits many small runs (tests,
benchmark matrices in worker processes) where Ray's start-up and a process per client cost more than
the training. With ``fraction < 1`` it samples clients with its own seeded draw, so the sampled sets
(and hence the numbers) differ from the Flower path's; with every client in every round they agree.
"""
from __future__ import annotations

import time

import numpy as np

from . import federated as fed
from .config import ScenarioConfig
from .device import resolve_device
from .engine import RoundEngine


def sampled_clients(cfg: ScenarioConfig, rnd: int) -> list[int]:
    """The clients that train in round ``rnd``: ``fraction`` of them (at least one), seeded."""
    num = cfg.per_round
    if num >= cfg.clients:
        return list(range(cfg.clients))
    rng = np.random.default_rng(fed.derive_seed(cfg.seed, rnd, 5))
    return sorted(rng.choice(cfg.clients, size=num, replace=False).tolist())


def simulate_local(cfg: ScenarioConfig, on_round=None, resume: bool = False, progress=None) -> list[dict]:
    """Run the scenario's rounds in this process; returns every round's row (round 0 first)."""
    engine = RoundEngine(cfg, resume=resume, progress=progress)
    if any(fed.client_arch(cfg, pid) != engine.arch for pid in range(cfg.clients)):
        raise ValueError("clients whose architecture differs from the global model's keep their own models "
                         "between rounds: run them through Flower (fedabd simulate)")
    for row in engine.rows:
        if on_round:
            on_round(dict(row, resumed=True) if engine.resumed else row)
    device = resolve_device(cfg.device)
    for rnd in engine.rounds_left:
        t0 = time.perf_counter()
        attackers = fed.malicious_clients(cfg, rnd)
        uploads = []
        for pid in sampled_clients(cfg, rnd):
            res = fed.local_update(cfg, pid, rnd, engine.state, pid in attackers, device)
            uploads.append(fed.Upload(pid, res.state, res.num_examples, res.metrics))
        engine.run_round(rnd, uploads, started=t0)
        if on_round:
            on_round(engine.rows[-1])
    return engine.rows
