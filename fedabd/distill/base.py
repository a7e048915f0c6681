"""The Distiller interface shared by every KD method, its config handling and defence hooks.

A method is one module in ``fedabd/distill/methods/`` that registers a Distiller subclass with
``@DISTILLERS.register(name)`` and declares a frozen config dataclass whose defaults are the
CPU-sized preset, plus ``presets = {"cpu": ..., "paper": ...}``.

The run is ``total_iterations`` iterations in the method's own unit (ZSKT: pseudo-batches,
CMI: epochs, OOD / vanilla: student steps). A defence plugs in through :class:`Defense`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import DatasetInfo, ImageSet
from ..models.ensemble import Ensemble, freeze
from ..registry import Registry

log = logging.getLogger(__name__)

DISTILLERS: Registry[type["Distiller"]] = Registry("distillation method")

Progress = Callable[[int, int, dict], None]
EvalFn = Callable[[nn.Module], dict]


class Defense:
    """Plug-in points a defence (ABD) uses; the base class does nothing.

    - ``setup(distiller)``: once, before the first iteration.
    - ``generator_loss(distiller, x, t_logits)``: added to the generator / inversion loss
      (ZSKT, CMI); ``x`` in normalised input space, ``t_logits`` the teacher's logits on it.
    - ``sample_weights(distiller, x, t_logits)``: per-sample weights ``w`` of the student loss for
      methods without a generator (OOD): the loss becomes ``mean(w * per_sample_loss)``;
      None = uniform (plain mean).
    - ``final_phase_fraction``: the fraction of the run at its end that is the defence's final
      phase (SR); 0 = none. During it the distiller calls ``final_phase_step``.
    - ``final_phase_optimizer``: how the student's optimiser runs in the final phase, a
      :class:`FinalPhase` (fresh state or not, LR schedule, gradient clipping).
    - ``final_phase_step(distiller, x)``: called in the final phase after the KD loss was
      back-propagated and before the optimiser step; adds its own gradients to the student.
    - ``state()``: JSON-able decisions to save with the run (e.g. SV's shuffle selection).
    """

    final_phase_fraction: float = 0.0

    @property
    def final_phase_optimizer(self) -> "FinalPhase":
        return FinalPhase()

    def setup(self, distiller: "Distiller") -> None:  # pragma: no cover - trivial
        pass

    def generator_loss(self, distiller: "Distiller", x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def sample_weights(self, distiller: "Distiller", x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def enter_final_phase(self, distiller: "Distiller") -> None:
        pass

    def final_phase_step(self, distiller: "Distiller", x: torch.Tensor) -> dict:
        return {}

    def state(self) -> dict:
        return {}


@contextlib.contextmanager
def no_param_grad(module: nn.Module):
    """Temporarily stop parameter gradients of ``module`` (input gradients still flow)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass(frozen=True)
class FinalPhase:
    """The student optimiser of a defence's final phase (the LR itself is the method's ``sr_lr``).

    - ``fresh``: a new optimiser of the same kind and settings, with empty state (momentum / Adam
      moments), instead of carrying the main phase's state over.
    - ``schedule``: ``"cosine"`` anneals the LR from ``sr_lr`` to 0 over the final phase (stepped
      once per iteration, the method's unit); ``"constant"`` holds ``sr_lr``.
    - ``clip``: keep the method's gradient-norm clipping (if it has one) on the final phase's
      combined KD + defence gradient.
    """

    fresh: bool = False
    schedule: str = "constant"
    clip: bool = True


def make_config(config_cls: type, presets: dict[str, Any], preset: str = "cpu", overrides: dict | None = None):
    """A method's config from a named preset plus overrides; unknown keys and wrong types are errors."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    base = presets[preset]
    overrides = dict(overrides or {})
    names = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown setting {key!r} for {config_cls.__name__}; valid: {', '.join(sorted(names))}")
        expected = type(getattr(base, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            overrides[key] = float(value)
        elif expected is not type(None) and not isinstance(value, expected) and getattr(base, key) is not None:
            raise ValueError(f"setting {key!r} of {config_cls.__name__} must be {expected.__name__}, got {value!r}")
    return dataclasses.replace(base, **overrides)


def settings_with(config_cls: type, overrides: dict | None):
    """A part's typed settings: ``config_cls``'s defaults plus ``overrides`` (errors as :func:`make_config`)."""
    return make_config(config_cls, {"default": config_cls()}, "default", overrides)


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict] = field(default_factory=list)
    defense_state: dict = field(default_factory=dict)
    seconds: float = 0.0


def state_entries(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``module``'s weights as entries of a run's memory, each key under ``prefix``."""
    return {f"{prefix}{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_entries(module: nn.Module, memory: dict[str, torch.Tensor], prefix: str) -> bool:
    """Load ``module`` from the ``prefix`` entries of a run's memory when they fit it exactly (same
    keys and shapes); otherwise leave it as it is and return False."""
    state = {k[len(prefix):]: v for k, v in memory.items() if k.startswith(prefix)}
    own = module.state_dict()
    if not state or set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        return False
    module.load_state_dict(state)
    return True


class Distiller:
    """Base class. Subclasses set ``config_cls``/``presets`` and implement ``setup`` and ``iteration``.

    ``setup`` must create the student's optimiser as ``self.student_opt``, every student update
    goes through :meth:`student_step` (which runs the defence's final-phase hook), and every config
    must have ``sr_lr``: the base class switches that optimiser to the defence's final phase
    (:meth:`on_final_phase`); a method's own LR schedule must leave the LR alone while
    ``self.in_final_phase``. Every method has a ``"smoke"`` preset: its smallest complete run.
    """

    config_cls: ClassVar[type]
    presets: ClassVar[dict[str, Any]]
    unit: ClassVar[str] = "step"
    needs_real_data: ClassVar[bool] = False

    def __init__(self, teacher: nn.Module | list[nn.Module], student: nn.Module, info: DatasetInfo, cfg,
                 device: torch.device | str = "cpu", seed: int = 0, defense: Defense | None = None,
                 real_data: ImageSet | None = None, teacher_weights: list[float] | None = None,
                 channels_last: bool = False, bf16: bool = False, ensemble_rule: str = "logit_mean",
                 memory: dict[str, torch.Tensor] | None = None) -> None:
        self.device = torch.device(device)
        members = teacher if isinstance(teacher, (list, tuple)) else [teacher]
        self.teacher = (members[0] if len(members) == 1 and teacher_weights is None else
                        Ensemble(list(members), teacher_weights, combine=ensemble_rule))
        freeze(self.teacher).to(self.device)
        self.student = student.to(self.device)
        self.info = info
        self.cfg = cfg
        self.seed = seed
        self.defense = defense or Defense()
        self.real_data = real_data
        self.channels_last = channels_last
        self.bf16 = bf16
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator for data-level randomness
        if self.needs_real_data and real_data is None:
            raise ValueError(f"{type(self).__name__} needs real training data")
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
            self.student.to(memory_format=torch.channels_last)
        self.carried = dict(memory or {})  # a previous run's :meth:`memory` (methods that carry state read it)
        self.iteration_index = 0
        self.in_final_phase = False
        self.final_phase_sched: torch.optim.lr_scheduler.LRScheduler | None = None

    # -- to implement ---------------------------------------------------------------------------
    @property
    def total_iterations(self) -> int:
        raise NotImplementedError

    def setup(self) -> None:
        """Build optimisers / generators (called once by :meth:`run`)."""

    def iteration(self, it: int) -> dict:
        """One iteration; returns scalar metrics (losses)."""
        raise NotImplementedError

    def memory(self) -> dict[str, torch.Tensor]:
        """What a later run of this method may continue from (tensors, e.g. a meta-learned generator);
        passed back as ``memory=`` to the next round's distiller. Empty: the method starts afresh."""
        return {}

    # -- shared helpers -------------------------------------------------------------------------
    def prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def teacher_logits(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Teacher (or ensemble-mean) logits; with ``grad`` the input gradient flows (never to weights)."""
        from ..device import autocast
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, autocast(self.device, self.bf16):
            return self.teacher(self.prep(x)).float()

    def student_logits(self, x: torch.Tensor, return_features: bool = False):
        from ..device import autocast
        with autocast(self.device, self.bf16):
            out = self.student(self.prep(x), return_features=return_features)
        if return_features:
            return out[0].float(), out[1]
        return out.float()

    # -- how Self-Retrospection measures this method's outputs ----------------------------------
    #: SR's outer loss detaches the clean branch S(x) (the authors' ZSKT does, their CMI / OOD don't)
    sr_detach_clean: ClassVar[bool] = False
    #: weight of ||delta||^2 added to SR's trigger-search objective (the authors' ZSKT: 1e-3)
    sr_trigger_reg: ClassVar[float] = 0.0

    def sr_divergence(self, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        """Per-sample divergence ``D(p || q)`` (shape ``(B,)``) that SR maximises / unlearns for this
        method: the form of the authors' SR for it. Default: KL at temperature 1."""
        from .losses import kl_div
        return kl_div(p_logits, q_logits, reduction="none")

    #: the final phase starts at a KD step inside an iteration instead of at an iteration boundary
    #: (set by methods whose config asks for it; they then call :meth:`final_phase_at_step` before
    #: every KD step)
    final_phase_in_steps: bool = False

    def _phase_start(self, total: int) -> int:
        frac = self.defense.final_phase_fraction
        if frac <= 0:
            return total
        return max(0, total - max(1, math.ceil(frac * total)))

    @property
    def final_phase_start(self) -> int:
        """The iteration at which the defence's final phase starts (the end when it starts inside an
        iteration, :attr:`final_phase_in_steps`)."""
        if self.final_phase_in_steps:
            return self.total_iterations
        return self._phase_start(self.total_iterations)

    def final_phase_at_step(self, step: int, total_steps: int) -> None:
        """For :attr:`final_phase_in_steps` methods, before KD step ``step`` of ``total_steps`` in the
        run: enter the final phase at the last ``fraction`` of the steps, then anneal its LR per step."""
        start = self._phase_start(total_steps)
        if step < start:
            return
        if not self.in_final_phase:
            self._enter_final_phase(total_steps - start)
        elif self.final_phase_sched is not None:
            self.final_phase_sched.step()

    def _enter_final_phase(self, length: int) -> None:
        self.in_final_phase = True
        self.on_final_phase(length)
        self.defense.enter_final_phase(self)

    def on_final_phase(self, length: int) -> None:
        """Called once when the defence's final phase starts: the student optimiser
        (``self.student_opt``) is switched to the defence's :class:`FinalPhase` at ``cfg.sr_lr``;
        ``length``: the phase's scheduler steps (iterations, or KD steps when it starts inside one)."""
        plan = self.defense.final_phase_optimizer
        opt = getattr(self, "student_opt", None)
        if opt is None or not hasattr(self.cfg, "sr_lr"):
            raise TypeError(f"{type(self).__name__} has a final phase but no student_opt / cfg.sr_lr "
                            "(see the Distiller docstring)")
        lr = float(self.cfg.sr_lr)
        if plan.fresh:
            settings = {k: v for k, v in opt.defaults.items() if k != "lr"}
            opt = type(opt)(opt.param_groups[0]["params"], lr=lr, **settings)
            self.student_opt = opt
        for group in opt.param_groups:
            group["lr"] = lr
        if plan.schedule == "cosine":
            n = max(1, length)
            self.final_phase_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)
        elif plan.schedule != "constant":
            raise ValueError(f"unknown final-phase LR schedule {plan.schedule!r}")

    @property
    def clip_student(self) -> bool:
        """Whether the method's student gradient clipping applies now (off in a final phase whose
        :class:`FinalPhase` says so)."""
        return not self.in_final_phase or self.defense.final_phase_optimizer.clip

    def student_step(self, loss: torch.Tensor, x: torch.Tensor,
                     clip: Callable[[Any], None] | None = None) -> dict:
        """One update of the student from ``loss`` on batch ``x``, with the defence hook.

        zero_grad, backward; in the defence's final phase ``defense.final_phase_step(self, x)`` adds
        its gradients; ``clip(parameters)`` when given and :attr:`clip_student` allows; optimiser step.
        Every method updates its student through here, so no method can leave the hook out.
        Returns the defence's metrics ({} outside the final phase).
        """
        self.student_opt.zero_grad(set_to_none=True)
        loss.backward()
        out = (self.defense.final_phase_step(self, x) or {}) if self.in_final_phase else {}
        if clip is not None and self.clip_student:
            clip(self.student.parameters())
        self.student_opt.step()
        return out

    def student_lr(self) -> float:
        return float(self.student_opt.param_groups[0]["lr"])

    def run(self, progress: Progress | None = None, evaluate: EvalFn | None = None,
            eval_every: int = 0) -> DistillResult:
        torch.manual_seed(self.seed)
        t0 = time.perf_counter()
        self.setup()
        self.defense.setup(self)
        total = self.total_iterations
        history: list[dict] = []
        for it in range(total):
            self.iteration_index = it
            if not self.in_final_phase and it >= self.final_phase_start:
                self._enter_final_phase(total - self.final_phase_start)
            self.student.train()
            lr = self.student_lr()
            metrics = self.iteration(it)
            if self.final_phase_sched is not None and not self.final_phase_in_steps:
                self.final_phase_sched.step()
            last = it == total - 1
            row = {"iteration": it + 1, "phase": "final" if self.in_final_phase else "main", "lr": lr, **metrics}
            if evaluate is not None and (last or (eval_every and (it + 1) % eval_every == 0)):
                self.student.eval()
                row.update(evaluate(self.student))
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
            if progress is not None:
                progress(it + 1, total, row)
        self.student.eval()
        return DistillResult(self.student, history, self.defense.state(), time.perf_counter() - t0)


def method_config(method: str, preset: str = "cpu", overrides: dict | None = None):
    """Distiller ``method``'s config: its ``preset`` plus ``overrides`` (errors as :func:`make_config`)."""
    cls = DISTILLERS.get(method)
    return make_config(cls.config_cls, cls.presets, preset, overrides)


def create_distiller(method: str, teacher, student: nn.Module, info: DatasetInfo, preset: str = "cpu",
                     overrides: dict | None = None, **kwargs) -> Distiller:
    return DISTILLERS.get(method)(teacher, student, info, method_config(method, preset, overrides), **kwargs)
