"""Constrain-and-scale (Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020).

The attacker trains on poisoned data with an anomaly-evasion term,
``L = alpha * L_class + (1 - alpha) * L_ano`` with ``L_ano = ||W - G||_2`` (the distance of its model
to the global model, what a norm-based check measures), then scales its update ``U = W - G`` up by
``gamma`` (model replacement) but never beyond the norm bound ``S`` it targets:
``U' = U * min(gamma, S / ||U||)``, so ``||U'|| <= S`` and a server clipping at ``S`` lets it through
whole. ``S`` defaults to the norm bound of the scenario's ``clip`` aggregator when it uses one (the
paper's attacker knows the anomaly detector), else 3.0 (that aggregator's default); ``gamma``
defaults to the number of clients per round (the paper's ``n / eta`` with server rate 1).
``alpha`` (0.7 here) is the attacker's trade-off, which the paper varies; norms are over the
learnable weights (normalisation buffers are left as trained).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..aggregators.base import weight_keys
from .base import THREATS, Threat


@dataclass(frozen=True)
class ConstrainScaleSettings:
    alpha: float = 0.7                   # weight of the classification loss
    norm_bound: Optional[float] = None   # S; None = the clip aggregator's bound, else 3.0
    gamma: Optional[float] = None        # boost; None = clients per round

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.norm_bound is not None and not self.norm_bound > 0:
            raise ValueError(f"norm_bound must be > 0, got {self.norm_bound}")
        if self.gamma is not None and not self.gamma >= 1:
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")


def scale_to_bound(start: dict, state: dict, gamma: float, bound: float) -> dict:
    """``start + U * min(gamma, bound / ||U||)`` on the learnable weights (``U = state - start``)."""
    keys = weight_keys(start)
    norm = torch.sqrt(sum(((state[k] - start[k]).double() ** 2).sum() for k in keys))
    factor = min(gamma, bound / max(float(norm), 1e-12))
    return {k: (start[k] + factor * (v - start[k])).to(v.dtype) if k in keys else v for k, v in state.items()}


@THREATS.register("constrain_scale")
class ConstrainAndScale(Threat):
    config_cls = ConstrainScaleSettings

    def bound(self) -> float:
        from ..aggregators.clip import ClipSettings, NormClip

        if self.settings.norm_bound is not None:
            return self.settings.norm_bound
        if self.cfg.aggregator == "clip":
            return NormClip.settings_from(self.cfg).norm_bound
        return ClipSettings().norm_bound

    def gamma(self) -> float:
        return self.settings.gamma if self.settings.gamma is not None else self.cfg.per_round

    def train(self, model, data, clean, train_cfg, device, seed, start) -> dict:
        from ..train import train_classifier

        if start is None:
            return super().train(model, data, clean, train_cfg, device, seed, start)
        alpha = self.settings.alpha
        params = dict(model.named_parameters())
        anchor = {k: start[k].to(device) for k in weight_keys(start) if k in params}

        def objective(ce, m):
            dist = torch.sqrt(sum(((params[k] - g) ** 2).sum() for k, g in anchor.items()) + 1e-12)
            return alpha * ce + (1.0 - alpha) * dist

        return train_classifier(model, data, train_cfg, device, seed=seed, objective=objective)

    def craft(self, start, state):
        return scale_to_bound(start, state, self.gamma(), self.bound())
