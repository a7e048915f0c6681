"""An attacker that knows the server screens teachers (ours: the adaptive test of ``screen``).

Teacher screening (:mod:`fedabd.screening`) flags a model whose backdoor's target class is reachable
by a far smaller mask than its other classes, and than the other teachers' same class. This attacker
knows the method, its settings and the kind of surrogate inputs. It poisons and trains as ``poison``
does, then hardens its model ``hardening`` times: it runs the screening's own mask search for its
target class on its model and fine-tunes ``steps`` batches on its clean images stamped with the mask
found (labelled with their true classes) mixed with its poisoned data (so that its own trigger keeps
working). Each pass removes the smallest shortcut to the target that the search can find other than
the trigger the poisoned data teaches; what remains for the search is the trigger itself, so the
attack trades the search's mask size against its own ASR (measured in results/screening).
``scale`` boosts the update as for plain poisoning.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import THREATS, Threat


@dataclass(frozen=True)
class ScreenAwareSettings:
    hardening: int = 3           # search-and-unlearn passes after the poisoned training
    steps: int = 30              # fine-tuning batches per pass
    stamped_share: float = 0.5   # of each batch: clean images stamped with the found mask, true labels

    def __post_init__(self) -> None:
        if self.hardening < 0 or self.steps < 1:
            raise ValueError("hardening must be >= 0 and steps >= 1")
        if not 0.0 < self.stamped_share < 1.0:
            raise ValueError(f"stamped_share must be in (0, 1), got {self.stamped_share}")


@THREATS.register("screen_aware")
class ScreenAware(Threat):
    config_cls = ScreenAwareSettings

    def train(self, model, data, clean, train_cfg, device, seed, start) -> dict:
        from ..data import to_float
        from ..screening import ScreenConfig, class_masks, surrogate_inputs
        from ..train import train_classifier

        stats = train_classifier(model, data, train_cfg, device, seed=seed)
        s, info = self.settings, data.info
        target = self.trigger(info, 0, 0).target
        settings = self.cfg.aggregator_settings or {}
        own = settings if self.cfg.aggregator == "screen" else settings.get("screen", {})
        screen = ScreenConfig(**dict(own or {}))  # the server's screening settings, as the attacker knows them
        g = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.SGD(model.parameters(), lr=train_cfg.lr * 0.2, momentum=train_cfg.momentum)
        half = max(1, int(train_cfg.batch_size * s.stamped_share))
        sizes = []
        for h in range(s.hardening):
            x_sur = surrogate_inputs(info, screen, seed + 100 + h, device)
            mask, pattern, _ = class_masks(model, x_sur, info, screen, classes=[target])
            sizes.append(float(mask.sum()))
            model.train()
            for _ in range(s.steps):
                ic = torch.randint(0, len(clean), (half,), generator=g)
                ip = torch.randint(0, len(data), (train_cfg.batch_size - half,), generator=g)
                xc = info.normalize(to_float(clean.images[ic])).to(device)
                xs = (1 - mask[0]) * xc + mask[0] * pattern[0]
                xp = info.normalize(to_float(data.images[ip])).to(device)
                x = torch.cat([xs, xp])
                y = torch.cat([clean.labels[ic], data.labels[ip]]).to(device)
                loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if sizes:  # the target mask the search found before the last pass (what the attacker watched)
            stats = dict(stats, screen_mask_l1=sizes[-1])
        return stats
