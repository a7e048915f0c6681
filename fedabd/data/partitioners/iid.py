"""IID: a random permutation cut into near-equal parts."""
from __future__ import annotations

import numpy as np
import torch

from ..partition import PARTITIONERS, check_split


@PARTITIONERS.register("iid")
def iid(labels: torch.Tensor, n_clients: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into near-equal parts."""
    check_split(n_clients, len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, n_clients)]
