"""Distillation losses. Each docstring carries its formula; tests check them on known values."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_div(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0,
           reduction: str = "batchmean") -> torch.Tensor:
    """KL_tau(T || S) = sum_c p_T log(p_T / p_S), p = softmax(logits / tau).

    ``reduction``: "batchmean" (mean over samples) or "none" (per-sample, shape ``(B,)``).
    Computed in float32 whatever the autocast dtype.
    """
    t = F.log_softmax(teacher_logits.float() / tau, dim=1)
    s = F.log_softmax(student_logits.float() / tau, dim=1)
    per = (t.exp() * (t - s)).sum(1)
    if reduction == "none":
        return per
    if reduction == "batchmean":
        return per.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton KD term: tau^2 * KL_tau(T || S) (the tau^2 keeps gradient magnitudes comparable across tau)."""
    return tau * tau * kl_div(teacher_logits, student_logits, tau)


def hinton_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                alpha: float = 0.95, tau: float = 6.0) -> torch.Tensor:
    """Vanilla KD: alpha * tau^2 * KL_tau(T || S) + (1 - alpha) * CE(S, y) (Hinton et al. 2015)."""
    return alpha * kd_loss(teacher_logits, student_logits, tau) + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """a(f) = L2-normalise( mean_c f^2 ) flattened over space: ``(B, C, H, W) -> (B, H*W)``
    (Zagoruyko & Komodakis 2017, as used by ZSKT)."""
    return F.normalize(features.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_feats: list[torch.Tensor], teacher_attn: list[torch.Tensor]) -> torch.Tensor:
    """sum_l mean_{b,j} (a(S_l) - a_T,l)[b, j]^2: per layer the squared difference of the attention
    maps averaged over the batch AND the H*W positions j, summed over layers. This is the
    reference ZSKT / attention-transfer code's ``(at(s) - at(t)).pow(2).mean()``, the form the
    paper's beta = 250 is calibrated to (it equals mean_b ||a(S_l) - a_T,l||^2 / (H_l * W_l)).

    ``teacher_attn`` are precomputed teacher attention maps ``(B, H_l*W_l)`` (for an ensemble, the
    mean of the members' attention maps). The two lists must have the same length.
    """
    if len(student_feats) != len(teacher_attn):
        raise ValueError(f"attention_loss: {len(student_feats)} student feature maps but "
                         f"{len(teacher_attn)} teacher attention maps")
    total = torch.zeros((), dtype=torch.float32,
                        device=student_feats[0].device if student_feats else None)
    for fs, at in zip(student_feats, teacher_attn):
        total = total + (attention_map(fs) - at.float()).pow(2).mean()
    return total


# -- CMI's inversion losses -------------------------------------------------------------------------

def bn_stat_loss(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """||mean_{N,H,W}(x) - running_mean||_2 + ||var_{N,H,W}(x) - running_var||_2 (biased variance)
    for the input ``x`` (N, C, H, W) of the BatchNorm layer ``bn``."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    return torch.linalg.vector_norm(mean - bn.running_mean.float()) + \
        torch.linalg.vector_norm(var - bn.running_var.float())


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Instance contrastive loss (NT-Xent / SimCLR, SupCon without labels) on L2-normalised features.

    The 2N features z = [anchor; positive] each have one positive (the other view of the same
    instance) and 2N-2 negatives: -mean_i log( exp(z_i.z_p(i)/t) / sum_{j != i} exp(z_i.z_j/t) ).
    """
    n = anchor.shape[0]
    z = F.normalize(torch.cat([anchor, positive], 0).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (DeepInversion's l2 total variation)."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
