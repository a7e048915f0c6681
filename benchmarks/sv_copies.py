"""SV's shuffled teacher T~: every copy run whole vs the unshuffled stages shared (one run, side by side).

    python benchmarks/sv_copies.py [--reps 3] [--out benchmarks/results/sv_copies.md]

T~ is k = 3 shuffled copies of each of K teachers (SV's default n = 5 shuffled layers). A copy equals
its teacher in every stage before the first shuffled layer, so ``build_shuffled_teacher`` runs those
stages once per teacher and only the rest once per copy (:class:`~fedabd.models.ensemble.SharedStemCopies`);
the plain :class:`~fedabd.models.ensemble.Ensemble` of the same copies runs each copy whole. Timed: one
forward of T~ on a batch and the backward to the input (what SV's generator loss costs per synthesis
step), both forms interleaved, median of ``--reps`` after a warm-up call. Teachers are randomly
initialised: the cost does not depend on what they learnt. The last column checks the two give the
same logits.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from fedabd.defenses.abd.sv import build_shuffled_teacher
from fedabd.models import create_model
from fedabd.models.ensemble import Ensemble, freeze

CASES = [  # (teacher arch, channels, image size, teachers K, batch)
    ("lenet5", 1, 28, 1, 256),
    ("lenet5", 1, 28, 10, 256),
    ("lenet5", 1, 28, 100, 256),
    ("wrn16_2", 3, 32, 1, 128),
]


def _call(model, x):
    t0 = time.perf_counter()
    y = model(x)
    torch.autograd.grad(y.square().sum(), x)
    return time.perf_counter() - t0


def measure(arch: str, channels: int, size: int, k: int, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    teachers = [freeze(create_model(arch, 10, channels, size)) for _ in range(k)]
    teacher = teachers[0] if k == 1 else freeze(Ensemble(teachers, combine="norm_median"))
    shared, _ = build_shuffled_teacher(teacher, 3, 5, torch.Generator().manual_seed(0))
    plain = Ensemble(list(shared.members), shared.weights, combine=shared.combine, group=shared.group)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    with torch.no_grad():
        diff = float((shared(x) - plain(x)).abs().max())
    times = {"plain": [], "shared": []}
    _call(plain, x)  # warm-up
    _call(shared, x)
    for _ in range(reps):
        times["plain"].append(_call(plain, x))
        times["shared"].append(_call(shared, x))
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"case": f"{arch}, K = {k}, batch {batch}", "start": shared.start, "plain": med["plain"],
            "shared": med["shared"], "diff": diff}


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
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, cpu; "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Forward + backward to the input of T~ (3 copies per teacher), "
        f"median of {args.reps}, the two forms interleaved.", "",
        "| case | copies share stages | every copy whole s | shared stages s | speed-up | max logit difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | 0-{r['start'] - 1} | {r['plain']:.3f} | {r['shared']:.3f} | "
                     f"{r['plain'] / r['shared']:.2f}x | {r['diff']:.1e} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
