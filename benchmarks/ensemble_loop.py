"""The teachers of an ensemble: one vmapped call over stacked weights vs the members one after another.

    python benchmarks/ensemble_loop.py [--reps 3] [--out benchmarks/results/ensemble_loop.md]

:class:`~fedabd.models.ensemble.Ensemble` can run same-architecture members as one batched call
(``torch.func`` stacked weights + ``vmap``: a convolution over every member's channels at once) or
call them in turn. Timed on this machine for the calls the distillers make: ``forward`` (every
member on one batch, as the KD target, Fast's synthesis and SR's trigger search call it), with and
without the backward to the input, and ``each_member`` (every member on its own inputs, as teacher
screening calls it), median of ``--reps`` after a warm-up call, the two forms interleaved. Teachers are
randomly initialised: the cost does not depend on what they learnt. The last column checks both forms
give the same logits.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fedabd.models import create_model
from fedabd.models.ensemble import Ensemble
from fedabd.report import markdown_table
from machine import machine

CASES = [  # (arch, channels, image size, members K, batch, call)
    ("lenet5", 1, 28, 5, 64, "forward"),
    ("lenet5", 1, 28, 5, 64, "forward + backward"),
    ("lenet5", 1, 28, 5, 256, "forward + backward"),
    ("lenet5", 1, 28, 20, 256, "forward + backward"),
    ("lenet5", 1, 28, 100, 64, "forward + backward"),
    ("lenet5", 1, 28, 100, 128, "forward"),
    ("lenet5", 1, 28, 100, 128, "forward + backward"),
    ("lenet5", 1, 28, 100, 256, "forward + backward"),
    ("lenet5", 1, 28, 5, 320, "each_member + backward"),
    ("lenet5", 1, 28, 10, 320, "each_member + backward"),
    ("lenet5_half", 1, 28, 20, 64, "forward + backward"),
    ("wrn16_2", 3, 32, 5, 64, "forward + backward"),
]


def _time(ens: Ensemble, x: torch.Tensor, call: str) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    if call == "forward":
        with torch.no_grad():
            out = ens.member_logits(x)
    elif call.startswith("each_member"):
        out = ens.each_member(x)
        torch.autograd.grad(out.square().sum(), x)
    else:
        out = ens.member_logits(x)
        torch.autograd.grad(out.square().sum(), x)
    return time.perf_counter() - t0, out.detach()


def measure(arch: str, channels: int, size: int, k: int, batch: int, call: str, reps: int) -> dict:
    torch.manual_seed(0)
    members = [create_model(arch, num_classes=10, in_channels=channels, image_size=size) for _ in range(k)]
    forms = {"vmap": Ensemble(members, batched=True), "loop": Ensemble(members, batched=False)}
    shape = (k, batch, channels, size, size) if call.startswith("each_member") else (batch, channels, size, size)
    x = torch.rand(*shape, requires_grad=True)
    times = {name: [] for name in forms}
    outs = {}
    for name, ens in forms.items():
        _time(ens, x, call)  # warm-up
    for _ in range(reps):
        for name, ens in forms.items():
            t, outs[name] = _time(ens, x, call)
            times[name].append(t)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"seconds": med, "diff": float((outs["vmap"] - outs["loop"]).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ensemble_loop.md"))
    args = ap.parse_args()
    rows = []
    for arch, ch, size, k, batch, call in CASES:
        r = measure(arch, ch, size, k, batch, call, args.reps)
        v, lp = r["seconds"]["vmap"], r["seconds"]["loop"]
        rows.append([arch, str(k), str(batch), call, f"{1e3 * v:.0f}", f"{1e3 * lp:.0f}", f"{v / lp:.2f}x",
                     f"{r['diff']:.1e}"])
        print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["members", "K", "batch", "call", "vmap ms", "loop ms", "loop speed-up", "max logit difference"],
                           rows)
    text = (f"# Ensemble members: one vmapped call vs a loop\n\nCommand: `python benchmarks/ensemble_loop.py "
            f"--reps {args.reps}`\n\nMachine: {machine('cpu')}. Median of {args.reps}, forms interleaved; "
            f"speed-up = vmap ms / loop ms (above 1: the loop is faster).\n\n{table}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
