"""Model files: round trip, and every kind of bad or hostile file gets a clear ModelFileError."""
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedabd.artifacts import ModelFileError, load_model, model_paths, save_model
from fedabd.attacks import create_attack
from fedabd.models import create_model

from .conftest import MNIST_LIKE


@pytest.fixture
def saved(tmp_path):
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    attack = create_attack("badnet_grid", MNIST_LIKE, seed=3)
    path = save_model(tmp_path / "m", model, MNIST_LIKE, attack=attack, seed=3, metrics={"acc": 0.5})
    return model, attack, path


def test_round_trip_keeps_weights_trigger_and_metadata(saved):
    model, attack, path = saved
    loaded = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(attack.apply(x), loaded.attack.apply(x))
    assert loaded.attack.target == attack.target
    assert loaded.info == MNIST_LIKE
    assert loaded.meta["metrics"] == {"acc": 0.5} and loaded.meta["seed"] == 3
    # the same model is found from the stem or the .json path
    assert load_model(path.with_suffix(".json")).meta == loaded.meta
    assert load_model(path.with_suffix("")).meta == loaded.meta


def test_pickle_file_is_refused_without_unpickling(saved, tmp_path):
    _, _, path = saved

    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (open, (str(tmp_path / "pwned"), "w"))

    path.write_bytes(pickle.dumps({"w": Boom()}, protocol=4))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file(saved):
    _, _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(path)


def _rewrite(path, mutate):
    tensors = load_file(str(path))
    mutate(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("fc3.bias"), "missing tensors"),
    (lambda t: t.update({"evil.extra": torch.zeros(2)}), "unexpected tensors"),
    (lambda t: t.update({"fc3.bias": torch.zeros(11)}), "shape"),
    (lambda t: t.update({"fc3.bias": torch.zeros(10, dtype=torch.float64)}), "dtype"),
    (lambda t: t.update({"fc3.bias": torch.full((10,), float("nan"))}), "NaN"),
])
def test_bad_tensors(saved, mutate, message):
    _, _, path = saved
    _rewrite(path, mutate)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("arch"), "'arch' is missing"),
    (lambda m: m.update(format="something-else"), "not a fedabd-model"),
    (lambda m: m["arch"].update(name="os.system"), "unknown architecture"),
    (lambda m: m["arch"].update(num_classes="10"), "num_classes"),
    (lambda m: m["arch"].update(num_classes=11), "does not match"),
    (lambda m: m["arch"].update(evil_kwarg=1), "invalid architecture arguments"),
    (lambda m: m["dataset"].update(std=[0.0]), "normalisation"),
    (lambda m: m.update(surprise=1), "unknown metadata field"),
    (lambda m: m["attack"].update(name="nope"), "trigger"),
])
def test_bad_metadata(saved, mutate, message):
    _, _, path = saved
    _, meta_path = model_paths(path)
    meta = json.loads(meta_path.read_text())
    mutate(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_metadata_not_json_and_missing_files(saved, tmp_path):
    _, _, path = saved
    _, meta_path = model_paths(path)
    meta_path.write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent")


def test_model_files_that_are_not_small_regular_files_are_refused(saved, tmp_path):
    _, _, path = saved
    weights, meta_path = model_paths(path)
    meta = meta_path.read_text()
    meta_path.unlink()
    meta_path.symlink_to("/dev/zero")  # would be read until memory runs out
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(path)
    meta_path.unlink()
    meta_path.write_text(meta)
    weights.unlink()
    weights.mkdir()
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(path)


def test_declared_sizes_allocate_nothing_before_they_match_the_weights(saved):
    import time

    _, _, path = saved
    _, meta_path = model_paths(path)
    meta = json.loads(meta_path.read_text())
    meta["arch"]["num_classes"] = meta["dataset"]["num_classes"] = 10_000_000  # a 3.4 GB last layer, in 1 KB
    meta["attack"] = None
    meta_path.write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match="has shape"):
        load_model(path)
    assert time.perf_counter() - t0 < 2.0


def test_bad_trigger_tensors(tmp_path):
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    attack = create_attack("blend", MNIST_LIKE, seed=1)
    assert attack.patterns, "blend stores its noise image"
    path = save_model(tmp_path / "b", model, MNIST_LIKE, attack=attack)
    key = "trigger." + next(iter(attack.patterns))
    _rewrite(path, lambda t: t.update({key: torch.zeros(3)}))
    with pytest.raises(ModelFileError, match="stored trigger is invalid"):
        load_model(path)
    _rewrite(path, lambda t: t.pop(key))
    with pytest.raises(ModelFileError, match="stored trigger is invalid"):
        load_model(path)
    _rewrite(path, lambda t: t.update({key: torch.full(tuple(attack.patterns[key[8:]].shape), float("inf"))}))
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        load_model(path)
