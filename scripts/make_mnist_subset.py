#!/usr/bin/env python
"""Build ``fedabd/data/assets/mnist_subset.npz``, the package's offline default dataset.

Reads the four gzip'ed IDX files of full MNIST (Yann LeCun, Corinna Cortes and Christopher J.C.
Burges, CC BY-SA 3.0) from a folder and draws a class-balanced random subset with a fixed seed:
1,000 training images per digit (10,000) and 200 test images per digit (2,000). Within each split
the images are shuffled (same seed). The output is deterministic: running this twice gives the
same arrays (and, with the same numpy/zlib, the same bytes).

    python scripts/make_mnist_subset.py /path/to/mnist [--out fedabd/data/assets/mnist_subset.npz]

Arrays stored (``np.savez_compressed``, no pickled objects):
``x_train`` uint8 (10000,28,28), ``y_train`` uint8 (10000,), ``x_test`` uint8 (2000,28,28),
``y_test`` uint8 (2000,).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 20240531
PER_CLASS = {"train": 1000, "test": 200}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fedabd" / "data" / "assets" / "mnist_subset.npz"


def read_idx(folder: Path, stem: str) -> np.ndarray:
    """Read an unsigned-byte IDX file, ``<stem>`` or ``<stem>.gz`` (fedabd's own IDX reader)."""
    from fedabd.data.sets._torchvision import read_idx_u8

    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return read_idx_u8(path)
    raise FileNotFoundError(f"neither {folder / stem} nor {folder / stem}.gz exists")


def draw(images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator):
    picked = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, size=per_class, replace=False))
    order = np.concatenate(picked)
    order = order[rng.permutation(order.size)]
    return images[order].copy(), labels[order].astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mnist_dir", type=Path, help="folder with train-images-idx3-ubyte.gz etc.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    arrays = {}
    for split in ("train", "test"):
        img_stem, lab_stem = FILES[split]
        images, labels = read_idx(args.mnist_dir, img_stem), read_idx(args.mnist_dir, lab_stem)
        if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
            raise ValueError(f"unexpected {split} shapes {images.shape} / {labels.shape}")
        x, y = draw(images, labels, PER_CLASS[split], rng)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        print(f"{split}: {x.shape[0]} images, per class {np.bincount(y, minlength=10).tolist()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
