"""OOD: single-image distillation (Asano & Saeed 2023, with ABD's OOD re-weighting).

No generator and no real data: a pool of augmented patches cut from ONE natural image stands in
for the training set.

Patch pool (built once in :meth:`OODDistiller.setup`, :func:`make_patch_pool`, fully vectorised):
random resized crops of the source image (area fraction ``crop_scale_*`` of the image, aspect
ratio ``crop_ratio_*``; bilinear box-averaged resampling with ``torchvision.ops.roi_align``),
horizontal flips, colour jitter (brightness / contrast / saturation / hue, one random factor per
patch), converted to grayscale for 1-channel datasets, optionally inverted (``invert_p``); output at the dataset's size and channels,
pixel space ``[0, 1]`` (stored as uint8). Every random choice comes from the run's seed.

Student step (one iteration = one student step, ``total_iterations = steps``):
  1. draw a batch of ``batch_size`` patches (epochs over the shuffled pool);
  2. online augmentation (``online_augment``, the authors' RandomCrop with padding 4 and
     horizontal flip on every draw: :func:`fedabd.train.augment_batch`, padding H/8, flips where the
     dataset allows them), then CutMix, always on (:func:`cutmix`): one box per batch, area
     ``1 - lam``, ``lam ~ Beta(a, a)`` with ``a = cutmix_alpha`` = 0.25 (the authors'), pasted from a
     random permutation of the batch. As in KD-with-CutMix, the teacher labels the MIXED image
     directly (no label interpolation);
  3. per-sample loss ``l_i = KL_8(T(x_i) || S(x_i)) / C`` (``kl_reduction="mean"``: the authors'
     ``F.kl_div(..., reduction='none')`` averaged over batch and classes, i.e. the per-sample KL
     divided by the number of classes C; no tau^2 factor, ``tau_squared=False``, as theirs).
     ``kl_reduction="batchmean"`` and ``tau_squared=True`` give fedabd's earlier
     ``tau^2 * KL_tau`` per sample (640 times larger at tau 8, C 10). With Adam the scale hardly
     changes a plain run, but it sets the balance against SR's unlearning term, which the authors
     compute as ``tau^2 * KL_tau`` per sample (:meth:`OODDistiller.sr_divergence`);
  4. defence re-weighting contract: ``w = defense.sample_weights(self, x, t_logits)`` with ``x``
     the mixed batch in normalised input space and ``t_logits`` the teacher's logits on it.
     ``None`` -> ``loss = mean_i l_i``; otherwise ``w`` must be a ``(B,)`` tensor (detached here)
     and ``loss = mean_i (w_i * l_i) = sum_i w_i l_i / B``. To obtain the spec's SV loss
     ``mean_{m=0} l_i - lambda * mean_{m=1} l_i`` a defence returns
     ``w_i = B / n0`` for ``m_i = 0`` and ``w_i = -lambda * B / n1`` for ``m_i = 1``
     (n0, n1 the group sizes; a group that is empty gets no term). A sample with a negative
     weight is unlearned (gradient ascent on its KL), which is unbounded: with ``ascent_cap``
     (default, ours) its loss is ``min(l_i, u_i)``, ``u_i`` the loss a uniform student (zero
     logits) would have on it, so the ascent stops once the student is as far from the teacher on
     that sample as a student that knows nothing. Without the cap (``ascent_cap=False``, the
     spec's formula as written) the seed-0 OOD + ABD runs of the reproduction diverged (badnet_sq:
     KL 0.9 -> 1.9e4 by step 450, Acc 10 %; l2_inv: KL 3e9);
  5. backward; in the defence's final phase ``defense.final_phase_step(self, x)`` is called after
     the KD backward and before the optimiser step (its dict joins the metrics); Adam step. In
     the final phase the defence's sample weights are not used (``sv_in_final_phase=False``: the
     authors' SR branch trains without SV's re-weighting).

Adam lr 1e-3 (paper preset; 3e-3 in the short CPU preset). ``schedule="step"`` (the authors':
MultiStepLR at epochs 150, 300, 600 with gamma 0.5 in their 300-epoch runs) halves the LR at half
the run; ``"cosine"`` (fedabd's earlier default) anneals it over the run. The final phase's LR is
the base class's (:meth:`Distiller.on_final_phase`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...data import to_float, to_uint8
from ...data.single_image import DEFAULT_IMAGE, load_source_image
from ...train import augment_batch
from ..base import DISTILLERS, Distiller
from ..losses import kl_div

_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class OODConfig:
    image: str = DEFAULT_IMAGE  # a shipped image name or a path to an image file
    num_patches: int = 20_000  # size of the pre-generated patch pool
    source_size: int = 256  # the image is resized (antialiased) to this long side before cropping; 0 = keep
    crop_scale_min: float = 0.005  # crop area as a fraction of the (resized) image area
    crop_scale_max: float = 0.25
    crop_ratio_min: float = 3 / 4
    crop_ratio_max: float = 4 / 3
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    invert_p: float = 0.0  # probability of inverting a patch (1 - x); not in the paper, helps dark-background data
    tau: float = 8.0
    tau_squared: bool = False  # True: tau^2 * KL (ours before); the authors' KD loss has no tau^2
    kl_reduction: str = "mean"  # "mean": per-sample KL / C (the authors'); "batchmean": per-sample KL
    lr: float = 3e-3  # paper: 1e-3 (see PRESETS)
    batch_size: int = 256
    steps: int = 1500
    cutmix_alpha: float = 0.25  # Beta(a, a) of CutMix (the authors' 0.25); 0 switches CutMix off
    online_augment: bool = True  # random crop (pad H/8) + flip at every draw (the authors')
    schedule: str = "step"  # "step": LR halved at half the run (the authors'); "cosine" (ours before)
    sr_lr: float = 5e-4
    sv_in_final_phase: bool = False  # keep SV's re-weighting during SR (the authors' SR phase has none)
    ascent_cap: bool = True  # negative-weight samples' loss capped at a uniform student's (ours; see docstring)

    def __post_init__(self) -> None:
        if self.num_patches < 1 or self.batch_size < 1 or self.steps < 1:
            raise ValueError("num_patches, batch_size and steps must be >= 1")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError("need 0 < crop_scale_min <= crop_scale_max <= 1")
        if not 0 < self.crop_ratio_min <= self.crop_ratio_max:
            raise ValueError("need 0 < crop_ratio_min <= crop_ratio_max")
        if not 0 <= self.hflip_p <= 1 or not 0 <= self.invert_p <= 1:
            raise ValueError("hflip_p and invert_p must be in [0, 1]")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("jitter strengths must be >= 0 and hue in [0, 0.5]")
        if self.tau <= 0 or self.lr <= 0 or self.sr_lr <= 0 or self.cutmix_alpha < 0:
            raise ValueError("tau, lr, sr_lr must be positive and cutmix_alpha >= 0")
        if self.kl_reduction not in ("mean", "batchmean"):
            raise ValueError(f"kl_reduction must be 'mean' or 'batchmean', got {self.kl_reduction!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")


PRESETS = {
    # mnist_subset, LeNet-5 -> half LeNet-5: a few minutes on 2 CPU cores. Adam lr 3e-3 rather than the
    # paper's 1e-3: with this short budget 1e-3 reached only 57 % Acc after 1500 steps, 3e-3 reached 91 %.
    "cpu": OODConfig(),
    # the paper: 50k patches, batch 512, Adam 1e-3, tau 8; 200 passes over the pool (our choice of budget)
    "paper": OODConfig(num_patches=50_000, source_size=0, lr=1e-3, batch_size=512, steps=200 * math.ceil(50_000 / 512)),
    # one federated round on the CPU: the student is warm-started from the previous round's
    "fed": OODConfig(steps=500),
    # the smallest run through every code path (tests, and a quick check of a set-up)
    "smoke": OODConfig(num_patches=64, batch_size=16, steps=4, source_size=128),
}


# -- patch pool ---------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-sample hue rotation by ``shift`` turns, as a rotation of the chroma plane in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    theta = 2 * math.pi * shift
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(len(x), 3, 3, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = from_yiq @ rot @ to_yiq  # (n, 3, 3)
    n, c, h, w = x.shape
    return torch.bmm(m, x.reshape(n, c, h * w)).view(n, c, h, w)


def _jitter(x: torch.Tensor, cfg: OODConfig, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    if cfg.brightness > 0:
        x = (x * _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, g).view(n, 1, 1, 1)).clamp_(0, 1)
    if cfg.contrast > 0:
        f = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, g).view(n, 1, 1, 1)
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        x = (f * x + (1 - f) * mean).clamp_(0, 1)
    if cfg.saturation > 0:
        f = _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, g).view(n, 1, 1, 1)
        x = (f * x + (1 - f) * _gray(x)).clamp_(0, 1)
    if cfg.hue > 0:
        x = _hue_rotate(x, _uniform(n, -cfg.hue, cfg.hue, g)).clamp_(0, 1)
    return x


def _prepare_source(image: torch.Tensor, source_size: int) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"source image must be (3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if source_size and max(h, w) != source_size:
        s = source_size / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return image.clamp(0, 1).contiguous()


def _pyramid(src: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Antialiased 2x pyramid of ``src`` down to about the patch size."""
    levels = [src]
    while min(levels[-1].shape[-2:]) >= 4 * size:
        levels.append(F.interpolate(levels[-1], scale_factor=0.5, mode="bilinear", antialias=True,
                                    align_corners=False, recompute_scale_factor=False))
    return levels


def _crop_resize(pyramid: list[torch.Tensor], x0, y0, cw, ch, size: int) -> torch.Tensor:
    """Crop boxes (full-resolution pixel coordinates) resized to ``size``: each box is read from the
    pyramid level where it spans at most ~2x the output, with 2x2 bilinear samples per output pixel
    (``roi_align``), i.e. an antialiased downsample at a fixed, small cost per patch."""
    from torchvision.ops import roi_align

    n = len(x0)
    side = torch.maximum(cw, ch)
    level = torch.floor(torch.log2((side / (2 * size)).clamp(min=1.0))).long().clamp(0, len(pyramid) - 1)
    out = torch.empty(n, pyramid[0].shape[1], size, size)
    for k in level.unique().tolist():
        sel = torch.nonzero(level == k).flatten()
        boxes = torch.stack([torch.zeros(len(sel)), x0[sel], y0[sel], x0[sel] + cw[sel], y0[sel] + ch[sel]], 1)
        # aligned=True: pixel centres at +0.5, so the box [x0, x0 + cw] covers exactly those pixels
        lvl = pyramid[k]
        scale = lvl.shape[-1] / pyramid[0].shape[-1]
        out[sel] = roi_align(lvl, boxes, output_size=(size, size), spatial_scale=scale, sampling_ratio=2, aligned=True)
    return out


def make_patch_pool(image: torch.Tensor, num: int, channels: int, size: int, cfg: OODConfig,
                    generator: torch.Generator, dtype: torch.dtype = torch.float32, chunk: int = 4096) -> torch.Tensor:
    """``num`` augmented patches of ``image`` (float (3,H,W) in [0,1]) as ``(num, channels, size, size)``.

    float dtypes -> values in ``[0, 1]``; ``torch.uint8`` -> pixel values 0-255 (saves 4x memory).
    Deterministic given ``generator``'s state and ``chunk`` (random draws are made chunk by chunk,
    so a different ``chunk`` gives a different, equally valid pool).
    """
    if channels not in (1, 3):
        raise ValueError(f"patches need 1 or 3 channels, got {channels}")
    src = _prepare_source(image.float(), cfg.source_size)[None]  # (1, 3, H, W)
    H, W = src.shape[-2:]
    pyramid = _pyramid(src, size)
    out = torch.empty(num, channels, size, size, dtype=dtype)
    for start in range(0, num, chunk):
        n = min(chunk, num - start)
        area = _uniform(n, cfg.crop_scale_min, cfg.crop_scale_max, generator) * (H * W)
        log_r = _uniform(n, math.log(cfg.crop_ratio_min), math.log(cfg.crop_ratio_max), generator)
        ratio = log_r.exp()
        cw = (area * ratio).sqrt().clamp(1.0, float(W))
        ch = (area / ratio).sqrt().clamp(1.0, float(H))
        x0 = torch.rand(n, generator=generator) * (W - cw)
        y0 = torch.rand(n, generator=generator) * (H - ch)
        patches = _crop_resize(pyramid, x0, y0, cw, ch, size)
        flip = torch.rand(n, generator=generator) < cfg.hflip_p
        patches = torch.where(flip.view(n, 1, 1, 1), patches.flip(-1), patches)
        patches = _jitter(patches.clamp_(0, 1), cfg, generator)
        if channels == 1:
            patches = _gray(patches)
        if cfg.invert_p > 0:
            inv = torch.rand(n, generator=generator) < cfg.invert_p
            patches = torch.where(inv.view(n, 1, 1, 1), 1 - patches, patches)
        patches = patches.clamp_(0, 1)
        out[start:start + n] = to_uint8(patches) if dtype == torch.uint8 else patches.to(dtype)
    return out


# -- CutMix -------------------------------------------------------------------------------------
def _beta(alpha: float, g: torch.Generator) -> float:
    if alpha == 1.0:
        return float(torch.rand((), generator=g))
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix(x: torch.Tensor, alpha: float, generator: torch.Generator):
    """CutMix within a batch: one box of area ~(1 - lam) * H * W, lam ~ Beta(alpha, alpha), filled
    from ``x[perm]``. Returns ``(mixed, perm, (y1, y2, x1, x2))``; outside the box ``mixed == x``."""
    n, _, h, w = x.shape
    lam = _beta(alpha, generator)
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx = int(torch.randint(0, w, (1,), generator=generator))
    cy = int(torch.randint(0, h, (1,), generator=generator))
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    perm = torch.randperm(n, generator=generator)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[perm.to(x.device)][:, :, y1:y2, x1:x2]
    return mixed, perm, (y1, y2, x1, x2)


# -- the distiller ------------------------------------------------------------------------------
@DISTILLERS.register("ood")
class OODDistiller(Distiller):
    config_cls = OODConfig
    presets = PRESETS
    unit = "step"
    needs_real_data = False

    @property
    def total_iterations(self) -> int:
        return self.cfg.steps

    def setup(self) -> None:
        cfg = self.cfg
        image = load_source_image(cfg.image)
        self.pool = make_patch_pool(image, cfg.num_patches, self.info.channels, self.info.image_size, cfg,
                                    self.generator, dtype=torch.uint8)
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0
        self.student_opt = torch.optim.Adam(self.student.parameters(), lr=cfg.lr)
        total = max(1, self.total_iterations)
        if cfg.schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.student_opt, T_max=total)
        else:  # the authors' milestones 150, 300, 600 of 300 epochs, as fractions of the run
            self.sched = torch.optim.lr_scheduler.MultiStepLR(
                self.student_opt, [max(1, round(f * total)) for f in (0.5, 1.0, 2.0)], gamma=0.5)

    def _next_index(self) -> torch.Tensor:
        """Epochs over the shuffled pool; a batch never straddles two epochs (the tail is skipped)."""
        b = min(self.cfg.batch_size, len(self.pool))
        if self._pos + b > len(self._order):
            self._order = torch.randperm(len(self.pool), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos:self._pos + b]
        self._pos += b
        return idx

    def sample_loss(self, t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
        """Per-sample KD loss ``l_i`` (shape ``(B,)``)."""
        per = kl_div(t_logits, s_logits, self.cfg.tau, reduction="none")
        if self.cfg.kl_reduction == "mean":
            per = per / t_logits.shape[1]
        return per * (self.cfg.tau ** 2) if self.cfg.tau_squared else per

    def sr_divergence(self, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        """tau^2 * KL_tau per sample (the authors' OOD unlearning, at the KD temperature)."""
        return kl_div(p_logits, q_logits, self.cfg.tau, reduction="none") * self.cfg.tau ** 2

    def combine(self, per: torch.Tensor, weights: torch.Tensor | None,
                cap: torch.Tensor | None = None) -> torch.Tensor:
        """The batch loss from per-sample losses and the defence's weights (contract: module docstring);
        ``cap`` (per sample) bounds the loss of the samples with a negative weight."""
        if weights is None:
            return per.mean()
        weights = torch.as_tensor(weights, dtype=per.dtype, device=per.device).detach()
        if weights.shape != per.shape:
            raise ValueError(f"defence sample weights must have shape {tuple(per.shape)}, got {tuple(weights.shape)}")
        if cap is not None:
            per = torch.where(weights < 0, torch.minimum(per, cap.detach()), per)
        return (weights * per).mean()

    def iteration(self, it: int) -> dict:
        cfg = self.cfg
        x = to_float(self.pool[self._next_index()])
        if cfg.online_augment:
            x = augment_batch(x, self.info.hflip, self.generator)
        if cfg.cutmix_alpha > 0:
            x, _, _ = cutmix(x, cfg.cutmix_alpha, self.generator)
        x = self.info.normalize(x).to(self.device)
        t = self.teacher_logits(x)
        s = self.student_logits(x)
        per = self.sample_loss(t, s)
        weights = (None if self.in_final_phase and not cfg.sv_in_final_phase
                   else self.defense.sample_weights(self, x, t))
        cap = None
        if weights is not None and cfg.ascent_cap:
            with torch.no_grad():
                cap = self.sample_loss(t, torch.zeros_like(s))
        loss = self.combine(per, weights, cap)
        metrics = {"loss": loss.item(), "kl": per.detach().mean().item(), **self.student_step(loss, x)}
        if not self.in_final_phase:
            self.sched.step()
        metrics["agree"] = (t.argmax(1) == s.detach().argmax(1)).float().mean().item()
        return metrics
