"""``mnist``: full MNIST (60,000 / 10,000) from ``<data_dir>/MNIST/raw/*-ubyte[.gz]``.

Also accepted: the four IDX files directly in ``<data_dir>``. Without ``data_dir`` the folder comes
from ``$FEDABD_DATA_DIR`` (else ``~/.cache/fedabd/data``).
"""
from __future__ import annotations

from pathlib import Path

from .. import register_dataset
from ..base import DatasetInfo, ImageSet
from ._torchvision import idx_locator, load_from_disk, torchvision_fetch

INFO = DatasetInfo(
    name="mnist", num_classes=10, channels=1, image_size=28,
    mean=(0.1307,), std=(0.3081,), default_target=0,
)


@register_dataset(INFO)
def mnist(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    locate, read, expected = idx_locator(["MNIST/raw", ""], split)
    return load_from_disk(
        INFO, split, data_dir, download, locate=locate, read=read, expected=expected,
        fetch=torchvision_fetch("MNIST", train=split == "train"), source="torchvision's MNIST mirrors",
    )
