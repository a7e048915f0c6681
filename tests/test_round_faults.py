"""The server's round loop on an in-process Grid (no Ray): a SuperNode that disconnects (the
SuperLink answers for it with Flower's own NODE_UNAVAILABLE error reply), a node that never answers,
and a node that is gone from the federation, are each named in the round's metrics."""
import uuid

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedabd.clients.app import make_client_app
from fedabd.server.app import RoundFailed, run_rounds

from .test_simulation import scenario

NODES = {101: 0, 102: 1, 103: 2}  # node id -> partition id


class LocalGrid(Grid):
    """Delivers train messages to the fedabd ClientApp in this process. ``faults[(round, node)]`` is
    "unavailable" (the SuperLink's error reply), "silent" (no reply before the timeout) or "gone"
    (the node has left: not listed by get_node_ids)."""

    def __init__(self, cfg, faults):
        self.app, self.faults, self.round = make_client_app(cfg), faults, 0
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": p}, state=RecordDict(),
                                    run_config={}) for n, p in NODES.items()}
        self._run, self._pending, self.timeouts = None, {}, []

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):  # asked before the next round's messages are made
        return [n for n in NODES if self.faults.get((self.round + 1, n)) != "gone"]

    def push_messages(self, messages):
        ids = []
        for m in messages:
            self.round = int(m.content["config"]["server-round"])
            m.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's grids do
            self._pending[m.metadata.message_id] = m
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for mid in message_ids:
            m = self._pending.pop(mid)
            fault = self.faults.get((self.round, m.metadata.dst_node_id))
            if fault == "unavailable":
                replies.append(create_message_error_unavailable_res_message(m.metadata, "node_unavail"))
            elif fault != "silent":
                replies.append(self.app(m, self.contexts[m.metadata.dst_node_id]))
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """What Flower's ServerApp runtime sets before the app runs (messages are stamped with it)."""
    for key, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value, raising=False)


def test_disconnected_silent_and_departed_nodes_are_named_and_the_rounds_go_on(tmp_path):
    cfg = scenario(tmp_path, clients=3, malicious=0, rounds=3, aggregator="fedavg")
    faults = {(2, 102): "unavailable", (2, 103): "silent", (3, 103): "gone"}
    rows = run_rounds(LocalGrid(cfg, faults), cfg)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    r1, r2, r3 = rows[1:]
    assert r1["clients"] == [0, 1, 2] and (r1["failed"], r1["missing"], r1["offline"]) == ({}, [], [])
    assert r2["clients"] == [0]
    assert list(r2["failed"]) == ["1"] and "heartbeat" in r2["failed"]["1"].lower()  # not "node 0" (the SuperLink)
    assert r2["missing"] == ["2"] and r2["offline"] == []
    assert r3["clients"] == [0, 1] and r3["offline"] == ["2"] and r3["missing"] == [] and r3["failed"] == {}


def test_a_round_with_fewer_usable_clients_than_min_clients_fails_naming_them(tmp_path):
    cfg = scenario(tmp_path, clients=3, malicious=0, rounds=2, aggregator="fedavg", min_clients=2)
    faults = {(2, 101): "unavailable", (2, 102): "silent"}
    with pytest.raises(RoundFailed, match=r"round 2: only 1 usable .*failed: \['0'\], missing: \['1'\]"):
        run_rounds(LocalGrid(cfg, faults), cfg)


def test_the_first_round_of_a_run_also_waits_for_the_clients_start_up(tmp_path):
    """A simulation's first round starts beside Ray: its wait is client_timeout + startup_timeout,
    later rounds wait client_timeout (a slow start must not leave round 1 without clients)."""
    cfg = scenario(tmp_path, clients=3, malicious=0, rounds=3, aggregator="fedavg", client_timeout=30.0,
                   startup_timeout=200.0)
    grid = LocalGrid(cfg, {})
    run_rounds(grid, cfg)
    assert grid.timeouts == [230.0, 30.0, 30.0]


def test_clients_that_connect_while_the_first_round_waits_for_them_are_sampled_too(tmp_path):
    """The share of clients a round takes (``fraction``) is of the nodes connected once the round has
    waited for them, not of those connected when it began: a resumed run's first round, started while
    Ray was still registering the nodes, once sent the model to one client of three (CI, 2026-12-07)."""
    cfg = scenario(tmp_path, clients=3, malicious=0, rounds=1, aggregator="fedavg")
    grid = LocalGrid(cfg, {})
    every, calls = grid.get_node_ids, []

    def connecting():  # one node for the first two questions, then all three
        calls.append(1)
        return every()[:1] if len(calls) <= 2 else every()

    grid.get_node_ids = connecting
    rows = run_rounds(grid, cfg)
    assert rows[1]["clients"] == [0, 1, 2] and rows[1]["missing"] == []
