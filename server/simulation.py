"""In-process simulation (Flower's Simulation Engine) of a scenario: what ``fedabd simulate`` runs."""
from __future__ import annotations

import logging
import os

import torch

from fedabd.config import ScenarioConfig

FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_LOG_LEVEL": "ERROR",  # its warnings (e.g. run_simulation deprecated) are noise here; errors show
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


def simulate(cfg: ScenarioConfig, on_round=None, resume: bool = False, progress=None, client_app=None) -> list[dict]:
    """Run ``cfg`` with ``cfg.clients`` virtual SuperNodes; returns the per-round rows.

    Each client takes one CPU (and a GPU share when CUDA is present); the server's distillation
    runs in this process. ``client_app`` replaces the standard ClientApp (fault-injection tests).
    """
    for k, v in FLWR_ENV.items():
        os.environ.setdefault(k, v)
    from flwr.simulation import run_simulation

    from .app import make_server_app
    from ..clients.app import make_client_app

    result: list = []
    cpus = max(1, os.cpu_count() or 1)
    gpus = 1.0 / cfg.clients if torch.cuda.is_available() else 0.0
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": gpus},
        "init_args": {"num_cpus": cpus, "num_gpus": 1 if gpus else 0, "logging_level": "ERROR",
                      "log_to_driver": False, "include_dashboard": False},
    }
    logging.getLogger("flwr").setLevel(logging.ERROR)
    run_simulation(server_app=make_server_app(cfg, on_round, resume, progress, result),
                   client_app=client_app or make_client_app(cfg), num_supernodes=cfg.clients, backend_config=backend_config)
    errors = [r for r in result if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    if not result:
        raise RuntimeError("the simulation ended without running any round (see the Flower log above)")
    return result
