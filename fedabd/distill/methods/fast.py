"""Fast: meta-learned generator for fast data-free KD (Fang et al., "Up to 100x Faster Data-free
Knowledge Distillation", AAAI 2022; the authors' ``fast_meta`` synthesiser, zju-vipa/Fast-Datafree).

CMI (``cmi``, as its authors run it) starts every epoch from a fresh generator and needs tens to
hundreds of inversion steps. Fast keeps one *meta* generator G for the whole run and, each epoch,
adapts a copy of it for only ``g_steps`` steps (2-10 in the paper):

1. Synthesis. The fast copy G' = G (weights copied) and a new latent batch z are optimised
   together (Adam, betas (0.5, 0.999); ``g_lr`` for G', ``z_lr`` for z) on one batch of
   ``synth_batch`` images with uniform random labels y::

       L = bn*L_BN^mmt + oh*CE(T(x), y) + adv*L_adv + defense.generator_loss(x, T(x))

   where x is a random translation + flip of G'(z) (normalised), L_adv = -mean_i 1[argmax S =
   argmax T] * KL(T || S) (from epoch ``warmup`` on, counted from 1 as the authors do), and
   L_BN^mmt is DeepInversion's BN statistics loss against a momentum blend of the batch's
   statistics with the previous epochs' (:func:`bn_momentum_loss`; 0 for a BN-free teacher). No
   contrastive term, no local view. The step with the lowest loss gives the batch that joins the
   synthetic pool.
2. Meta update of G. ``meta="fomaml"`` (the authors' default, ``is_maml=1``): G's gradient is the
   sum of G''s gradients over the inner steps and G takes one Adam step with LR ``g_lr * g_steps``
   (first-order MAML). ``meta="reptile"``: G's gradient is ``67 * (G - G')`` (the authors' constant).
   At epoch ``reset_l0_epoch`` (the authors': 120 + warmup) G's first layers are re-initialised.
3. KD, as CMI's (:meth:`CMIDistiller.kd_epoch`): ``kd_steps`` student steps on the whole pool,
   tau^2 * KL_tau(T || S). The first ``warmup`` epochs of the whole distillation only synthesise
   (they train the meta generator before the student learns from it); then ``epochs`` epochs
   synthesise and distil (the authors' 220 epochs = warm-up 20 + 200). The student LR is cosine over
   the KD epochs, stepped per epoch, from ``s_lr`` to ``s_min_lr`` (the authors'
   CosineAnnealingLR(200, eta_min=2e-4)).

Across runs (federated rounds): :meth:`memory` returns the meta generator, the BN momentum
statistics, the epoch count and the last ``pool_carry`` pool images; a distiller built with that
memory continues from them, so the warm-up is paid once, in the first round (the rounds of a
federation are one long distillation whose teachers change). That is this project's extension for
federated use (``carry``, on by default; the authors' runs are single-teacher and never restart).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...device import autocast
from ..base import DISTILLERS, load_entries, state_entries
from ..augment import random_translate_flip
from .cmi import CMIDistiller


@dataclass(frozen=True)
class FastConfig:
    epochs: int = 30  # epochs that synthesise and distil (after the warm-up)
    warmup: int = 0  # first epochs of the whole distillation: synthesis only, no adversarial term (paper: 20)
    # synthesis
    nz: int = 256
    synth_batch: int = 64
    g_steps: int = 5  # inner steps of the fast generator per epoch (paper: 2, 5 or 10)
    g_lr: float = 3e-3  # fast generator's Adam LR (the meta LR is g_lr * g_steps)
    z_lr: float = 0.01
    generator_width: int = 16
    bn: float = 10.0
    oh: float = 0.4
    adv: float = 1.1
    bn_momentum: float = 0.9  # weight of past epochs' BN statistics in L_BN (0 = plain DeepInversion)
    meta: str = "fomaml"  # "fomaml" (the authors' default) or "reptile"
    reset_l0_epoch: int = 0  # re-initialise G's first layers at this epoch (1-based; 0 = never; paper: 140)
    # student (as CMI)
    kd_steps: int = 80
    kd_batch: int = 128
    tau: float = 20.0
    s_lr: float = 0.01  # the authors': 0.2 for ResNets on CIFAR; 0.01 keeps BN-free LeNets alive (as CMI)
    s_min_lr: float = 2e-4
    s_momentum: float = 0.9
    s_wd: float = 1e-4
    sr_lr: float = 5e-4  # student LR at the start of a defence's final phase
    final_phase_unit: str = "epoch"  # as CMI's: "epoch" or "step"
    kd_augment: bool = True  # as CMI's
    # across runs (federated rounds)
    carry: bool = True  # continue from a previous run's memory when given one
    pool_carry: int = 2048  # pool images kept in the memory (the most recent)


presets = {
    "cpu": FastConfig(),
    # the authors' CIFAR script (scripts/fast_cifar.sh, the 5-step rows)
    "paper": FastConfig(epochs=200, warmup=20, nz=256, synth_batch=256, g_steps=5, g_lr=3e-3, z_lr=0.01,
                        generator_width=64, bn=10.0, oh=0.4, adv=1.1, bn_momentum=0.9, meta="fomaml",
                        reset_l0_epoch=140, kd_steps=400, kd_batch=256, tau=20.0, s_lr=0.2, s_min_lr=2e-4,
                        s_momentum=0.9, s_wd=1e-4, sr_lr=5e-4),
    # one federated round on the CPU: the generator and pool carry over from the previous round's
    # (KD on the pool as synthesised: same Acc after three rounds of the demo, 1.3x less distillation
    # time at 5 teachers, the teachers' KD cost no longer grows with the KD steps; results/quickstart)
    "fed": FastConfig(epochs=5, warmup=20, kd_steps=60, final_phase_unit="step", kd_augment=False),
    "smoke": FastConfig(epochs=2, g_steps=2, synth_batch=8, kd_steps=2, kd_batch=8, generator_width=8, nz=16,
                        pool_carry=16),
}


def bn_momentum_loss(x: torch.Tensor, bn: nn.BatchNorm2d, past: tuple[torch.Tensor, torch.Tensor] | None,
                     rate: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Fast's BN statistics loss for the input ``x`` (N, C, H, W) of ``bn``: with the batch's
    per-channel mean m and biased variance v and the past epochs' (m_p, v_p),
    ``||rv - ((1-rate) v + rate v_p)||_2 + ||rm - ((1-rate) m + rate m_p)||_2`` (without ``past``
    DeepInversion's ``||rv - v|| + ||rm - m||``). Returns the loss and (m, v) detached."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    m, v = mean, var
    if past is not None:
        m = (1 - rate) * mean + rate * past[0]
        v = (1 - rate) * var + rate * past[1]
    loss = torch.linalg.vector_norm(bn.running_var.float() - v) + torch.linalg.vector_norm(bn.running_mean.float() - m)
    return loss, (mean.detach(), var.detach())


class _MomentumBNHook:
    """Forward hook on a teacher's BatchNorm2d: :func:`bn_momentum_loss` of its input at each call,
    the last call's statistics kept for :meth:`updated` at the end of the epoch."""

    def __init__(self, module: nn.BatchNorm2d, past, rate: float) -> None:
        self.past, self.rate, self.last = past, rate, None
        self.loss: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.loss, self.last = bn_momentum_loss(inputs[0], module, self.past, self.rate)

    def updated(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The momentum statistics after this epoch (the authors' ``update_mmt``)."""
        if self.last is None:
            return self.past
        if self.past is None:
            return self.last
        r = self.rate
        return (r * self.past[0] + (1 - r) * self.last[0], r * self.past[1] + (1 - r) * self.last[1])

    def remove(self) -> None:
        self.handle.remove()


def add_fomaml_grad(meta: list[torch.Tensor], fast: list[torch.Tensor]) -> None:
    """First-order MAML: add the fast copy's current gradients to the meta parameters' ``.grad``
    (called after every inner step, so the meta gradient is their sum; the authors' ``fomaml_grad``)."""
    for p, q in zip(meta, fast, strict=True):
        if q.grad is not None:
            p.grad.add_(q.grad)


def set_reptile_grad(meta: list[torch.Tensor], fast: list[torch.Tensor], scale: float = 67.0) -> None:
    """Reptile: the meta gradient is ``scale * (meta - fast)`` (the authors' ``reptile_grad``, scale 67)."""
    with torch.no_grad():
        for p, q in zip(meta, fast, strict=True):
            p.grad.copy_(scale * (p - q))


def reset_first_layers(gen: nn.Module) -> None:
    """The authors' ``reset_l0``: the latent's linear layer and the first BatchNorm's affine weight
    re-drawn from N(0, 0.02^2), their biases set to 0."""
    for mod in (gen.l1, gen.conv_blocks0[0]):
        nn.init.normal_(mod.weight, 0.0, 0.02)
        nn.init.constant_(mod.bias, 0.0)


@DISTILLERS.register("fast")
class FastDistiller(CMIDistiller):
    config_cls = FastConfig
    presets = presets
    unit = "epoch"

    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.meta not in ("fomaml", "reptile"):
            raise ValueError(f"meta must be 'fomaml' or 'reptile', got {cfg.meta!r}")
        self.set_final_phase_unit()
        self.setup_members()
        self.meta_gen = self.new_generator()
        self.meta_opt = torch.optim.Adam(self.meta_gen.parameters(), lr=cfg.g_lr * cfg.g_steps, betas=(0.5, 0.999))
        self.pool = torch.empty(0, *info.shape, device=self.device)
        self.bn_past: list = [None] * len(self.bn_layers)
        self.epochs_done = 0
        memory = self.carried if cfg.carry else {}
        if memory:
            self._restore(memory)
        self.student_opt = torch.optim.SGD(self.student.parameters(), lr=cfg.s_lr, momentum=cfg.s_momentum,
                                           weight_decay=cfg.s_wd)

    # -- memory across runs -------------------------------------------------------------------------
    def memory(self) -> dict[str, torch.Tensor]:
        out = state_entries(self.meta_gen, "generator.")
        out["epochs_done"] = torch.tensor(self.epochs_done)
        out.update(super().memory())
        for i, past in enumerate(self.bn_past):
            if past is not None:
                out[f"bn.{i}.mean"], out[f"bn.{i}.var"] = past[0].cpu(), past[1].cpu()
        return out

    def _restore(self, memory: dict[str, torch.Tensor]) -> None:
        """Take a previous run's memory; parts that no longer fit (another generator, pool image
        shape or teacher BN layout) are left out."""
        load_entries(self.meta_gen, memory, "generator.")
        self.restore_pool()
        if "epochs_done" in memory:
            self.epochs_done = int(memory["epochs_done"])
        for i, mod in enumerate(self.bn_layers):
            m, v = memory.get(f"bn.{i}.mean"), memory.get(f"bn.{i}.var")
            if m is not None and v is not None and m.shape == mod.running_mean.shape:
                self.bn_past[i] = (m.to(self.device), v.to(self.device))

    # -- hooks: Fast's momentum BN loss ----------------------------------------------------------------
    def _add_hooks(self) -> None:
        self.bn_hooks = [_MomentumBNHook(mod, self.bn_past[i], self.cfg.bn_momentum)
                         for i, mod in enumerate(self.bn_layers)]

    def _synth_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on ``x`` with input gradients, combined by the ensemble's rule; members
        with BatchNorm are called one by one so that every BN hook fires."""
        if not self.uses_bn:
            return self.teacher_logits(x, grad=True)
        x = self.prep(x)
        with autocast(self.device, self.bf16):
            outs = [m(x).float() for m in self.members]
        return self._combine(outs)

    # -- one epoch ------------------------------------------------------------------------------------
    def synthesize(self) -> dict:
        cfg, info, g = self.cfg, self.info, self.generator
        self.epochs_done += 1
        ep = self.epochs_done
        if cfg.reset_l0_epoch and ep == cfg.reset_l0_epoch:
            reset_first_layers(self.meta_gen)
        n = cfg.synth_batch
        fast = self.new_generator()
        fast.load_state_dict(self.meta_gen.state_dict())
        fast.train()
        z = torch.randn(n, cfg.nz, generator=g).to(self.device).requires_grad_(True)
        y = torch.randint(0, info.num_classes, (n,), generator=g).to(self.device)
        opt = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": cfg.z_lr}],
                               lr=cfg.g_lr, betas=(0.5, 0.999))
        meta_params = list(self.meta_gen.parameters())
        for p in meta_params:
            p.grad = torch.zeros_like(p)
        adv_on = cfg.adv > 0 and ep >= cfg.warmup
        best = {"loss_inv": math.inf}
        best_x = None
        with self.synthesis_mode():
            for _ in range(cfg.g_steps):
                x = fast(z)  # pixel space [0, 1]
                xa = info.normalize(random_translate_flip(x, info.hflip, g))
                t_logits = self._synth_logits(xa)
                loss_bn = self._bn_loss()
                loss_oh = F.cross_entropy(t_logits, y)
                loss_adv = self.adversarial_loss(xa, t_logits) if adv_on else torch.zeros((), device=self.device)
                loss = cfg.bn * loss_bn + cfg.oh * loss_oh + cfg.adv * loss_adv
                loss = loss + self.defense.generator_loss(self, xa, t_logits)
                value = float(loss.detach())
                if value < best["loss_inv"] or best_x is None:
                    best = {"loss_inv": value, "loss_bn": float(loss_bn.detach()), "loss_oh": float(loss_oh.detach()),
                            "loss_adv": float(loss_adv.detach())}
                    best_x = x.detach().clone()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.meta == "fomaml":
                    add_fomaml_grad(meta_params, list(fast.parameters()))
                opt.step()
            self.bn_past = [h.updated() for h in self.bn_hooks]
        if cfg.meta == "reptile":
            set_reptile_grad(meta_params, list(fast.parameters()))
        self.meta_opt.step()
        self.fast_generator = fast  # the last epoch's adapted copy (for inspection)
        if best_x is not None:
            self.pool = torch.cat([self.pool, best_x.float()])
        return best

    @property
    def warmup_left(self) -> int:
        """Warm-up epochs this run still owes (none once a carried memory has done them)."""
        done = int(self.carried.get("epochs_done", 0)) if self.cfg.carry else 0
        return max(0, self.cfg.warmup - done)

    @property
    def total_iterations(self) -> int:
        return self.warmup_left + self.cfg.epochs

    def kd_step_index(self, it: int, k: int) -> tuple[int, int]:
        return (it - self.warmup_left) * self.cfg.kd_steps + k, self.cfg.epochs * self.cfg.kd_steps

    def kd_lr(self, it: int, k: int) -> float:
        """Cosine over the KD epochs, stepped per epoch, from ``s_lr`` to ``s_min_lr`` (the authors')."""
        cfg = self.cfg
        j = it - self.warmup_left
        return cfg.s_min_lr + 0.5 * (cfg.s_lr - cfg.s_min_lr) * (1 + math.cos(math.pi * j / max(1, cfg.epochs)))

    def iteration(self, it: int) -> dict:
        row = self.synthesize()
        if it >= self.warmup_left:
            row.update(self.kd_epoch(it))
        row["pool_size"] = float(self.pool.shape[0])
        return row
