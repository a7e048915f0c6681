"""The one natural image behind single-image (OOD) distillation.

``load_source_image(name)`` returns a float tensor ``(3, H, W)`` in ``[0, 1]``. ``name`` is either
the name of an image shipped in ``fedabd/data/assets/`` (see :data:`SHIPPED_IMAGES`; licences next
to the files) or a path to the user's own image file (anything Pillow can open).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DEFAULT_IMAGE = "grace_hopper"

# name -> file in fedabd/data/assets/ (licence: GRACE_HOPPER_LICENSE.md, public domain)
SHIPPED_IMAGES: dict[str, str] = {
    "grace_hopper": "grace_hopper.jpg",
}


def _open_rgb(fp, label: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fp) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{label} is not a readable image file ({e})") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"{label} is too small ({arr.shape[1]}x{arr.shape[0]} px); need at least 8x8")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0).contiguous()


def load_source_image(name: str = DEFAULT_IMAGE) -> torch.Tensor:
    """The source image as float ``(3, H, W)`` in ``[0, 1]`` (grayscale/alpha images become RGB)."""
    if name in SHIPPED_IMAGES:
        from .base import asset_path

        ref = asset_path(SHIPPED_IMAGES[name])
        with ref.open("rb") as f:
            return _open_rgb(f, f"shipped image {name!r}")
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(f"unknown source image {name!r}: neither a shipped image "
                         f"({', '.join(sorted(SHIPPED_IMAGES))}) nor an existing file")
    return _open_rgb(path, f"{str(path)!r}")
