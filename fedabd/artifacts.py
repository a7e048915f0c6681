"""Model files: safetensors weights + a JSON metadata file, validated on load.

A model ``NAME`` is two files: ``NAME.safetensors`` (the state dict, plus the trigger tensors
under ``trigger.<key>`` for a poisoned model) and ``NAME.json`` (architecture, dataset with its
normalisation, attack config, seed, measured metrics). Files from others are untrusted: nothing is
unpickled or executed, and every key, shape, dtype and value is checked before use.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .attacks import Attack, attack_from_saved
from .data import DatasetInfo
from .limits import read_text_limited
from .models import MODELS, create_model

FORMAT = "fedabd-model"
VERSION = 1
TRIGGER_PREFIX = "trigger."
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, torch.save's zip container


class ModelFileError(ValueError):
    """A model file (weights or metadata) is missing, corrupt, hostile or inconsistent."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    info: DatasetInfo
    attack: Attack | None
    meta: dict
    path: Path


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``x``, ``x.safetensors`` or ``x.json`` -> (weights path, metadata path)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_model(path: str | Path, model: torch.nn.Module, info: DatasetInfo, *, attack: Attack | None = None,
               seed: int | None = None, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``path.safetensors`` + ``path.json``; returns the weights path."""
    weights, meta_path = model_paths(path)
    arch = getattr(model, "arch", None)
    if not arch or arch.get("name") not in MODELS:
        raise ValueError("model has no registered architecture (create it with fedabd.models.create_model)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if attack is not None:
        tensors.update({TRIGGER_PREFIX + k: v for k, v in attack.tensors().items()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "dataset": info.to_json(),
        "attack": attack.config() if attack is not None else None,
        "seed": seed,
        "metrics": metrics or {},
        "extra": extra or {},
    }
    _atomic_write_bytes(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    return weights


# ---------------------------------------------------------------------------------------------
# validation
_META_SCHEMA = {
    "format": str, "version": int, "arch": dict, "dataset": dict, "attack": (dict, type(None)),
    "seed": (int, type(None)), "metrics": dict, "extra": dict,
}
_DATASET_SCHEMA = {"name": str, "num_classes": int, "channels": int, "image_size": int,
                   "mean": list, "std": list, "default_target": int}
_ARCH_SCHEMA = {"name": str, "num_classes": int, "in_channels": int, "image_size": int}
_ATTACK_SCHEMA = {"name": str, "target": int, "rate": (int, float), "clean_label": bool, "params": dict}


def _check_fields(obj: dict, schema: dict, where: str, path: Path, allow_extra: bool = False) -> None:
    for key, typ in schema.items():
        if key not in obj:
            raise ModelFileError(f"{path}: metadata field {where}{key!r} is missing")
        if isinstance(obj[key], bool) and typ in (int, (int, float)):
            raise ModelFileError(f"{path}: metadata field {where}{key!r} must be {typ}, got a boolean")
        if not isinstance(obj[key], typ):
            raise ModelFileError(f"{path}: metadata field {where}{key!r} has type {type(obj[key]).__name__}, expected {typ}")
    if not allow_extra:
        extra = set(obj) - set(schema)
        if extra:
            raise ModelFileError(f"{path}: unknown metadata field(s) {where}{sorted(extra)}")


METADATA_LIMIT = 1 << 20  # bytes: a model's metadata is a few KB


def read_metadata(path: str | Path) -> dict:
    _, meta_path = model_paths(path)
    if not meta_path.exists():
        raise ModelFileError(f"{meta_path}: metadata file not found (a model is NAME.safetensors + NAME.json)")
    try:
        text = read_text_limited(meta_path, METADATA_LIMIT)
    except ValueError as e:  # names the file already
        raise ModelFileError(f"{e} (metadata)") from None
    except OSError as e:
        raise ModelFileError(f"{meta_path}: cannot read the metadata: {e.strerror or e}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{meta_path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{meta_path}: metadata must be a JSON object")
    _check_fields(meta, _META_SCHEMA, "", meta_path)
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise ModelFileError(f"{meta_path}: not a {FORMAT} v{VERSION} file (format={meta['format']!r}, version={meta['version']!r})")
    _check_fields(meta["dataset"], _DATASET_SCHEMA, "dataset.", meta_path)
    _check_fields(meta["arch"], _ARCH_SCHEMA, "arch.", meta_path, allow_extra=True)
    if meta["arch"]["name"] not in MODELS:
        raise ModelFileError(f"{meta_path}: unknown architecture {meta['arch']['name']!r}; known: {', '.join(MODELS.names())}")
    if meta["attack"] is not None:
        _check_fields(meta["attack"], _ATTACK_SCHEMA, "attack.", meta_path)
    return meta


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; pickles, truncated or corrupt files get a clear error."""
    weights, _ = model_paths(path)
    if not weights.exists():
        raise ModelFileError(f"{weights}: weights file not found")
    if not weights.is_file():
        raise ModelFileError(f"{weights}: not a regular file")
    try:
        with open(weights, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelFileError(f"{weights}: cannot read: {e.strerror or e}") from None
    if head[:1] == _PICKLE_MAGIC[0] or head[:4] == _PICKLE_MAGIC[1]:
        raise ModelFileError(f"{weights}: this is a pickle / torch.save file; fedabd never unpickles model "
                             "files. Convert it to safetensors (safetensors.torch.save_file) on a machine you trust.")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{weights}: not a valid safetensors file (corrupt or truncated?): {e}") from None


def check_state_dict(reference: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: str,
                     max_abs: float = math.inf) -> None:
    """Exact keys, shapes and dtypes of ``reference``; finite values; optional magnitude bound."""
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    if missing:
        raise ModelFileError(f"{where}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ModelFileError(f"{where}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, ref in reference.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(ref.shape):
            raise ModelFileError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise ModelFileError(f"{where}: tensor {key!r} has dtype {t.dtype}, expected {ref.dtype}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ModelFileError(f"{where}: tensor {key!r} contains NaN or Inf")
            if t.numel() and t.abs().max().item() > max_abs:
                raise ModelFileError(f"{where}: tensor {key!r} has values up to {t.abs().max().item():.3g}, above the bound {max_abs}")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    weights, meta_path = model_paths(path)
    meta = read_metadata(path)
    tensors = read_tensors(path)
    ds = meta["dataset"]
    if not (len(ds["mean"]) == len(ds["std"]) == ds["channels"]) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ds["mean"] + ds["std"]) \
            or min(ds["std"]) <= 0:
        raise ModelFileError(f"{meta_path}: dataset normalisation must be {ds['channels']} finite means and positive stds")
    info = DatasetInfo(name=ds["name"], num_classes=ds["num_classes"], channels=ds["channels"],
                       image_size=ds["image_size"], mean=tuple(ds["mean"]), std=tuple(ds["std"]),
                       default_target=ds["default_target"])
    arch = dict(meta["arch"])
    name = arch.pop("name")
    if (arch["num_classes"], arch["in_channels"], arch["image_size"]) != (info.num_classes, info.channels, info.image_size):
        raise ModelFileError(f"{meta_path}: architecture shape {arch} does not match dataset {ds['name']}")
    try:  # built on the meta device first: declared sizes allocate nothing until they match the file
        with torch.device("meta"):
            skeleton = create_model(name, **arch)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{meta_path}: invalid architecture arguments for {name!r}: {e}") from None
    trigger = {k[len(TRIGGER_PREFIX):]: v for k, v in tensors.items() if k.startswith(TRIGGER_PREFIX)}
    weights_only = {k: v for k, v in tensors.items() if not k.startswith(TRIGGER_PREFIX)}
    check_state_dict(skeleton.state_dict(), weights_only, str(weights))
    model = create_model(name, **arch)
    model.load_state_dict(weights_only)
    for k, v in trigger.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"{weights}: trigger tensor {k!r} contains NaN or Inf")
    attack = None
    if meta["attack"] is not None:
        try:
            attack = attack_from_saved(meta["attack"], trigger, info)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"{weights}: stored trigger is invalid: {e}") from None
    model.to(device).eval()
    return LoadedModel(model=model, info=info, attack=attack, meta=meta, path=weights)
