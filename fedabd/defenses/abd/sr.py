"""Self-Retrospection (SR): ABD's end-of-distillation unlearning step (Hong et al., ICML 2023).

In the final ``fraction`` of the run every student step additionally does:

**The divergence.** ``D(p || q)`` below is the distiller's own (:meth:`Distiller.sr_divergence`,
``divergence="method"``), the form the authors' SR uses for each method: ZSKT the KL at
temperature 1 divided by the number of classes; CMI and OOD ``tau^2 * KL_tau`` at their KD
temperature (20 and 8). ``divergence="kl1"`` (fedabd's earlier form) uses the plain KL at
temperature 1 for every method.

1. **Trigger synthesis.** One universal perturbation ``delta`` of shape ``1 x C x H x W`` is found by
   ``trigger_steps`` Adam steps (lr ``trigger_lr``) maximising
   ``mean_i D(M(x_i) || M(x_i + delta)) - reg * ||delta||^2`` (``reg`` the method's
   :attr:`Distiller.sr_trigger_reg`: 0.001 for ZSKT as the authors', else 0), ``M`` the teacher
   (``trigger_source="teacher"``, the default: the authors' defence runs take it from the teacher
   for every method) or the student. Only ``d objective / d delta`` is computed (``torch.autograd.grad``), so nothing lands
   in any parameter's ``.grad``. The reference starts at exactly ``delta = 0`` where the gradient of
   the KL vanishes (only Adam's normalisation lets it move at all); we start by default from small
   Gaussian noise (``trigger_init="noise"``, std ``init_std``); ``"zero"`` reproduces the reference.
   ``restarts > 1`` runs the search from several starts and keeps the one with the largest final
   objective; ``trigger_norm_bound > 0`` projects ``delta`` onto that L2 ball after every step.

2. **Unlearning by implicit hypergradient** (I-BAU style), see :func:`implicit_hypergradient`:
   inner objective ``L_in(d, th) = -D([S_th(x)] || S_th(x + d)) + inner_reg * ||d||^2`` with the
   clean branch ``[S_th(x)]`` computed without gradient (as the authors do; then ``dPhi/dth`` misses
   the clean branch's part and the result is an approximation of the total derivative below;
   ``inner_clean_grad=True`` keeps that part and makes it exact, fedabd's earlier form),
   fixed-point map ``Phi(d, th) = d - inner_lr * grad_d L_in(d, th)``,
   outer loss ``L_out(d, th) = (1/B) sum_i D(S_th(x_i) || S_th(x_i + d * 1[i in I]))``, with ``I`` a
   random subset of ``max(1, floor(portion * B))`` samples (only those contribute; the mean is over
   the whole batch as in the spec's formula); the clean branch ``S_th(x_i)`` of ``L_out`` is detached
   for methods whose authors' code does so (:attr:`Distiller.sr_detach_clean`: ZSKT). With
   ``g = dL_out/dd``, ``v_0 = 0`` and ``K`` iterations ``v <- (dPhi/dd)^T v + g`` (a truncated Neumann
   series for ``(I - dPhi/dd)^{-T} g`` with K terms, as the authors' ``fixed_point``), the
   gradient added to the student is ``weight * (dL_out/dth + (dPhi/dth)^T v)``. This is the total
   derivative of ``L_out(d*(th), th)`` for the fixed point ``d* = Phi(d*, th)`` (exact as K -> inf
   when ``Phi`` is a contraction in ``d``).

   ``search="mask"`` / ``"auto"`` (ours, not in the paper) replace steps 1-2 with a
   Neural-Cleanse-style mask-and-pattern trigger: see :mod:`fedabd.defenses.abd.sr_mask`.

3. The distiller then takes its optimiser step with KD gradient + SR gradient. The final phase's
   optimiser (:attr:`final_phase_optimizer`) is the authors' by default: a fresh optimiser
   (``fresh_optimizer``) at the method's ``sr_lr``, cosine-annealed to 0 over the phase
   (``lr_schedule="cosine"``), with no gradient clipping (``clip=False``). fedabd's earlier phase
   (``fresh_optimizer=False, lr_schedule="constant", clip=True``) kept the main phase's optimiser
   state, held ``sr_lr`` to the end and clipped KD + SR together.

**BatchNorm / dropout.** SR's extra forward passes must not move the student's BN running
statistics. ``bn_mode="eval"`` (default) runs them with the *whole student in eval mode* (running
statistics used and untouched, dropout off; each module's previous ``training`` flag is restored
afterwards). This is the function that is deployed and evaluated (ASR is measured in eval mode),
a universal additive ``delta`` is not partly normalised away by batch statistics, samples are
independent so the outer loss can be computed on the patched subset only, and the fixed-point map
is deterministic. ``bn_mode="train"`` keeps train-mode (batch-statistics) forwards and saves /
restores every BN buffer (running mean / var / num_batches_tracked) around SR instead.
For models without BN or dropout (LeNet) both modes are identical.

SR runs in float32 (no bf16 autocast: it differentiates twice) on the device of ``x``; all of
its randomness (subset ``I``, noise starts) comes from a generator seeded by the run's seed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from ...distill.base import Defense, FinalPhase
from ...distill.losses import kl_div
from ..base import DEFENSES
from .sr_config import SRConfig
from .sr_mask import MaskTrigger, _float, search_mask

log = logging.getLogger("fedabd.defenses.abd.sr")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _float(model(x))


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) as :func:`fedabd.distill.losses.kl_div` (tau 1), but in the
    inputs' precision (float64 stays float64)."""
    if p_logits.dtype == torch.float64 or q_logits.dtype == torch.float64:
        t = torch.log_softmax(p_logits.double(), dim=1)
        s = torch.log_softmax(q_logits.double(), dim=1)
        per = (t.exp() * (t - s)).sum(1)
        return per if reduction == "none" else per.mean()
    return kl_div(p_logits, q_logits, reduction=reduction)


def _batch_dependent(model: nn.Module) -> bool:
    """True if some BN layer of ``model`` uses batch statistics (samples not independent)."""
    return any(isinstance(m, _BN_TYPES) and (m.training or not m.track_running_stats) for m in model.modules())


def patched_subset(batch: int, portion: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (CPU, int64, sorted) of ``max(1, floor(portion * batch))`` random samples."""
    n = min(batch, max(1, int(portion * batch)))
    return torch.randperm(batch, generator=generator)[:n].sort().values


@contextlib.contextmanager
def sr_forward_mode(model: nn.Module, bn_mode: str = "eval"):
    """Context for SR's extra forwards that leaves BN running statistics untouched.

    ``"eval"``: every module in eval mode, previous ``training`` flags restored on exit.
    ``"train"``: modes unchanged; BN buffers saved on entry and copied back on exit.
    """
    if bn_mode == "eval":
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag
    elif bn_mode == "train":
        saved = [(buf, buf.detach().clone()) for m in model.modules() if isinstance(m, _BN_TYPES)
                 for buf in m.buffers(recurse=False)]
        try:
            yield
        finally:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)
    else:
        raise ValueError(f"unknown bn_mode {bn_mode!r}")


def _per_sample_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    return _kl(p_logits, q_logits, reduction="none")


Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def synthesize_trigger(model_fn, x: torch.Tensor, cfg: SRConfig,
                       generator: torch.Generator | None = None, div: Divergence = _per_sample_kl,
                       reg: float = 0.0) -> tuple[torch.Tensor, float]:
    """Universal perturbation maximising ``mean D(M(x) || M(x + delta)) - reg * ||delta||^2`` by Adam
    on ``delta`` (``div`` per sample, KL at temperature 1 by default).

    ``model_fn(inputs) -> logits``. Returns ``(delta (1,C,H,W) detached, final mean D)``.
    Only the gradient w.r.t. ``delta`` is computed: no parameter ``.grad`` is touched; the clean
    branch ``M(x)`` is computed once without gradient.
    """
    x = x.detach()
    with torch.no_grad():
        clean = _float(model_fn(x)).detach()
    shape = (1, *x.shape[1:])
    best_delta, best_obj = None, -float("inf")
    for r in range(cfg.restarts):
        if cfg.trigger_init == "zero" and r == 0:
            init = torch.zeros(shape, dtype=x.dtype)
        else:
            init = torch.randn(shape, generator=generator, dtype=x.dtype) * cfg.init_std
        delta = init.to(x.device).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=cfg.trigger_lr)
        for _ in range(cfg.trigger_steps):
            with torch.enable_grad():
                loss = -div(clean, model_fn(x + delta)).mean()
                if reg:
                    loss = loss + reg * delta.pow(2).sum()
                (g,) = torch.autograd.grad(loss, delta)
            delta.grad = g
            opt.step()
            if cfg.trigger_norm_bound > 0:
                with torch.no_grad():
                    norm = delta.norm()
                    if norm > cfg.trigger_norm_bound:
                        delta.mul_(cfg.trigger_norm_bound / norm)
        delta = delta.detach()
        with torch.no_grad():
            obj = float(div(clean, model_fn(x + delta)).mean())
        if best_delta is None or obj > best_obj:
            best_delta, best_obj = delta, obj
    return best_delta, best_obj


def _phi(student: nn.Module, x: torch.Tensor, d: torch.Tensor, cfg: SRConfig,
         div: Divergence = _per_sample_kl) -> torch.Tensor:
    """Phi(d, th) = d - inner_lr * grad_d L_in(d, th) with the graph kept (differentiable in d and th);
    the clean branch S(x) of L_in is computed without gradient unless ``cfg.inner_clean_grad``."""
    with torch.set_grad_enabled(cfg.inner_clean_grad):
        clean = _logits(student, x)
    l_in = -div(clean, _logits(student, x + d)).mean() + cfg.inner_reg * d.pow(2).sum()
    (g_d,) = torch.autograd.grad(l_in, d, create_graph=True)
    return d - cfg.inner_lr * g_d


def outer_loss(student: nn.Module, x: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor,
               div: Divergence = _per_sample_kl, detach_clean: bool = False) -> torch.Tensor:
    """L_out = (1/B) sum_i D(S(x_i) || S(x_i + delta * 1[i in idx])) (``detach_clean``: no gradient
    through the clean branch S(x_i)).

    Unpatched samples contribute exactly 0; when samples are independent (no BN in train mode)
    only the patched ones are forwarded.
    """
    return _outer(student, x, lambda t: t + delta, idx, div, detach_clean)


def _outer(student: nn.Module, x: torch.Tensor, stamp, idx: torch.Tensor, div: Divergence = _per_sample_kl,
           detach_clean: bool = False) -> torch.Tensor:
    """(1/B) sum_{i in idx} D(S(x_i) || S(stamp(x_i))); the whole batch is forwarded (unpatched
    samples unchanged) only when the student's outputs depend on the batch."""
    b = x.shape[0]
    idx = idx.to(x.device)
    if not _batch_dependent(student):
        xs = x[idx]
        clean = _logits(student, xs)
        return div(clean.detach() if detach_clean else clean, _logits(student, stamp(xs))).sum() / b
    chosen = torch.zeros(b, *([1] * (x.dim() - 1)), dtype=torch.bool, device=x.device)
    chosen[idx] = True
    clean = _logits(student, x)
    return div(clean.detach() if detach_clean else clean, _logits(student, torch.where(chosen, stamp(x), x))).sum() / b


def implicit_hypergradient(student: nn.Module, x: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor,
                           cfg: SRConfig, return_outer: bool = False, div: Divergence = _per_sample_kl,
                           detach_clean: bool = False):
    """d/dth of ``L_out(d*(th), th)`` at ``d = delta`` by K fixed-point (Neumann) iterations.

    Returns one tensor per parameter of ``student`` that requires grad (zeros for unused ones), in
    ``student.parameters()`` order; ``.grad`` is not touched. The student is used in whatever mode
    it is in (callers wrap this in :func:`sr_forward_mode`). With ``return_outer`` also returns
    the value of ``L_out`` (float).
    """
    params = [p for p in student.parameters() if p.requires_grad]
    x = x.detach()
    d = delta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        l_out = outer_loss(student, x, d, idx, div, detach_clean)
        g_all = torch.autograd.grad(l_out, [d, *params], allow_unused=True)
        g_d = g_all[0].detach() if g_all[0] is not None else torch.zeros_like(d)
        direct = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, g_all[1:])]

        phi = _phi(student, x, d, cfg, div)
        v = torch.zeros_like(d)
        for _ in range(cfg.fixed_point_iters):
            (jv,) = torch.autograd.grad(phi, d, grad_outputs=v, retain_graph=True, allow_unused=True)
            v = (torch.zeros_like(d) if jv is None else jv.detach()) + g_d
        indirect = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    grads = [dg if ig is None else dg + ig.detach() for dg, ig in zip(direct, indirect)]
    if return_outer:
        return grads, float(l_out.detach())
    return grads


# -- the defence ----------------------------------------------------------------------------------

@DEFENSES.register("sr")
class SelfRetrospection(Defense):
    """The SR defence hook (see the module docstring)."""

    config_cls = SRConfig

    def __init__(self, cfg: SRConfig | None = None, seed: int | None = None) -> None:
        self.cfg = cfg or SRConfig()
        self._seed = seed
        self._gen: torch.Generator | None = None
        self.steps = 0
        self.started_at: int | None = None
        self._mask: MaskTrigger | None = None
        self.mask_class: int | None = None
        self.mask_sizes: list[float] | None = None
        self.mask_ratio: float | None = None
        self.mode: str | None = None if self.cfg.search != "perturbation" else "perturbation"

    @property
    def final_phase_fraction(self) -> float:  # type: ignore[override]
        return self.cfg.fraction

    @property
    def source(self) -> str:
        """The model the trigger is searched on: "teacher" or "student"."""
        return self.cfg.trigger_source

    @property
    def final_phase_optimizer(self) -> FinalPhase:  # type: ignore[override]
        return FinalPhase(fresh=self.cfg.fresh_optimizer, schedule=self.cfg.lr_schedule, clip=self.cfg.clip)

    def _generator(self, distiller) -> torch.Generator:
        if self._gen is None:
            seed = self._seed if self._seed is not None else int(getattr(distiller, "seed", 0))
            self._gen = torch.Generator().manual_seed(seed * 1_000_003 + 0x5E)  # SR's own stream
        return self._gen

    def setup(self, distiller) -> None:
        self._generator(distiller)

    def _divergence(self, distiller) -> tuple[Divergence, bool, float]:
        """The divergence, whether L_out detaches its clean branch, and the trigger search's L2 weight."""
        if self.cfg.divergence == "kl1" or not hasattr(distiller, "sr_divergence"):
            return _per_sample_kl, False, 0.0
        return (distiller.sr_divergence, bool(getattr(distiller, "sr_detach_clean", False)),
                float(getattr(distiller, "sr_trigger_reg", 0.0)))

    def enter_final_phase(self, distiller) -> None:
        self.started_at = int(getattr(distiller, "iteration_index", 0))
        log.info("Self-Retrospection starts at iteration %d (trigger from %s, R=%d, K=%d, portion=%g)",
                 self.started_at, self.source, self.cfg.trigger_steps, self.cfg.fixed_point_iters,
                 self.cfg.portion)

    def final_phase_step(self, distiller, x: torch.Tensor) -> dict:
        cfg = self.cfg
        gen = self._generator(distiller)
        div, detach_clean, reg = self._divergence(distiller)
        student = distiller.student
        prep = getattr(distiller, "prep", lambda t: t)
        x = _float(x.detach())
        params = [p for p in student.parameters() if p.requires_grad]
        with sr_forward_mode(student, cfg.bn_mode):
            if self.source == "teacher":
                def model_fn(inp):
                    return _float(distiller.teacher(prep(inp)))
            else:
                def model_fn(inp):
                    return _float(student(prep(inp)))
            if cfg.search != "perturbation" and self.mode is None:
                self._choose_search(distiller, model_fn, x)
            if self.mode == "mask":
                trig = self._mask_trigger(distiller, model_fn, x)
                idx = patched_subset(x.shape[0], cfg.portion, gen)
                with torch.enable_grad():
                    l_out_t = _outer(student, x, trig.stamp, idx, div, detach_clean)
                    grads = torch.autograd.grad(l_out_t, params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
                l_out = float(l_out_t.detach())
                metrics = {"sr_mask_class": float(self.mask_class), "sr_mask_l1": trig.size()}
            else:
                delta, trig_kl = synthesize_trigger(model_fn, x, cfg, gen, div, reg)
                idx = patched_subset(x.shape[0], cfg.portion, gen)
                grads, l_out = implicit_hypergradient(student, x, delta, idx, cfg, return_outer=True, div=div,
                                                      detach_clean=detach_clean)
                metrics = {"sr_trigger_kl": trig_kl, "sr_delta_norm": float(delta.norm())}
        with torch.no_grad():
            for p, g in zip(params, grads):
                g = g.to(p.dtype) * cfg.weight
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
        self.steps += 1
        return {"sr_outer": l_out, **metrics}

    def _bounds(self, distiller, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        info = distiller.info
        lo = info.normalize(torch.zeros(1, info.channels, 1, 1, dtype=x.dtype)).to(x.device)
        hi = info.normalize(torch.ones(1, info.channels, 1, 1, dtype=x.dtype)).to(x.device)
        return lo, hi

    def _choose_search(self, distiller, model_fn, x: torch.Tensor) -> None:
        """First SR step of ``search="mask"`` / ``"auto"``: a mask search for every class; the class
        with the smallest mask is the suspected target (Neural Cleanse's anomaly). ``"auto"`` keeps
        the mask only if that class stands out (smallest / second-smallest L1 < ``mask_ratio``) and
        otherwise runs the paper's perturbation search. The search draws no random numbers, so an
        ``"auto"`` run that falls back is the same run as ``search="perturbation"``."""
        cfg = self.cfg
        lo, hi = self._bounds(distiller, x)
        found = [search_mask(model_fn, x, c, lo, hi, cfg, cfg.mask_steps) for c in range(distiller.info.num_classes)]
        self.mask_sizes = [round(t.size(), 3) for t in found]
        self.mask_class = min(range(len(found)), key=self.mask_sizes.__getitem__)
        first, second = sorted(self.mask_sizes)[:2]
        self.mask_ratio = round(first / second, 4) if second > 0 else 1.0
        self.mode = "mask" if cfg.search == "mask" or self.mask_ratio < cfg.mask_ratio else "perturbation"
        if self.mode == "mask":
            self._mask = found[self.mask_class]
        log.info("Self-Retrospection mask search: class %d has the smallest mask (L1 %.1f, %.2f of the "
                 "next; all: %s); trigger: %s", self.mask_class, first, self.mask_ratio, self.mask_sizes,
                 "that mask" if self.mode == "mask" else
                 f"the paper's perturbation search (ratio not below {cfg.mask_ratio})")

    def _mask_trigger(self, distiller, model_fn, x: torch.Tensor) -> MaskTrigger:
        """The chosen class's mask; every step after the first refines it on the new batch, warm-started."""
        cfg = self.cfg
        if self.steps and cfg.mask_refine_steps:
            lo, hi = self._bounds(distiller, x)
            self._mask = search_mask(model_fn, x, self.mask_class, lo, hi, cfg, cfg.mask_refine_steps, self._mask)
        return self._mask

    def state(self) -> dict:
        out = {"sr_steps": self.steps, "started_at": self.started_at, "trigger_source": self.source,
               "config": dataclasses.asdict(self.cfg)}
        if self.cfg.search != "perturbation":
            out.update(search=self.mode, mask_class=self.mask_class, mask_sizes=self.mask_sizes,
                       mask_ratio=self.mask_ratio)
        return out
