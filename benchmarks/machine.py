"""The machine line every benchmark page records: processor, torch threads, torch version, extras, date.

    from machine import machine   # benchmarks/, the script's folder
    f"Machine: {machine('cpu', 'bf16 fast path: True')}."  ->  "Machine: x86_64, 2 threads, torch 2.14.1, cpu, bf16 fast path: True; 2026-12-07 01:40."
"""
from __future__ import annotations

import platform
import time

import torch


def machine(*extra: str, date: bool = True) -> str:
    """``"<processor>, <n> threads, torch <version>[, extra...][; YYYY-MM-DD HH:MM]"``."""
    n = torch.get_num_threads()
    parts = [platform.processor() or platform.machine(), f"{n} thread{'s' if n != 1 else ''}",
             f"torch {torch.__version__}", *extra]
    return ", ".join(parts) + (f"; {time.strftime('%Y-%m-%d %H:%M')}" if date else "")
