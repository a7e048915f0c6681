"""Teacher screening: the score separates a hand-made backdoored teacher from clean ones; weights,
exclusion, logging and composition."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedabd.aggregators import create_aggregator
from fedabd.config import ConfigError, load_scenario
from fedabd.data import DatasetInfo, dataset_info
from fedabd.engine import RoundFailed
from fedabd.federated import Upload
from fedabd.models import create_model
from fedabd.screening import (ScreenConfig, anomaly_index, class_masks, scores, screen_models, screen_weights,
                              surrogate_inputs)

INFO = DatasetInfo("mnist_subset", 10, 1, 28, (0.1307,), (0.3081,))


class Linear49(nn.Module):
    """A tiny classifier on the 7x7 average-pooled image; honest members share one weight matrix
    up to small noise (IID clients agree); ``shortcut`` implants a backdoor: a bright 4x4 corner
    adds up to 30 to class 0's logit."""

    def __init__(self, seed: int, shortcut: bool = False) -> None:
        super().__init__()
        base = torch.randn(10, 49, generator=torch.Generator().manual_seed(0))
        self.w = nn.Parameter(base + 0.1 * torch.randn(10, 49, generator=torch.Generator().manual_seed(seed)))
        self.shortcut = shortcut

    def forward(self, x, return_features=False):
        z = F.avg_pool2d(x, 4).flatten(1) @ self.w.t()
        if self.shortcut:
            corner = x[:, :, 24:, 24:].mean((1, 2, 3))
            z = z + F.one_hot(torch.zeros(len(x), dtype=torch.long), 10) * 30 * torch.sigmoid(3 * (corner - 1.0))[:, None]
        return z


FAST = ScreenConfig(steps=60, batch=16)


def test_the_score_separates_a_backdoored_teacher_from_clean_ones():
    models = [Linear49(i) for i in range(1, 5)] + [Linear49(9, shortcut=True)]
    out = screen_models(models, INFO, FAST)
    assert out[4]["class"] == 0 and out[4]["flip"] >= FAST.min_flip
    assert out[4]["score"] > FAST.threshold >= max(r["score"] for r in out[:4])
    assert screen_weights([r["score"] for r in out], FAST) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert all(r["seconds"] > 0 for r in out)
    # the models are left as they were
    assert all(p.requires_grad for m in models for p in m.parameters())


def test_one_batched_search_of_several_models_equals_separate_searches():
    torch.manual_seed(0)
    models = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(3)]
    info = dataset_info("mnist_subset")
    cfg = ScreenConfig(steps=5, batch=4)
    x = surrogate_inputs(info, cfg, 0)
    m, pat, flips = class_masks(models, x, info, cfg, classes=[0, 4])
    assert m.shape == (3, 2, 1, 1, 28, 28) and pat.shape == (3, 2, 1, 1, 28, 28) and flips.shape == (3, 2)
    for i, model in enumerate(models):
        mi, pi, fi = class_masks(model, x, info, cfg, classes=[0, 4])
        assert torch.allclose(m[i], mi, atol=1e-4) and torch.allclose(pat[i], pi, atol=1e-4)
        assert torch.equal(flips[i], fi)
    assert all(p.requires_grad for mm in models for p in mm.parameters()) and all(mm.training for mm in models)


def test_anomaly_index_and_peer_signal_on_hand_made_mask_sizes():
    sizes = torch.tensor([[10.0, 100, 110, 90, 100], [100, 100, 110, 90, 105], [98, 101, 109, 92, 100]])
    # teacher 0: median 100, MAD 10 -> (100 - 10) / 14.826
    assert anomaly_index(sizes[0]) == pytest.approx(90 / 14.826, rel=1e-4)
    out = scores(sizes)
    # peers' median: the lower median, as torch.median (98 of 98 and 100)
    assert out[0]["class"] == 0 and out[0]["peer"] == pytest.approx(-math.log2(10 / 98), rel=1e-4)
    assert out[0]["score"] == pytest.approx(out[0]["anomaly"] + out[0]["peer"])
    assert out[1]["class"] == 3 and out[1]["peer"] == pytest.approx(0.0, abs=1e-9) and out[1]["score"] == out[1]["anomaly"]
    # all masks failed but one: the MAD floor keeps the index finite
    assert anomaly_index(torch.tensor([5.0, 784, 784, 784])) == pytest.approx((784 - 5) / (0.1 * 784), rel=1e-3)
    assert scores(sizes[:1])[0]["peer"] == 0.0  # one teacher: no peers


def test_soft_weights_decay_above_the_threshold_and_log_mode_keeps_all():
    soft = ScreenConfig(mode="soft", threshold=2.0)
    assert screen_weights([0.5, 2.0, 3.0, 5.0], soft) == pytest.approx([1.0, 1.0, math.exp(-1), math.exp(-3)])
    assert screen_weights([9.0], ScreenConfig(mode="log")) == [1.0]


def test_surrogate_inputs_are_seeded_and_in_range():
    info = dataset_info("mnist_subset")
    for surrogate in ("image", "noise"):
        cfg = ScreenConfig(surrogate=surrogate, batch=8)
        a, b = surrogate_inputs(info, cfg, 3), surrogate_inputs(info, cfg, 3)
        assert a.shape == (8, 1, 28, 28) and torch.equal(a, b)
        raw = a * 0.3081 + 0.1307
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        assert not torch.equal(a, surrogate_inputs(info, cfg, 4))


def _uploads(n=5, malicious=(3, 4)):
    state = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict()
    return [Upload(i, {k: v.clone() for k, v in state.items()}, 10 * (i + 1), {"malicious": int(i in malicious)})
            for i in range(n)]


def _fixed_scores(monkeypatch, values):
    import fedabd.aggregators.screen as screen

    def fake(models, info, cfg, seed=0, device="cpu"):
        return [{"class": 0, "mask_l1": 1.0, "anomaly": v, "peer": 0.0, "score": v, "flip": 1.0, "seconds": 0.1}
                for v in values]
    monkeypatch.setattr(screen, "screen_models", fake)


def make(name, **keys):
    cfg = load_scenario(None, {"clients": 5, "malicious": 2, "aggregator": name, "device": "cpu", "out": "unused",
                               **keys})
    return create_aggregator(cfg, dataset_info("mnist_subset"))


def test_screen_excludes_above_the_threshold_and_logs_every_teacher(monkeypatch):
    _fixed_scores(monkeypatch, [0.5, 1.0, 0.2, 4.0, 3.0])
    ups = _uploads()
    out = make("screen").aggregate(1, ups, None)
    assert out.selected == [0, 1, 2] and out.weights == {0: 1.0, 1: 1.0, 2: 1.0}
    log = out.info["teachers"]
    assert [log[str(i)]["decision"] for i in range(5)] == ["kept", "kept", "kept", "excluded", "excluded"]
    assert log["3"]["score"] == 4.0 and log["3"]["weight"] == 0.0
    # alone, screen is FedAvg of the admitted uploads
    assert torch.allclose(out.state["fc3.bias"], ups[0].state["fc3.bias"], atol=1e-6)


def test_soft_weights_reach_the_next_rule(monkeypatch):
    _fixed_scores(monkeypatch, [0.0, 0.0, 0.0, 3.0, 0.0])
    ups = _uploads()
    for i, u in enumerate(ups):
        u.state["fc3.bias"] = torch.full_like(u.state["fc3.bias"], float(i))
    out = make("screen+fedavg", aggregator_settings={"screen": {"mode": "soft"}}).aggregate(1, ups, None)
    w = [10, 20, 30, 40 * math.exp(-1), 50]
    expected = sum(i * wi for i, wi in enumerate(w)) / sum(w)
    assert out.state["fc3.bias"][0].item() == pytest.approx(expected, rel=1e-5)
    assert out.info["screen"]["teachers"]["3"]["decision"] == "down-weighted"


def test_exclusion_below_min_clients_fails_the_round_with_the_clear_message(monkeypatch):
    _fixed_scores(monkeypatch, [5.0, 5.0, 5.0, 0.0, 0.0])
    with pytest.raises(RoundFailed, match="screening excluded 3 of 5 client models, leaving 2; min_clients is 3"):
        make("screen", min_clients=3).aggregate(2, _uploads(), None)


def test_screen_composes_by_name_and_checks_its_settings():
    assert make("screen+distill", abd="sv+sr").cfg.aggregator == "screen+distill"
    assert make("flame+screen+distill").cfg.aggregator == "flame+screen+distill"
    # screening queries the models, so the student may be another architecture than the clients'
    assert make("screen+distill", student="lenet5_half").cfg.student == "lenet5_half"
    with pytest.raises(ConfigError, match="compare client models with the global model"):
        make("flame+distill", student="lenet5_half")
    with pytest.raises(ConfigError, match="mode must be"):
        make("screen", aggregator_settings={"mode": "drop"})
    with pytest.raises(ConfigError, match="surrogate"):
        make("screen+distill", aggregator_settings={"screen": {"surrogate": "client_data"}})
