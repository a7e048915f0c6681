"""Datasets: a registry of loaders returning :class:`ImageSet` (see :mod:`fedabd.data.base`)."""
from __future__ import annotations

from pathlib import Path

from ..registry import Registry, import_submodules
from .base import DatasetInfo, DatasetUnavailableError, ImageSet, to_float, to_uint8

# factory(split: "train" | "test", data_dir: Path | None, download: bool) -> ImageSet
DATASETS: Registry[ImageSet] = Registry("dataset")
# name -> DatasetInfo, known without loading any file
INFOS: dict[str, DatasetInfo] = {}

DEFAULT_DATASET = "mnist_subset"


def register_dataset(info: DatasetInfo):
    INFOS[info.name] = info
    return DATASETS.register(info.name)


def dataset_info(name: str) -> DatasetInfo:
    DATASETS.get(name)  # clear error for unknown names
    return INFOS[name]


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, download: bool = False) -> ImageSet:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS.get(name)(split=split, data_dir=Path(data_dir) if data_dir else None, download=download)


# Every module in fedabd/data/sets/ registers one or more datasets on import.
import_submodules(__name__ + ".sets")

__all__ = [
    "DATASETS", "INFOS", "DEFAULT_DATASET", "DatasetInfo", "DatasetUnavailableError", "ImageSet",
    "dataset_info", "load_dataset", "register_dataset", "to_float", "to_uint8",
]
