"""Acc, ASR and R-Acc, one vocabulary everywhere."""
from __future__ import annotations

import torch

from .attacks import Attack
from .data import ImageSet, to_float


@torch.no_grad()
def predict(model: torch.nn.Module, data: ImageSet, device: torch.device | str = "cpu", batch_size: int = 1000,
            transform=None) -> torch.Tensor:
    """Predicted labels for every image; ``transform`` acts on float pixel-space batches first."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds = []
    for i in range(0, len(data), batch_size):
        x = to_float(data.images[i:i + batch_size])
        if transform is not None:
            x = transform(x)
        x = data.info.normalize(x).to(device)
        preds.append(model(x).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def evaluate(model: torch.nn.Module, test: ImageSet, attack: Attack | None = None,
             device: torch.device | str = "cpu", batch_size: int = 1000) -> dict[str, float]:
    """``acc`` on clean test images; with an attack also ``asr`` and ``r_acc``.

    ASR: test images whose true class is not the target, trigger applied, fraction predicted as
    the target. R-Acc: the same triggered images, fraction predicted as their true label.
    """
    out = {"acc": (predict(model, test, device, batch_size) == test.labels).float().mean().item()}
    if attack is not None:
        keep = test.labels != attack.target
        triggered = test.subset(torch.nonzero(keep).flatten())
        pred = predict(model, triggered, device, batch_size, transform=attack.apply)
        out["asr"] = (pred == attack.target).float().mean().item()
        out["r_acc"] = (pred == triggered.labels).float().mean().item()
    return out
