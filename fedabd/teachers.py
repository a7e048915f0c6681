"""Train a clean or poisoned teacher, measure it, and save it with its trigger."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import save_model
from .attacks import Attack, create_attack, poison_dataset
from .data import ImageSet, load_dataset
from .device import seed_everything
from .metrics import evaluate
from .models import create_model
from .train import Progress, TrainConfig, train_classifier


@dataclass
class TeacherResult:
    model: torch.nn.Module
    attack: Attack | None
    metrics: dict
    path: Path | None


def train_teacher(dataset: str, arch: str, attack_name: str | None, *, seed: int = 0, rate: float = 0.1,
                  target: int | None = None, cfg: TrainConfig = TrainConfig(), device: torch.device | str = "cpu",
                  data_dir: str | Path | None = None, download: bool = False, out: str | Path | None = None,
                  progress: Progress | None = None, train: ImageSet | None = None,
                  test: ImageSet | None = None, attack_params: dict | None = None) -> TeacherResult:
    """Train ``arch`` on ``dataset`` (poisoned by ``attack_name`` unless None/"clean"); save to ``out``."""
    device = torch.device(device)
    train = train if train is not None else load_dataset(dataset, "train", data_dir, download)
    test = test if test is not None else load_dataset(dataset, "test", data_dir, download)
    seed_everything(seed)
    attack = None
    n_poisoned = 0
    if attack_name not in (None, "clean"):
        attack = create_attack(attack_name, train.info, target=target, rate=rate, seed=seed, **(attack_params or {}))
        poisoned = poison_dataset(attack, train, seed=seed)
        train, n_poisoned = poisoned.dataset, len(poisoned.poisoned_index)
    model = create_model(arch, num_classes=train.info.num_classes, in_channels=train.info.channels,
                         image_size=train.info.image_size)
    train_stats = train_classifier(model, train, cfg, device, seed=seed, progress=progress)
    metrics = evaluate(model, test, attack, device)
    path = None
    if out is not None:
        path = save_model(out, model.cpu(), train.info, attack=attack, seed=seed, metrics=metrics,
                          extra={"train": cfg.to_json(), "train_stats": train_stats, "n_poisoned": n_poisoned,
                                 "n_train": len(train)})
        model.to(device)
    return TeacherResult(model=model, attack=attack, metrics=metrics, path=path)
