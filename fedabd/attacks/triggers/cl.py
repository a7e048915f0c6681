"""Clean-label attack (Turner et al. 2019, "Label-consistent backdoor attacks").

Test-time trigger (:meth:`apply`): a 3x3-cell black/white checkerboard (white in the corners, so
it is its own mirror image) stamped in all four corners; cell size ``cell`` px at 32x32
(default 1 -> 3x3 px grids), scaled with the image (64 -> 6x6 px).

Training time (:meth:`poison_images`, target-class images only, labels kept): an untargeted
L-inf PGD perturbation that *maximises* the surrogate's loss on the true label (so the model
must rely on the trigger to fit these images), ``eps`` = 16/255 in [0,1] pixel space whatever the
dataset, ``steps`` (default 10) steps of ``step_size`` (default 2.5 * eps / steps) from a random
start in the eps-ball drawn from the poisoning generator, then the four grids.

The surrogate is a tiny CNN defined here (not from ``fedabd.models``), fitted in
:meth:`prepare` on the clean data to be poisoned: plainly trained (Turner et al. use an
adversarially robust model, which makes the perturbations more semantic; plain training is a
cheaper, documented simplification), ``surrogate_epochs`` epochs (default 1) of Adam on at most
``surrogate_samples`` images (default 10000), batch 128, on ``info.normalize``-d inputs;
initialisation and shuffling come from the ``prepare`` seed, so poisoning is deterministic.
``surrogate_adv_eps > 0`` (e.g. 16/255) trains the surrogate robustly instead (fast FGSM
adversarial training, about twice the cost). The fitted surrogate is cached for repeated
``prepare`` calls on the same data and seed.

Caveat (measured on MNIST, LeNet, 20k images, 3 epochs): at eps 16/255 MNIST digits stay easy to
classify, so the label-consistent backdoor is weak there (ASR ~7 %, plain or robust surrogate);
the attack is designed for natural images such as CIFAR-10, where 16/255 is a large budget.
The surrogate is not part of the saved trigger: a rebuilt attack (``attack_from_saved``) has
the test-time trigger only, and needs :meth:`prepare` again before poisoning.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...data.base import DatasetInfo, ImageSet, to_float
from ..base import ATTACKS
from ._common import PatchAttack, checkerboard, scaled

EPS = 16 / 255


class SurrogateCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(32 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(self.pool(x).flatten(1))


class CleanLabelAttack(PatchAttack):
    mode = "replace"
    surrogate: nn.Module | None = None
    _surrogate_key: tuple | None = None

    # -- surrogate ---------------------------------------------------------------------------
    def prepare(self, data: ImageSet, seed: int) -> None:
        key = (int(seed), tuple(data.images.shape), int(data.images.sum()), int((data.labels * 7919 + 1).sum()))
        if self.surrogate is not None and self._surrogate_key == key:
            return
        self.surrogate = train_surrogate(data, seed, int(self.params["surrogate_epochs"]),
                                         int(self.params["surrogate_samples"]), float(self.params["surrogate_adv_eps"]))
        self._surrogate_key = key

    # -- training-time poison ----------------------------------------------------------------
    def perturb(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Untargeted L-inf PGD on the surrogate (no trigger); returns images in [0,1]."""
        if self.surrogate is None:
            raise RuntimeError("cl: call prepare(data, seed) (poison_dataset does) before poisoning")
        eps, steps = float(self.params["eps"]), int(self.params["steps"])
        step = self.params["step_size"]
        step = 2.5 * eps / max(steps, 1) if step is None else float(step)
        model = self.surrogate.to(x.device).eval()
        out = []
        for start in range(0, x.shape[0], 256):
            x0 = x[start:start + 256]
            y = labels[start:start + 256].to(x.device)
            delta = (torch.rand(x0.shape, generator=generator) * 2 - 1).mul_(eps).to(x.device, x.dtype)
            delta = ((x0 + delta).clamp(0, 1) - x0)
            with torch.enable_grad():
                for _ in range(steps):
                    delta.requires_grad_(True)
                    loss = F.cross_entropy(model(self.info.normalize(x0 + delta)), y)
                    (grad,) = torch.autograd.grad(loss, delta)
                    delta = (delta.detach() + step * grad.sign()).clamp_(-eps, eps)
                    delta = (x0 + delta).clamp_(0, 1) - x0
            out.append((x0 + delta.detach()).clamp_(0, 1))
        return torch.cat(out) if out else x.clone()

    def poison_images(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(self.perturb(x, labels, generator))


def train_surrogate(data: ImageSet, seed: int, epochs: int, max_samples: int, adv_eps: float = 0.0) -> SurrogateCNN:
    """Fit the tiny surrogate; ``adv_eps > 0`` trains it adversarially robust (FGSM with a random
    start and step 1.25 * adv_eps, Wong et al. 2020: one extra forward/backward per batch)."""
    info = data.info
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = SurrogateCNN(info.channels, info.num_classes)
    n = len(data)
    index = torch.randperm(n, generator=g)[:max_samples] if n > max_samples else torch.arange(n)
    images, labels = data.images[index], data.labels[index]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=g)
            for s in range(0, order.numel(), 128):
                b = order[s:s + 128]
                x, y = to_float(images[b]), labels[b]
                if adv_eps > 0:
                    delta = (torch.rand(x.shape, generator=g) * 2 - 1).mul_(adv_eps).requires_grad_(True)
                    loss = F.cross_entropy(model(info.normalize((x + delta).clamp(0, 1))), y)
                    (grad,) = torch.autograd.grad(loss, delta)
                    delta = (delta.detach() + 1.25 * adv_eps * grad.sign()).clamp_(-adv_eps, adv_eps)
                    x = (x + delta).clamp_(0, 1)
                loss = F.cross_entropy(model(info.normalize(x)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@ATTACKS.register("cl")
def cl(info: DatasetInfo, target: int, rate: float = 0.1, seed: int = 0, eps: float = EPS, steps: int = 10,
       step_size: float | None = None, cell: float = 1.0, surrogate_epochs: int = 1,
       surrogate_samples: int = 10000, surrogate_adv_eps: float = 0.0) -> CleanLabelAttack:
    if eps < 0 or steps < 0:
        raise ValueError(f"cl: need eps >= 0 and steps >= 0, got {eps}, {steps}")
    size = info.image_size
    patch = checkerboard(3, scaled(cell, size), info.channels)
    k = patch.shape[-1]
    if 2 * k > size:
        raise ValueError(f"cl: {k}px corner grids do not fit a {size}px image")
    attack = CleanLabelAttack(name="cl", info=info, target=target, rate=rate, clean_label=True,
                              params={"eps": float(eps), "steps": int(steps),
                                      "step_size": None if step_size is None else float(step_size),
                                      "cell": float(cell), "surrogate_epochs": int(surrogate_epochs),
                                      "surrogate_samples": int(surrogate_samples),
                                      "surrogate_adv_eps": float(surrogate_adv_eps)},
                              patterns={"patch": patch})
    attack.positions = ((0, 0), (0, size - k), (size - k, 0), (size - k, size - k))
    return attack
