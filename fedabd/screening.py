"""Teacher screening: a data-free backdoor suspicion score per client model (ours; no peer has it).

For each teacher, on surrogate inputs (crops of the shipped natural image, or uniform noise; never
client data), Neural Cleanse's mask search is run for every class at once: the mask ``m_c`` and
pattern ``p_c`` (``stamp(x) = (1 - m_c) x + m_c p_c``) minimising ``CE(T(stamp(x)), c) + l1 |m_c|_1``.
A backdoor is a shortcut to its target class, so a backdoored teacher needs a much smaller mask for
that class than for the others, and than the other teachers need for the same class. Per teacher k,
with ``s_kc`` the L1 size of class c's mask (the whole image when the mask flips fewer than
``min_flip`` of the inputs), ``c*`` its smallest class:

- ``anomaly_k = (median_c s_kc - s_kc*) / (1.4826 * MAD_c s_kc)``: Neural Cleanse's anomaly index
  of the smallest mask among the teacher's own classes (> 2 is NC's outlier rule);
- ``peer_k = -log2(s_kc* / median_{j != k} s_jc*)``: how many times smaller than the other
  teachers' masks for the same class (0 with a single teacher);
- ``score_k = max(anomaly_k, 0) + max(peer_k, 0)``, the documented combination: the two signals
  add, each counted only where it points to a backdoor.

:func:`screen_weights` turns scores into ensemble weights: ``hard`` excludes teachers above the
threshold, ``soft`` keeps them with weight ``exp(-(score - threshold))`` (1 at or below it).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import DatasetInfo
from .models.ensemble import Ensemble


@dataclass(frozen=True)
class ScreenConfig:
    surrogate: str = "image"   # "image": crops of the shipped natural image; "noise": uniform images
    batch: int = 32            # surrogate inputs per search
    steps: int = 100           # Adam steps of the mask search (every class at once)
    lr: float = 0.1
    l1: float = 0.01           # weight of the mask's L1 size (Neural Cleanse's lambda)
    min_flip: float = 0.8      # a mask that flips fewer of the inputs counts as the whole image
    threshold: float = 2.0     # score above which a teacher is suspicious
    mode: str = "hard"         # "hard": exclude suspicious teachers; "soft": down-weight them; "log": score only

    def __post_init__(self) -> None:
        if self.surrogate not in ("noise", "image"):
            raise ValueError(f"surrogate must be 'noise' or 'image', got {self.surrogate!r}")
        if self.mode not in ("hard", "soft", "log"):
            raise ValueError(f"mode must be 'hard', 'soft' or 'log', got {self.mode!r}")
        if self.batch < 1 or self.steps < 1:
            raise ValueError("batch and steps must be >= 1")
        if not 0.0 < self.min_flip <= 1.0:
            raise ValueError(f"min_flip must be in (0, 1], got {self.min_flip}")
        if not (self.lr > 0 and self.l1 >= 0 and math.isfinite(self.threshold)):
            raise ValueError("lr must be > 0, l1 >= 0 and threshold finite")


def surrogate_inputs(info: DatasetInfo, cfg: ScreenConfig, seed: int, device="cpu") -> torch.Tensor:
    """``cfg.batch`` normalised inputs of the dataset's shape, seeded, without any client data."""
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch, info.channels, info.image_size, info.image_size)
    if cfg.surrogate == "noise":
        x = torch.rand(shape, generator=g)
    else:
        from .data.single_image import load_source_image
        img = load_source_image()  # (3, H, W) in [0, 1]
        if info.channels == 1:
            img = img.mean(0, keepdim=True)
        _, h, w = img.shape
        side = min(h, w) // 4
        ys = torch.randint(0, h - side + 1, (cfg.batch,), generator=g)
        xs = torch.randint(0, w - side + 1, (cfg.batch,), generator=g)
        crops = torch.stack([img[:, y:y + side, x:x + side] for y, x in zip(ys.tolist(), xs.tolist())])
        x = F.interpolate(crops, size=(info.image_size, info.image_size), mode="bilinear", align_corners=False)
    return info.normalize(x.clamp(0, 1)).to(device)


def class_masks(model: nn.Module | list[nn.Module], x: torch.Tensor, info: DatasetInfo, cfg: ScreenConfig,
                classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neural Cleanse's search on inputs ``x`` (normalised) for the given classes (default: every
    class) at once, each class's mask and pattern its own parameters: returns the masks
    ``(n, 1, 1, H, W)`` in [0, 1], the patterns ``(n, 1, ch, H, W)`` (normalised) and each mask's flip
    rate ``(n,)``. The model is not changed.

    A list of K models is searched at once (one optimiser; the models' forward passes are one
    ``vmap`` call on an accelerator, a loop on the CPU, as :class:`~fedabd.models.ensemble.Ensemble`
    chooses), each model with its own masks: the results gain a leading K axis and equal K separate
    searches (Adam is elementwise and the models' losses are summed)."""
    models = model if isinstance(model, list) else [model]
    classes = list(range(info.num_classes)) if classes is None else list(classes)
    k, n, (b, ch, h, w) = len(models), len(classes), x.shape
    lo = info.normalize(torch.zeros(1, ch, 1, 1)).to(x)
    hi = info.normalize(torch.ones(1, ch, 1, 1)).to(x)
    mask_logit = torch.full((k, n, 1, 1, h, w), -3.0, device=x.device, requires_grad=True)
    pattern_logit = torch.zeros((k, n, 1, ch, h, w), device=x.device, requires_grad=True)
    labels = torch.tensor(classes, device=x.device).repeat_interleave(b).repeat(k)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=cfg.lr)
    # frozen copies (the callers' models are left as they were)
    forward = Ensemble([copy.deepcopy(m) for m in models]).each_member

    def parts() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(mask_logit), lo + (hi - lo) * torch.sigmoid(pattern_logit)

    def stamped() -> torch.Tensor:
        m, pat = parts()
        return ((1 - m) * x + m * pat).reshape(k, n * b, ch, h, w)

    for _ in range(cfg.steps):
        with torch.enable_grad():
            ce = F.cross_entropy(forward(stamped()).reshape(k * n * b, -1).float(), labels, reduction="none")
            loss = ce.view(k, n, b).mean(2).sum() + cfg.l1 * torch.sigmoid(mask_logit).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    with torch.no_grad():
        flips = (forward(stamped()).argmax(-1).reshape(-1) == labels).float().view(k, n, b).mean(2)
        m, pat = parts()
    if not isinstance(model, list):
        return m[0].detach(), pat[0].detach(), flips[0]
    return m.detach(), pat.detach(), flips


def anomaly_index(sizes: torch.Tensor) -> float:
    """Neural Cleanse's anomaly index of the smallest value: ``(median - min) / (1.4826 MAD)``, the
    MAD floored at 10 % of the median (when most masks fail they all count as the whole image and
    the MAD is 0; the floor bounds the index by 6.7 instead of letting it explode)."""
    med = sizes.median()
    mad = ((sizes - med).abs().median() * 1.4826).clamp_min(0.1 * float(med) + 1e-12)
    return float((med - sizes.min()) / mad)


def scores(sizes: torch.Tensor) -> list[dict]:
    """Per teacher (rows of ``sizes``, shape ``(K, C)``): its suspected class, the two signals and
    the combined score (module docstring)."""
    out = []
    k = sizes.shape[0]
    for i in range(k):
        c = int(sizes[i].argmin())
        others = torch.cat([sizes[:i, c], sizes[i + 1:, c]])
        peer = -math.log2(float(sizes[i, c]) / max(float(others.median()), 1e-12)) if k > 1 else 0.0
        peer = max(min(peer, 20.0), -20.0)
        anomaly = anomaly_index(sizes[i])
        out.append({"class": c, "mask_l1": float(sizes[i, c]), "anomaly": anomaly, "peer": peer,
                    "score": max(anomaly, 0.0) + max(peer, 0.0)})
    return out


def screen_weights(score_list: list[float], cfg: ScreenConfig) -> list[float]:
    """Ensemble weight factors in [0, 1] from the scores (``log`` mode: all 1)."""
    if cfg.mode == "log":
        return [1.0] * len(score_list)
    if cfg.mode == "hard":
        return [0.0 if s > cfg.threshold else 1.0 for s in score_list]
    return [min(1.0, math.exp(-(s - cfg.threshold))) for s in score_list]


def screen_models(models: list[nn.Module], info: DatasetInfo, cfg: ScreenConfig, seed: int = 0,
                  device="cpu") -> list[dict]:
    """Score every model on the same surrogate inputs (one batched search when they share an
    architecture); each entry also has its flip rate and ``seconds``, the search's time per model."""
    x = surrogate_inputs(info, cfg, seed, device)
    t0 = time.perf_counter()
    m, _, flips = class_masks([mm.to(device) for mm in models], x, info, cfg)
    per_model = (time.perf_counter() - t0) / len(models)
    sizes = m.sum(dim=(2, 3, 4, 5))
    sizes = torch.where(flips >= cfg.min_flip, sizes, torch.full_like(sizes, float(x.shape[-2] * x.shape[-1])))
    result = scores(sizes.cpu())
    for entry, f in zip(result, flips.cpu()):
        entry["flip"] = f[entry["class"]].item()
        entry["seconds"] = round(per_model, 3)
    return result
