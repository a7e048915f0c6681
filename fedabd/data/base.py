"""Core data types shared by every dataset, attack and trainer.

Images live in memory as ``uint8`` tensors of shape ``(N, C, H, W)`` (pixel space, 0-255);
they become float ``[0, 1]`` at batch time (:func:`to_float`), triggers act in that pixel space,
and :class:`DatasetInfo.normalize` maps to the models' normalised input space last.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are not on disk and may not / cannot be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int  # H == W for every dataset we support
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_target: int = 0  # the paper's backdoor target label for this dataset
    hflip: bool = False  # horizontal flips are a label-preserving augmentation (not for digits/signs)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space ``[0, 1]`` -> model input space. Works on ``(N,C,H,W)`` or ``(C,H,W)``."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "default_target": self.default_target,
        }


@dataclass
class ImageSet:
    """An in-memory labelled image set: ``images`` uint8 ``(N,C,H,W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N,C,H,W), got {self.images.dtype} {tuple(self.images.shape)}")
        if tuple(self.images.shape[1:]) != self.info.shape:
            raise ValueError(f"images have shape {tuple(self.images.shape[1:])}, dataset {self.info.name} expects {self.info.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be a 1-D tensor with one label per image")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.info, dict(self.meta))


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255.0)


def to_uint8(images_float: torch.Tensor) -> torch.Tensor:
    return images_float.clamp(0, 1).mul(255.0).round().to(torch.uint8)


def asset_path(name: str) -> Path:
    """A file shipped in ``fedabd/data/assets``. Flower's ``flwr run`` puts a copy of the app's
    source (without data files) first on ``sys.path``; then the installed package's copy is used."""
    first = Path(str(resources.files("fedabd.data").joinpath("assets", name)))
    if first.exists():
        return first
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    rel = Path("fedabd") / "data" / "assets" / name
    candidates = [Path(entry) / rel for entry in sys.path]
    try:
        dist = metadata.distribution("fedabd")
        candidates.append(Path(str(dist.locate_file(rel))))
        direct = json.loads(dist.read_text("direct_url.json") or "{}")  # editable installs
        if direct.get("url", "").startswith("file://"):
            candidates.append(Path(unquote(urlparse(direct["url"]).path)) / rel)
    except metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"shipped data file {name!r} is missing from the fedabd installation ({first})")
