"""The Flower ServerApp: the round loop over Flower's Grid, with fedabd doing validation,
aggregation (via the strategy), evaluation and checkpoints.

The loop is written out (instead of ``Strategy.start``) so that failed or rejected clients are
accounted for in every round's metrics, and so that a run resumes after its last checkpoint.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedabd import federated as fed
from fedabd.config import ScenarioConfig, scenario_from_run_config
from fedabd.data import dataset_info
from fedabd.device import resolve_device
from fedabd.models import create_model

from .strategy import DistillStrategy, make_strategy, upload_from_message

log = logging.getLogger("fedabd.server")

RoundCallback = Callable[[dict], None]


class RoundFailed(RuntimeError):
    """Too few usable client models in a round; completed rounds stay checkpointed."""


def global_arch(cfg: ScenarioConfig) -> str:
    return cfg.student if cfg.aggregator == "distill" else cfg.client_arch


def initial_state(cfg: ScenarioConfig) -> fed.StateDict:
    info = dataset_info(cfg.dataset)
    torch.manual_seed(fed.derive_seed(cfg.seed, 0, 1))
    model = create_model(global_arch(cfg), num_classes=info.num_classes, in_channels=info.channels,
                         image_size=info.image_size)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_rounds(grid: Grid, cfg: ScenarioConfig, on_round: RoundCallback | None = None, resume: bool = False,
               progress=None) -> list[dict]:
    info = dataset_info(cfg.dataset)
    device = resolve_device(cfg.device)
    arch = global_arch(cfg)
    ckpt = fed.Checkpoint(cfg.out)
    strategy = make_strategy(cfg, info, device, progress)
    rows: list[dict] = []
    state, start = initial_state(cfg), 1
    loaded = ckpt.load() if resume else None
    if loaded is not None:
        done, state, rows, _ = loaded
        start = done + 1
        log.warning("resuming after round %d", done)
        for row in rows:
            if on_round:
                on_round(dict(row, resumed=True))
    else:
        row = {"round": 0, **fed.evaluate_state(cfg, info, arch, state, device)}
        rows.append(row)
        if on_round:
            on_round(row)
    if isinstance(strategy, DistillStrategy):
        strategy.student_state = state
    node_pid: dict[int, int] = {}
    for rnd in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        random.seed(fed.derive_seed(cfg.seed, rnd, 5))  # Flower samples nodes with the global `random`
        if hasattr(strategy, "min_available_nodes"):
            # the first round waits for every client to connect; later ones go on without departed nodes
            strategy.min_available_nodes = cfg.clients if rnd == start else cfg.min_clients
        connected = set(grid.get_node_ids())
        offline = sorted(n for n in node_pid if n not in connected)  # seen in earlier rounds, gone now
        messages = list(strategy.configure_train(rnd, ArrayRecord(state), ConfigRecord(), grid))
        sent = {m.metadata.dst_node_id for m in messages}
        replies = list(grid.send_and_receive(messages, timeout=cfg.client_timeout))
        # the grid gives sent messages their ids; a reply names the message it answers. A SuperLink's
        # own error reply (e.g. node unavailable) comes from the SuperLink, not from the node.
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        node_of = lambda m: dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id)  # noqa: E731
        answered = {node_of(m) for m in replies}
        failed = {node_of(m): m.error.reason for m in replies if m.has_error()}
        missing = sorted(sent - answered)
        uploads, good_msgs, rejected = [], {}, {}
        for m in replies:
            if m.has_error():
                continue
            try:
                up = upload_from_message(m)
            except ValueError as e:
                rejected[f"node {node_of(m)}"] = str(e)
                continue
            node_pid[node_of(m)] = up.pid
            uploads.append(up)
            good_msgs[up.pid] = m
        valid, bad = fed.screen_uploads(cfg, info, uploads)
        rejected.update({str(pid): reason for pid, reason in bad.items()})
        name = lambda node: str(node_pid.get(node, f"node {node}"))  # noqa: E731
        if len(valid) < cfg.min_clients:
            raise RoundFailed(
                f"round {rnd}: only {len(valid)} usable client model(s), min_clients is {cfg.min_clients} "
                f"(failed: {sorted(map(name, failed))}, missing: {[name(n) for n in missing]}, "
                f"offline: {[name(n) for n in offline]}, "
                f"rejected: {rejected}); rounds up to {rnd - 1} are saved in {ckpt.dir}")
        arrays, _ = strategy.aggregate_train(rnd, [good_msgs[u.pid] for u in valid])
        state = arrays.to_torch_state_dict()
        metrics = fed.evaluate_state(cfg, info, arch, state, device)
        row = {"round": rnd, **metrics, "clients": [u.pid for u in valid],
               "malicious": sorted(u.pid for u in valid if u.metrics.get("malicious")),
               "failed": {name(n): reason for n, reason in sorted(failed.items())},
               "missing": [name(n) for n in missing], "offline": [name(n) for n in offline],
               "rejected": rejected, "seconds": round(time.perf_counter() - t0, 2)}
        if isinstance(strategy, DistillStrategy):
            row["distill_seconds"] = round(strategy.last_info.get("distill_seconds", 0.0), 2)
            if strategy.last_info.get("defense"):
                row["defense"] = strategy.last_info["defense"]
        rows.append(row)
        ckpt.save(rnd, arch, info, state, rows, cfg.to_json())
        if on_round:
            on_round(row)
    return rows


def make_server_app(cfg: ScenarioConfig | None = None, on_round: RoundCallback | None = None, resume: bool = False,
                    progress=None, result: list | None = None) -> ServerApp:
    """A ServerApp bound to ``cfg``; with None the scenario comes from the run config (``flwr run``).
    Round rows go to ``on_round`` and are appended to ``result`` (in-process simulation);
    an exception in the loop is stored in ``result`` as well, so the caller can report it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        scfg = cfg or scenario_from_run_config(context.run_config)
        try:
            rows = run_rounds(grid, scfg, on_round, resume, progress)
        except Exception as e:
            if result is not None:
                result.append(e)
            raise
        if result is not None:
            result.extend(rows)

    return app


app = make_server_app()
