"""Supervised training of classifiers (teachers, federated clients)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .data import ImageSet, to_float
from .device import autocast

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict], None]  # (step done, total steps, latest metrics)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random crop (pad H/8) + horizontal flip where the dataset allows it
    bf16: bool = False
    clip: float = 0.0  # > 0: clip each step's gradient to this L2 norm (0 = off)
    channels_last: bool = False  # the model and its batches in channels_last while training (back to the default after)

    def to_json(self) -> dict:
        return asdict(self)


def augment_batch(x: torch.Tensor, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to H/8 pixels (zero padding) and optional horizontal flip."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (n, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def iterate_batches(data: ImageSet, batch_size: int, generator: torch.Generator, shuffle: bool = True):
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    for i in range(0, len(data), batch_size):
        idx = order[i:i + batch_size]
        yield data.images[idx], data.labels[idx]


def train_classifier(model: torch.nn.Module, data: ImageSet, cfg: TrainConfig, device: torch.device,
                     seed: int = 0, progress: Progress | None = None,
                     objective: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] | None = None,
                     after_step: Callable[[torch.nn.Module], None] | None = None) -> dict:
    """SGD with momentum and a cosine schedule (each step's gradient clipped to ``cfg.clip`` in L2
    norm when it is > 0); returns the final epoch's mean loss and accuracy.

    ``objective(ce, model)`` turns every batch's cross-entropy into the loss minimised (e.g. an
    attacker's anomaly-evasion term added to it); ``after_step(model)`` runs after every optimiser
    step (e.g. a projection)."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(data) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    step, stats = 0, {}
    for epoch in range(cfg.epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in iterate_batches(data, cfg.batch_size, g):
            x = to_float(xb)
            if cfg.augment:
                x = augment_batch(x, data.info.hflip, g)
            x, y = data.info.normalize(x).to(device).contiguous(memory_format=fmt), yb.to(device)
            with autocast(device, cfg.bf16):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            total_loss = objective(loss, model) if objective is not None else loss
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            if after_step is not None:
                after_step(model)
            sched.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if progress is not None:
                progress(step, total, {"epoch": epoch + 1, "loss": loss.item()})
        stats = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen}
        log.info("epoch %d: loss %.4f acc %.4f", epoch + 1, stats["train_loss"], stats["train_acc"])
    model.to(memory_format=torch.contiguous_format).eval()  # weights in the default layout (safetensors, uploads)
    return stats
