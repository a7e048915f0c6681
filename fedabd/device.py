"""Device selection and speed switches (channels_last, bf16 autocast) with capability detection."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU. An explicit name is checked, not trusted."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available on this machine")
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # bf16 matmuls are fast on CPUs with AVX512-BF16 / AMX; elsewhere they are emulated.
        try:
            return bool(torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX"))
        except Exception:  # pragma: no cover - very old torch
            return False
    return False


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when ``enabled`` (callers pass the resolved switch), else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a dedicated torch.Generator for data-level randomness."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def speed_switches(models, device: torch.device, channels_last: bool | None = None,
                   bf16: bool | None = None) -> tuple[bool, bool]:
    """Resolve the channels_last / bf16 switches; None = auto: on for BatchNorm conv nets (WRN,
    ResNet; measured in benchmarks/),
    bf16 only where the hardware has a fast path. Small nets (LeNet) gain nothing: off."""
    convnet = any(isinstance(m, torch.nn.BatchNorm2d) for model in models for m in model.modules())
    cl = convnet if channels_last is None else channels_last
    bf = (convnet and bf16_supported(device)) if bf16 is None else bf16
    if bf and not bf16_supported(device):
        raise ValueError(f"bf16 requested but {device} has no fast bf16 path")
    return cl, bf
