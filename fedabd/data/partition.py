"""Partitioners: split a labelled set among clients; every sample is assigned exactly once.

A partitioner is ``fn(labels, n_clients, seed, **params) -> list[index array]`` registered in
:data:`PARTITIONERS` by its own module in ``fedabd/data/partitioners/``; it declares the scenario
parameters it uses (``alpha``, ``classes_per_client``, ``allow_empty``) as keyword arguments.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from ..registry import Registry, import_submodules

PARTITIONERS: Registry = Registry("partition scheme")


def check_split(n_clients: int, n: int) -> None:
    if n_clients < 1:
        raise ValueError(f"number of clients must be >= 1, got {n_clients}")
    if n < n_clients:
        raise ValueError(f"cannot split {n} samples among {n_clients} clients")


def partition(labels: torch.Tensor, n_clients: int, scheme: str = "iid", seed: int = 0, **params) -> list[np.ndarray]:
    """Split ``labels``' indices with the registered ``scheme``; ``params`` it does not take are ignored."""
    fn = PARTITIONERS.get(scheme)
    accepted = inspect.signature(fn).parameters
    return fn(labels, n_clients, seed, **{k: v for k, v in params.items() if k in accepted})


import_submodules("fedabd.data.partitioners")
