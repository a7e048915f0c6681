"""Scale of the distilling server: seconds and peak memory of one federated distillation round
with K teachers (the ``distill`` aggregator as a round runs it: the scenario's per-round ``fed``
preset, the default ensemble rule), without and with ABD, K = 5, 10, 20, 50, 100, for each method.

    python benchmarks/scale.py [--kd cmi,fast] [--teachers 5,10,20,50,100] [--abd none,sv+sr]
        [--kd-overrides JSON] [--out benchmarks/results/scale.md]

A method that carries state across rounds (``fast``, and ``cmi`` with its `fed` preset's kept
generator) is measured in a round after the first: the first round builds its memory (Fast's
warm-up, CMI's fresh generator) and is reported apart, and the second round is timed.
``--kd-overrides`` sets the method's settings over the preset (``'{"generator_carry": false}'``:
CMI's fresh generator every epoch, the preset before 2026-12-07).

Each case runs in a fresh spawned process, so its peak resident memory is its own. Teachers are
randomly initialised LeNet-5s (the round's cost does not depend on what they learnt).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import time
from pathlib import Path

import torch

from machine import machine


def _case(kd: str, k: int, abd: str, kd_overrides: dict, queue) -> None:
    from fedabd.aggregators import create_aggregator
    from fedabd.config import load_scenario
    from fedabd.data import dataset_info
    from fedabd.federated import Upload
    from fedabd.models import create_model

    torch.manual_seed(0)
    cfg = load_scenario(None, {"clients": k, "malicious": 0, "aggregator": "distill", "kd": kd, "abd": abd,
                               "device": "auto", "out": "unused", "kd_overrides": kd_overrides})
    info = dataset_info(cfg.dataset)
    uploads = [Upload(i, create_model("lenet5", num_classes=10, in_channels=1, image_size=28).state_dict(), 100)
               for i in range(k)]
    agg = create_aggregator(cfg, info)
    t0 = time.perf_counter()
    agg.aggregate(1, uploads, None)
    seconds, first = time.perf_counter() - t0, 0.0
    if agg.memory():  # a method that carries state: its first round built what the next rounds continue from
        t0 = time.perf_counter()
        agg.aggregate(2, uploads, None)
        seconds, first = time.perf_counter() - t0, seconds
    queue.put({"seconds": seconds, "first": first,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_case(kd: str, k: int, abd: str, kd_overrides: dict | None = None) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(kd, k, abd, kd_overrides or {}, q))
    p.start()
    while True:
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the case {kd}, K={k}, ABD {abd} died (exit code {p.exitcode})") from None
    p.join()
    return res


def main() -> None:
    from fedabd.report import markdown_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kd", default="cmi,fast")
    ap.add_argument("--teachers", default="5,10,20,50,100")
    ap.add_argument("--abd", default="none,sv+sr")
    ap.add_argument("--kd-overrides", type=json.loads, default={}, help="the method's settings over the preset (JSON)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.md"))
    args = ap.parse_args()
    rows = []
    for kd in args.kd.split(","):
        for abd in args.abd.split(","):
            for k in (int(v) for v in args.teachers.split(",")):
                r = run_case(kd, k, abd, args.kd_overrides)
                rows.append([kd, k, abd, f"{r['seconds']:.1f}", f"{r['seconds'] / k:.2f}",
                             f"{r['first']:.1f}" if r["first"] else "-", f"{r['peak_rss_mb']:.0f}"])
                print(rows[-1], flush=True)
    over = f" --kd-overrides '{json.dumps(args.kd_overrides)}'" if args.kd_overrides else ""
    text = (f"# One distillation round with K teachers\n\n`python benchmarks/scale.py --kd {args.kd} --teachers "
            f"{args.teachers} --abd {args.abd}{over}` on {machine(date=False)}; per-round `fed` preset, LeNet-5 "
            "teachers and student. A method that carries memory across rounds (Fast; CMI with its kept generator) "
            "is timed in its second round; its first round is the `first round s` column.\n\n"
            + markdown_table(["method", "teachers", "ABD", "seconds", "seconds / teacher", "first round s",
                              "peak memory MB"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
