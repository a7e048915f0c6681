"""CMI: Contrastive Model Inversion (Fang et al. 2021).

One iteration = one epoch:

1. Synthesis. A freshly initialised generator G (seeded from the run) and a new latent batch z
   are optimised together (Adam) for ``g_steps`` steps on one batch of ``synth_batch`` images with
   uniform random labels y::

       L_inv = bn*L_BN + oh*CE(T(x_g), y) + adv*L_adv + cr*L_cr + tv*L_TV + l2*L_l2
               + defense.generator_loss(x_g, T(x_g))

   where x_g / x_l are a global view (random translation + flip) and a local view (random
   resized crop, scale 0.25-1, + flip) of G(z). L_BN sums, over the teacher's BatchNorm2d
   layers (every member of an ensemble), ||mu_batch - running_mean||_2 + ||var_batch -
   running_var||_2 of the layer inputs (0 for a teacher without BN such as LeNet-5).
   L_adv = -mean_i 1[argmax S = argmax T] * KL(T || S). L_cr is the instance contrastive
   (NT-Xent) loss between the local and global views' features (per-channel means of the
   teacher's BN inputs, or of its returned feature maps when it has no BN), projected by an MLP
   head trained jointly and kept across epochs; the features of past synthesised images in a
   memory bank are extra negatives. L_TV / L_l2 are optional DeepInversion image priors (off
   in the paper preset). The step with the lowest total loss gives the batch that joins the
   synthetic pool (pixel space [0, 1], detached) and its features join the memory bank.
   With ``generator_carry`` (ours, for federated rounds: the `fed` preset's) the generator is
   not fresh: each synthesis continues the previous one's (the previous round's for the first
   synthesis of a run, through :meth:`memory`) for ``carried_g_steps`` steps, a new z each time.
2. KD. ``kd_steps`` student steps on batches of ``kd_batch`` drawn from the whole pool
   (translation + flip where the dataset allows it), loss tau^2*KL_tau(T || S), SGD with a
   cosine learning rate (``s_schedule``: "epoch" restarts it every epoch, "run" anneals over
   the whole run; the authors' anneals over the whole run, the paper preset's choice). In a
   defence's final phase the student optimiser is the base class's (:meth:`Distiller.on_final_phase`,
   with SR a fresh SGD from ``sr_lr`` annealed to 0 per epoch, or per KD step with
   ``final_phase_unit="step"``, whose fraction counts KD steps: the `fed` preset's) and ``defense.final_phase_step`` runs
   between backward and step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...device import autocast
from ...models import create_generator
from ...models.ensemble import Ensemble, combine_logits
from ..base import DISTILLERS, Distiller, load_entries, no_param_grad, state_entries
from ..augment import random_resized_crop, random_translate_flip
from ..losses import bn_stat_loss, contrastive_loss, kd_loss, kl_div, tv_loss


@dataclass(frozen=True)
class CMIConfig:
    epochs: int = 30
    # synthesis
    nz: int = 256
    synth_batch: int = 64
    g_steps: int = 50
    g_lr: float = 1e-3
    generator_width: int = 16  # the generator dominates the cost
    bn: float = 1.0
    oh: float = 1.0
    adv: float = 0.5
    cr: float = 0.8
    cr_temperature: float = 0.1
    tv: float = 0.0  # total-variation image prior (DeepInversion); 0 = off
    l2: float = 0.0  # l2 image prior on the normalised image; 0 = off
    bank_size: int = 4096  # memory bank of past features (rows = past images), FIFO
    n_neg: int = 512  # bank rows drawn as extra negatives at each generator step
    head_dim: int = 128  # output dim of the contrastive MLP head (the authors': 256, the paper preset)
    head_beta1: float = 0.9  # Adam beta1 of the head (the authors': PyTorch's default 0.9)
    local_scale_min: float = 0.25  # random-resized-crop scale range of the local view
    # student
    kd_steps: int = 80
    kd_batch: int = 128
    tau: float = 20.0
    s_lr: float = 0.01  # 0.1 / 0.05 killed the BN-free LeNet-half student on MNIST (measured)
    s_momentum: float = 0.9
    s_wd: float = 1e-4
    s_schedule: str = "run"  # "epoch": cosine restarted each epoch; "run": cosine over the whole run
    sr_lr: float = 5e-4  # student LR at the start of a defence's final phase
    # where a defence's final phase (SR) may start: "epoch" (whole epochs, the authors') or "step"
    # (its fraction counts KD steps, so a short per-round run is not 1/epochs SR)
    final_phase_unit: str = "epoch"
    # across runs (federated rounds): synthetic images kept for the next run's KD (0 = none, the authors')
    pool_carry: int = 0
    # keep the generator from one synthesis to the next, and across runs (False: a fresh one each epoch,
    # the authors'); a synthesis that starts from a kept generator takes ``carried_g_steps`` steps (0: g_steps)
    generator_carry: bool = False
    carried_g_steps: int = 0
    # KD batches translated / flipped (the authors'); False: images as synthesised, teachers run once per image
    kd_augment: bool = True


presets = {
    "cpu": CMIConfig(),
    "paper": CMIConfig(epochs=200, nz=256, synth_batch=256, g_steps=200, g_lr=1e-3, generator_width=64,
                       bn=1.0, oh=1.0, adv=0.5, cr=0.8, cr_temperature=0.1, tv=0.0, l2=0.0,
                       bank_size=40960, n_neg=4096, head_dim=256, kd_steps=400, kd_batch=128, tau=20.0,
                       s_lr=0.1, s_momentum=0.9, s_wd=1e-4, s_schedule="run", sr_lr=5e-4),
    # one federated round on the CPU: the student is warm-started from the previous round's, the
    # generator kept (50 steps for a fresh one, 10 after: same Acc in 3 seeds, 2x less; results/quickstart)
    "fed": CMIConfig(epochs=5, kd_steps=60, final_phase_unit="step", generator_carry=True, carried_g_steps=10),
    # the smallest run through every code path (tests, and a quick check of a set-up)
    "smoke": CMIConfig(epochs=2, g_steps=2, synth_batch=8, kd_steps=2, kd_batch=8, generator_width=8, nz=16,
                       bank_size=32, n_neg=8, head_dim=16),
}


class MLPHead(nn.Module):
    """Linear - ReLU - Linear, output L2-normalised (the CMI projection head)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


# -- the distiller --------------------------------------------------------------------------------

class _BNHook:
    """Forward hook on a BatchNorm2d: the BN statistics loss and the per-channel instance means
    of the layer's input, computed at each call (the last call wins)."""

    def __init__(self, module: nn.BatchNorm2d) -> None:
        self.module = module
        self.loss: torch.Tensor | None = None
        self.instance_mean: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0]
        self.loss = bn_stat_loss(x, module)
        self.instance_mean = x.float().mean(dim=(2, 3))

    def remove(self) -> None:
        self.handle.remove()


@DISTILLERS.register("cmi")
class CMIDistiller(Distiller):
    config_cls = CMIConfig
    presets = presets
    unit = "epoch"

    @property
    def total_iterations(self) -> int:
        return self.cfg.epochs

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.s_schedule not in ("epoch", "run"):
            raise ValueError(f"s_schedule must be 'epoch' or 'run', got {cfg.s_schedule!r}")
        self.set_final_phase_unit()
        self.setup_members()
        try:
            self._add_hooks()
            with torch.no_grad():
                probe = torch.zeros(2, *info.shape, device=self.device)
                _, feat = self._invert_forward(probe)
        finally:
            self._remove_hooks()
        self.head = MLPHead(feat.shape[1], cfg.head_dim).to(self.device)
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.g_lr, betas=(cfg.head_beta1, 0.999))
        self.bank = torch.empty(0, 2 * feat.shape[1], device=self.device)
        self.pool = torch.empty(0, *info.shape, device=self.device)
        self.restore_pool()
        self.kept_gen = None  # generator_carry: the previous run's generator (built only if memory holds one that fits)
        if cfg.generator_carry and any(k.startswith("cmi_generator.") for k in self.carried):
            gen = self.new_generator()
            self.kept_gen = gen if load_entries(gen, self.carried, "cmi_generator.") else None
        self.student_opt = torch.optim.SGD(self.student.parameters(), lr=cfg.s_lr, momentum=cfg.s_momentum,
                                           weight_decay=cfg.s_wd)

    def new_generator(self) -> nn.Module:
        cfg, info = self.cfg, self.info
        return create_generator("cmi", cfg.nz, info.channels, info.image_size, cfg.generator_width).to(self.device)

    def setup_members(self) -> None:
        """The teachers one by one (an ensemble's members), their weights and BatchNorm layers."""
        ensemble = isinstance(self.teacher, Ensemble)
        self.members = list(self.teacher.members) if ensemble else [self.teacher]
        self.member_weights = self.teacher.weights.detach().clone() if ensemble else torch.ones(1, device=self.device)
        self.bn_layers = [mod for m in self.members for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
        self.uses_bn = bool(self.bn_layers)
        self.bn_hooks = []

    # -- memory across runs: the last ``pool_carry`` synthetic images ------------------------------
    def memory(self) -> dict[str, torch.Tensor]:
        n = self.cfg.pool_carry
        out = {"pool": self.pool[-n:].detach().cpu().clone()} if n > 0 and self.pool.shape[0] else {}
        if getattr(self.cfg, "generator_carry", False) and self.kept_gen is not None:
            out.update(state_entries(self.kept_gen, "cmi_generator."))
        return out

    def restore_pool(self) -> None:
        """Start the pool from a previous run's images (when ``pool_carry`` and they fit this dataset)."""
        pool = self.carried.get("pool")
        if self.cfg.pool_carry > 0 and pool is not None and tuple(pool.shape[1:]) == tuple(self.pool.shape[1:]):
            self.pool = pool[-self.cfg.pool_carry:].to(self.device, torch.float32)

    def set_final_phase_unit(self) -> None:
        if self.cfg.final_phase_unit not in ("epoch", "step"):
            raise ValueError(f"final_phase_unit must be 'epoch' or 'step', got {self.cfg.final_phase_unit!r}")
        self.final_phase_in_steps = self.cfg.final_phase_unit == "step"

    def kd_step_index(self, it: int, k: int) -> tuple[int, int]:
        """KD step ``k`` of epoch ``it`` as (step, total steps) of the run."""
        return it * self.cfg.kd_steps + k, self.cfg.epochs * self.cfg.kd_steps

    # hooks live only during the synthesis, so the KD steps' teacher calls pay nothing for them
    def _add_hooks(self) -> None:
        self.bn_hooks = [_BNHook(mod) for mod in self.bn_layers]

    def _remove_hooks(self) -> None:
        for h in self.bn_hooks:
            h.remove()
        self.bn_hooks = []

    def sr_divergence(self, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        """tau^2 * KL_tau per sample, the KD loss's own form (the authors' CMI unlearning)."""
        return kl_div(p_logits, q_logits, self.cfg.tau, reduction="none") * self.cfg.tau ** 2

    @contextlib.contextmanager
    def synthesis_mode(self):
        """During a synthesis: the student in eval mode without parameter gradients and the teachers'
        BN hooks on; all undone after."""
        was_training = self.student.training
        self.student.eval()
        self._add_hooks()
        try:
            with no_param_grad(self.student):
                yield
        finally:
            self._remove_hooks()
            self.student.train(was_training)

    def adversarial_loss(self, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """-mean_i 1[argmax S = argmax T] * KL(T || S) on ``x``: the synthesis seeks where the student
        still agrees with the teacher but matches it least."""
        s_logits = self.student_logits(x)
        agree = (s_logits.argmax(1) == t_logits.argmax(1)).float()
        return -(kl_div(t_logits, s_logits, reduction="none") * agree).mean()

    # -- teacher passes for the inversion -----------------------------------------------------------
    def _invert_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits (members called one by one so that every BN hook fires, combined by the
        ensemble's rule, the same target the KD steps use) and the contrastive features (B, D) of
        normalised input ``x``; input gradients flow."""
        x = self.prep(x)
        outs, feats = [], []
        for m in self.members:
            with autocast(self.device, self.bf16):
                if self.uses_bn:
                    out = m(x)
                else:
                    out, maps = m(x, return_features=True)
                    feats.extend(f.float().mean(dim=(2, 3)) for f in maps)
            outs.append(out.float())
        if self.uses_bn:
            feats = [h.instance_mean for h in self.bn_hooks]
        return self._combine(outs), torch.cat(feats, 1)

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """The members' logits as the ensemble combines them (a weighted sum for ``logit_mean``,
        summed in member order as before the rules existed)."""
        rule = getattr(self.teacher, "combine", "logit_mean")
        if rule == "logit_mean" or len(outs) == 1:
            logits = 0.0
            for w, out in zip(self.member_weights, outs):
                logits = logits + w * out
            return logits
        return combine_logits(torch.stack(outs), self.member_weights, rule)

    def _bn_loss(self) -> torch.Tensor:
        if not self.uses_bn:
            return torch.zeros((), device=self.device)
        # an ensemble sums over all members' layers, as for one model (not a member mean)
        return sum(h.loss for h in self.bn_hooks)

    # -- one epoch -----------------------------------------------------------------------------------
    def synthesize(self) -> dict:
        cfg, info, g = self.cfg, self.info, self.generator
        n = cfg.synth_batch
        steps = cfg.g_steps
        if cfg.generator_carry and self.kept_gen is not None:
            gen, steps = self.kept_gen, cfg.carried_g_steps or cfg.g_steps
        else:
            gen = self.new_generator()
        if cfg.generator_carry:
            self.kept_gen = gen
        gen.train()
        z = torch.randn(n, cfg.nz, generator=g).to(self.device).requires_grad_(True)
        y = torch.randint(0, info.num_classes, (n,), generator=g).to(self.device)
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z]}], lr=cfg.g_lr, betas=(0.5, 0.999))
        best = {"loss_inv": math.inf}
        best_x = best_feat = None
        n_neg = min(cfg.n_neg, self.bank.shape[0])
        with self.synthesis_mode():
            for _ in range(steps):
                x = gen(z)  # pixel space [0, 1]
                xg = info.normalize(random_translate_flip(x, info.hflip, g))
                xl = info.normalize(random_resized_crop(x, info.hflip, g, (cfg.local_scale_min, 1.0)))
                t_logits, gfeat = self._invert_forward(xg)
                loss_bn = self._bn_loss()
                loss_oh = F.cross_entropy(t_logits, y)
                loss_adv = self.adversarial_loss(xg, t_logits) if cfg.adv > 0 else torch.zeros((), device=self.device)
                if cfg.cr > 0:
                    _, lfeat = self._invert_forward(xl)
                    if n_neg > 0:
                        idx = torch.randperm(self.bank.shape[0], generator=g)[:n_neg].to(self.device)
                        cached_l, cached_g = self.bank[idx].chunk(2, dim=1)
                        all_l, all_g = torch.cat([lfeat, cached_l]), torch.cat([gfeat, cached_g])
                    else:
                        all_l, all_g = lfeat, gfeat
                    proj = self.head(torch.cat([all_l, all_g]))
                    pl, pg = proj.chunk(2, dim=0)
                    loss_cr = contrastive_loss(pl, pg.detach(), cfg.cr_temperature)
                else:
                    lfeat = gfeat
                    loss_cr = torch.zeros((), device=self.device)
                loss = cfg.bn * loss_bn + cfg.oh * loss_oh + cfg.adv * loss_adv + cfg.cr * loss_cr
                if cfg.tv > 0:
                    loss = loss + cfg.tv * tv_loss(x)
                if cfg.l2 > 0:
                    loss = loss + cfg.l2 * info.normalize(x).pow(2).mean()
                d = self.defense.generator_loss(self, xg, t_logits)
                loss = loss + d
                value = float(loss.detach())
                if value < best["loss_inv"] or best_x is None:
                    best = {"loss_inv": value, "loss_bn": float(loss_bn.detach()), "loss_oh": float(loss_oh.detach()),
                            "loss_adv": float(loss_adv.detach()), "loss_cr": float(loss_cr.detach())}
                    best_x = x.detach().clone()
                    best_feat = torch.cat([lfeat, gfeat], 1).detach().clone()
                opt.zero_grad(set_to_none=True)
                self.head_opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.head_opt.step()
        if best_x is not None:
            self.pool = torch.cat([self.pool, best_x.float()])
            self.bank = torch.cat([self.bank, best_feat.float()])[-cfg.bank_size:] if cfg.bank_size > 0 else self.bank
        return best

    def kd_lr(self, it: int, k: int) -> float:
        """The student's LR at KD step ``k`` of epoch ``it`` (cosine, see ``s_schedule``)."""
        cfg = self.cfg
        if cfg.s_schedule == "epoch":
            return 0.5 * cfg.s_lr * (1 + math.cos(math.pi * k / cfg.kd_steps))
        done, total = it * cfg.kd_steps + k, cfg.epochs * cfg.kd_steps
        return 0.5 * cfg.s_lr * (1 + math.cos(math.pi * done / total))

    def kd_epoch(self, it: int) -> dict:
        cfg, info, g = self.cfg, self.info, self.generator
        losses, extra = [], {}
        size = self.pool.shape[0]
        if size == 0 or cfg.kd_steps <= 0:
            return {"loss_kd": float("nan")}
        self.student.train()
        for k in range(cfg.kd_steps):
            if self.final_phase_in_steps:
                self.final_phase_at_step(*self.kd_step_index(it, k))
            if not self.in_final_phase:  # the final phase's LR is the base class's (on_final_phase)
                for group in self.student_opt.param_groups:
                    group["lr"] = self.kd_lr(it, k)
            idx = torch.randint(0, size, (min(cfg.kd_batch, size),), generator=g).to(self.device)
            if cfg.kd_augment:
                x = info.normalize(random_translate_flip(self.pool[idx], info.hflip, g)).detach()
                t = self.teacher_logits(x)
            else:
                x, t = info.normalize(self.pool[idx]), self.pool_teacher_logits()[idx]
            s = self.student_logits(x)
            loss = kd_loss(t, s, cfg.tau)
            for key, v in self.student_step(loss, x).items():
                extra.setdefault(key, []).append(float(v))
            losses.append(float(loss.detach()))
        row = {"loss_kd": sum(losses) / len(losses)}
        row.update({key: sum(v) / len(v) for key, v in extra.items()})
        return row

    def pool_teacher_logits(self) -> torch.Tensor:
        """The teachers' logits on every pool image as synthesised (``kd_augment=False``): images
        added since the last call are run through the teachers once, in KD-batch chunks."""
        cache = getattr(self, "_pool_logits", None)
        done = 0 if cache is None else cache.shape[0]
        new = [self.teacher_logits(self.info.normalize(self.pool[i:i + self.cfg.kd_batch]))
               for i in range(done, self.pool.shape[0], self.cfg.kd_batch)]
        if new:
            self._pool_logits = torch.cat(([cache] if cache is not None else []) + new)
        return self._pool_logits

    def iteration(self, it: int) -> dict:
        row = self.synthesize()
        row.update(self.kd_epoch(it))
        row["pool_size"] = float(self.pool.shape[0])
        return row
