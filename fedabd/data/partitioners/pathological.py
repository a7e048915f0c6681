"""Pathological non-IID shards (McMahan et al., AISTATS 2017)."""
from __future__ import annotations

import numpy as np
import torch

from ..partition import PARTITIONERS, check_split


@PARTITIONERS.register("pathological")
def pathological(labels: torch.Tensor, n_clients: int, seed: int, classes_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al.'s split: sort by label, cut into ``n_clients * k`` shards, give each client k shards."""
    check_split(n_clients, len(labels))
    if classes_per_client < 1:
        raise ValueError(f"classes_per_client must be >= 1, got {classes_per_client}")
    n_shards = n_clients * classes_per_client
    if n_shards > len(labels):
        raise ValueError(f"{n_shards} shards for {len(labels)} samples: too many clients or classes per client")
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(labels), kind="stable")
    shards = np.array_split(order, n_shards)
    assign = rng.permutation(n_shards)
    return [np.sort(np.concatenate([shards[s] for s in assign[k::n_clients]])) for k in range(n_clients)]
