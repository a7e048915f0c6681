"""Teacher screening's cost per teacher on the CPU default (LeNet-5, 1x28x28, the default search:
every class at once, 100 Adam steps on 32 surrogate inputs): one batched search of K teachers
(``torch.func`` stacked weights + ``vmap``) against K searches one after another.

    python benchmarks/screening_speed.py [--out benchmarks/results/screening_speed.md]

Teachers are randomly initialised (the search's cost does not depend on what they learnt).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedabd.data import dataset_info
from fedabd.models import create_model
from fedabd.report import markdown_table
from fedabd.screening import ScreenConfig, class_masks, surrogate_inputs
from machine import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/screening_speed.md"))
    ap.add_argument("--teachers", default="1,5,10")
    args = ap.parse_args()
    info, cfg = dataset_info("mnist_subset"), ScreenConfig()
    x = surrogate_inputs(info, cfg, 0)
    rows = []
    for k in (int(v) for v in args.teachers.split(",")):
        torch.manual_seed(k)
        models = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(k)]
        t0 = time.perf_counter()
        for m in models:
            class_masks(m, x, info, cfg)
        loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        class_masks(models, x, info, cfg)
        batched = time.perf_counter() - t0
        rows.append([k, f"{loop / k:.2f}", f"{batched / k:.2f}", f"{loop / batched:.2f}x"])
        print(rows[-1], flush=True)
    text = (f"# Teacher screening: seconds per teacher\n\n`python benchmarks/screening_speed.py` on "
            f"{machine(date=False)}; default search (10 classes at once, {cfg.steps} steps, {cfg.batch} inputs).\n\n"
            + markdown_table(["teachers", "s / teacher, one after another", "s / teacher, one batched search",
                              "speed-up"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
