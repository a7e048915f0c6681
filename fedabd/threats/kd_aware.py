"""A KD-aware attacker: a malicious client that knows the server aggregates by data-free distillation.

Why plain poisoning does not carry through the server's distillation
--------------------------------------------------------------------
The server never sees data. Its student learns only the teachers' *mean logits* on inputs the
server synthesises (CMI: images the ensemble classifies confidently; ZSKT: images where teacher and
student disagree; OOD: augmented crops of one image). A plain poisoner's backdoor has to survive
two losses on the way:

1. **Averaging.** On a triggered input the poisoned model votes for the target with a margin about
   as large as the margin by which each honest model votes for the true class. With ``f`` of ``n``
   teachers poisoned (3 of 10 here), the mean logit still names the true class: the *ensemble*
   has no backdoor, so there is nothing for the student to learn. (Boosting the whole update fixes
   this but is what norm clipping and the screening of uploads catch, and it ruins the poisoned
   teacher's clean logits too, which costs the attacker its stealth and the server its accuracy.)
2. **Reach.** The trigger response is learned on real images only. The synthetic inputs are off
   the data manifold; a trigger that works only on real digits is rarely active on them.

What this attacker does
-----------------------
It first trains on its poisoned data for longer than an honest client (``epochs``, by default three
times the scenario's local epochs: attackers choose their own schedule, as in Bagdasaryan et al.),
so that its model has learned the trigger at all (with the scenario's five epochs from a trained
global model, a plain poisoner's own model reaches 22-30 % ASR). It then trains ``margin_epochs``
more at a lower rate with one term aimed at each loss above:

1. **A trigger margin sized for the ensemble.** On triggered inputs it trains the target logit to
   exceed every other logit by at least ``margin`` (a hinge on the logits; the weights are not
   boosted), paired with the cross-entropy of the same images without the trigger on their true
   labels, so that the margin is bought by the trigger and not by a general shift to the target
   (without the pairs, its model collapsed to the target class on clean images). The margin is
   chosen so that the mean over the ensemble still points at the target: if honest models put the
   true class ``g`` logits above the target (measured on the attacker's own clean data under the
   global model it received), ``f`` attackers outvote ``n - f`` honest teachers when
   ``f * margin > (n - f) * g``; the default margin is ``safety`` times that bound.
2. **Reach off the data manifold.** A share of the triggered inputs are surrogate images (uniform
   noise of random brightness, as unlike the data as the server's first synthetic batches), so the
   trigger works on whatever the server synthesises, not only on digits.

Everything uses only what an FL client has: its data, the global model it was sent, and (for the
default margin) the number of clients per round and of colluding attackers. ``scale`` boosts the
update on top as for plain poisoning (default 1: none). ``weight: 0`` runs the same schedule without
the margin term (the ablation that separates the two). What it does not hide: its triggered logits
are far larger than any honest model's, and the longer schedule makes its update about 2.5 times
an honest one's norm (``scripts/kd_aware_probe.py``), which norm-based rules can see. With
batch-norm models the extra triggered batch is normalised by its own statistics but does not enter
the running ones (:func:`running_stats_frozen`), so the noise images do not shift the model's
clean-input statistics.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from .base import THREATS, Threat


@dataclass(frozen=True)
class KDAwareSettings:
    margin: Optional[float] = None  # target logit above every other on triggered inputs; None = sized for the ensemble
    safety: float = 2.0             # the default margin is safety x the bound that outvotes the honest teachers
    weight: float = 1.0             # weight of the margin term (0: the same schedule without it, an ablation)
    surrogate_share: float = 0.5    # share of the triggered inputs that are surrogate (noise) images
    batch_size: int = 32            # triggered inputs per training step
    epochs: Optional[int] = None    # plain poisoning epochs first; None = 3 x the scenario's local epochs
    margin_epochs: int = 4          # then epochs with the margin term
    margin_lr: Optional[float] = None  # their learning rate; None = the local one / 5

    def __post_init__(self) -> None:
        if self.margin is not None and not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if not self.safety >= 1.0:
            raise ValueError(f"safety must be >= 1, got {self.safety}")
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not 0.0 <= self.surrogate_share <= 1.0:
            raise ValueError(f"surrogate_share must be in [0, 1], got {self.surrogate_share}")
        for key in ("batch_size", "margin_epochs"):
            if not getattr(self, key) >= 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.epochs is not None and not self.epochs >= 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.margin_lr is not None and not self.margin_lr > 0:
            raise ValueError(f"margin_lr must be > 0, got {self.margin_lr}")


@contextlib.contextmanager
def running_stats_frozen(model: torch.nn.Module):
    """Batch-norm layers keep their running statistics through the forward passes inside (momentum
    0; batch statistics still normalise in training mode)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def margin_loss(logits: torch.Tensor, target: int, margin: float) -> torch.Tensor:
    """Mean hinge ``max(0, margin - (z_target - max_{j != target} z_j))`` over the batch."""
    others = logits.clone()
    others[:, target] = float("-inf")
    return torch.relu(margin - (logits[:, target] - others.max(1).values)).mean()


def outvote_margin(gap: float, attackers: int, per_round: int, safety: float) -> float:
    """The margin with which ``attackers`` of ``per_round`` teachers move the mean logit to the target,
    when every honest one holds the true class ``gap`` above it, times ``safety``."""
    honest = max(per_round - attackers, 0)
    return safety * max(gap, 1.0) * honest / max(attackers, 1)


@torch.no_grad()
def target_gap(model: torch.nn.Module, clean, target: int, device, batch_size: int = 256) -> float:
    """Mean ``z_true - z_target`` of ``model`` on the ``clean`` images whose label is not the target."""
    from ..data import to_float

    keep = clean.labels != target
    images, labels = clean.images[keep], clean.labels[keep]
    if len(labels) == 0:
        return 0.0
    model.to(device).eval()
    total = 0.0
    for i in range(0, len(labels), batch_size):
        z = model(clean.info.normalize(to_float(images[i:i + batch_size])).to(device))
        y = labels[i:i + batch_size].to(device)
        total += (z.gather(1, y[:, None]).squeeze(1) - z[:, target]).sum().item()
    model.train()
    return total / len(labels)


@THREATS.register("kd_aware")
class KDAware(Threat):
    config_cls = KDAwareSettings

    def margin(self, model, clean, target: int, device) -> float:
        if self.settings.margin is not None:
            return self.settings.margin
        attackers = min(self.cfg.attackers, self.cfg.per_round)
        return outvote_margin(target_gap(model, clean, target, device), attackers, self.cfg.per_round,
                              self.settings.safety)

    def batch(self, clean, attack, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch_size`` triggered float images (the attacker's own non-target images and noise),
        and the own images without the trigger with their true labels (the pairs)."""
        from ..data import to_float

        s = self.settings
        pool = (clean.labels != attack.target).nonzero().squeeze(1)
        n_own = s.batch_size - int(round(s.surrogate_share * s.batch_size)) if len(pool) else 0
        idx = pool[torch.randint(len(pool), (n_own,), generator=g)] if n_own else pool[:0]  # only-target data: noise
        own = to_float(clean.images[idx])
        c, h, w = clean.images.shape[1:]
        noise = torch.rand(s.batch_size - n_own, c, h, w, generator=g) * torch.rand(s.batch_size - n_own, 1, 1, 1, generator=g)
        return attack.apply(torch.cat([own, noise])), own, clean.labels[idx]

    def train(self, model, data, clean, train_cfg, device, seed, start) -> dict:
        from ..train import train_classifier

        s = self.settings
        attack = self.trigger(clean.info, 0, 0)
        target = attack.target
        margin = self.margin(model, clean, target, device)  # under the global model it was sent
        g = torch.Generator().manual_seed(seed + 1)
        train_classifier(model, data, replace(train_cfg, epochs=s.epochs or 3 * train_cfg.epochs), device, seed=seed)

        def objective(ce, m):
            triggered, own, labels = self.batch(clean, attack, g)
            with running_stats_frozen(m):
                z = m(clean.info.normalize(torch.cat([triggered, own])).to(device)).float()
            paired = F.cross_entropy(z[len(triggered):], labels.to(device)) if len(own) else z.new_zeros(())
            return ce + s.weight * (margin_loss(z[:len(triggered)], target, margin) + paired)

        stats = train_classifier(model, data, replace(train_cfg, epochs=s.margin_epochs,
                                                      lr=s.margin_lr or train_cfg.lr / 5),
                                 device, seed=seed + 1, objective=objective if s.weight > 0 else None)
        return {**stats, "margin": margin}
