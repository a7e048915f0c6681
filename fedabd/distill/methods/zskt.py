"""ZSKT: zero-shot knowledge transfer by adversarial belief matching (Micaelli & Storkey 2019).

One iteration is one *pseudo-batch*:

1. sample ``z ~ N(0, I)`` (``batch_size x nz``, from the run's seeded torch RNG, on the device);
2. one generator step maximising the divergence on ``x = G(z)``:
   ``L_G = -D(T(x) || S(x)) + defense.generator_loss(x, T(x))`` (the teacher is frozen, only the
   input gradient flows; student weights get no gradient in this step);
3. the student steps' batch is ``G(z)`` from the generator *after* its step (same ``z``), as the
   authors' code draws it (``student_batch="after"``: one extra generator forward under
   ``no_grad`` per pseudo-batch); ``student_batch="before"`` (ours) reuses the generator step's own
   batch and saves that forward. The batch is detached, the teacher's logits and attention maps on
   it are computed ONCE under ``no_grad``, then ``student_steps_per_pb`` student steps on it:
   ``L_S = D(T(x) || S(x)) + beta * AT(S, T)``.

``D`` is the KL divergence at temperature 1 with the authors' scale: ``kl_reduction="mean"``
averages PyTorch's element-wise KL over batch *and* classes, i.e. the per-sample KL divided by the
number of classes C (their ``F.kl_div(..., reduction='mean')``). This scale sets the balance
against the attention term (beta 250) and against SV's generator loss (whose divergence is also
KL / C). ``kl_reduction="batchmean"`` (the per-sample KL, C times larger) is fedabd's earlier form,
kept to re-run older results.

Step 3 saves work: neither the generator nor the teacher is re-run for every
student step (the generator is the most expensive network here). ``naive=True`` is the
straightforward baseline for the benchmark only: it re-runs ``G(z)`` and the teacher for every
student step (so its batch comes from the generator *after* its update; otherwise the same maths).

Attention transfer (AT) is used when ``attention`` is on, ``beta > 0`` and the teacher and student
expose the same number of feature maps with equal spatial sizes (channels may differ). For an
ensemble teacher the members' attention maps are averaged per layer (with the ensemble weights).
When the shapes do not match AT is switched off; this is logged once and recorded in
:attr:`ZSKT.at_status`.

Optimisers: Adam for generator and student, cosine LR over the run (stepped per pseudo-batch),
gradient-norm clipping. In a defence's final phase the student optimiser is switched by the base
class (:meth:`Distiller.on_final_phase`: with SR, a fresh Adam at ``sr_lr`` annealed to 0, no
clipping) and the defence's ``final_phase_step`` runs after each student backward, before the
optimiser step; the generator keeps training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ...device import autocast
from ...models import create_generator
from ...models.ensemble import Ensemble
from ..base import DISTILLERS, Distiller, no_param_grad
from ..losses import attention_loss, attention_map, kl_div

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZSKTConfig:
    """Defaults are the CPU preset; ``presets["paper"]`` holds the paper's values."""

    nz: int = 100                      # latent size
    batch_size: int = 128              # synthetic images per pseudo-batch
    student_steps_per_pb: int = 10     # n_s
    generator_steps_per_pb: int = 1    # n_g
    g_lr: float = 1e-3                 # generator Adam LR
    s_lr: float = 2e-3                 # student Adam LR
    beta: float = 250.0                # attention-transfer weight
    grad_clip: float = 5.0             # gradient-norm clip (generator and student); <= 0 disables
    pseudo_batches: int = 600          # run length (paper: 80000)
    generator_width: int = 32          # generator base width (paper: 64)
    cosine: bool = True                # cosine LR schedule over the run (both optimisers)
    sr_lr: float = 5e-4                # student LR during a defence's final phase
    attention: bool = True             # attention transfer when teacher/student shapes allow it
    naive: bool = False                # re-run G and T for every student step (benchmark baseline)
    kl_reduction: str = "mean"         # "mean": KL / C (the authors'); "batchmean": per-sample KL (ours before)
    student_batch: str = "after"       # "after": G(z) after the generator step (the authors'); "before" (ours)

    def __post_init__(self) -> None:
        for name in ("nz", "batch_size", "student_steps_per_pb", "pseudo_batches", "generator_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"ZSKTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.generator_steps_per_pb < 0:
            raise ValueError("ZSKTConfig.generator_steps_per_pb must be >= 0")
        for name in ("g_lr", "s_lr", "sr_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ZSKTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError("ZSKTConfig.beta must be >= 0")
        if self.kl_reduction not in ("mean", "batchmean"):
            raise ValueError(f"ZSKTConfig.kl_reduction must be 'mean' or 'batchmean', got {self.kl_reduction!r}")
        if self.student_batch not in ("after", "before"):
            raise ValueError(f"ZSKTConfig.student_batch must be 'after' or 'before', got {self.student_batch!r}")


PRESETS = {
    "cpu": ZSKTConfig(),
    "paper": ZSKTConfig(nz=100, batch_size=128, student_steps_per_pb=10, generator_steps_per_pb=1,
                        g_lr=1e-3, s_lr=2e-3, beta=250.0, grad_clip=5.0, pseudo_batches=80000,
                        generator_width=64),
    # one federated round on the CPU: the student is warm-started from the previous round's
    "fed": ZSKTConfig(pseudo_batches=200),
    # the smallest run through every code path (tests, and a quick check of a set-up)
    "smoke": ZSKTConfig(batch_size=16, generator_width=4, pseudo_batches=3, student_steps_per_pb=3),
}


@DISTILLERS.register("zskt")
class ZSKT(Distiller):
    config_cls = ZSKTConfig
    presets = PRESETS
    unit = "pseudo-batch"
    sr_detach_clean = True   # the authors' ZSKT SR detaches S(x) in the outer loss
    sr_trigger_reg = 1e-3    # ... and adds 0.001 ||delta||^2 to its trigger search

    #: AT decision: None before the first pseudo-batch, then "on", "off (config)" or "off (<reason>)".
    at_status: str | None = None

    @property
    def total_iterations(self) -> int:
        return self.cfg.pseudo_batches

    @property
    def at_enabled(self) -> bool:
        return self.at_status == "on"

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        info = self.info
        self.gen = create_generator("zskt", cfg.nz, info.channels, info.image_size, cfg.generator_width).to(self.device)
        if self.channels_last:
            self.gen.to(memory_format=torch.channels_last)
        self.gen.train()
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.g_lr)
        self.student_opt = torch.optim.Adam(self.student.parameters(), lr=cfg.s_lr)
        total = max(1, cfg.pseudo_batches)
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=total) if cfg.cosine else None
        self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(self.student_opt, T_max=total) if cfg.cosine else None
        self.at_status = None if (cfg.attention and cfg.beta > 0) else "off (config)"
        self.teacher_calls = 0  # teacher forward passes (for tests / benchmarks)

    def divergence(self, t_logits: torch.Tensor, s_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
        """KL_1(T || S) at the configured scale (``kl_reduction``); ``reduction`` "none" gives it per sample."""
        per = kl_div(t_logits, s_logits, reduction="none")
        if self.cfg.kl_reduction == "mean":
            per = per / t_logits.shape[1]
        return per if reduction == "none" else per.mean()

    def sr_divergence(self, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        return self.divergence(p_logits, q_logits, reduction="none")

    # -- pieces -------------------------------------------------------------------------------
    def _sample(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.bf16):
            x = self.gen(z)
        return x.float()

    def _teacher_targets(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Teacher logits and (when AT may be used) per-layer attention maps, without gradients."""
        self.teacher_calls += 1
        if self.at_status is not None and self.at_status != "on":
            return self.teacher_logits(x), None
        with torch.no_grad(), autocast(self.device, self.bf16):
            logits, feats = self.teacher(self.prep(x), return_features=True)
            logits = logits.float()
            if isinstance(self.teacher, Ensemble) and len(self.teacher.members) > 1:
                attn = self._ensemble_attention(feats)
            else:
                attn = [attention_map(f) for f in feats]
        return logits, attn

    def _ensemble_attention(self, per_member: list[list[torch.Tensor]]) -> list[torch.Tensor] | None:
        """Weighted mean over members of each layer's attention map; None if members disagree."""
        n_layers = {len(f) for f in per_member}
        if len(n_layers) != 1:
            self._disable_at("ensemble members expose different numbers of feature maps")
            return None
        weights = self.teacher.weights
        out = []
        for layer in range(n_layers.pop()):
            maps = [attention_map(f[layer]) for f in per_member]
            if len({tuple(m.shape) for m in maps}) != 1:
                self._disable_at(f"ensemble members' feature map {layer} differ in spatial size")
                return None
            out.append(torch.einsum("k,kbn->bn", weights.float(), torch.stack(maps)))
        return out

    def _disable_at(self, reason: str) -> None:
        if self.at_status is None or self.at_status == "on":
            self.at_status = f"off ({reason})"
            log.warning("ZSKT: attention transfer disabled: %s", reason)

    def _check_at(self, t_attn: list[torch.Tensor] | None, s_feats: list[torch.Tensor]) -> None:
        """Decide once (first student step) whether AT applies to this teacher/student pair."""
        if t_attn is None:
            self._disable_at("teacher exposes no usable feature maps")
            return
        if not t_attn or len(t_attn) != len(s_feats):
            self._disable_at(f"teacher has {len(t_attn)} feature maps, student {len(s_feats)}")
            return
        for layer, (ta, fs) in enumerate(zip(t_attn, s_feats)):
            if ta.shape[1] != fs.shape[-2] * fs.shape[-1]:
                self._disable_at(f"feature map {layer}: student spatial size {tuple(fs.shape[-2:])} "
                                 f"does not match the teacher's ({ta.shape[1]} positions)")
                return
        self.at_status = "on"
        log.info("ZSKT: attention transfer on %d feature maps (beta=%g)", len(t_attn), self.cfg.beta)

    def _clip(self, params) -> None:
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def _generator_step(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One generator step; returns its loss and the (detached) batch it was computed on."""
        x = self._sample(z)
        with no_param_grad(self.student):  # only the generator's parameters get gradients
            self.teacher_calls += 1
            t_logits = self.teacher_logits(x, grad=True)
            s_logits = self.student_logits(x)
            loss = -self.divergence(t_logits, s_logits) + self.defense.generator_loss(self, x, t_logits)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        self._clip(self.gen.parameters())
        self.opt_g.step()
        return float(loss.detach()), x.detach()

    def _student_step(self, x: torch.Tensor, t_logits: torch.Tensor, t_attn: list[torch.Tensor] | None) -> dict:
        cfg = self.cfg
        metrics: dict = {}
        want_at = self.at_status is None or self.at_status == "on"
        if want_at:
            s_logits, s_feats = self.student_logits(x, return_features=True)
            if self.at_status is None:
                self._check_at(t_attn, s_feats)
        else:
            s_logits = self.student_logits(x)
        kl = self.divergence(t_logits, s_logits)
        loss = kl
        if self.at_status == "on":
            at = attention_loss(s_feats, t_attn)
            loss = loss + cfg.beta * at
            metrics["at"] = float(at.detach())
        metrics.update(self.student_step(loss, x, clip=self._clip))
        metrics["kl_s"] = float(kl.detach())
        metrics["loss_s"] = float(loss.detach())
        return metrics

    # -- one pseudo-batch ---------------------------------------------------------------------
    def iteration(self, it: int) -> dict:
        cfg = self.cfg
        z = torch.randn(cfg.batch_size, cfg.nz, device=self.device)
        out: dict = {}
        x = None
        for _ in range(cfg.generator_steps_per_pb):
            out["loss_g"], x = self._generator_step(z)

        if not cfg.naive:
            if x is None or cfg.student_batch == "after":  # G(z) from the updated generator
                with torch.no_grad():
                    x = self._sample(z)
            t_logits, t_attn = self._teacher_targets(x)
        for _ in range(cfg.student_steps_per_pb):
            if cfg.naive:  # benchmark baseline: recompute the batch and its targets every step
                with torch.no_grad():
                    x = self._sample(z)
                t_logits, t_attn = self._teacher_targets(x)
            out.update(self._student_step(x, t_logits, t_attn))

        if self.sched_g is not None:
            self.sched_g.step()
        if self.sched_s is not None and not self.in_final_phase:
            self.sched_s.step()
        return out
