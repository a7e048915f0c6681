"""Each threat's defining property on hand-made or tiny inputs: DBA's pieces assemble to the global
trigger, Neurotoxin leaves the frozen coordinates untouched, constrain-and-scale meets its norm bound,
the KD-aware attacker's backdoor survives the teachers' mean logits; attack windows, backdoor persistence, a start from a model file, and bad threat settings."""
import pytest
import torch

from fedabd import federated as fed
from fedabd.aggregators.base import weight_keys
from fedabd.attacks import create_attack
from fedabd.config import ConfigError, load_scenario
from fedabd.data import dataset_info
from fedabd.engine import RoundEngine, backdoor_lasts
from fedabd.threats import create_threat
from fedabd.threats.constrain_scale import scale_to_bound
from fedabd.threats.dba import piece_masks, split_trigger
from fedabd.threats.kd_aware import margin_loss, outvote_margin
from fedabd.threats.neurotoxin import benign_gradient, frozen_masks

INFO = dataset_info("mnist_subset")


def scenario(**kw):
    base = {"clients": 10, "malicious": 3, "local_epochs": 1, "device": "cpu", "out": "unused", "aggregator": "fedavg"}
    return load_scenario(None, {**base, **kw})


@pytest.mark.parametrize("attack", ["badnet_grid", "badnet_sq", "trojan_3x3", "blend"])
def test_dba_pieces_are_disjoint_and_assemble_to_the_global_trigger(attack):
    trigger = create_attack(attack, INFO)
    pieces = split_trigger(trigger, 3)
    masks = [p.mask for p in pieces]
    assert all(m.any() for m in masks) and int(sum(m.int() for m in masks).max()) == 1
    x = torch.rand(4, *INFO.shape)
    assembled = x
    for p in pieces:
        assembled = p.apply(assembled)
    assert torch.allclose(assembled, trigger.apply(x))
    assert not torch.allclose(pieces[0].apply(x), trigger.apply(x))  # one piece is not the trigger


def test_dba_gives_each_malicious_client_its_own_piece_and_evaluates_every_piece():
    cfg = scenario(threat="dba", malicious_ids=[2, 5, 7])
    threat = create_threat(cfg)
    given = [threat.trigger(INFO, pid, 1) for pid in (2, 5, 7)]
    assert [t.name for t in given] == ["badnet_grid_piece0", "badnet_grid_piece1", "badnet_grid_piece2"]
    assert set(threat.eval_triggers(INFO)) == {"piece0", "piece1", "piece2"}
    with pytest.raises(ValueError, match="cannot be cut into 9 pieces"):
        piece_masks(torch.ones(3, 3, dtype=torch.bool), 9)


def test_neurotoxin_update_has_no_mass_on_the_frozen_coordinates():
    cfg = scenario(threat="neurotoxin", threat_settings={"mask_ratio": 0.9})
    start = fed.initial_client_state(cfg, 0)
    res = fed.local_update(cfg, 0, 1, start, malicious=True)
    model = fed.create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    model.load_state_dict(start)
    keys = weight_keys(start)
    masks = frozen_masks(benign_gradient(model, fed.client_data(cfg, 0), "cpu"), keys, 0.9)
    frozen = sum(int(m.sum()) for m in masks.values())
    assert 0.09 < frozen / sum(start[k].numel() for k in keys) < 0.11
    for k in keys:
        delta = res.state[k] - start[k]
        assert torch.count_nonzero(delta[masks[k]]) == 0
    assert sum(int(torch.count_nonzero((res.state[k] - start[k])[~masks[k]])) for k in keys) > 0


def test_constrain_and_scale_meets_the_norm_bound_it_targets():
    start = {"w": torch.zeros(4), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)}
    small = {"w": torch.tensor([0.1, 0.0, 0.0, 0.0]), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(4)}
    out = scale_to_bound(start, small, gamma=10.0, bound=0.5)  # 10 x 0.1 = 1.0 > 0.5: scaled to the bound
    assert float(out["w"].norm()) == pytest.approx(0.5) and out["bn.num_batches_tracked"] == 4
    assert float(scale_to_bound(start, small, gamma=3.0, bound=0.5)["w"].norm()) == pytest.approx(0.3)
    cfg = scenario(threat="constrain_scale", aggregator="clip", aggregator_settings={"norm_bound": 1.5})
    assert create_threat(cfg).bound() == 1.5 and create_threat(cfg).gamma() == 10
    start = fed.initial_client_state(cfg, 0)
    norm = lambda s: float(torch.sqrt(sum(((s[k] - start[k]) ** 2).sum() for k in weight_keys(start))))  # noqa: E731
    assert norm(fed.local_update(cfg, 0, 1, start, malicious=True).state) <= 1.5 * (1 + 1e-5)
    boosted = scenario(threat="constrain_scale", aggregator="clip", aggregator_settings={"norm_bound": 1.5},
                       threat_settings={"gamma": 1000.0})
    assert norm(fed.local_update(boosted, 0, 1, start, malicious=True).state) == pytest.approx(1.5, rel=1e-4)


def test_the_anomaly_term_keeps_the_trained_model_closer_to_the_global_one():
    plain, constrained = scenario(), scenario(threat="constrain_scale", threat_settings={"alpha": 0.2, "gamma": 1.0,
                                                                                         "norm_bound": 1e6})
    start = fed.initial_client_state(plain, 0)
    dist = lambda s: float(torch.sqrt(sum(((s[k] - start[k]) ** 2).sum() for k in weight_keys(start))))  # noqa: E731
    assert dist(fed.local_update(constrained, 0, 1, start, True).state) < dist(fed.local_update(plain, 0, 1, start, True).state)


def test_margin_loss_on_known_logits():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 10.0, 3.0], [9.0, 0.0, 1.0]])
    # target 0, margin 4: margins 3, -10 and 8 -> hinges 1, 14 and 0
    assert margin_loss(logits, 0, 4.0).item() == pytest.approx(5.0)


def test_an_attacker_holding_only_target_class_images_triggers_noise_alone():
    from fedabd.data import ImageSet

    cfg = scenario(threat="kd_aware", attack="badnet_grid")
    threat = create_threat(cfg)
    trigger = fed.scenario_attack(cfg, INFO)
    only_target = ImageSet(torch.zeros(6, *INFO.shape, dtype=torch.uint8), torch.full((6,), trigger.target), INFO)
    triggered, own, labels = threat.batch(only_target, trigger, torch.Generator().manual_seed(0))
    assert triggered.shape == (threat.settings.batch_size, *INFO.shape) and len(own) == len(labels) == 0


def test_the_extra_triggered_batch_leaves_batch_norm_running_statistics_alone():
    from fedabd.threats.kd_aware import running_stats_frozen

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    with running_stats_frozen(model):
        model(torch.rand(8, 1, 6, 6) * 5)
    assert torch.equal(model[1].running_mean, before) and model[1].momentum == 0.1
    model(torch.rand(8, 1, 6, 6) * 5)
    assert not torch.equal(model[1].running_mean, before)  # outside, training updates them as usual


def test_the_default_margin_outvotes_the_honest_teachers_in_the_mean_logits():
    gap, n, f = 6.0, 10, 3
    honest = torch.tensor([0.0, gap, 0.0])  # true class 1, `gap` above the target 0
    def mean_logits(margin):
        return ((n - f) * honest + f * torch.tensor([margin, 0.0, 0.0])) / n
    assert mean_logits(gap).argmax() == 1  # a plain poisoner's margin: the honest majority wins
    assert mean_logits(outvote_margin(gap, f, n, safety=2.0)).argmax() == 0
    assert outvote_margin(gap, f, n, safety=1.0) == pytest.approx(gap * (n - f) / f)  # the tie


def test_the_kd_aware_backdoor_survives_the_teachers_mean_logits_where_its_schedule_alone_does_not():
    """Three of ten teachers poisoned: the mean of 7 honest and 3 attacker logits (what the server's
    student learns from) names the target on triggered images with the margin term, not without."""
    from fedabd.metrics import evaluate
    from fedabd.models.ensemble import Ensemble
    from fedabd.train import TrainConfig, train_classifier

    cfg = scenario(threat="kd_aware", attack="badnet_grid", poison_rate=0.3, local_epochs=2)
    torch.manual_seed(0)
    warm = fed.create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    train_classifier(warm, fed.client_data(cfg, 9), TrainConfig(epochs=3, lr=cfg.local_lr), "cpu")
    start = {k: v.detach().clone() for k, v in warm.state_dict().items()}

    def model(c, pid, malicious):
        m = fed.create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
        m.load_state_dict(fed.local_update(c, pid, 1, start, malicious=malicious).state)
        return m

    test = fed.dataset_split(cfg, "test")
    trigger = fed.scenario_attack(cfg, INFO)
    honest = model(cfg, 0, False)
    results = {}
    for weight in (1.0, 0.0):
        attacker = model(scenario(threat="kd_aware", attack="badnet_grid", poison_rate=0.3, local_epochs=2,
                                  threat_settings={"weight": weight}), 3, True)
        results[weight] = (evaluate(attacker, test, trigger), evaluate(Ensemble([honest, attacker], [0.7, 0.3]), test, trigger))
    (alone, mean), (_, mean0) = results[1.0], results[0.0]
    assert alone["asr"] > 0.95 and alone["acc"] > 0.7  # the attacker's own model keeps most of its accuracy
    assert mean["asr"] > 0.9 and mean["acc"] > 0.85   # the ensemble: backdoored, still accurate
    assert mean0["asr"] < mean["asr"] - 0.3            # the same schedule without the margin term


def test_attack_window_and_backdoor_persistence():
    cfg = scenario(attack_start_round=2, attack_stop_round=3, rounds=8)
    assert [bool(fed.malicious_clients(cfg, r)) for r in range(1, 6)] == [False, True, True, False, False]
    rows, prev = [], {}
    for rnd, asr in zip(range(1, 9), [0.0, 0.9, 0.95, 0.8, 0.5, 0.1, 0.6, 0.7]):
        lasts = backdoor_lasts(cfg, rnd, asr, prev)
        prev = {"backdoor_lasts": lasts} if lasts is not None else {}
        rows.append(lasts)
    assert rows == [None, None, None, 1, 2, 2, 2, 2]  # lasted rounds 4 and 5; a later rise does not count


def test_an_initial_model_of_another_architecture_is_refused_when_the_scenario_loads(tmp_path):
    from fedabd.artifacts import save_model
    from fedabd.models import create_model

    save_model(tmp_path / "half", create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28), INFO)
    with pytest.raises(ConfigError, match="initial_model: .*expected a lenet5 model"):
        scenario(initial_model=str(tmp_path / "half.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04 not a model")
    with pytest.raises(ConfigError, match="initial_model: .*pickle"):
        scenario(initial_model=str(tmp_path / "junk.safetensors"))


def test_a_run_can_start_from_a_model_file(tmp_path):
    from fedabd.artifacts import save_model
    from fedabd.models import create_model

    torch.manual_seed(3)
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    save_model(tmp_path / "warm", model, INFO, seed=3)
    cfg = scenario(initial_model=str(tmp_path / "warm.safetensors"), out=str(tmp_path / "run"))
    engine = RoundEngine(cfg)
    assert all(torch.equal(engine.state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("settings, needle", [
    ({"threat": "dba", "threat_settings": {"pieces": 4}}, "4 pieces need at least 4 malicious clients"),
    ({"threat": "dba", "attack": "sig"}, "clean-label"),
    ({"threat": "neurotoxin", "threat_settings": {"mask_ratio": 1.0}}, "mask_ratio must be in"),
    ({"threat": "constrain_scale", "threat_settings": {"alpa": 0.5}}, "unknown setting 'alpa'"),
    ({"threat": "kd_aware", "threat_settings": {"surrogate_share": 1.5}}, "surrogate_share must be in"),
    ({"threat": "screen_aware", "threat_settings": {"stamped_share": 1.0}}, "stamped_share must be in"),
    ({"threat": "nope"}, "threat: unknown threat 'nope'"),
    ({"attack_start_round": 3, "attack_stop_round": 2}, "attack_stop_round: 2 is before attack_start_round 3"),
    ({"initial_model": "/nonexistent.safetensors"}, "initial_model: '/nonexistent.safetensors': no such model file"),
    ({"aggregator": "flame+distill+nope"}, "unknown aggregator 'nope'"),
])
def test_bad_threat_settings_are_refused_when_the_scenario_loads(settings, needle):
    with pytest.raises(ConfigError, match=needle):
        scenario(**settings)


@pytest.mark.slow
def test_the_screen_aware_attacker_lowers_its_screening_score_below_plain_poisonings():
    from fedabd.screening import ScreenConfig, screen_models

    scored = {}
    for threat in ("poison", "screen_aware"):
        cfg = scenario(threat=threat, local_epochs=2)
        res = fed.local_update(cfg, 0, 1, fed.initial_client_state(cfg, 0), malicious=True)
        model = fed.create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
        model.load_state_dict(res.state)
        scored[threat] = screen_models([model], INFO, ScreenConfig(), seed=7)[0]
    assert scored["poison"]["class"] == 0 and scored["poison"]["score"] > ScreenConfig().threshold
    assert scored["screen_aware"]["score"] < scored["poison"]["score"] - 1.0
