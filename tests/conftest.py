import os

import pytest
import torch

from fedabd.data import DatasetInfo, ImageSet

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

MNIST_LIKE = DatasetInfo("mnist_subset", 10, 1, 28, (0.1307,), (0.3081,))


@pytest.fixture
def tiny_set():
    """A random 1x28x28 ten-class set (64 images), for wiring tests that need no real data."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    return ImageSet(images, labels, MNIST_LIKE)
