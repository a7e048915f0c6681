"""``svhn``: SVHN cropped digits (73,257 / 26,032) from ``<data_dir>/{train,test}_32x32.mat``.

Reading the ``.mat`` files needs scipy. Label 10 (the digit 0) becomes 0, as in torchvision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import register_dataset
from ..base import DatasetInfo, ImageSet
from ._torchvision import load_from_disk, torchvision_fetch

INFO = DatasetInfo(
    name="svhn", num_classes=10, channels=3, image_size=32,
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), default_target=0,
)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - scipy is installed in dev/CI
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from e
    mat = scipy.io.loadmat(str(path))
    images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H,W,C,N) -> (N,C,H,W), as torchvision does
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return images, labels


@register_dataset(INFO)
def svhn(split: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    name = f"{split}_32x32.mat"

    def locate(root: Path) -> Path | None:
        return root / name if (root / name).is_file() else None

    return load_from_disk(
        INFO, split, data_dir, download, locate=locate, read=_read, expected=name,
        fetch=torchvision_fetch("SVHN", split=split), source="ufldl.stanford.edu (via torchvision)",
    )
