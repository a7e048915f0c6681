"""The backdoor defences among the aggregators, each on hand-made updates (no Flower, no training):
FLAME's clustering, median-of-all clipping and noise; norm clipping with weak DP; RLR's sign rule;
FoolsGold's down-weighting of look-alike clients and its memory; the engine's detection rates."""
import numpy as np
import pytest
import torch

from fedabd.aggregators import create_aggregator
from fedabd.aggregators.foolsgold import foolsgold_weights
from fedabd.aggregators.rlr import robust_lr
from fedabd.config import ConfigError, load_scenario
from fedabd.data import dataset_info
from fedabd.engine import detection_rates
from fedabd.federated import Checkpoint, Upload

INFO = dataset_info("mnist_subset")


def make(name, clients=9, malicious=3, **settings):
    cfg = load_scenario(None, {"clients": clients, "malicious": malicious, "aggregator": name, "out": "unused",
                               "device": "cpu", "aggregator_settings": settings})
    return create_aggregator(cfg, INFO)


def uploads(rows, malicious=(), buffers=None, counts=None):
    """One upload per row of ``rows`` (the weight ``w``), optional BatchNorm-like buffers."""
    out = []
    for i, row in enumerate(rows):
        state = {"w": torch.tensor(row, dtype=torch.float32)}
        if buffers is not None:
            state["bn.running_var"] = torch.tensor(buffers[i], dtype=torch.float32)
            state["bn.num_batches_tracked"] = torch.tensor(10 * i)
        out.append(Upload(i, state, (counts or [1] * len(rows))[i], {"malicious": int(i in malicious)}))
    return out


def zero_global(ups):
    return {k: torch.zeros_like(v) for k, v in ups[0].state.items()}


def directions(rng, base, n, spread=0.05):
    """``n`` unit vectors within a small angle of ``base``."""
    v = base[None, :] + spread * rng.standard_normal((n, len(base)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_flame_clips_to_the_median_norm_of_all_updates_not_of_the_admitted_ones():
    rng = np.random.default_rng(0)
    d = 20
    honest = directions(rng, np.eye(d)[0], 6) * np.array([1, 2, 3, 4, 5, 6])[:, None]
    bad = directions(rng, np.eye(d)[1], 3) * 100.0
    rows = np.vstack([honest, bad]).astype(np.float32).astype(np.float64)
    ups = uploads(rows.tolist(), malicious={6, 7, 8})
    out = make("flame", noise_lambda=0.0).aggregate(1, ups, zero_global(ups))
    # HDBSCAN keeps the dense core of the honest majority (here five of the six) and sets the
    # three look-alike malicious updates aside
    assert set(out.selected) <= {0, 1, 2, 3, 4, 5} and len(out.selected) >= 5 and {6, 7, 8} <= set(out.info["set_aside"])
    norms = np.linalg.norm(rows, axis=1)
    assert out.info["flame_median_norm"] == pytest.approx(5.0, abs=1e-5)  # the median of all nine norms
    assert np.median(norms[out.selected]) < 4.9  # the median of the admitted ones would clip harder
    kept = out.selected
    expected = (rows[kept] * np.minimum(1.0, 5.0 / norms[kept])[:, None]).mean(axis=0)
    assert np.allclose(out.state["w"].numpy(), expected, atol=1e-5)


def test_flame_clusters_weights_only_and_averages_the_buffers_of_the_admitted():
    rng = np.random.default_rng(1)
    rows = np.vstack([directions(rng, np.eye(10)[0], 6), directions(rng, -np.eye(10)[0], 3)])
    # the honest clients' BatchNorm statistics differ wildly; clustered with the weights they would
    # split the honest majority (the bug of some public copies)
    buffers = [[1000.0 * i] * 50 for i in range(6)] + [[5.0] * 50] * 3
    ups = uploads(rows.tolist(), malicious={6, 7, 8}, buffers=buffers)
    out = make("flame", noise_lambda=0.01).aggregate(1, ups, zero_global(ups))
    assert set(out.selected) <= set(range(6)) and len(out.selected) >= 5
    expected = float(np.mean([1000.0 * i for i in out.selected]))
    assert torch.allclose(out.state["bn.running_var"], torch.full((50,), expected))  # no noise, no clipping
    assert out.state["bn.num_batches_tracked"].dtype == torch.int64


def test_flame_noise_has_std_lambda_times_the_median_norm():
    rng = np.random.default_rng(2)
    rows = directions(rng, np.ones(20000) / np.sqrt(20000), 5, spread=0.0) * 4.0
    ups = uploads(rows.tolist())
    plain = make("flame", clients=5, malicious=0, noise_lambda=0.0).aggregate(1, ups, zero_global(ups))
    noisy = make("flame", clients=5, malicious=0, noise_lambda=0.01).aggregate(1, ups, zero_global(ups))
    assert float((noisy.state["w"] - plain.state["w"]).std()) == pytest.approx(0.04, rel=0.03)


def test_norm_clipping_bounds_every_update_then_averages_with_sample_weights():
    ups = uploads([[6.0, 8.0], [0.3, 0.4]], counts=[1, 3])  # norms 10 and 0.5
    out = make("clip", clients=2, malicious=1, norm_bound=2.0, noise_std=0.0).aggregate(1, ups, zero_global(ups))
    assert np.allclose(out.state["w"].numpy(), 0.25 * np.array([1.2, 1.6]) + 0.75 * np.array([0.3, 0.4]))
    assert out.info["clipped"] == [0]
    noisy = make("clip", clients=2, malicious=1, norm_bound=2.0, noise_std=0.5).aggregate(1, ups, zero_global(ups))
    assert not torch.allclose(noisy.state["w"], out.state["w"])


def test_rlr_reverses_the_coordinates_without_enough_sign_agreement():
    updates = np.array([[1.0, 1.0, -2.0], [1.0, -1.0, -2.0], [1.0, 1.0, 2.0], [1.0, -1.0, -2.0]])
    assert robust_lr(updates, theta=2, eta=1.0).tolist() == [1.0, -1.0, 1.0]  # |sum of signs| 4, 0, 2
    ups = uploads(updates.tolist())
    out = make("rlr", clients=4, malicious=1, threshold=3).aggregate(1, ups, zero_global(ups))
    assert np.allclose(out.state["w"].numpy(), [1.0, 0.0, 1.0])  # mean [1, 0, -1]; coordinate 2 flips


def test_foolsgold_down_weights_near_identical_clients():
    rng = np.random.default_rng(4)
    honest = rng.standard_normal((4, 50))
    sybil = np.ones(50) + 0.01 * rng.standard_normal((3, 50))
    w = foolsgold_weights(np.vstack([honest, sybil]))
    assert np.all(w[4:] < 0.05) and np.all(w[:4] > 0.9)


def test_foolsgold_keeps_its_history_across_rounds_and_checkpoints(tmp_path):
    rng = np.random.default_rng(5)
    # round 1: three sybils send the same update; round 2: every update is unrelated to the others
    r1 = np.vstack([rng.standard_normal((4, 30)), np.ones((3, 30)) + 0.01 * rng.standard_normal((3, 30))])
    r2 = rng.standard_normal((7, 30))
    agg = make("foolsgold", clients=7, malicious=3)
    ups1 = uploads(r1.tolist(), malicious={4, 5, 6})
    agg.aggregate(1, ups1, zero_global(ups1))
    ckpt = Checkpoint(tmp_path)
    ckpt.save(1, "lenet5", INFO, *_lenet_state(), rows=[], config={}, memory=agg.memory())
    resumed = make("foolsgold", clients=7, malicious=3)
    resumed.restore(ckpt.load_memory())
    ups2 = uploads(r2.tolist(), malicious={4, 5, 6})
    a, b = agg.aggregate(2, ups2, zero_global(ups2)), resumed.aggregate(2, ups2, zero_global(ups2))
    assert a.info["foolsgold_weights"] == b.info["foolsgold_weights"] and torch.equal(a.state["w"], b.state["w"])
    r12 = r1.astype(np.float32).astype(np.float64) + r2.astype(np.float32).astype(np.float64)
    assert list(a.info["foolsgold_weights"].values()) == [round(float(x), 4) for x in foolsgold_weights(r12)]
    assert min(list(a.info["foolsgold_weights"].values())[4:]) == 0.0  # the history still gives sybils away
    fresh = make("foolsgold", clients=7, malicious=3).aggregate(2, ups2, zero_global(ups2))
    assert set(fresh.info["foolsgold_weights"].values()) == {1.0}  # without it, round 2 alone does not


def _lenet_state():
    from fedabd.models import create_model
    return ({k: v for k, v in create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict().items()},)


def test_detection_rates_count_set_aside_clients_against_the_malicious_set():
    ups = uploads([[0.0]] * 5, malicious={3, 4})
    assert detection_rates(ups, [0, 1, 4]) == {"tpr": 0.5, "fpr": pytest.approx(1 / 3, abs=1e-6)}
    assert detection_rates(uploads([[0.0]] * 2), [0]) == {"tpr": None, "fpr": 0.5}


@pytest.mark.parametrize("name, settings, needle", [
    ("flame", {"noise_lambda": -1.0}, "noise_lambda must be >= 0"),
    ("flame", {"cluster_on": "layers"}, "cluster_on must be"),
    ("clip", {"norm_bound": 0.0}, "norm_bound must be > 0"),
    ("rlr", {"threshold": 0}, "threshold must be >= 1"),
    ("foolsgold", {"importance": True}, "unknown setting 'importance'"),
])
def test_defence_settings_are_checked_when_the_scenario_loads(name, settings, needle):
    with pytest.raises(ConfigError, match=needle):
        make(name, **settings)


def test_a_composition_filters_then_hands_the_survivors_to_the_last_rule():
    rng = np.random.default_rng(6)
    rows = np.vstack([directions(rng, np.eye(10)[0], 6) * 2.0, directions(rng, np.eye(10)[1], 3) * 50.0])
    ups = uploads(rows.astype(np.float32).tolist(), malicious={6, 7, 8}, counts=[1, 2, 3, 4, 5, 6, 1, 1, 1])
    agg = make("flame+fedavg")
    out = agg.aggregate(1, ups, zero_global(ups))
    flame = make("flame").aggregate(1, ups, zero_global(ups))
    assert out.selected == flame.selected and set(out.selected) <= set(range(6))
    kept = [u for u in ups if u.pid in out.selected]
    total = sum(u.num_examples for u in kept)
    expected = sum(u.state["w"] * u.num_examples for u in kept) / total  # FedAvg of the admitted, unclipped
    assert torch.allclose(out.state["w"], expected, atol=1e-5)
    assert out.info["flame"]["set_aside"] == flame.info["set_aside"]


def test_composition_names_and_settings_are_checked_when_the_scenario_loads():
    from fedabd.aggregators import aggregator_class
    cls = aggregator_class("flame+distill")
    assert cls.uses_defense and cls.filters and cls.parts == ("flame", "distill")
    for name, needle in [("fedavg+distill", "fedavg does not filter clients"),
                         ("flame+nope", "unknown aggregator 'nope'"),
                         ("flame+flame", "names a rule twice")]:
        with pytest.raises(ConfigError, match=needle):
            make(name)
    with pytest.raises(ConfigError, match="noise_lambda must be >= 0"):
        make("flame+distill", flame={"noise_lambda": -1.0})
    with pytest.raises(ConfigError, match="unknown: flme"):
        make("flame+distill", flme={})
    with pytest.raises(ConfigError, match="need one architecture"):
        load_scenario(None, {"clients": 9, "malicious": 3, "aggregator": "flame+distill", "student": "lenet5_half",
                             "out": "unused"})


def test_compare_reads_a_composition_with_its_abd_part(tmp_path):
    from fedabd.runs import compare_variants
    base = load_scenario(None, {"clients": 9, "malicious": 3, "out": str(tmp_path)})
    v = compare_variants(base, "fedavg,flame+distill+abd,distill+sv")
    assert (v["flame+distill+abd"].aggregator, v["flame+distill+abd"].abd) == ("flame+distill", "sv+sr")
    assert (v["distill+sv"].aggregator, v["distill+sv"].abd) == ("distill", "sv")
    assert v["fedavg"].abd == "none"


def test_distill_start_average_starts_the_student_from_the_teachers_weighted_mean(monkeypatch):
    """FedDF's start (Lin et al. 2020): the student the distiller receives is the sample-weighted
    average of the teachers (after a filter: of those it admitted, times their trust); the default
    starts from the global model."""
    import fedabd.distill
    from fedabd.aggregators import create_aggregator
    from fedabd.data import dataset_info
    from fedabd.distill.base import DistillResult
    from fedabd.federated import Upload
    from fedabd.models import create_model

    info = dataset_info("mnist_subset")
    seen = []

    def fake_distiller(kd, teachers, student, info, **kw):  # records the student it is handed, trains nothing
        seen.append({k: v.clone() for k, v in student.state_dict().items()})
        return type("D", (), {"run": lambda self, progress=None: DistillResult(student), "memory": lambda self: {}})()

    monkeypatch.setattr(fedabd.distill, "create_distiller", fake_distiller)
    states = []
    for s in range(3):
        torch.manual_seed(s)
        states.append(create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict())
    ups = [Upload(i, st, c) for i, (st, c) in enumerate(zip(states, [1, 3, 4]))]
    base = {"clients": 3, "malicious": 0, "out": "unused", "device": "cpu", "aggregator": "distill"}
    glob = states[0]
    create_aggregator(load_scenario(None, base), info).aggregate(1, ups, glob)
    assert all(torch.equal(seen[-1][k], glob[k]) for k in glob)  # default: the global model
    avg = load_scenario(None, {**base, "aggregator_settings": {"start": "average"}})
    create_aggregator(avg, info).aggregate(1, ups, glob)
    k = next(k for k, v in glob.items() if v.is_floating_point())
    assert torch.allclose(seen[-1][k], (states[0][k] * 1 + states[1][k] * 3 + states[2][k] * 4) / 8, atol=1e-6)
    trusted = [ups[0], ups[1].with_trust(0.5)]  # a screening rule halved client 1's weight: 1 : 1.5
    create_aggregator(avg, info).aggregate(1, trusted, glob)
    assert torch.allclose(seen[-1][k], (states[0][k] * 1 + states[1][k] * 1.5) / 2.5, atol=1e-6)
    with pytest.raises(ConfigError, match="start must be one of global, average"):
        load_scenario(None, {**base, "aggregator_settings": {"start": "mean"}})
    with pytest.raises(ConfigError, match="every client needs the student's architecture"):
        load_scenario(None, {**base, "student": "lenet5_half", "aggregator_settings": {"start": "average"}})
    comp = load_scenario(None, {**base, "clients": 9, "aggregator": "flame+distill",
                                "aggregator_settings": {"distill": {"start": "average"}}})
    assert create_aggregator(comp, info).rules[-1].settings.start == "average"
