"""Neurotoxin (Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022).

The backdoor is written only into coordinates that honest training rarely changes, so that later
honest rounds do not overwrite it. As in the authors' code, the attacker estimates the honest
direction by the gradient of the cross-entropy on its own clean data at the global model, summed
over its batches; the ``1 - mask_ratio`` share of the learnable weights with the largest
``|gradient|`` (over the whole model, not per layer) is frozen and it trains on poisoned data in the
remaining ``mask_ratio`` (0.99: the bottom 99 %). The authors zero the frozen coordinates' gradient
after every backward pass, which weight decay can still move; here every optimiser step is followed
by a projection that resets them, so the sent update is exactly zero there. ``scale`` boosts the
update as for plain poisoning.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..aggregators.base import weight_keys
from .base import THREATS, Threat


@dataclass(frozen=True)
class NeurotoxinSettings:
    mask_ratio: float = 0.99  # share of the weights the attacker may change

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


def benign_gradient(model: torch.nn.Module, clean, device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The summed cross-entropy gradient of ``model`` on ``clean`` (its parameters' names -> tensors)."""
    from ..data import to_float

    model.to(device).train()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(clean), batch_size):
        x = clean.info.normalize(to_float(clean.images[i:i + batch_size])).to(device)
        F.cross_entropy(model(x), clean.labels[i:i + batch_size].to(device), reduction="sum").backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def frozen_masks(grads: dict[str, torch.Tensor], keys: list[str], mask_ratio: float) -> dict[str, torch.Tensor]:
    """Per weight tensor, True where the coordinate is among the top ``1 - mask_ratio`` of all |gradients|."""
    flat = torch.cat([grads[k].abs().reshape(-1) for k in keys])
    k_top = max(1, int(round((1.0 - mask_ratio) * flat.numel())))
    threshold = torch.topk(flat, k_top).values[-1]
    return {k: grads[k].abs() >= threshold for k in keys}


@THREATS.register("neurotoxin")
class Neurotoxin(Threat):
    config_cls = NeurotoxinSettings

    def train(self, model, data, clean, train_cfg, device, seed, start) -> dict:
        from ..train import train_classifier

        keys = [k for k in weight_keys(model.state_dict()) if k in dict(model.named_parameters())]
        masks = frozen_masks(benign_gradient(model, clean, device), keys, self.settings.mask_ratio)
        params = dict(model.named_parameters())
        anchor = {k: params[k].detach().clone() for k in keys}

        def project(m):
            with torch.no_grad():
                for k in keys:
                    params[k][masks[k]] = anchor[k][masks[k]]

        return train_classifier(model, data, train_cfg, device, seed=seed, after_step=project)
