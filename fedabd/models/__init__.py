"""Model registries: classifiers and generators.

Classifier factory: ``factory(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module``.
Every classifier's ``forward(x, return_features=False)`` returns logits, or with
``return_features=True`` a tuple ``(logits, [feature maps])`` (the block activations used by
attention transfer; for WRN the three group outputs). The shipped classifiers are :class:`~fedabd.models.staged.Staged`: their
forward also takes ``start`` / ``stop`` (run only stages ``[start, stop)``, tensor in, tensor out).

Generator factory: ``factory(nz: int, channels: int, image_size: int, width: int, **kw) -> nn.Module``,
``forward(z) -> images`` of shape ``(B, channels, image_size, image_size)``.
"""
from __future__ import annotations

from torch import nn

from ..registry import Registry, import_submodules

MODELS: Registry[nn.Module] = Registry("model")
GENERATORS: Registry[nn.Module] = Registry("generator")


def create_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    model.arch = {"name": name, "num_classes": num_classes, "in_channels": in_channels,
                  "image_size": image_size, **kwargs}
    return model


def create_generator(name: str, nz: int, channels: int, image_size: int, width: int, **kwargs) -> nn.Module:
    return GENERATORS.get(name)(nz=nz, channels=channels, image_size=image_size, width=width, **kwargs)


import_submodules(__name__ + ".nets")

__all__ = ["MODELS", "GENERATORS", "create_model", "create_generator"]
