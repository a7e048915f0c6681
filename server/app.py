"""The Flower ServerApp: Flower messages to and from :class:`fedabd.engine.RoundEngine`.

Each round: wait for the clients and sample nodes (seeded, as Flower's ``sample_nodes``), send them the global model, parse
every reply once into an Upload or a named failure, and hand them to the engine. The loop is
written out (instead of ``Strategy.start``) so that failed, silent, departed and rejected clients
are named in every round's metrics, and so that a run resumes after its last checkpoint.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedabd import federated as fed
from fedabd.config import ScenarioConfig, scenario_from_run_config
from fedabd.engine import RoundEngine, RoundFailed

log = logging.getLogger("fedabd.server")

RoundCallback = Callable[[dict], None]

__all__ = ["RoundFailed", "make_server_app", "run_rounds", "upload_from_message"]


def upload_from_message(msg: Message) -> fed.Upload:
    """An Upload from a reply; a reply that cannot be read raises ValueError with the reason."""
    content = msg.content
    try:
        metrics = content["metrics"]
        arrays = content["arrays"]
        pid = int(metrics["partition-id"])
        n = metrics["num-examples"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"reply from node {msg.metadata.src_node_id} lacks {e}") from None
    try:
        state = arrays.to_torch_state_dict()
    except Exception as e:  # a malformed ArrayRecord (wrong dtype/shape encoding)
        raise ValueError(f"reply from client {pid}: unreadable arrays ({e})") from None
    return fed.Upload(pid=pid, state=state, num_examples=int(n) if float(n).is_integer() else n,
                      metrics=dict(metrics))


def connected_nodes(grid: Grid, at_least: int) -> list[int]:
    """The connected node ids, once at least ``at_least`` are (waiting as Flower's ``sample_nodes``)."""
    said = False
    while len(nodes := list(grid.get_node_ids())) < at_least:
        if not said:
            log.info("waiting for %d client(s) to connect (%d connected)", at_least, len(nodes))
            said = True
        time.sleep(0.2)
    return nodes


def train_messages(grid: Grid, engine: RoundEngine, rnd: int, min_available: int) -> list[Message]:
    """One train message per sampled node (``fraction`` of the nodes connected once ``min_available``
    are, at least one), carrying the global model, the round and the global architecture. The share
    is taken after the wait: taken before, a first round that began while the nodes were still
    connecting sampled from the few already there."""
    connected = connected_nodes(grid, min_available)
    nodes = random.sample(connected, max(int(len(connected) * engine.cfg.fraction), 1))
    config = ConfigRecord({"server-round": rnd, "global-arch": engine.arch})
    record = RecordDict({"arrays": ArrayRecord(engine.state), "config": config})
    return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]


def run_rounds(grid: Grid, cfg: ScenarioConfig, on_round: RoundCallback | None = None, resume: bool = False,
               progress=None) -> list[dict]:
    engine = RoundEngine(cfg, resume=resume, progress=progress)
    for row in engine.rows:
        if on_round:
            on_round(dict(row, resumed=True) if engine.resumed else row)
    node_pid: dict[int, int] = {}
    first = engine.next_round
    for rnd in engine.rounds_left:
        t0 = time.perf_counter()
        random.seed(fed.derive_seed(cfg.seed, rnd, 5))  # train_messages draws with the global `random`, as Flower's sample_nodes
        connected = set(grid.get_node_ids())
        offline = sorted(n for n in node_pid if n not in connected)  # seen in earlier rounds, gone now
        # the first round waits for every client to connect; later ones go on without departed nodes
        messages = train_messages(grid, engine, rnd, cfg.clients if rnd == first else cfg.min_clients)
        sent = {m.metadata.dst_node_id for m in messages}
        # the first round's wait also covers the clients' start (in a simulation, Ray starting beside it)
        wait = cfg.client_timeout + (cfg.startup_timeout if rnd == first else 0.0)
        replies = list(grid.send_and_receive(messages, timeout=wait))
        # the grid gives sent messages their ids; a reply names the message it answers. A SuperLink's
        # own error reply (e.g. node unavailable) comes from the SuperLink, not from the node.
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        node_of = lambda m: dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id)  # noqa: E731
        answered = {node_of(m) for m in replies}
        failed = {node_of(m): m.error.reason for m in replies if m.has_error()}
        uploads, unreadable = [], {}
        for m in replies:
            if m.has_error():
                continue
            try:
                up = upload_from_message(m)
            except ValueError as e:
                unreadable[f"node {node_of(m)}"] = str(e)
                continue
            node_pid[node_of(m)] = up.pid
            uploads.append(up)
        name = lambda node: str(node_pid.get(node, f"node {node}"))  # noqa: E731
        engine.run_round(rnd, uploads, failed={name(n): r for n, r in failed.items()},
                                  missing=[name(n) for n in sorted(sent - answered)],
                                  offline=[name(n) for n in offline], unreadable=unreadable, started=t0)
        if on_round:
            on_round(engine.rows[-1])
    return engine.rows


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
