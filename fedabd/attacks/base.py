"""The Attack interface and the poisoning rule shared by all triggers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.base import DatasetInfo, ImageSet, to_float, to_uint8
from ..registry import Registry

ATTACKS: Registry["Attack"] = Registry("attack")


@dataclass
class Attack:
    """A backdoor trigger. Subclasses implement :meth:`apply` (pure: no state change, no RNG use).

    ``params`` holds JSON-able settings, ``patterns`` the trigger tensors (float, pixel space).
    Together with ``name``, ``target`` and ``rate`` they rebuild the attack exactly.
    """

    name: str
    info: DatasetInfo
    target: int
    rate: float = 0.1
    clean_label: bool = False
    params: dict = field(default_factory=dict)
    patterns: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.target < self.info.num_classes:
            raise ValueError(f"target {self.target} is not a class of {self.info.name} (0..{self.info.num_classes - 1})")
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"poison rate must be in (0, 1], got {self.rate}")

    # -- the trigger -------------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on float pixel-space images ``(N,C,H,W)`` in ``[0,1]``; returns a new tensor clipped to ``[0,1]``."""
        raise NotImplementedError

    def prepare(self, data: ImageSet, seed: int) -> None:
        """Hook run once before poisoning ``data`` (e.g. clean-label ``cl`` fits its surrogate here)."""

    def poison_images(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transform the images chosen for poisoning (training time). Default: the test-time trigger."""
        return self.apply(x)

    # -- persistence -------------------------------------------------------------------------
    def config(self) -> dict:
        return {"name": self.name, "target": self.target, "rate": self.rate,
                "clean_label": self.clean_label, "params": dict(self.params)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.patterns.items()}


def create_attack(name: str, info: DatasetInfo, target: int | None = None, rate: float = 0.1,
                  seed: int = 0, **params) -> Attack:
    return ATTACKS.get(name)(info=info, target=info.default_target if target is None else target,
                             rate=rate, seed=seed, **params)


def attack_from_saved(config: dict, tensors: dict[str, torch.Tensor], info: DatasetInfo) -> Attack:
    """Rebuild an attack from :meth:`Attack.config` + :meth:`Attack.tensors` (no RNG involved)."""
    attack = ATTACKS.get(config["name"])(info=info, target=int(config["target"]), rate=float(config["rate"]),
                                         seed=0, **config.get("params", {}))
    missing = set(attack.patterns) - set(tensors)
    if missing:
        raise ValueError(f"saved trigger for {config['name']!r} lacks tensors: {sorted(missing)}")
    for key, ref in attack.patterns.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"saved trigger tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        attack.patterns[key] = t.to(ref.dtype)
    return attack


@dataclass
class PoisonResult:
    dataset: ImageSet
    poisoned_index: torch.Tensor  # indices (into the returned set) of poisoned samples


def poison_dataset(attack: Attack, data: ImageSet, seed: int) -> PoisonResult:
    """All-to-one poisoning of ``rate * len(data)`` samples.

    Dirty-label: non-target images get the trigger and the target label.
    Clean-label: target-class images get the (training-time) trigger and keep their label;
    the count is capped by the number of target-class images.
    """
    attack.prepare(data, seed)
    g = torch.Generator().manual_seed(seed)
    n_poison = int(round(attack.rate * len(data)))
    is_target = data.labels == attack.target
    pool = torch.nonzero(is_target if attack.clean_label else ~is_target).flatten()
    n_poison = min(n_poison, int(pool.numel()))
    chosen = pool[torch.randperm(pool.numel(), generator=g)[:n_poison]]
    images = data.images.clone()
    labels = data.labels.clone()
    if n_poison:
        x = to_float(images[chosen])
        images[chosen] = to_uint8(attack.poison_images(x, labels[chosen], g))
        labels[chosen] = attack.target
    meta = dict(data.meta, poisoned=attack.config(), n_poisoned=n_poison)
    return PoisonResult(ImageSet(images, labels, data.info, meta), chosen.sort().values)
