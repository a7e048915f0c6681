"""Self-Retrospection's settings (the authors' defaults; each earlier form of ours is an option)."""
from __future__ import annotations

from dataclasses import dataclass

_TRIGGER_SOURCES = ("teacher", "student")
_SEARCHES = ("perturbation", "mask", "auto")


@dataclass(frozen=True)
class SRConfig:
    fraction: float = 0.02          # final-phase fraction of the run (paper: last 1-2 %)
    trigger_steps: int = 10         # R Adam steps of trigger synthesis (paper: 10 or 20)
    trigger_lr: float = 0.1         # Adam LR of trigger synthesis
    trigger_init: str = "noise"     # "noise" (N(0, init_std^2)) or "zero" (the reference)
    init_std: float = 1e-3          # std of the noise start
    restarts: int = 1               # independent trigger searches; the best final objective wins
    trigger_norm_bound: float = 0.0  # > 0: project delta onto the L2 ball of this radius
    trigger_source: str = "teacher"  # "teacher" (the authors' defence runs) or "student"
    inner_reg: float = 0.001        # L2 penalty of the inner objective
    inner_lr: float = 0.1           # step of the fixed-point map Phi
    fixed_point_iters: int = 5      # K (terms of the Neumann series, v_0 = 0)
    portion: float = 0.02           # fraction of the batch patched in L_out (at least one sample)
    weight: float = 1.0             # scale of the unlearning gradient added to .grad
    bn_mode: str = "eval"           # "eval" or "train" (see module docstring)
    search: str = "perturbation"    # "perturbation" (the paper's), "mask" or "auto" (see the module docstring)
    mask_l1: float = 0.01           # "mask": L1 weight on the mask
    mask_steps: int = 200           # "mask": Adam steps per class when the class is chosen
    mask_refine_steps: int = 10     # "mask": Adam steps per SR step on the chosen class (warm start)
    mask_lr: float = 0.1            # "mask": Adam LR of the mask search
    mask_ratio: float = 0.6         # "auto": the mask is used if smallest / second-smallest mask L1 < this
    inner_clean_grad: bool = False  # L_in's clean branch differentiable (exact hypergradient; the authors': no)
    divergence: str = "method"      # "method": the distiller's SR divergence (the authors'); "kl1": KL at tau 1
    fresh_optimizer: bool = True    # final phase: a fresh student optimiser (the authors')
    lr_schedule: str = "cosine"     # final phase: "cosine" from sr_lr to 0 (the authors') or "constant"
    clip: bool = False              # final phase: keep the method's gradient clipping (the authors': no)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"SRConfig.fraction must be in (0, 1], got {self.fraction}")
        if self.trigger_steps < 0 or self.fixed_point_iters < 0:
            raise ValueError("SRConfig.trigger_steps and fixed_point_iters must be >= 0")
        if self.restarts < 1:
            raise ValueError(f"SRConfig.restarts must be >= 1, got {self.restarts}")
        if self.trigger_init not in ("noise", "zero"):
            raise ValueError(f"SRConfig.trigger_init must be 'noise' or 'zero', got {self.trigger_init!r}")
        if self.trigger_source not in _TRIGGER_SOURCES:
            raise ValueError(f"SRConfig.trigger_source must be one of {_TRIGGER_SOURCES}, got {self.trigger_source!r}")
        if self.bn_mode not in ("eval", "train"):
            raise ValueError(f"SRConfig.bn_mode must be 'eval' or 'train', got {self.bn_mode!r}")
        if self.search not in _SEARCHES:
            raise ValueError(f"SRConfig.search must be one of {_SEARCHES}, got {self.search!r}")
        if self.divergence not in ("method", "kl1"):
            raise ValueError(f"SRConfig.divergence must be 'method' or 'kl1', got {self.divergence!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"SRConfig.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"SRConfig.mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.mask_steps < 1 or self.mask_refine_steps < 0:
            raise ValueError("SRConfig.mask_steps must be >= 1 and mask_refine_steps >= 0")
        if not 0.0 < self.portion <= 1.0:
            raise ValueError(f"SRConfig.portion must be in (0, 1], got {self.portion}")
        for name in ("trigger_lr", "inner_lr", "mask_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SRConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("init_std", "inner_reg", "weight", "trigger_norm_bound", "mask_l1"):
            if getattr(self, name) < 0:
                raise ValueError(f"SRConfig.{name} must be >= 0, got {getattr(self, name)}")


# -- helpers --------------------------------------------------------------------------------------
