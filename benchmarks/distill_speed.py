"""Distillation speed, side by side in one run (timings on shared machines are noisy: compare the
ratios within one table, not absolute numbers across machines).

    python benchmarks/distill_speed.py [--quick] [--out benchmarks/results/distill_speed.md]

Measures, each case in a fresh subprocess (so that peak memory is its own):
1. images per second of every method (vanilla, zskt, cmi, ood) on the default setting
   (LeNet-5 -> half LeNet, 1x28x28) and on WRN-16-2 -> WRN-16-1 at 3x32x32;
2. the cost of K = 1, 2, 4, 8 teachers relative to one (batched ensemble, and a Python loop);
3. a ZSKT pseudo-batch against a straightforward version that re-runs the generator and the
   teacher for every student step;
4. channels_last and bf16 autocast on the WRN setting (bf16 only where the hardware has it);
5. the extra cost of ABD: plain vs SV vs SR vs SV + SR (SR forced on for every step).
Teachers and students are randomly initialised: speed does not depend on what they learnt.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import torch

from fedabd.data import DatasetInfo, ImageSet, dataset_info
from fedabd.defenses import build_defense
from fedabd.device import bf16_supported, resolve_device
from fedabd.distill import create_distiller
from fedabd.models import create_model
from machine import machine

SETTINGS = {
    "default": dict(info=dataset_info("mnist_subset"), teacher="lenet5", student="lenet5_half"),
    "wrn32": dict(info=DatasetInfo("synthetic32", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                  teacher="wrn16_2", student="wrn16_1"),
}
# Small per-iteration budgets so each case takes seconds; "images" counts student-side images.
METHOD_SETTINGS = {
    "vanilla": dict(overrides={"batch_size": 128, "epochs": 1}, images=lambda c: c.batch_size),
    "zskt": dict(overrides={"batch_size": 128, "student_steps_per_pb": 10, "pseudo_batches": 1000},
                 images=lambda c: c.batch_size * c.student_steps_per_pb),
    "cmi": dict(overrides={"synth_batch": 64, "g_steps": 10, "kd_steps": 20, "kd_batch": 128, "epochs": 1000},
                images=lambda c: c.kd_batch * c.kd_steps),
    "ood": dict(overrides={"batch_size": 256, "num_patches": 4096, "steps": 1000}, images=lambda c: c.batch_size),
}


def _case(kw: dict, queue) -> None:
    torch.set_num_threads(kw.get("threads", os.cpu_count() or 1))
    torch.manual_seed(0)
    s = SETTINGS[kw["setting"]]
    info = s["info"]
    dev = resolve_device("auto")
    mk = lambda name: create_model(name, num_classes=info.num_classes, in_channels=info.channels,  # noqa: E731
                                   image_size=info.image_size)
    teachers = [mk(s["teacher"]) for _ in range(kw.get("k", 1))]
    student = mk(s["student"])
    method = kw["method"]
    over = dict(METHOD_SETTINGS[method]["overrides"], **kw.get("extra", {}))
    real = None
    if method == "vanilla":
        g = torch.Generator().manual_seed(0)
        n = 5 * 128 * 10
        real = ImageSet(torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8, generator=g),
                        torch.randint(0, info.num_classes, (n,), generator=g), info)
        over["data_fraction"] = 1.0
    defense = build_defense(kw.get("abd", "none"), sr={"fraction": 1.0} if "sr" in kw.get("abd", "") else None)
    d = create_distiller(method, teachers, student, info, overrides=over, device=dev, seed=0, defense=defense,
                         real_data=real, channels_last=kw.get("channels_last", False), bf16=kw.get("bf16", False))
    if kw.get("loop"):
        d.teacher.batched = False
    elif kw.get("k", 1) > 1:  # the "batched (vmap)" rows: vmapped on the CPU too (the CPU's default is the loop)
        d.teacher.batched_on_cpu = True
    d.setup()
    d.defense.setup(d)
    if d.defense.final_phase_fraction > 0:
        d.in_final_phase = True
        d.on_final_phase()
        d.defense.enter_final_phase(d)
    d.student.train()
    warm, iters = kw.get("warm", 1), kw["iters"]
    for it in range(warm):
        d.iteration(it)
    t0 = time.perf_counter()
    for it in range(warm, warm + iters):
        d.iteration(it)
    secs = (time.perf_counter() - t0) / iters
    images = METHOD_SETTINGS[method]["images"](d.cfg)
    queue.put({"sec_per_iter": secs, "images_per_sec": images / secs,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_case(**kw) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(kw, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--out", default="benchmarks/results/distill_speed.md")
    args = ap.parse_args()
    n = 2 if args.quick else 5
    iters = {"vanilla": 10 * n, "zskt": n, "cmi": 1, "ood": 10 * n}
    device = resolve_device("auto")
    lines = ["# Distillation speed", "", f"Command: `python benchmarks/distill_speed.py{' --quick' if args.quick else ''}`", "",
             f"Machine: {machine(f'{os.cpu_count()} cores', f'device {device}', f'bf16 fast path: {bf16_supported(device)}')}.",
             ""]

    def table(head, rows):
        lines.extend(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)])
        lines.extend("| " + " | ".join(map(str, r)) + " |" for r in rows)
        lines.append("")

    rows = []
    for setting in SETTINGS:
        for m in METHOD_SETTINGS:
            r = run_case(setting=setting, method=m, iters=iters[m])
            rows.append([setting, m, f"{r['images_per_sec']:.0f}", f"{r['sec_per_iter']:.3f}", f"{r['peak_rss_mb']:.0f}"])
            print(rows[-1], flush=True)
    lines.append("## 1. Images per second (student-side images), one teacher")
    table(["setting", "method", "images/s", "s per iteration", "peak RSS MB"], rows)

    rows, base = [], {}
    for k in (1, 2, 4, 8):
        for loop in (False, True):
            if k == 1 and loop:
                continue
            r = run_case(setting="default", method="zskt", iters=iters["zskt"], k=k, loop=loop)
            base.setdefault("t", r["sec_per_iter"])
            rows.append([k, "loop" if loop else "batched (vmap)", f"{r['sec_per_iter']:.3f}",
                         f"{r['sec_per_iter'] / base['t']:.2f}", f"{r['peak_rss_mb']:.0f}"])
            print(rows[-1], flush=True)
    lines.append("## 2. K teachers (ZSKT pseudo-batch, default setting), cost relative to K = 1")
    table(["K", "ensemble", "s per pseudo-batch", "relative", "peak RSS MB"], rows)

    rows = []
    for setting in SETTINGS:
        cached = run_case(setting=setting, method="zskt", iters=iters["zskt"])
        naive = run_case(setting=setting, method="zskt", iters=iters["zskt"], extra={"naive": True})
        rows.append([setting, f"{cached['sec_per_iter']:.3f}", f"{naive['sec_per_iter']:.3f}",
                     f"{cached['sec_per_iter'] / naive['sec_per_iter']:.2f}"])
        print(rows[-1], flush=True)
    lines.append("## 3. ZSKT pseudo-batch: cached synthetic batch and teacher outputs vs re-running them every student step")
    table(["setting", "cached s", "naive s", "cached / naive"], rows)

    rows = []
    dev = resolve_device("auto")
    variants = [("plain", {}), ("channels_last", {"channels_last": True})]
    if bf16_supported(dev):
        variants += [("bf16", {"bf16": True}), ("channels_last + bf16", {"channels_last": True, "bf16": True})]
    ref = None
    for name, kw in variants:
        r = run_case(setting="wrn32", method="zskt", iters=iters["zskt"], **kw)
        ref = ref or r["sec_per_iter"]
        rows.append([name, f"{r['sec_per_iter']:.3f}", f"{ref / r['sec_per_iter']:.2f}x"])
        print(rows[-1], flush=True)
    lines.append("## 4. Memory format and precision (ZSKT, WRN-16-2 -> WRN-16-1, 3x32x32)")
    if not bf16_supported(dev):
        lines.append("bf16 autocast not measured: this CPU has no fast bf16 path (AVX512-BF16 / AMX), so fedabd leaves it off.")
        lines.append("")
    table(["variant", "s per pseudo-batch", "speed-up"], rows)

    rows = []
    for method in ("zskt", "cmi", "ood"):
        ref = None
        for abd in ("none", "sv", "sr", "sv+sr"):
            r = run_case(setting="default", method=method, iters=iters[method], abd=abd)
            ref = ref or r["sec_per_iter"]
            rows.append([method, abd, f"{r['sec_per_iter']:.3f}", f"{r['sec_per_iter'] / ref:.2f}"])
            print(rows[-1], flush=True)
    lines.append("## 5. ABD's extra cost per iteration (default setting; SR forced on for every step — in a run it "
                 "covers only the final 2 % of iterations)")
    table(["method", "defence", "s per iteration", "relative to none"], rows)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
