"""ZSKT pseudo-batches with K teachers: the ensemble vmapped vs its members one after another.

    python benchmarks/zskt_ensemble_forms.py [--reps 2] [--out benchmarks/results/zskt_ensemble_forms.md]

The CPU's default ensemble form is the loop (benchmarks/results/ensemble_loop.md); an older
measurement on another CPU (distill_speed.md, section 2) had the vmapped call 2.4x faster for 8
LeNet-5 teachers in a ZSKT pseudo-batch. This re-times that case: distill_speed.py's "default"
setting and ZSKT budget (batch 128, 10 student steps per pseudo-batch), each case in a fresh process,
seconds per pseudo-batch, mean of 5 after one warm-up, the forms interleaved, ``--reps`` rounds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from distill_speed import run_case  # noqa: E402

from fedabd.report import markdown_table  # noqa: E402
from machine import machine  # noqa: E402  (benchmarks/, the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/zskt_ensemble_forms.md")
    args = ap.parse_args()
    rows = []
    for rep in range(args.reps):
        for k in (2, 4, 8):
            secs = {form: run_case(setting="default", method="zskt", iters=5, k=k, loop=form == "loop")["sec_per_iter"]
                    for form in ("vmap", "loop")}
            rows.append([rep + 1, k, f"{secs['vmap']:.3f}", f"{secs['loop']:.3f}", f"{secs['loop'] / secs['vmap']:.2f}"])
            print(*rows[-1], flush=True)
    page = (f"# ZSKT pseudo-batch, K teachers: vmapped ensemble vs loop\n\nCommand: `python benchmarks/zskt_ensemble_forms.py "
            f"--reps {args.reps}`\n\nMachine: {machine()}. Seconds per pseudo-batch; loop / vmap > 1: "
            "the vmapped call is faster.\n\n"
            + markdown_table(["rep", "K", "vmap s", "loop s", "loop / vmap"], rows) + "\n")
    Path(args.out).write_text(page)


if __name__ == "__main__":
    main()
