"""``gtsrb``: German Traffic Sign Recognition Benchmark, 43 classes, resized to 32x32.

torchvision's layout under ``<data_dir>/gtsrb/``: training images in
``GTSRB/Training/<class id, 5 digits>/*.ppm``; test images in ``GTSRB/Final_Test/Images/*.ppm``
with labels in ``GT-final_test.csv`` (``;``-separated, columns ``Filename`` and ``ClassId``).
Images vary in size and are resized (whole image, bilinear with antialiasing) to 32x32 RGB.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import register_dataset
from ..base import DatasetInfo, ImageSet
from ._torchvision import load_from_disk, torchvision_fetch

INFO = DatasetInfo(
    name="gtsrb", num_classes=43, channels=3, image_size=32,
    mean=(0.3337, 0.3064, 0.3171), std=(0.2672, 0.2564, 0.2629), default_target=1,
)

SIZE = INFO.image_size


def _samples(base: Path, split: str) -> list[tuple[Path, int]]:
    if split == "train":
        out = []
        for d in sorted(p for p in (base / "GTSRB" / "Training").iterdir() if p.is_dir()):
            label = int(d.name)  # the folder is the class id, e.g. 00001
            out += [(f, label) for f in sorted(d.glob("*.ppm"))]
        return out
    images = base / "GTSRB" / "Final_Test" / "Images"
    with open(base / "GT-final_test.csv", newline="") as f:
        return [(images / row["Filename"], int(row["ClassId"]))
                for row in csv.DictReader(f, delimiter=";", skipinitialspace=True)]


def _read(base: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from torchvision.transforms import functional as TF

    samples = _samples(base, split)
    images = np.empty((len(samples), 3, SIZE, SIZE), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as img:
            small = TF.resize(img.convert("RGB"), [SIZE, SIZE], antialias=True)
        images[i] = np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)
    return images, np.array([label for _, label in samples], dtype=np.int64)


@register_dataset(INFO)
def gtsrb(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    def locate(root: Path) -> Path | None:
        base = root / "gtsrb"
        if split == "train":
            ok = (base / "GTSRB" / "Training").is_dir()
        else:
            ok = (base / "GTSRB" / "Final_Test" / "Images").is_dir() and (base / "GT-final_test.csv").is_file()
        return base if ok else None

    expected = ("gtsrb/GTSRB/Training/<class>/*.ppm" if split == "train"
                else "gtsrb/GTSRB/Final_Test/Images/*.ppm and gtsrb/GT-final_test.csv")
    return load_from_disk(
        INFO, split, data_dir, download, locate=locate, read=lambda base: _read(base, split),
        expected=expected, fetch=torchvision_fetch("GTSRB", split=split), source="sid.erda.dk (via torchvision)",
    )
