"""Partitioners: split a labelled set among clients. Every sample is assigned exactly once."""
from __future__ import annotations

import numpy as np
import torch


def _check(n_clients: int, n: int) -> None:
    if n_clients < 1:
        raise ValueError(f"number of clients must be >= 1, got {n_clients}")
    if n < n_clients:
        raise ValueError(f"cannot split {n} samples among {n_clients} clients")


def iid(labels: torch.Tensor, n_clients: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into near-equal parts."""
    _check(n_clients, len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, n_clients)]


def dirichlet(labels: torch.Tensor, n_clients: int, seed: int, alpha: float = 0.5,
              min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split: for every class, proportions over clients ~ Dir(alpha).

    Re-drawn (up to ``max_tries``) until every client holds at least ``min_size`` samples
    (``min_size=0`` allows empty clients).
    """
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    _check(n_clients, len(labels))
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not draw a Dirichlet(alpha={alpha}) split giving every one of {n_clients} clients "
                     f">= {min_size} samples in {max_tries} tries; raise alpha or lower the client count")


def pathological(labels: torch.Tensor, n_clients: int, seed: int, classes_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al.'s split: sort by label, cut into ``n_clients * k`` shards, give each client k shards."""
    _check(n_clients, len(labels))
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


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "pathological": pathological}


def partition(labels: torch.Tensor, n_clients: int, scheme: str = "iid", seed: int = 0, alpha: float = 0.5,
              classes_per_client: int = 2, allow_empty: bool = False) -> list[np.ndarray]:
    if scheme == "iid":
        return iid(labels, n_clients, seed)
    if scheme == "dirichlet":
        return dirichlet(labels, n_clients, seed, alpha, min_size=0 if allow_empty else 1)
    if scheme == "pathological":
        return pathological(labels, n_clients, seed, classes_per_client)
    raise ValueError(f"unknown partition scheme {scheme!r}; choose one of: {', '.join(PARTITIONERS)}")
