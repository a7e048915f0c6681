"""``mnist_subset``: the offline default, a 10,000/2,000-image MNIST subset shipped in the package.

See ``fedabd/data/assets/MNIST_SUBSET_LICENSE.md`` (attribution, CC BY-SA 3.0, how it was made)
and ``scripts/make_mnist_subset.py``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import register_dataset
from ..base import DatasetInfo, ImageSet

ASSET = "mnist_subset.npz"

INFO = DatasetInfo(
    name="mnist_subset", num_classes=10, channels=1, image_size=28,
    mean=(0.1307,), std=(0.3081,), default_target=0,
)


@lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    from ..base import asset_path

    with open(asset_path(ASSET), "rb") as f, np.load(f, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


@register_dataset(INFO)
def mnist_subset(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    """Always available offline; ``data_dir`` and ``download`` are ignored."""
    arrays = _arrays()
    images = torch.from_numpy(arrays[f"x_{split}"].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
    return ImageSet(images, labels, INFO, meta={"dataset": INFO.name, "split": split, "source": f"package:{ASSET}"})
