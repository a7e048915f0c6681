"""Shared logic for the datasets that live on disk in torchvision's layout.

Each dataset module supplies three small callables and calls :func:`load_from_disk`:

- ``locate(root) -> Path | None``: where the split's files are under ``root`` (``None``: absent);
- ``read(found) -> (images, labels)``: numpy ``uint8 (N,C,H,W)`` and integer ``(N,)`` arrays;
- ``fetch(root)``: download into ``root`` with torchvision (only called with ``download=True``).

The readers accept the datasets' real on-disk formats but do not verify the md5 sums torchvision
checks, so a partial or re-packed copy in the same layout loads too.

Where the data lives: the ``data_dir`` argument (the CLI's ``--data-dir``), else the environment
variable ``FEDABD_DATA_DIR``, else ``~/.cache/fedabd/data`` (``$XDG_CACHE_HOME/fedabd/data``).
"""
from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..base import DatasetInfo, DatasetUnavailableError, ImageSet

ENV_VAR = "FEDABD_DATA_DIR"


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fedabd" / "data"


def resolve_data_dir(data_dir: str | Path | None) -> tuple[Path, str]:
    """``(folder, where the folder came from)``."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"environment variable {ENV_VAR}"
    return default_data_dir(), "default folder"


def load_from_disk(
    info: DatasetInfo,
    split: str,
    data_dir: str | Path | None,
    download: bool,
    *,
    locate: Callable[[Path], Path | None],
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]],
    fetch: Callable[[Path], object],
    expected: str,
    source: str,
) -> ImageSet:
    """Load ``split`` of ``info.name`` from disk, downloading first only if ``download``.

    ``expected`` describes the files looked for (relative to the data folder), for error messages;
    ``source`` names where ``--download`` fetches from.
    """
    root, origin = resolve_data_dir(data_dir)
    found = locate(root)
    if found is None and download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fetch(root)
        except Exception as e:  # network errors surface as URLError, RuntimeError, OSError, ...
            raise DatasetUnavailableError(
                f"dataset {info.name!r}: downloading the {split} split from {source} into {root} failed "
                f"({type(e).__name__}: {e}). Without internet access, copy the files there yourself "
                f"(expected: {expected}) and pass --data-dir {root}; the offline default dataset is "
                f"'mnist_subset'."
            ) from e
        found = locate(root)
        if found is None:
            raise DatasetUnavailableError(
                f"dataset {info.name!r}: the download into {root} finished but the expected files "
                f"({expected}) are still missing"
            )
    if found is None:
        raise DatasetUnavailableError(
            f"dataset {info.name!r} ({split} split) is not available: looked for {expected} in {root} "
            f"(the {origin}). Either put the files there in torchvision's layout and pass "
            f"--data-dir DIR (or set {ENV_VAR}), or add --download to fetch them into that folder "
            f"(needs internet; source: {source}). The offline default dataset is 'mnist_subset', "
            f"which needs no files."
        )
    images, labels = read(found)
    images = np.asarray(images, dtype=np.uint8)
    if not (images.flags.writeable and images.flags.c_contiguous):
        images = np.array(images, dtype=np.uint8, order="C")
    return ImageSet(
        torch.from_numpy(images),
        torch.from_numpy(np.asarray(labels).astype(np.int64, copy=False)),
        info,
        meta={"dataset": info.name, "split": split, "source": str(found)},
    )


def torchvision_fetch(cls_name: str, **kwargs) -> Callable[[Path], object]:
    """A ``fetch`` that builds ``torchvision.datasets.<cls_name>(root, download=True, **kwargs)``."""

    def fetch(root: Path) -> object:
        import torchvision.datasets as tvd

        return getattr(tvd, cls_name)(str(root), download=True, **kwargs)

    return fetch


# ----------------------------------------------------------------------------------------------
# Format readers
# ----------------------------------------------------------------------------------------------

def idx_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` (decompressed) or ``folder/stem.gz``, whichever exists (``None``: neither)."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def read_idx_u8(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (MNIST format), plain or gzip'ed."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {arr.size} values")
    return arr.reshape(dims)


def idx_locator(subfolders: list[str], split: str) -> tuple[Callable[[Path], Path | None], Callable, str]:
    """``(locate, read, expected)`` for an MNIST-format dataset in ``<root>/<subfolder>/``."""
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    def locate(root: Path) -> Path | None:
        for sub in subfolders:
            folder = root / sub if sub else root
            if all(idx_path(folder, s) is not None for s in stems):
                return folder
        return None

    def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx_u8(idx_path(folder, stems[0]))
        labels = read_idx_u8(idx_path(folder, stems[1]))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{folder}: inconsistent IDX files {images.shape} / {labels.shape}")
        return images[:, None], labels

    where = " or ".join(f"{sub}/" if sub else "the folder itself" for sub in subfolders)
    expected = f"{stems[0]}[.gz] and {stems[1]}[.gz] in {where}"
    return locate, read, expected


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (the CIFAR batch format), nothing else."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickles written by numpy < 2
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy._core") and not hasattr(np, "_core"):  # running numpy < 2
            module = "numpy.core" + module[len("numpy._core"):]
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> object:
    """Load a pickle that holds only dicts/lists/numpy arrays (python-2 pickles decoded as latin1)."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()
