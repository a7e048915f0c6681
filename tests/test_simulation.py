"""The Flower apps in Flower's simulation engine (slow: Ray starts for each run)."""
import json

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedabd.config import load_scenario
from fedabd.server.simulation import simulate

TINY_ZSKT = {"pseudo_batches": 3, "batch_size": 32, "student_steps_per_pb": 2, "generator_width": 8}


def scenario(tmp_path, **kw):
    base = {"clients": 3, "malicious": 1, "rounds": 2, "local_epochs": 1, "out": str(tmp_path / "run"),
            "kd": "zskt", "kd_overrides": TINY_ZSKT, "device": "cpu", "seed": 1}
    base.update(kw)
    return load_scenario(None, base)


@pytest.mark.slow
def test_distillation_rounds_with_a_crashing_and_a_hostile_client(tmp_path):
    cfg = scenario(tmp_path, clients=4, abd="sv+sr")
    from fedabd.clients.app import make_client_app

    honest = make_client_app(cfg)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == 1:
            raise RuntimeError("client 1 crashed")
        reply = honest(msg, context)
        if pid == 2:  # a hostile upload: NaN weights
            arrays = reply.content["arrays"]
            state = arrays.to_torch_state_dict()
            state["fc3.bias"][:] = float("nan")
            from flwr.app import ArrayRecord
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    seen = []
    rows = simulate(cfg, on_round=seen.append, client_app=app)
    assert [r["round"] for r in rows] == [0, 1, 2] and seen == rows
    for r in rows[1:]:
        assert r["clients"] == [0, 3]           # the survivors were distilled
        assert len(r["failed"]) == 1 and "client 1 crashed" in next(iter(r["failed"].values()))  # reported
        assert list(r["rejected"]) == ["2"] and "NaN" in r["rejected"]["2"]
        assert 0 <= r["acc"] <= 1 and 0 <= r["asr"] <= 1
        assert r["defense"]["sr"]["sr_steps"] > 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["round"] == 2 and state["rows"][-1]["acc"] == rows[-1]["acc"]


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_metrics_as_an_uninterrupted_one(tmp_path):
    """Also with heterogeneous clients: those whose architecture differs from the global model train
    their own model round after round, and after a resume continue it from their disk (Flower's node
    state is gone); client 0 starts each round from the global model. The interrupted run is the
    uninterrupted one's folder as it stood after round 1 (what a run killed then leaves behind)."""
    import shutil

    het = {"client_archs": ["lenet5", "lenet5_half", "lenet5_half"], "student": "lenet5"}
    cut = tmp_path / "cut" / "run"

    def snapshot(row):
        if row["round"] == 1:
            shutil.copytree(tmp_path / "full" / "run", cut)

    full = simulate(scenario(tmp_path / "full", rounds=2, **het), on_round=snapshot)
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["round"] == 1
    seen = []
    resumed = simulate(scenario(tmp_path / "cut", rounds=2, **het), resume=True, on_round=seen.append)
    assert [r.get("resumed", False) for r in seen] == [True, True, False]  # rounds 0-1 restored, not rerun
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "distill_seconds")} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(full)
    own = cut / "clients"
    assert sorted(p.name for p in own.iterdir()) == ["partition-1", "partition-2"]  # the half-width clients
    assert sorted(p.name for p in (own / "partition-1").iterdir()) == ["round-1.safetensors", "round-2.safetensors"]
