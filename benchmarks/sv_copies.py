"""SV's shuffled teacher T~: every copy run whole vs the unshuffled stages shared, batched or in turn.

    python benchmarks/sv_copies.py [--reps 3] [--out benchmarks/results/sv_copies.md]

T~ is k = 3 shuffled copies of each of K teachers (SV's default n = 5 shuffled layers). A copy equals
its teacher in every stage before the first shuffled layer, so ``build_shuffled_teacher`` runs those
stages once per teacher and only the rest once per copy (:class:`~fedabd.models.ensemble.SharedStemCopies`);
the plain :class:`~fedabd.models.ensemble.Ensemble` of the same copies runs each copy whole in one
batched (vmap) call. The shared form runs batched (one vmapped call for the stems, one for the rest)
or in turn (plain module calls, teacher by teacher). Timed: one forward of T~ on a batch and the
backward to the input (what SV's generator loss costs per synthesis step), the forms interleaved,
median of ``--reps`` after a warm-up call; WRN also with the CLI's speed switches (channels_last +
bf16 autocast where the CPU has bf16). Teachers are randomly initialised: the cost does not depend on
what they learnt. The last column checks the forms give the same logits.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fedabd.defenses.abd.shuffle import build_shuffled_teacher
from fedabd.device import autocast, bf16_supported
from fedabd.models import create_model
from fedabd.models.ensemble import Ensemble, SharedStemCopies, freeze
from machine import machine

CASES = [  # (teacher arch, channels, image size, teachers K, batch, channels_last + bf16)
    ("lenet5", 1, 28, 1, 256, False),
    ("lenet5", 1, 28, 10, 256, False),
    ("lenet5", 1, 28, 100, 256, False),
    ("wrn16_2", 3, 32, 1, 128, False),
    ("wrn16_2", 3, 32, 1, 128, True),
]
FORMS = ("whole", "shared, batched", "shared, in turn")


def _call(model, x, bf16: bool):
    t0 = time.perf_counter()
    with autocast(torch.device("cpu"), bf16):
        y = model(x).float()
    torch.autograd.grad(y.square().sum(), x)
    return time.perf_counter() - t0


def measure(arch: str, channels: int, size: int, k: int, batch: int, fast: bool, reps: int) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if fast else torch.contiguous_format
    bf16 = fast and bf16_supported(torch.device("cpu"))
    teachers = [freeze(create_model(arch, 10, channels, size)).to(memory_format=fmt) for _ in range(k)]
    teacher = teachers[0] if k == 1 else freeze(Ensemble(teachers, combine="norm_median"))
    built, _ = build_shuffled_teacher(teacher, 3, 5, torch.Generator().manual_seed(0))
    copies, w, rule, g = list(built.members), built.weights, built.combine, built.group
    forms = {"whole": Ensemble(copies, w, combine=rule, group=g, batched=True),
             "shared, batched": SharedStemCopies(copies, w, rule, g, built.start, batched=True),
             "shared, in turn": SharedStemCopies(copies, w, rule, g, built.start, batched=False)}
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt).requires_grad_(True)
    with torch.no_grad():
        ref = forms["whole"](x)
        diff = max(float((m(x) - ref).abs().max()) for m in forms.values())
    times = {name: [] for name in forms}
    for m in forms.values():  # warm-up
        _call(m, x, bf16)
    for _ in range(reps):
        for name, m in forms.items():
            times[name].append(_call(m, x, bf16))
    return {"case": f"{arch}, K = {k}, batch {batch}" + (", channels_last + bf16" if bf16 else
                                                          ", channels_last" if fast else ""),
            "start": built.start, "default": "shared, batched" if built.vmapped(x) else "shared, in turn",
            **{name: statistics.median(v) for name, v in times.items()}, "diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/sv_copies.md")
    args = ap.parse_args()
    rows = []
    for case in CASES:
        r = measure(*case, reps=args.reps)
        print(r, flush=True)
        rows.append(r)
    lines = [
        "# SV's shuffled teacher: shared unshuffled stages vs every copy run whole", "",
        "Command: `python benchmarks/sv_copies.py`", "",
        f"Machine: {machine('cpu')}. Forward + backward to the input of T~ (3 copies per teacher), "
        f"median of {args.reps}, the forms interleaved; seconds, and in brackets the speed-up over every "
        "copy run whole. `build_shuffled_teacher` uses the form marked *.", "",
        "| case | copies share stages | every copy whole (vmap) | shared stages, batched | shared stages, in turn "
        "| max logit difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[f]:.3f}" + ("" if f == "whole" else f" ({r['whole'] / r[f]:.2f}x)")
                 + ("*" if f == r["default"] else "") for f in FORMS]
        lines.append(f"| {r['case']} | 0-{r['start'] - 1} | " + " | ".join(cells) + f" | {r['diff']:.1e} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
