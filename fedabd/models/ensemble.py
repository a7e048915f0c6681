"""Frozen teachers: one model or an ensemble of K models (mean logits, optional weights).

Same-architecture members run as ONE batched call (torch.func.stack_module_state +
functional_call + vmap) instead of a Python loop; mixed architectures fall back to a loop.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (input gradients still flow)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Ensemble(nn.Module):
    """Mean (or weighted mean) of the members' logits. Members are frozen.

    ``forward(x, return_features=True)`` returns ``(logits, per_member_features)`` where
    ``per_member_features[k]`` is member k's feature-map list (channels of different members do
    not correspond, so they are not averaged here).
    """

    def __init__(self, members: list[nn.Module], weights: list[float] | torch.Tensor | None = None,
                 batched: bool | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(freeze(m) for m in members)
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(members),) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"ensemble weights must be {len(members)} finite non-negative numbers with a positive sum")
        self.register_buffer("weights", w / w.sum())
        same = all(getattr(m, "arch", None) == getattr(members[0], "arch", None) for m in members) \
            and getattr(members[0], "arch", None) is not None
        self.batched = (same and len(members) > 1) if batched is None else (batched and same)
        if self.batched:
            params, buffers = stack_module_state(list(self.members))
            self._params = {k: v.detach() for k, v in params.items()}
            self._buffers_stacked = buffers
            base = copy.deepcopy(members[0]).to("meta")
            self._base = [base]  # a list, so it is not registered as a submodule

    @property
    def arch(self):
        return getattr(self.members[0], "arch", None)

    def train(self, mode: bool = True):  # members stay in eval mode: teachers are frozen
        return super().train(False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.batched:
            self._params = {k: fn(v) for k, v in self._params.items()}
            self._buffers_stacked = {k: fn(v) for k, v in self._buffers_stacked.items()}
        return out

    def member_logits(self, x: torch.Tensor, return_features: bool = False):
        """Logits of every member, shape ``(K, B, C)`` (and per-member features)."""
        if self.batched:
            base = self._base[0]

            def call(params, buffers, inp):
                return functional_call(base, (params, buffers), (inp,), {"return_features": return_features})

            out = torch.vmap(call, in_dims=(0, 0, None), randomness="different")(self._params, self._buffers_stacked, x)
            if return_features:
                logits, feats = out
                return logits, [[f[k] for f in feats] for k in range(len(self.members))]
            return out
        outs = [m(x, return_features=return_features) for m in self.members]
        if return_features:
            return torch.stack([o[0] for o in outs]), [o[1] for o in outs]
        return torch.stack(outs)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if len(self.members) == 1:
            return self.members[0](x, return_features=return_features)
        out = self.member_logits(x, return_features)
        logits, feats = out if return_features else (out, None)
        mean = torch.einsum("k,kbc->bc", self.weights.to(logits.dtype), logits)
        return (mean, feats) if return_features else mean
