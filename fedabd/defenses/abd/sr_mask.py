"""SR's optional mask-and-pattern trigger search (Neural Cleanse's form; ours, not in the paper).

``search="mask"`` replaces SR's trigger synthesis and hypergradient: on the first SR step a mask
``m`` and pattern ``p`` (``stamp(x) = (1-m) x + m p``) are searched for every class (``mask_steps``
Adam steps on ``CE(M(stamp(x)), c) + mask_l1 * |m|_1``); the class with the smallest mask is taken
as the backdoor's target, and every later SR step refines its mask on the new batch
(``mask_refine_steps``, warm start). The unlearning gradient is that of ``L_out`` with ``stamp`` in
place of ``+ delta`` (the trigger held fixed; no hypergradient). Why: the paper's search can find a
dense perturbation towards the backdoor's class that is not the trigger itself.

``search="auto"`` runs the same class search but keeps the mask only when its class stands out
(smallest / second-smallest mask L1 below ``mask_ratio``), and otherwise falls back to the paper's
search (a run that falls back is identical to a ``"perturbation"`` run).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .sr_config import SRConfig


def _float(t: torch.Tensor) -> torch.Tensor:
    """Half / bf16 -> float32; float32 and float64 unchanged (the FD tests run in float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class MaskTrigger:
    """``stamp(x) = (1 - m) x + m p`` with ``m = sigmoid(mask_logit)`` (1x1xHxW) and
    ``p = lo + (hi - lo) sigmoid(pattern_logit)`` (1xCxHxW) inside the input range."""
    mask_logit: torch.Tensor
    pattern_logit: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.mask_logit), self.lo + (self.hi - self.lo) * torch.sigmoid(self.pattern_logit)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        m, p = self.parts()
        return (1 - m) * x + m * p

    def size(self) -> float:
        return float(torch.sigmoid(self.mask_logit).sum())


def search_mask(model_fn, x: torch.Tensor, target: int, lo: torch.Tensor, hi: torch.Tensor, cfg: SRConfig,
                steps: int, start: MaskTrigger | None = None) -> MaskTrigger:
    """Neural Cleanse's search for one class: the mask and pattern minimising
    ``CE(M(stamp(x)), target) + mask_l1 * sum(m)`` by ``steps`` Adam steps, from ``start`` or from
    an almost empty mask (sigmoid(-3) = 0.05) and a mid-range pattern. Only the trigger's own
    gradients are computed."""
    x = x.detach()
    if start is None:
        start = MaskTrigger(torch.full((1, 1, *x.shape[2:]), -3.0, dtype=x.dtype, device=x.device),
                            torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device), lo, hi)
    trig = MaskTrigger(start.mask_logit.detach().clone().requires_grad_(True),
                       start.pattern_logit.detach().clone().requires_grad_(True), lo, hi)
    opt = torch.optim.Adam([trig.mask_logit, trig.pattern_logit], lr=cfg.mask_lr)
    labels = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(_float(model_fn(trig.stamp(x))), labels) \
                + cfg.mask_l1 * torch.sigmoid(trig.mask_logit).sum()
            grads = torch.autograd.grad(loss, [trig.mask_logit, trig.pattern_logit])
        for t, g in zip((trig.mask_logit, trig.pattern_logit), grads):
            t.grad = g
        opt.step()
    return MaskTrigger(trig.mask_logit.detach(), trig.pattern_logit.detach(), lo, hi)
