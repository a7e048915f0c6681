"""``fashion_mnist``: Fashion-MNIST (60,000 / 10,000) from ``<data_dir>/FashionMNIST/raw/*-ubyte[.gz]``."""
from __future__ import annotations

from pathlib import Path

from .. import register_dataset
from ..base import DatasetInfo, ImageSet
from ._torchvision import idx_locator, load_from_disk, torchvision_fetch

INFO = DatasetInfo(
    name="fashion_mnist", num_classes=10, channels=1, image_size=28,
    mean=(0.2860,), std=(0.3530,), default_target=0,
)


@register_dataset(INFO)
def fashion_mnist(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    locate, read, expected = idx_locator(["FashionMNIST/raw"], split)
    return load_from_disk(
        INFO, split, data_dir, download, locate=locate, read=read, expected=expected,
        fetch=torchvision_fetch("FashionMNIST", train=split == "train"), source="torchvision's FashionMNIST mirror",
    )
