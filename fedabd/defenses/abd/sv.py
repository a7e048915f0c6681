"""Shuffling Vaccine (SV), the distillation-time half of ABD.

A shuffled teacher T~ is built from k deep copies of the teacher (of every member, for an ensemble
teacher); in each copy the INPUT channels of a few late layers are permuted, with an independent
random permutation per layer and per copy. Clean-class evidence is spread over channels and
collapses under the shuffle; a backdoor shortcut survives it. Per sample::

    m_i = 1[argmax T~(x_i) = argmax T(x_i)]                 (suspicious: the shuffle did not matter)
    r_i = (1/C) KL(softmax(T(x_i)) || softmax(T~(x_i)))
    L_SV = -lam * sum_i m_i r_i / sum_i m_i                 (0 when no sample is suspicious)

Generator methods (ZSKT, CMI) add ``L_SV`` to the generator / inversion loss; methods without a
generator (OOD) re-weight the student loss: ``mean_{m=0} l_i - lam * mean_{m=1} l_i`` (OOD caps the
ascending part at a uniform student's loss by default, its ``ascent_cap``: uncapped, it diverged).

Shuffle selection (``select=True``, optional as in the spec and off by default as in the reference
implementation): after a warm-up, on cached synthetic samples, a draw is kept if more than
``tail_ratio`` of them lie below mean - ``tail_std`` * std of log10 r; otherwise the permutations are
re-drawn, up to ``max_redraws`` times, and if no draw is good SV is switched off. Without selection
the first draw serves the whole run. Either way the decision is logged and kept in :meth:`state`.

How T~ is built (which layers, how a layer is shuffled, shared stages): :mod:`.shuffle`.

Every random choice comes from a ``torch.Generator`` seeded from the run's seed. The teacher and
the copies are frozen (no parameter gradients); the input gradient flows through T~ to the
generator (``shuffled_grad=False``, the authors' ``--no_shuf_grad``: through T only).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...distill.base import Defense
from ...models.ensemble import Ensemble, freeze
from ..base import DEFENSES
from .shuffle import build_shuffled_teacher

log = logging.getLogger(__name__)

LOG_FLOOR = 1e-12  # r_i is clamped to this before log10 in shuffle selection (r can round to 0)
SEED_OFFSET = 0x5F17  # the SV generator is seeded with run seed + this (independent of other streams)


@dataclass(frozen=True)
class SVConfig:
    k: int = 3                     # shuffled copies per teacher (member)
    n: int = 5                     # layers whose input channels are shuffled (see shuffle_layers)
    lam: float = 0.1               # weight of L_SV / of the suspicious part of the OOD loss
    select: bool = False           # shuffle selection (the paper's optional step); False = use the first
                                   # draw. Off by default as in the reference implementation
                                   # (its pseudo_test_batches defaults to 0 for ZSKT, CMI and OOD)
    tail_ratio: float = 0.02       # a draw is good if > tail_ratio of samples lie in the low tail
    tail_std: float = 3.0          # low tail: s_i < mean(s) - tail_std * std(s), s = log10 r
    max_redraws: int = 8           # re-draws after the first draw (1 + max_redraws draws in all)
    selection_samples: int = 256   # synthetic samples cached (over batches) for the selection
    selection_after: float = 0.05  # make the selection after this fraction of the run (the first
                                   # synthetic batches come from an untrained generator); the first
                                   # draw is used until then
    shuffled_grad: bool = True     # L_SV's gradient flows through T~ as well as T (the authors' default);
                                   # False: T~'s logits without gradient (the authors' --no_shuf_grad),
                                   # no backward through the copies

    def __post_init__(self) -> None:
        if self.k < 1 or self.n < 1:
            raise ValueError(f"SV needs k >= 1 and n >= 1, got k={self.k}, n={self.n}")
        if self.max_redraws < 0 or self.selection_samples < 2:
            raise ValueError("SV needs max_redraws >= 0 and selection_samples >= 2")
        if not 0.0 <= self.selection_after < 1.0:
            raise ValueError(f"SV needs 0 <= selection_after < 1, got {self.selection_after}")


# -- the per-sample quantities and the losses -----------------------------------------------------------

def suspicious_mask_and_divergence(t_logits: torch.Tensor, shuffled_logits: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` (bool, no gradient): argmax agreement; ``r`` = KL(softmax(T) || softmax(T~)) / C per sample.

    ``r`` is differentiable with respect to both logits.
    """
    m = (t_logits.detach().argmax(1) == shuffled_logits.detach().argmax(1))
    log_p = F.log_softmax(t_logits.float(), dim=1)
    log_q = F.log_softmax(shuffled_logits.float(), dim=1)
    r = (log_p.exp() * (log_p - log_q)).sum(1) / t_logits.shape[1]
    return m, r


def sv_loss(mask: torch.Tensor, r: torch.Tensor, lam: float) -> torch.Tensor:
    """``-lam * sum(m r) / sum(m)``; 0 (still a graph-connected tensor) when no sample is suspicious."""
    mf = mask.to(r.dtype)
    return -lam * (mf * r).sum() / mf.sum().clamp_min(1.0)


def ood_weights(mask: torch.Tensor, lam: float) -> torch.Tensor:
    """Weights ``w`` with ``mean(w * l) = mean_{m=0} l - lam * mean_{m=1} l`` (an empty group adds 0)."""
    m = mask.bool()
    b = m.numel()
    n1 = int(m.sum())
    n0 = b - n1
    w = torch.zeros(b, dtype=torch.float32, device=m.device)
    if n0:
        w[~m] = b / n0
    if n1:
        w[m] = -lam * b / n1
    return w


def tail_fraction(r: torch.Tensor, tail_std: float) -> float:
    """Fraction of samples with ``log10 r < mean - tail_std * std`` (population std) of log10 r."""
    s = torch.log10(r.detach().double().clamp_min(LOG_FLOOR))
    thr = s.mean() - tail_std * s.std(unbiased=False)
    return float((s < thr).double().mean())


# -- the defence --------------------------------------------------------------------------------------

def _forward(distiller, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from ...device import autocast
    prep = getattr(distiller, "prep", None)
    xin = prep(x) if prep is not None else x
    with autocast(torch.device(distiller.device), bool(getattr(distiller, "bf16", False))):
        return model(xin).float()


@DEFENSES.register("sv")
class ShufflingVaccine(Defense):
    """SV as a :class:`~fedabd.distill.base.Defense` (hooks: generator_loss, sample_weights, state).

    ``seed``: overrides the run's seed (``distiller.seed``) for the permutations.
    """

    config_cls = SVConfig

    def __init__(self, cfg: SVConfig | None = None, seed: int | None = None) -> None:
        self.cfg = cfg or SVConfig()
        self.seed = seed
        self.shuffled: Ensemble | None = None
        self.layers: list[str] = []
        self.status = "not set up"   # pending | accepted | first_draw | off
        self.enabled = True
        self.accepted_draw: int | None = None
        self.draws: list[dict] = []
        self.selection_samples_used = 0
        self.calls = 0
        self._frac_sum = 0.0
        self._run_seed: int | None = None
        self._generator: torch.Generator | None = None
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- construction and selection ----------------------------------------------------------------
    def setup(self, distiller) -> None:
        seed = int(distiller.seed if self.seed is None else self.seed)
        self._run_seed = seed
        self._generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
        self._teacher = distiller.teacher
        self._draw(distiller)
        self.status = "pending"
        self.enabled = True
        log.info("SV: %d shuffled copies per teacher, shuffled layers %s", self.cfg.k, self.layers)

    def _draw(self, distiller) -> None:
        shuffled, self.layers = build_shuffled_teacher(self._teacher, self.cfg.k, self.cfg.n, self._generator)
        self.shuffled = freeze(shuffled).to(torch.device(distiller.device))

    def _ready(self, distiller, x: torch.Tensor, t_logits: torch.Tensor) -> bool:
        if self.shuffled is None and self.status == "not set up":
            self.setup(distiller)
        if self.status == "pending":
            total = getattr(distiller, "total_iterations", 0) or 0
            if getattr(distiller, "iteration_index", 0) < self.cfg.selection_after * total:
                return self.enabled  # too early: the first draw serves until the selection
            self._cache.append((x.detach(), t_logits.detach()))
            if sum(len(c[0]) for c in self._cache) >= self.cfg.selection_samples or not self.cfg.select:
                xs = torch.cat([c[0] for c in self._cache])
                ts = torch.cat([c[1] for c in self._cache])
                self._cache = []
                self._select(distiller, xs, ts)
        return self.enabled

    @torch.no_grad()
    def _select(self, distiller, x: torch.Tensor, t_logits: torch.Tensor) -> None:
        cfg = self.cfg
        xs, ts = x[: cfg.selection_samples].detach(), t_logits[: cfg.selection_samples].detach().float()
        self.selection_samples_used = int(xs.shape[0])
        n_draws = 1 + cfg.max_redraws if cfg.select else 1
        for j in range(n_draws):
            if j > 0:
                self._draw(distiller)
            _, r = suspicious_mask_and_divergence(ts, _forward(distiller, self.shuffled, xs))
            ratio = tail_fraction(r, cfg.tail_std)
            good = ratio > cfg.tail_ratio
            self.draws.append({"draw": j, "tail_ratio": ratio, "good": bool(good)})
            if not cfg.select:
                self.status, self.accepted_draw = "first_draw", 0
                log.info("SV: shuffle selection off; using the first draw (measured tail ratio %.4f)", ratio)
                return
            if good:
                self.status, self.accepted_draw = "accepted", j
                log.info("SV: shuffle accepted at draw %d (tail ratios per draw: %s; need > %g)",
                         j, [round(d["tail_ratio"], 4) for d in self.draws], cfg.tail_ratio)
                return
        self.status, self.enabled, self.accepted_draw = "off", False, None
        self.shuffled = None
        log.warning("SV switched OFF: no good shuffle in %d draws (tail ratios per draw: %s; need > %g "
                    "on %d samples)", n_draws, [round(d["tail_ratio"], 4) for d in self.draws],
                    cfg.tail_ratio, self.selection_samples_used)

    def _record(self, mask: torch.Tensor) -> None:
        self.calls += 1
        self._frac_sum += float(mask.float().mean()) if mask.numel() else 0.0

    # -- hooks ----------------------------------------------------------------------------------------
    def generator_loss(self, distiller, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor | float:
        if not self._ready(distiller, x, t_logits):
            return 0.0
        with torch.enable_grad():
            with torch.set_grad_enabled(self.cfg.shuffled_grad):
                s_logits = _forward(distiller, self.shuffled, x)
            m, r = suspicious_mask_and_divergence(t_logits, s_logits)
            self._record(m)
            if not m.any():  # a zero loss: no backward through the copies (as the authors' SV returns 0.)
                return 0.0
            return sv_loss(m, r, self.cfg.lam)

    def sample_weights(self, distiller, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor | None:
        if not self._ready(distiller, x, t_logits):
            return None
        with torch.no_grad():
            s_logits = _forward(distiller, self.shuffled, x)
            m, _ = suspicious_mask_and_divergence(t_logits, s_logits)
        self._record(m)
        return ood_weights(m, self.cfg.lam).to(t_logits.device)

    def state(self) -> dict:
        return {
            "defense": "sv",
            "config": asdict(self.cfg),
            "seed": self._run_seed,
            "layers": list(self.layers),
            "copies": len(self.shuffled.members) if self.shuffled is not None else 0,
            "status": self.status,
            "enabled": bool(self.enabled and self.status not in ("not set up",)),
            "selection": "on" if self.cfg.select else "off (first draw used)",
            "accepted_draw": self.accepted_draw,
            "draws": [dict(d) for d in self.draws],
            "selection_samples_used": self.selection_samples_used,
            "calls": self.calls,
            "mean_suspicious_fraction": self._frac_sum / self.calls if self.calls else None,
        }


# -- diagnostics ----------------------------------------------------------------------------------------

@torch.no_grad()
def detector_report(teacher: nn.Module, shuffled: nn.Module, clean_x: torch.Tensor, triggered_x: torch.Tensor,
                    batch_size: int = 500) -> dict:
    """Fraction of samples SV flags as suspicious (argmax T~ = argmax T) among clean vs triggered inputs.

    Inputs are normalised images; pass triggered images of non-target classes only.
    """
    def flagged(x: torch.Tensor) -> float:
        if len(x) == 0:
            return math.nan
        hits = 0
        dev = next(teacher.parameters()).device
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            m, _ = suspicious_mask_and_divergence(teacher(xb), shuffled(xb))
            hits += int(m.sum())
        return hits / len(x)

    was = teacher.training
    teacher.eval()
    out = {"clean": flagged(clean_x), "triggered": flagged(triggered_x),
           "n_clean": int(len(clean_x)), "n_triggered": int(len(triggered_x))}
    teacher.train(was)
    return out
