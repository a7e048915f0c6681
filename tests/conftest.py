import os

import pytest
import torch

from fedabd.data import DatasetInfo, ImageSet

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
# under pytest-xdist (the README's test command) each worker takes one core's worth of threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# The slow tests in xdist groups, each group one test after another on its own worker: the Ray tests
# in two (two local Ray instances at a time at most: the faults tests wait on a client's timeout and
# on processes, the others compute); the Deployment Engine's tests (a SuperLink and SuperNodes on free
# ports, mostly waiting on heartbeats) with the three longest distillation tests. Grouped because
# xdist (3.8) tops up every worker that has two tests or fewer pending with the next test in the
# queue, which then waits behind the worker's long group test: a slow single test queued that way
# started 7 minutes into a 9-minute run and ran alone at its end. The groups' sizes, measured in a
# run of the whole suite on 2 cores: about 420, 380 and 440 s; the other tests share the fourth
# worker and fill the gaps.
GROUPS = {"test_faults.py": "ray-faults", "test_simulation.py": "ray", "test_deployment.py": "deployment+distillation",
          "test_cmi.py::test_mnist_end_to_end": "deployment+distillation",
          "test_zskt.py::test_clean_lenet_teacher_distils_to_80_percent": "deployment+distillation",
          "test_sr.py::test_sr_lowers_asr_of_backdoored_student": "deployment+distillation"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which turns the xdist_group marks into groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = GROUPS.get(item.path.name) or GROUPS.get(f"{item.path.name}::{item.name}")
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    # xdist hands out the groups first (largest first), then single tests in this order: the slow
    # ones first, so that none of them is left running alone at the end
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: two workers more than the cores. The three groups take a worker each, and the two
    Ray groups and the Deployment tests spend much of their time waiting (on a client's timeout, a
    SuperNode's heartbeat, processes starting); with fewer workers the other tests would wait for them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 2


MNIST_LIKE = DatasetInfo("mnist_subset", 10, 1, 28, (0.1307,), (0.3081,))


@pytest.fixture
def tiny_set():
    """A random 1x28x28 ten-class set (64 images), for wiring tests that need no real data."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    return ImageSet(images, labels, MNIST_LIKE)


@pytest.fixture(scope="session")
def mnist_clean_teacher(tmp_path_factory):
    """A clean LeNet-5 trained 3 epochs (seed 0) on the shipped subset, with (train, test) — shared,
    read-only, by the slow end-to-end distillation tests. Trained once per test run: under
    pytest-xdist the first worker to need it trains and saves it in the run's shared temp folder,
    the others load it (every test gets the model read back from that file)."""
    from filelock import FileLock

    from fedabd.artifacts import load_model, model_paths
    from fedabd.data import load_dataset
    from fedabd.teachers import TeacherResult, train_teacher
    from fedabd.train import TrainConfig

    train, test = load_dataset("mnist_subset", "train"), load_dataset("mnist_subset", "test")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / "mnist_clean_teacher" / "lenet5"
    with FileLock(str(shared / "mnist_clean_teacher.lock")):
        if not model_paths(path)[1].exists():
            train_teacher("mnist_subset", "lenet5", None, seed=0, cfg=TrainConfig(epochs=3), train=train, test=test,
                          out=path)
    loaded = load_model(path)
    teacher = TeacherResult(model=loaded.model, attack=None, metrics=loaded.meta["metrics"], path=loaded.path)
    assert teacher.metrics["acc"] > 0.93
    return teacher, train, test
