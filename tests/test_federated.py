"""The federated logic without Flower: selection, uploads, aggregation, checkpoints."""
import math

import pytest
import torch

from fedabd import federated as fed
from fedabd.aggregators import create_aggregator
from fedabd.config import load_scenario
from fedabd.data import dataset_info
from fedabd.models import create_model

INFO = dataset_info("mnist_subset")


def cfg(**kw):
    base = {"clients": 4, "malicious": 1, "rounds": 2, "local_epochs": 1, "out": "unused"}
    base.update(kw)
    return load_scenario(None, base)


def test_fixed_malicious_set_is_stable_and_random_mode_varies():
    c = cfg(clients=10, malicious=3)
    sets = [fed.malicious_clients(c, r) for r in range(1, 6)]
    assert all(s == sets[0] and len(s) == 3 for s in sets)
    r = cfg(clients=10, malicious=3, malicious_mode="random")
    rsets = [fed.malicious_clients(r, k) for k in range(1, 9)]
    assert all(len(s) == 3 for s in rsets) and len({frozenset(s) for s in rsets}) > 1
    assert fed.malicious_clients(r, 3) == fed.malicious_clients(r, 3)  # deterministic per round
    late = cfg(clients=10, malicious=3, attack_start_round=3)
    assert fed.malicious_clients(late, 2) == set() and len(fed.malicious_clients(late, 3)) == 3
    assert fed.malicious_clients(cfg(malicious_ids=[0, 2]), 1) == {0, 2}


def test_client_partitions_cover_the_training_set_once():
    c = cfg(partition="dirichlet", alpha=0.3)
    sizes = [len(fed.client_data(c, pid)) for pid in range(c.clients)]
    assert sum(sizes) == len(fed.dataset_split(c, "train"))
    with pytest.raises(ValueError, match="partition id"):
        fed.client_data(c, 4)


def _upload(c, pid, **changes):
    model = create_model(c.client_arch, num_classes=10, in_channels=1, image_size=28)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(changes.pop("state", {}))
    for k in changes.pop("drop", []):
        state.pop(k)
    n = changes.pop("n", len(fed.client_data(c, pid)))
    return fed.Upload(pid=pid, state=state, num_examples=n)


@pytest.mark.parametrize("change, reason", [
    (dict(state={"fc3.bias": torch.full((10,), math.nan)}), "NaN"),
    (dict(state={"fc3.weight": torch.zeros(3, 84)}), "shape"),
    (dict(state={"fc3.bias": torch.zeros(10, dtype=torch.float16)}), "dtype"),
    (dict(drop=["conv1.weight"]), "missing"),
    (dict(state={"extra": torch.zeros(1)}), "unexpected"),
    (dict(state={"fc3.bias": torch.full((10,), 1e9)}), "above the bound"),
    (dict(n=5), "declared 5 samples"),
    (dict(n=0), "positive integer"),
])
def test_bad_uploads_are_excluded_with_the_reason(change, reason):
    c = cfg()
    good = [_upload(c, 0), _upload(c, 2)]
    bad = _upload(c, 1, **change)
    valid, rejected = fed.screen_uploads(c, INFO, [good[1], bad, good[0]])
    assert [u.pid for u in valid] == [0, 2]  # sorted, order-independent
    assert list(rejected) == [1] and reason in rejected[1]


def test_local_update_poisons_only_malicious_and_scales_updates():
    c = cfg(scale=3.0, poison_rate=0.5)
    start = _upload(c, 0).state
    honest = fed.local_update(c, 0, 1, start, malicious=False)
    evil = fed.local_update(c, 0, 1, start, malicious=True)
    assert honest.metrics["n_poisoned"] == 0 and evil.metrics["n_poisoned"] > 0
    assert honest.num_examples == evil.num_examples == len(fed.client_data(c, 0))
    unscaled = fed.local_update(cfg(scale=1.0, poison_rate=0.5), 0, 1, start, malicious=True)
    d_scaled = (evil.state["fc3.weight"] - start["fc3.weight"]).norm()
    d_plain = (unscaled.state["fc3.weight"] - start["fc3.weight"]).norm()
    assert d_scaled == pytest.approx(3 * d_plain, rel=1e-4)


def test_distill_aggregate_trains_the_student_from_the_uploads():
    c = cfg(kd="zskt", kd_overrides={"pseudo_batches": 2, "batch_size": 16, "student_steps_per_pb": 2,
                                      "generator_width": 8})
    ups = [fed.Upload(0, fed.local_update(c, 0, 1, None, False).state, 1),
           fed.Upload(1, fed.local_update(c, 1, 1, None, False).state, 1)]
    before = {k: v.clone() for k, v in ups[0].state.items()}
    start = create_model(c.student, num_classes=10, in_channels=1, image_size=28).state_dict()
    agg = create_aggregator(c, INFO)
    result = agg.aggregate(1, ups, start)
    state, info = result.state, result.info
    assert result.selected == [0, 1]
    assert set(state) == set(start)
    assert any(not torch.equal(state[k], start[k]) for k in start)
    assert all(torch.equal(before[k], ups[0].state[k]) for k in before)  # teachers untouched
    assert info["distill_seconds"] > 0
    with pytest.raises(ValueError, match="no valid teacher"):
        agg.aggregate(1, [], start)


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    c = cfg(out=str(tmp_path))
    ck = fed.Checkpoint(tmp_path)
    assert ck.load() is None
    model = create_model(c.student, num_classes=10, in_channels=1, image_size=28)
    state = model.state_dict()
    ck.save(1, c.student, INFO, state, [{"round": 1, "acc": 0.5}], c.to_json())
    ck.save(2, c.student, INFO, state, [{"round": 1, "acc": 0.5}, {"round": 2, "acc": 0.6}], c.to_json())
    rnd, loaded, rows, conf = ck.load()
    assert rnd == 2 and rows[-1]["acc"] == 0.6 and conf["clients"] == 4
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # a kill between the two renames leaves only the old copy: it is recovered
    ck.dir.rename(tmp_path / ".checkpoint.old")
    assert ck.load()[0] == 2


def test_client_store_keeps_a_heterogeneous_clients_own_model_per_round(tmp_path, caplog):
    store = fed.ClientStore(tmp_path / "clients")
    ref = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).state_dict()
    states = {r: {k: v + r for k, v in ref.items()} for r in (1, 2, 3)}
    for r, s in states.items():
        store.save(4, r, s)
    kept = sorted(p.name for p in (tmp_path / "clients" / "partition-4").iterdir())
    assert kept == ["round-2.safetensors", "round-3.safetensors"]  # the last two rounds, no temp files
    loaded = store.load(4, 3, ref)
    assert loaded.keys() == ref.keys() and all(torch.equal(loaded[k], states[3][k]) for k in ref)
    assert store.load(4, 1, ref) is None and store.load(5, 3, ref) is None  # pruned / never saved
    other = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict()
    assert store.load(4, 3, other) is None and "ignoring its saved model" in caplog.text  # wrong shapes
    store.path(4, 2).write_bytes(b"\x80\x04 pickled payload")
    assert store.load(4, 2, ref) is None and "pickle" in caplog.text  # never unpickled


def test_local_training_clips_each_step_to_the_bound():
    """``local_clip``: no step moves the weights by more than lr x clip (first momentum-SGD step,
    no weight decay), whatever the gradient; 0 leaves the step as it was."""
    from fedabd.data import DatasetInfo, ImageSet
    from fedabd.train import TrainConfig, train_classifier

    info = DatasetInfo("toy", 2, 1, 8, (0.5,), (0.5,))
    data = ImageSet(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 2, (16,)), info)

    def first_step(clip):
        torch.manual_seed(0)
        class Steep(torch.nn.Module):  # logits 1000 x a linear map: a huge gradient on its weights
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(64, 2)

            def forward(self, x):
                return 1000.0 * self.fc(x.flatten(1))

        model = Steep()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, augment=False, clip=clip)
        train_classifier(model, data, cfg, torch.device("cpu"), seed=0)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    assert first_step(0.0) > 0.1 * 10.0
    assert first_step(10.0) == pytest.approx(0.1 * 10.0, rel=1e-4)


def test_channels_last_trains_in_that_format_and_uploads_the_default_layout(monkeypatch):
    """The scenario's ``channels_last``: a client's model trains in that memory format, its weights
    come back in the default layout (what safetensors and the uploads take) and agree with the default
    format's to float rounding; unset (auto) or false train exactly as before. The server's
    distillation gets the same switch."""
    from fedabd.data import ImageSet
    from fedabd.train import TrainConfig, train_classifier

    data = ImageSet(torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8), torch.arange(128) % 10, INFO)

    def train(**kw):
        torch.manual_seed(0)
        model, formats = create_model("lenet5", num_classes=10, in_channels=1, image_size=28), []
        cfg_ = TrainConfig(epochs=1, batch_size=64, **kw)
        train_classifier(model, data, cfg_, torch.device("cpu"), seed=0,
                         after_step=lambda m: formats.append(m.conv2.weight.is_contiguous(memory_format=torch.channels_last)))
        return model.state_dict(), formats

    plain, plain_formats = train()
    cl, cl_formats = train(channels_last=True)
    assert plain_formats == [False, False] and cl_formats == [True, True]
    assert all(v.is_contiguous() for v in cl.values())
    assert all(torch.allclose(plain[k], cl[k], atol=1e-6) for k in plain)

    start = _upload(cfg(), 0).state
    before = fed.local_update(cfg(), 0, 1, start, malicious=False).state
    off = fed.local_update(cfg(channels_last=False), 0, 1, start, malicious=False).state
    assert all(torch.equal(before[k], off[k]) for k in before)
    on = fed.local_update(cfg(channels_last=True), 0, 1, start, malicious=False).state
    # 40 steps on from a rounding difference: the same training, not the same floats
    assert all(v.is_contiguous() and torch.allclose(v, before[k], atol=1e-2) for k, v in on.items())

    seen = []
    import fedabd.distill as distill
    create = distill.create_distiller
    monkeypatch.setattr(distill, "create_distiller", lambda *a, **kw: seen.append(kw["channels_last"]) or create(*a, **kw))
    tiny = {"pseudo_batches": 1, "batch_size": 8, "student_steps_per_pb": 1, "generator_width": 8}
    student = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict()
    for setting in (None, True):
        create_aggregator(cfg(kd="zskt", kd_overrides=tiny, channels_last=setting), INFO).aggregate(1, [fed.Upload(0, start, 1)], student)
    assert seen == [False, True]  # auto: LeNet (no BatchNorm) stays in the default format
    with pytest.raises(ValueError, match="channels_last must be bool"):
        cfg(channels_last="yes")
