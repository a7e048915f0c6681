"""LeNet-5 on this CPU: its 2x2 max pool as ``F.max_pool2d`` (before) and as :func:`max_pool2x2`
(now), and channels_last beside them, in the calls the default demo makes.

    python benchmarks/lenet_pool.py [--reps 5] [--calls 20] [--out benchmarks/results/lenet_pool.md]

The demo (MNIST, LeNet-5 clients, teachers and student) spends its time in three calls: a client's
SGD step (batch 64), a KD step (five teachers' forward without gradients and the student's forward,
backward and SGD step on batch 128) and a synthesis pass (five teachers' forward and backward to the
input, batch 64); the pool alone and a teacher's forward without gradients come first. Each form is
timed ``--calls`` calls per timing after a warm-up, median of ``--reps`` timings, the forms
interleaved. Models are randomly initialised: the cost does not depend on what they learnt. The last
column is the largest difference of a call's output between the forms (0: bitwise the same).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import contextlib

import torch
import torch.nn.functional as F

from fedabd.models import create_model
from fedabd.models.nets import lenet
from fedabd.models.pool import max_pool2x2
from fedabd.report import markdown_table
from machine import machine

TEACHERS = 5
FORMS = ["max_pool2d", "max_pool2x2", "max_pool2x2 + channels_last"]


@contextlib.contextmanager
def form_of(form: str):
    """LeNet's pool as ``form`` has it while the block runs."""
    lenet.max_pool2x2 = (lambda x: F.max_pool2d(x, 2)) if form == "max_pool2d" else max_pool2x2
    try:
        yield
    finally:
        lenet.max_pool2x2 = max_pool2x2


def build(layout: str, seed: int = 0):
    torch.manual_seed(seed)
    teachers = [create_model("lenet5", 10, 1, 28).eval() for _ in range(TEACHERS)]
    student = create_model("lenet5", 10, 1, 28)
    for t in teachers:
        t.requires_grad_(False)
    if layout == "channels_last":
        teachers = [t.to(memory_format=torch.channels_last) for t in teachers]
        student = student.to(memory_format=torch.channels_last)
    return teachers, student


def fmt(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


def make_call(name: str, layout: str):
    """A closure running one call of ``name`` in ``layout``; returns its output."""
    teachers, student = build(layout)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    if name == "2x2 pool alone (128 x 6 x 28 x 28)":
        h = fmt(torch.randn(128, 6, 28, 28, generator=g), layout)

        def call():
            with torch.no_grad():
                return lenet.max_pool2x2(h)
    elif name == "one teacher's forward (128)":
        x = fmt(torch.rand(128, 1, 28, 28, generator=g), layout)

        def call():
            with torch.no_grad():
                return teachers[0](x)
    elif name == "client step (64)":
        x, y = fmt(torch.rand(64, 1, 28, 28, generator=g), layout), torch.randint(0, 10, (64,), generator=g)

        def call():
            loss = F.cross_entropy(student(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
    elif name == "KD step (128, 5 teachers)":
        x = fmt(torch.rand(128, 1, 28, 28, generator=g), layout)

        def call():
            with torch.no_grad():
                t = sum(m(x) for m in teachers) / TEACHERS
            s = student(x)
            loss = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return t
    else:  # synthesis pass
        x0 = torch.rand(64, 1, 28, 28, generator=g)

        def call():
            x = fmt(x0, layout).requires_grad_(True)
            out = sum(m(x) for m in teachers)
            return torch.autograd.grad(out.square().sum(), x)[0]
    return call


CALLS = ["2x2 pool alone (128 x 6 x 28 x 28)", "one teacher's forward (128)", "client step (64)",
         "KD step (128, 5 teachers)", "synthesis pass (64, 5 teachers, input grad)"]


def layout_of(form: str) -> str:
    return "channels_last" if form.endswith("channels_last") else "nchw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/lenet_pool.md")
    args = ap.parse_args()
    rows = []
    for name in CALLS:
        calls, first = {}, {}
        for form in FORMS:
            calls[form] = make_call(name, layout_of(form))
            with form_of(form):
                first[form] = calls[form]()  # warm-up; the first outputs compare the forms
        diffs = [float((first[FORMS[0]] - first[f]).abs().max()) for f in FORMS[1:]]
        times = {form: [] for form in FORMS}
        for _ in range(args.reps):
            for form in FORMS:
                with form_of(form):
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        calls[form]()
                    times[form].append((time.perf_counter() - t0) / args.calls * 1e3)
        med = {form: statistics.median(v) for form, v in times.items()}
        rows.append([name, *(f"{med[f]:.2f}" for f in FORMS), f"{med[FORMS[0]] / med[FORMS[1]]:.2f}x",
                     f"{med[FORMS[0]] / med[FORMS[2]]:.2f}x", " / ".join(f"{d:.1e}" for d in diffs)])
        print(rows[-1], flush=True)
    table = markdown_table(["call", *(f"{f} ms" for f in FORMS), "max_pool2x2 speed-up", "+ channels_last speed-up",
                            "max difference (each form against max_pool2d)"], rows)
    page = (f"# LeNet-5's 2x2 max pool on the CPU\n\nCommand: `python benchmarks/lenet_pool.py --reps {args.reps} "
            f"--calls {args.calls}`\n\nMachine: {machine()}. Median of {args.reps} timings of {args.calls} calls, the "
            f"forms interleaved; speed-up = max_pool2d ms / the form's ms.\n\n{table}\n")
    Path(args.out).write_text(page)
    print(page)

if __name__ == "__main__":
    main()
