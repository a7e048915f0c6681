"""Each aggregation rule's defining property on hand-made updates (no Flower), the registry
contract, and a toy aggregator defined here alone running through a Flower simulation round."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedabd.aggregators import AGGREGATORS, Aggregate, Aggregator, create_aggregator
from fedabd.aggregators.bulyan import bulyan_select, closest_to_median_mean
from fedabd.aggregators.multikrum import krum_scores, multikrum_select
from fedabd.config import ConfigError, load_scenario
from fedabd.data import dataset_info
from fedabd.federated import Upload

INFO = dataset_info("mnist_subset")


def cfg(**kw):
    base = {"clients": 5, "malicious": 1, "aggregator": "fedavg", "out": "unused", "device": "cpu"}
    return load_scenario(None, {**base, **kw})


def ups(values, counts=None):
    """Uploads whose one tensor ``w`` holds ``values[i]`` (and an int buffer ``n`` = 10 * i)."""
    counts = counts or [1] * len(values)
    return [Upload(i, {"w": torch.tensor(v, dtype=torch.float32), "n": torch.tensor(10 * i)}, c)
            for i, (v, c) in enumerate(zip(values, counts))]


def run(name, uploads, **kw):
    return create_aggregator(cfg(aggregator=name, **kw), INFO).aggregate(1, uploads, None)


def test_fedavg_weights_by_declared_samples_and_keeps_dtypes():
    out = run("fedavg", ups([[0.0, 3.0], [3.0, 0.0]], counts=[1, 2]))
    assert torch.allclose(out.state["w"], torch.tensor([2.0, 1.0]))
    assert out.state["w"].dtype == torch.float32 and out.state["n"].dtype == torch.int64
    assert out.state["n"].item() == 6  # (0 * 1 + 10 * 2) / 3 = 6.67, truncated as Flower does
    assert out.selected == [0, 1]


def test_median_ignores_one_outlier_and_averages_the_middle_pair():
    out = run("fedmedian", ups([[1.0], [2.0], [1e6]]))
    assert out.state["w"].item() == 2.0
    assert run("fedmedian", ups([[1.0], [2.0], [4.0], [1e6]])).state["w"].item() == 3.0


def test_trimmed_mean_drops_floor_beta_n_at_each_end():
    vals = [[-1e6], [1.0], [2.0], [3.0], [1e6]]
    out = run("fedtrimmedavg", ups(vals), aggregator_settings={"beta": 0.2})  # cuts 1 per side
    assert out.state["w"].item() == pytest.approx(2.0)
    assert out.info["trimmed_per_side"] == 1
    assert run("fedtrimmedavg", ups(vals), aggregator_settings={"beta": 0.0}).state["w"].item() == pytest.approx(1.2)


def test_krum_scores_sum_the_nearest_squared_distances():
    flat = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    # n=4, f=0: k = max(1, 4 - 0 - 2) = 2 nearest others
    assert krum_scores(flat, 0).tolist() == [1 + 4, 1 + 1, 1 + 4, 64 + 81]
    assert multikrum_select(flat, 0, 2) == [1, 0]


def test_multikrum_sets_the_outlier_aside():
    uploads = ups([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [50.0, -50.0]])
    out = run("multikrum", uploads, malicious=1)  # f = 1, m = 5 - 1 = 4
    assert out.info["set_aside"] == [4] and sorted(out.selected) == [0, 1, 2, 3]
    assert torch.allclose(out.state["w"], torch.tensor([0.05, 0.05]))
    krum = run("multikrum", uploads, malicious=1, aggregator_settings={"select": 1})
    assert len(krum.selected) == 1 and krum.selected[0] != 4


def test_bulyan_averages_the_values_closest_to_the_median_per_coordinate():
    stacked = np.array([[0.0, 5.0], [1.0, -1.0], [2.0, 0.0], [10.0, 1.0], [11.0, 2.0]])
    # column 0: median 2, closest three 2, 1, 0; column 1: median 1, closest three 1, 0, 2
    assert closest_to_median_mean(stacked, 3).tolist() == [1.0, 1.0]


def test_bulyan_selects_by_krum_again_on_what_is_left():
    # four uploads near 0, three near 10; n = 7, f = 1, theta = 5. One pass of Krum ranks the larger
    # group first and keeps all four of it; re-scored after two of them are gone, the group near 10
    # is the tighter one, so the paper's rule keeps two of its uploads.
    flat = np.array([0.0, 0.1, 0.25, 0.45, 10.0, 10.15, 10.35])[:, None]
    high = lambda idx: sum(i >= 4 for i in idx)  # noqa: E731
    assert high(bulyan_select(flat, 1, 5, iterative=False)) == 1
    assert high(bulyan_select(flat, 1, 5, iterative=True)) == 2


def test_bulyan_sets_an_outlier_aside_and_needs_4f_plus_3_uploads():
    values = [[0.0], [0.1], [-0.1], [0.2], [-0.2], [0.05], [100.0]]
    out = run("bulyan", ups(values), clients=7, malicious=1)  # theta = 5, beta = 3
    assert len(out.info["set_aside"]) == 2 and 6 in out.info["set_aside"]  # n - theta = 2 set aside
    assert 6 not in out.selected and abs(float(out.state["w"])) <= 0.1
    kept = run("bulyan", ups(values[:6]), clients=7, malicious=1)  # a round with 6 < 7 uploads
    assert kept.selected == [] and kept.state is None and "skipped" in kept.info
    with pytest.raises(ConfigError, match="aggregator: bulyan needs at least 4f \\+ 3 = 7"):
        cfg(aggregator="bulyan", clients=6, malicious=1)


def test_the_byzantine_count_defaults_to_the_attackers_named_by_malicious_ids():
    with pytest.raises(ConfigError, match="4f \\+ 3 = 11"):  # two attackers named, `malicious` left at 0
        cfg(aggregator="bulyan", clients=10, malicious=0, malicious_ids=[3, 7])
    values = [[0.0], [0.1], [-0.1], [0.2], [90.0], [100.0]]
    out = run("multikrum", ups(values), clients=6, malicious=0, malicious_ids=[4, 5])  # f = 2: both set aside
    assert out.info["set_aside"] == [4, 5]


def test_settings_are_typed_and_checked_when_the_scenario_loads():
    with pytest.raises(ConfigError, match="aggregator_settings: beta must be in"):
        cfg(aggregator="fedtrimmedavg", aggregator_settings={"beta": 0.5})
    with pytest.raises(ConfigError, match="unknown setting 'bta'"):
        cfg(aggregator="fedtrimmedavg", aggregator_settings={"bta": 0.1})


def test_every_registered_aggregator_builds_from_a_scenario():
    for name in AGGREGATORS.names():
        agg = create_aggregator(cfg(aggregator=name, clients=7), INFO)  # bulyan: 4f + 3
        assert isinstance(agg, Aggregator) and type(agg).global_arch(agg.cfg) in ("lenet5",)


@dataclass(frozen=True)
class FirstSettings:
    scale: float = 1.0


class TakeTheFirst(Aggregator):
    """A toy rule: the lowest client id's model, scaled."""

    config_cls = FirstSettings

    def aggregate(self, rnd, uploads, global_state):
        first = uploads[0]
        return Aggregate({k: v * self.settings.scale for k, v in first.state.items()}, [first.pid], {"toy": rnd})


def test_a_toy_aggregator_defined_here_runs_a_round(tmp_path):
    """Registered outside the package, it is found by name and runs a federated round. (The round
    engine is the same behind every transport; Flower's carry the distilling aggregator in
    tests/test_simulation.py and FedAvg in tests/test_deployment.py.)"""
    from fedabd.local import simulate_local
    from fedabd.runs import run_scenario

    AGGREGATORS.register("take_first_test")(TakeTheFirst)
    try:
        c = load_scenario(None, {"clients": 2, "malicious": 0, "rounds": 1, "local_epochs": 1, "device": "cpu",
                                 "aggregator": "take_first_test", "aggregator_settings": {"scale": 1.0},
                                 "out": str(tmp_path / "run")})
        rows = run_scenario(c, simulate_local)
    finally:
        AGGREGATORS._entries.pop("take_first_test")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["toy"] == 1 and rows[1]["selected"] == [0] and rows[1]["clients"] == [0, 1]
    assert rows[1]["acc"] > rows[0]["acc"]
