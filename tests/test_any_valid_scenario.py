"""Property: any scenario that loads (what ``fedabd scenarios validate`` accepts) either runs a tiny
round or fails with an error the CLI prints as one line (bad input: exit 2; an outside cause such as
too few usable clients: exit 1), never with a traceback."""
import shutil

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedabd.aggregators import AGGREGATORS
from fedabd.attacks import ATTACKS
from fedabd.cli.common import classify_error
from fedabd.config import ConfigError, load_scenario
from fedabd.data.partition import PARTITIONERS
from fedabd.local import simulate_local
from fedabd.runs import run_scenario
from fedabd.threats import THREATS

TINY_ZSKT = {"pseudo_batches": 2, "batch_size": 16, "student_steps_per_pb": 1, "generator_width": 8}

@st.composite
def scenarios(draw):
    """Mostly loadable scenarios (the cross-field limits drawn within range), so that rounds run."""
    clients = draw(st.integers(2, 5))  # each client holds 1/clients of the data: few clients, long rounds
    fraction = draw(st.sampled_from([0.2, 0.5, 1.0]))
    aggregator = draw(st.sampled_from([*AGGREGATORS.names(), "flame+distill", "multikrum+fedavg"]))
    return {
        "clients": clients, "fraction": fraction, "aggregator": aggregator,
        "malicious": draw(st.integers(0, clients)),
        "min_clients": draw(st.integers(1, max(int(clients * fraction), 1))),
        "partition": draw(st.sampled_from(PARTITIONERS.names())),
        "alpha": draw(st.sampled_from([0.1, 1.0])),
        "classes_per_client": draw(st.integers(1, 3)),
        "attack": draw(st.sampled_from(ATTACKS.names())),
        "threat": draw(st.sampled_from(THREATS.names())),
        "poison_rate": draw(st.sampled_from([0.05, 0.5, 1.0])),
        "scale": draw(st.sampled_from([1.0, 3.0])),
        "abd": draw(st.sampled_from(["none", "sv", "sr", "sv+sr"])) if "distill" in aggregator else "none",
        "target": draw(st.sampled_from([None, 0, 9])),
        "local_batch_size": draw(st.sampled_from([32, 128])),
        "seed": draw(st.integers(0, 3)),
    }


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=scenarios())
def test_a_scenario_that_loads_runs_a_round_or_fails_in_one_line(tmp_path, values):
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    spec = {**values, "rounds": 1, "local_epochs": 1, "device": "cpu", "out": str(out), "kd": "zskt",
            "kd_overrides": TINY_ZSKT}
    if values["threat"] == "kd_aware":  # its default schedule trains 7 epochs
        spec["threat_settings"] = {"epochs": 1, "margin_epochs": 1}
    try:
        cfg = load_scenario(None, spec)
    except ConfigError:
        event("refused at load")
        return  # refused at load: one line (the CLI's tests check how it prints)
    try:
        rows = run_scenario(cfg, simulate_local)
    except Exception as e:  # noqa: BLE001 - what the CLI would print is the point
        assert classify_error(e) is not None, f"{type(e).__name__}: {e} for {values}"
        event(f"failed in one line: {type(e).__name__}")
        return
    event("ran")
    assert [r["round"] for r in rows] == [0, 1]
