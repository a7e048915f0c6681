"""FoolsGold (Fung et al., "The Limitations of Federated Learning in Sybil Settings", RAID 2020).

Sybils that push one backdoor send updates that look alike over time, honest clients' updates
differ. The server keeps each client's history ``H_i`` (the sum of its updates over the rounds it
took part in, learnable weights only) and every round:

1. ``cs_ij`` = cosine similarity of ``H_i`` and ``H_j`` (``i != j``), ``v_i = max_j cs_ij``;
2. pardoning: ``cs_ij *= v_i / v_j`` where ``v_i < v_j`` (an honest client that resembles a sybil is
   not punished as much as the sybil);
3. ``w_i = 1 - max_j cs_ij`` clipped to [0, 1], divided by the largest, 1 replaced by 0.99;
4. ``w_i = ln(w_i / (1 - w_i)) + 0.5`` clipped to [0, 1] (the logit spreads the weights; 0 rejects).

The new global model is ``G + sum_i w_i U_i / sum_i w_i`` over this round's updates ``U_i``
(FoolsGold's weights in place of FedAvg's; the round keeps ``G`` if every weight is 0). The paper's
optional feature-importance weighting of the output layer is not implemented. A client weighted 0 is
counted as rejected. The histories are saved with every checkpoint, so a resumed run continues them.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import AGGREGATORS, Aggregate, Aggregator, apply_update, client_updates


def foolsgold_weights(history: np.ndarray) -> np.ndarray:
    """FoolsGold's weight in [0, 1] for every row of ``history`` (clients x weights)."""
    from sklearn.metrics.pairwise import cosine_similarity

    n = len(history)
    if n == 1:
        return np.ones(1)
    cs = cosine_similarity(history) - np.eye(n)
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and v[i] < v[j] and v[j] != 0:
                cs[i, j] *= v[i] / v[j]
    w = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
    if w.max() == 0:
        return w
    w = w / w.max()
    w[w == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        w = np.log(w / (1.0 - w)) + 0.5
    return np.clip(np.nan_to_num(w, neginf=0.0, posinf=1.0), 0.0, 1.0)


@AGGREGATORS.register("foolsgold")
class FoolsGold(Aggregator):
    filters = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: dict[int, np.ndarray] = {}

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        keys, updates = client_updates(uploads, global_state)
        for u, row in zip(uploads, updates):
            self.history[u.pid] = self.history.get(u.pid, 0.0) + row
        w = foolsgold_weights(np.stack([self.history[u.pid] for u in uploads]))
        kept = [u for u, wi in zip(uploads, w) if wi > 0]
        agg = (w @ updates) / w.sum() if w.sum() > 0 else np.zeros(updates.shape[1])
        return Aggregate(apply_update(global_state, keys, agg, kept), [u.pid for u in kept],
                         {"foolsgold_weights": {str(u.pid): round(float(wi), 4) for u, wi in zip(uploads, w)}})

    def memory(self) -> dict[str, torch.Tensor]:
        return {f"history.{pid}": torch.from_numpy(h) for pid, h in self.history.items()}

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        self.history = {int(k.split(".", 1)[1]): v.numpy() for k, v in memory.items() if k.startswith("history.")}
