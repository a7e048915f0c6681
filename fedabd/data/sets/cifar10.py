"""``cifar10``: CIFAR-10 (50,000 / 10,000) from ``<data_dir>/cifar-10-batches-py/`` (python batches)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import register_dataset
from ..base import DatasetInfo, ImageSet
from ._torchvision import load_array_pickle, load_from_disk, torchvision_fetch

INFO = DatasetInfo(
    name="cifar10", num_classes=10, channels=3, image_size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), default_target=0, hflip=True,
)

FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@register_dataset(INFO)
def cifar10(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    names = BATCHES[split]

    def locate(root: Path) -> Path | None:
        folder = root / FOLDER
        return folder if all((folder / n).is_file() for n in names) else None

    def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for n in names:
            entry = load_array_pickle(folder / n)
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # rows are CHW
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    return load_from_disk(
        INFO, split, data_dir, download, locate=locate, read=read,
        expected=f"{FOLDER}/{{{','.join(names)}}}",
        fetch=torchvision_fetch("CIFAR10", train=split == "train"), source="cs.toronto.edu (via torchvision)",
    )
