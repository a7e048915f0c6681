"""Label skew by Dirichlet proportions (Hsu et al., 2019)."""
from __future__ import annotations

import numpy as np
import torch

from ..partition import PARTITIONERS, check_split


@PARTITIONERS.register("dirichlet")
def dirichlet(labels: torch.Tensor, n_clients: int, seed: int, alpha: float = 0.5,
              allow_empty: bool = False, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split: for every class, proportions over clients ~ Dir(alpha).

    Re-drawn (up to ``max_tries``) until every client holds at least one sample (unless
    ``allow_empty``).
    """
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    check_split(n_clients, len(labels))
    min_size = 0 if allow_empty else 1
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
