"""Why local training clips its gradient (``local_clip``): gradient norms of a client's local SGD
from a fresh model and from a distilled global student, and what the clip does to that training.

    python benchmarks/local_clip.py [--out benchmarks/results/local_clip.md]

It first runs one round of the default scenario with the malicious uploads boosted twice and the
``fast`` distiller (``--scale 2 --kd fast``, no ABD, in process) to get a distilled student, then
trains honest client 0 from a fresh model and from that student (the scenario's local training:
5 epochs, lr 0.05, momentum 0.9), recording every step's gradient L2 norm before any clip.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedabd.config import load_scenario
from fedabd.federated import client_data
from fedabd.local import simulate_local
from fedabd.models import create_model
from fedabd.report import markdown_table
from fedabd.runs import run_scenario
from fedabd.train import TrainConfig, train_classifier
from machine import machine


def train_with_norms(start, data, clip: float, seed: int) -> tuple[list[float], dict]:
    """Local training from ``start`` (None: a fresh model), each step's gradient norm recorded before
    it is clipped to ``clip`` (0: not clipped)."""
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    if start is not None:
        model.load_state_dict(start)
    norms: list[float] = []
    step = torch.optim.SGD.step

    def measured_step(opt, *a, **k):
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        return step(opt, *a, **k)

    torch.optim.SGD.step = measured_step
    try:
        stats = train_classifier(model, data, TrainConfig(epochs=5, lr=0.05, batch_size=64), torch.device("cpu"),
                                 seed=seed)
    finally:
        torch.optim.SGD.step = step
    return norms, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/local_clip.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_scenario(None, {"malicious": 2, "scale": 2.0, "kd": "fast", "abd": "none", "rounds": 1,
                                   "local_clip": 0.0, "device": "cpu", "out": str(Path(tmp) / "run")})
        rows = run_scenario(cfg, simulate_local)
        student = load_file(str(Path(tmp) / "run" / "global.safetensors"))
    data = client_data(cfg, 0)
    table = []
    for name, start in (("fresh model", None), (f"distilled student (Acc {100 * rows[-1]['acc']:.1f} %)", student)):
        for clip in (0.0, 10.0, 5.0):
            for seed in (1, 2):
                norms, stats = train_with_norms(start, data, clip, seed)
                t = torch.tensor(norms)
                table.append([name, clip or "off", seed, ", ".join(f"{v:.1f}" for v in norms[:3]), f"{t.median():.2f}",
                              f"{t.max():.2f}", f"{stats['train_loss']:.3f}", f"{100 * stats['train_acc']:.1f}"])
                print(table[-1], flush=True)
    text = ("# Local training's gradient norms, and the clip\n\n"
            f"`python benchmarks/local_clip.py` on {machine(date=False)}. Honest client 0 of the default scenario, its local training (5 epochs, "
            "lr 0.05, momentum 0.9, batch 64), from a fresh model and from the global student that one round "
            "of `--scale 2 --kd fast` (no ABD) distilled; norms are each step's gradient L2 norm before the "
            "clip; loss and accuracy are the last epoch's.\n\n"
            + markdown_table(["start", "clip", "seed", "first 3 norms", "median norm", "max norm",
                              "last-epoch loss", "last-epoch train Acc %"], table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
