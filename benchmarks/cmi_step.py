"""What one CMI synthesis step of the default demo costs, and what each part of it adds.

    python benchmarks/cmi_step.py [--steps 30] [--out benchmarks/results/cmi_step.md]

The default demo's server round (5 LeNet-5 teachers, the CMI `fed` preset, the default
``norm_median`` rule) is mostly CMI's generator steps (benchmarks/results/profile_demo.md). Here one
distillation round of ``--steps`` generator steps (1 epoch, 1 KD step) is timed per generator step,
best of two rounds after a first, with parts of the step switched off or made smaller: ABD (SV's
shuffled copies in every step), SV without the backward through its copies (``shuffled_grad: false``,
the authors' ``--no_shuf_grad``), a half-width generator, no contrastive term (no local view through
the teachers), no adversarial term. Teachers are randomly initialised: the cost does not depend on
what they learnt.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedabd.aggregators import create_aggregator
from fedabd.config import load_scenario
from fedabd.data import dataset_info
from fedabd.federated import Upload
from fedabd.models import create_model
from fedabd.report import markdown_table
from machine import machine

VARIANTS = [  # (label, abd, sv settings, kd_overrides over fed)
    ("the demo's step: CMI + SV (+ SR, not in these steps)", "sv+sr", {}, {}),
    ("no ABD", "none", {}, {}),
    ("SV without the backward through its copies", "sv+sr", {"shuffled_grad": False}, {}),
    ("generator width 8 (the preset's 16)", "sv+sr", {}, {"generator_width": 8}),
    ("no contrastive term (cr 0)", "sv+sr", {}, {"cr": 0.0}),
    ("no adversarial term (adv 0)", "sv+sr", {}, {"adv": 0.0}),
]


def per_step(abd: str, sv: dict, over: dict, steps: int) -> float:
    torch.manual_seed(0)
    kd = {"epochs": 1, "g_steps": steps, "kd_steps": 1, **over}
    cfg = load_scenario(None, {"clients": 5, "malicious": 0, "aggregator": "distill", "kd": "cmi", "abd": abd,
                               "sv": sv, "device": "auto", "out": "unused", "kd_overrides": kd})
    info = dataset_info(cfg.dataset)
    uploads = [Upload(i, create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict(), 100)
               for i in range(5)]
    agg = create_aggregator(cfg, info)
    agg.aggregate(1, uploads, None)  # warm-up
    best = float("inf")
    for r in range(2):
        t0 = time.perf_counter()
        agg.aggregate(2 + r, uploads, None)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cmi_step.md"))
    args = ap.parse_args()
    rows, base = [], None
    for label, abd, sv, over in VARIANTS:
        ms = 1e3 * per_step(abd, sv, over, args.steps)
        base = base or ms
        rows.append([label, f"{ms:.0f}", f"{ms - base:+.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["generator step", "ms", "vs the demo's step"], rows)
    text = (f"# One CMI generator step of the default demo\n\nCommand: `python benchmarks/cmi_step.py --steps "
            f"{args.steps}`\n\nMachine: {machine('cpu')}. Milliseconds per "
            f"generator step (synthesis batch 64, 5 teachers), best of two rounds.\n\n{table}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
