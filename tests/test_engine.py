"""The round engine without Flower: screening, aggregation, the round report, checkpoints, resume."""
import pytest
import torch

from fedabd import federated as fed
from fedabd.config import load_scenario
from fedabd.engine import RoundEngine, RoundFailed


def scenario(tmp_path, **kw):
    base = {"clients": 3, "malicious": 1, "malicious_ids": [2], "rounds": 2, "local_epochs": 1,
            "aggregator": "fedavg", "out": str(tmp_path / "run"), "device": "cpu", "min_clients": 2}
    return load_scenario(None, {**base, **kw})


def uploads(cfg, engine, rnd):
    out = []
    for pid in range(cfg.clients):
        res = fed.local_update(cfg, pid, rnd, engine.state, pid in fed.malicious_clients(cfg, rnd))
        out.append(fed.Upload(pid, res.state, res.num_examples, res.metrics))
    return out


def test_a_round_screens_aggregates_evaluates_and_checkpoints(tmp_path):
    cfg = scenario(tmp_path)
    engine = RoundEngine(cfg)
    assert engine.rows[0]["round"] == 0 and list(engine.rounds_left) == [1, 2]
    ups = uploads(cfg, engine, 1)
    ups[1].state["fc3.bias"][:] = float("nan")  # a hostile upload
    report = engine.run_round(1, ups, failed={"7": "crashed"}, missing=["8"])
    row = engine.rows[-1]
    assert report.clients == [0, 2] and report.malicious == [2] and list(report.rejected) == ["1"]
    assert "NaN" in report.rejected["1"] and row["failed"] == {"7": "crashed"} and row["missing"] == ["8"]
    assert 0 < row["acc"] <= 1 and "client_train_loss" in row
    expected = {k: (ups[0].state[k] * ups[0].num_examples + ups[2].state[k] * ups[2].num_examples)
                / (ups[0].num_examples + ups[2].num_examples) for k in ups[0].state}
    assert all(torch.allclose(engine.state[k], expected[k], atol=1e-6) for k in expected)
    resumed = RoundEngine(cfg, resume=True)
    assert resumed.resumed and resumed.next_round == 2 and resumed.rows == engine.rows
    assert all(torch.equal(resumed.state[k], engine.state[k]) for k in engine.state)


def test_too_few_usable_uploads_fail_the_round_and_keep_the_state(tmp_path):
    cfg = scenario(tmp_path)
    engine = RoundEngine(cfg)
    before = {k: v.clone() for k, v in engine.state.items()}
    ups = uploads(cfg, engine, 1)[:1]
    with pytest.raises(RoundFailed, match="only 1 usable client model"):
        engine.run_round(1, ups, missing=["1", "2"])
    assert all(torch.equal(before[k], engine.state[k]) for k in before) and len(engine.rows) == 1


def test_a_filtering_rule_reports_detection_rates_and_keeps_its_memory_on_resume(tmp_path):
    cfg = scenario(tmp_path, aggregator="foolsgold")
    engine = RoundEngine(cfg)
    engine.run_round(1, uploads(cfg, engine, 1))
    row = engine.rows[-1]
    assert {"tpr", "fpr", "foolsgold_weights"} <= set(row) and row["tpr"] in (0.0, 1.0)
    resumed = RoundEngine(cfg, resume=True)
    assert resumed.aggregator.history.keys() == engine.aggregator.history.keys() == {0, 1, 2}
    assert all((resumed.aggregator.history[p] == engine.aggregator.history[p]).all() for p in range(3))
    plain = RoundEngine(scenario(tmp_path / "avg"))
    plain.run_round(1, uploads(cfg, plain, 1))
    assert "tpr" not in plain.rows[-1]  # FedAvg rejects nobody: no detection to report


def test_the_in_process_transport_writes_a_complete_run_folder(tmp_path):
    import json

    from fedabd.local import sampled_clients, simulate_local
    from fedabd.runs import run_scenario

    cfg = scenario(tmp_path, rounds=1, clients=4, malicious_ids=[3], fraction=0.5)
    assert sampled_clients(cfg, 1) == sampled_clients(cfg, 1) and len(sampled_clients(cfg, 1)) == 2
    rows = run_scenario(cfg, simulate_local)
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["clients"] == sampled_clients(cfg, 1)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[1]["acc"] == rows[1]["acc"]
    assert (tmp_path / "run" / "global.safetensors").exists()


def test_fedavg_baseline_learns_over_two_rounds(tmp_path):
    """The FedAvg baseline the distilling server is compared with, in process. (FedAvg through
    Flower's transport: tests/test_deployment.py.)"""
    from fedabd.local import simulate_local
    from fedabd.runs import run_scenario

    rows = run_scenario(scenario(tmp_path, malicious_ids=None, min_clients=1, seed=1), simulate_local)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["malicious"] == sorted(rows[-1]["malicious"]) and len(rows[-1]["malicious"]) == 1
    assert all(0 <= r["acc"] <= 1 for r in rows) and rows[-1]["acc"] > rows[0]["acc"] + 0.2
