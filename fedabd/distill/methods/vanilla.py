"""Vanilla KD, the clean reference: Hinton KD on a fraction of the REAL training set.

L = alpha * tau^2 * KL_tau(T || S) + (1 - alpha) * CE(S, y)   (:func:`fedabd.distill.losses.hinton_loss`),
alpha = 0.95, tau = 6, SGD lr 0.1 (paper preset; 0.02 in the CPU preset, see PRESETS) / momentum 0.9 /
wd 5e-4, cosine schedule over the run.

- The distiller is given the real training split as ``real_data``; it keeps a seeded random subset of
  exactly ``round(data_fraction * N)`` images (``self.subset_index`` after :meth:`setup`), drawn
  from the run's seed.
- One iteration = one student step on a batch of that subset (epochs of shuffled batches, last
  batch of an epoch may be smaller); ``total_iterations = epochs * ceil(n_subset / batch_size)``.
- Augmentation: :func:`fedabd.train.augment_batch` (random translation, flips where the dataset
  allows them); the teacher labels the same augmented batch the student sees.
- Defence hooks: only the final phase is honoured (``final_phase_step`` after the KD backward,
  student optimiser switched by the base class at ``sr_lr``); ``generator_loss`` / ``sample_weights`` do not apply to real-data KD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...data import ImageSet, to_float
from ...train import augment_batch, iterate_batches
from ..base import DISTILLERS, Distiller
from ..losses import hinton_loss, kl_div


@dataclass(frozen=True)
class VanillaConfig:
    data_fraction: float = 0.2
    alpha: float = 0.95
    tau: float = 6.0
    lr: float = 0.02  # paper: 0.1 (see PRESETS)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 60
    sr_lr: float = 5e-4
    augment: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.tau <= 0 or self.lr <= 0 or self.sr_lr <= 0:
            raise ValueError("tau, lr and sr_lr must be positive")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")


PRESETS = {
    # mnist_subset (10k train -> 2,000 real images, 16 steps/epoch): 960 steps, about a minute on 2 cores.
    # lr 0.02, not the paper's 0.1: LeNet has no BatchNorm, and with the tau^2 = 36 scaled KD term
    # SGD at lr 0.1 or 0.05 collapses the half-width LeNet student to chance (10 % Acc); 0.02 is stable.
    "cpu": VanillaConfig(),
    # the paper: 20 % of CIFAR-10, SGD lr 0.1, 200 epochs
    "paper": VanillaConfig(lr=0.1, epochs=200),
    # the smallest run through every code path (tests, and a quick check of a set-up)
    "smoke": VanillaConfig(batch_size=8, epochs=2),
}


@DISTILLERS.register("vanilla")
class VanillaKD(Distiller):
    config_cls = VanillaConfig
    presets = PRESETS
    unit = "step"
    needs_real_data = True

    @property
    def subset_size(self) -> int:
        n = len(self.real_data)
        return max(1, min(n, round(self.cfg.data_fraction * n)))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.subset_size / self.cfg.batch_size)

    @property
    def total_iterations(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    def setup(self) -> None:
        cfg = self.cfg
        if self.real_data.info.shape != self.info.shape:
            raise ValueError(f"real data shape {self.real_data.info.shape} does not match dataset {self.info.name} {self.info.shape}")
        n = len(self.real_data)
        # its own generator, so the subset depends on the seed only (not on anything drawn before)
        g = torch.Generator().manual_seed(self.seed)
        self.subset_index = torch.randperm(n, generator=g)[: self.subset_size].sort().values
        self.subset: ImageSet = self.real_data.subset(self.subset_index)
        self.student_opt = torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                           weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.student_opt, T_max=max(1, self.total_iterations))
        self._batches = iter(())
        self.epoch = 0

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._batches)
        except StopIteration:
            self.epoch += 1
            self._batches = iterate_batches(self.subset, self.cfg.batch_size, self.generator)
            return next(self._batches)

    def iteration(self, it: int) -> dict:
        cfg = self.cfg
        xb, yb = self._next_batch()
        x = to_float(xb)
        if cfg.augment:
            x = augment_batch(x, self.info.hflip, self.generator)
        x = self.info.normalize(x).to(self.device)
        y = yb.to(self.device)
        t = self.teacher_logits(x)
        s = self.student_logits(x)
        loss = hinton_loss(t, s, y, alpha=cfg.alpha, tau=cfg.tau)
        metrics = {"loss": loss.item(), **self.student_step(loss, x)}
        if not self.in_final_phase:
            self.sched.step()
        with torch.no_grad():
            metrics["kl"] = kl_div(t, s.detach(), cfg.tau).item()
            metrics["agree"] = (t.argmax(1) == s.argmax(1)).float().mean().item()
        return metrics
