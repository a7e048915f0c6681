import os

import pytest
import torch

from fedabd.data import DatasetInfo, ImageSet

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
# under pytest-xdist (the README's test command) each worker takes one core's worth of threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# Tests that start Ray (Flower's simulation engine) run one after another on one xdist worker
RAY_FILES = {"test_simulation.py", "test_faults.py", "test_deployment.py", "test_supervise.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in RAY_FILES or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))

MNIST_LIKE = DatasetInfo("mnist_subset", 10, 1, 28, (0.1307,), (0.3081,))


@pytest.fixture
def tiny_set():
    """A random 1x28x28 ten-class set (64 images), for wiring tests that need no real data."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    return ImageSet(images, labels, MNIST_LIKE)


@pytest.fixture(scope="session")
def mnist_clean_teacher():
    """A clean LeNet-5 trained 3 epochs on the shipped subset, with (train, test) — shared, read-only,
    by the slow end-to-end distillation tests."""
    from fedabd.data import load_dataset
    from fedabd.teachers import train_teacher
    from fedabd.train import TrainConfig

    train, test = load_dataset("mnist_subset", "train"), load_dataset("mnist_subset", "test")
    teacher = train_teacher("mnist_subset", "lenet5", None, seed=0, cfg=TrainConfig(epochs=3), train=train, test=test)
    assert teacher.metrics["acc"] > 0.93
    return teacher, train, test
