"""The Flower ClientApp: translate a train message into :func:`fedabd.federated.local_update`.

Per-node settings: ``partition-id`` (required), optional ``malicious`` (true/false) overriding the
scenario's selection (Deployment Engine: ``flower-supernode --node-config "partition-id=1 malicious=true"``),
optional ``state-dir``: where a client whose architecture differs from the global model keeps its own
model between rounds (default ``<out>/clients``), so that a resumed run continues it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedabd import federated as fed
from fedabd.config import ScenarioConfig, scenario_from_run_config
from fedabd.device import resolve_device


def _truthy(v) -> bool:
    return v is True or str(v).lower() in ("1", "true", "yes")


def make_client_app(cfg: ScenarioConfig | None = None, threads: int = 1) -> ClientApp:
    """A ClientApp bound to ``cfg``; with None the scenario comes from the run config (``flwr run``)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        scfg = cfg or scenario_from_run_config(context.run_config)
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        node_flag = context.node_config.get("malicious")
        malicious = _truthy(node_flag) if node_flag is not None else pid in fed.malicious_clients(scfg, rnd)
        arch = fed.client_arch(scfg, pid)
        config = msg.content["config"]
        global_arch = str(config["global-arch"]) if "global-arch" in config else scfg.global_arch
        own = None
        if arch == global_arch:
            start = msg.content["arrays"].to_torch_state_dict()
        else:  # heterogeneous client: continue from its own model (node state, or its disk after a resume)
            own = fed.ClientStore(context.node_config.get("state-dir") or Path(scfg.out) / "clients")
            if "local" in context.state:
                start = context.state["local"].to_torch_state_dict()
            else:
                start = own.load(pid, rnd - 1, fed.initial_client_state(scfg, pid)) if rnd > 1 else None
        res = fed.local_update(scfg, pid, rnd, start, malicious, resolve_device(scfg.device))
        if own is not None:
            context.state["local"] = ArrayRecord(res.state)
            own.save(pid, rnd, res.state)
        metrics = MetricRecord({"num-examples": res.num_examples, "partition-id": pid, **res.metrics})
        return Message(content=RecordDict({"arrays": ArrayRecord(res.state), "metrics": metrics}), reply_to=msg)

    return app


# Entry point for `flwr run .` and the Deployment Engine (pyproject [tool.flwr.app.components]).
app = make_client_app()
