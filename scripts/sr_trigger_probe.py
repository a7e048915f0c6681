"""What does Self-Retrospection's trigger search find in a backdoored student?

For each student file, SR's own search (:func:`fedabd.defenses.abd.sr.synthesize_trigger`, trigger
from the student, as SR does for ZSKT) runs on a batch of clean test images of classes other than
the backdoor target, once per search setting. For every perturbation found it reports how many of
those images it sends to the backdoor target, which class it sends most images to, its L2 norm
(model input space) and its cosine with the real trigger's mean perturbation. The real trigger's
own numbers are the first row of each block. Then, as a contrast, Neural Cleanse's targeted
mask search for every class: the size (L1) of the smallest mask that sends the batch to that
class, and how much of the target class's mask lies on the pixels the real trigger changes.

    python scripts/sr_trigger_probe.py results/reproduce/runs/seed1/badnet_sq/zskt_none/student.safetensors ...

Clean test images stand in for SR's synthetic batch (the generator is not saved with a run).
"""
from __future__ import annotations

import argparse

import torch

from fedabd.artifacts import load_model
from fedabd.data import load_dataset
from fedabd.data.base import to_float
from fedabd.defenses.abd.sr import SRConfig, search_mask, synthesize_trigger
from fedabd.report import markdown_table

SETTINGS = {
    "SR as run (R=10, unbounded)": {},
    "R=50": {"trigger_steps": 50},
    "5 restarts": {"restarts": 5, "init_std": 0.5},
    "L2 bound 5": {"trigger_norm_bound": 5.0, "trigger_steps": 50},
    "L2 bound 10": {"trigger_norm_bound": 10.0, "trigger_steps": 50},
}


def probe(path: str, n: int, seed: int, data_dir: str | None) -> list[list]:
    loaded = load_model(path)
    model, info, attack = loaded.model, loaded.info, loaded.attack
    if attack is None:
        raise SystemExit(f"{path}: not a backdoored model's student (no attack in its metadata)")
    test = load_dataset(info.name, "test", data_dir)
    keep = torch.nonzero(test.labels != attack.target).flatten()
    g = torch.Generator().manual_seed(seed)
    pick = keep[torch.randperm(len(keep), generator=g)[:n]]
    pixels = to_float(test.images[pick])
    x = info.normalize(pixels)
    real = info.normalize(attack.apply(pixels)) - x

    def row(name, delta):
        with torch.no_grad():
            pred = model(x + delta).argmax(1)
        counts = torch.bincount(pred, minlength=info.num_classes)
        top = int(counts.argmax())
        d = delta.flatten()
        r = real.mean(0).flatten()
        cos = float(torch.nn.functional.cosine_similarity(d, r, dim=0))
        return [name, f"{100 * float((pred == attack.target).float().mean()):.1f}",
                f"{top} ({100 * float(counts[top]) / n:.0f} %)", f"{float(d.norm()):.1f}", f"{cos:+.2f}"]

    with torch.no_grad():
        pred = model(x + real).argmax(1)
    rows = [["real trigger (per image)", f"{100 * float((pred == attack.target).float().mean()):.1f}",
             f"{attack.target}", f"{float(real.flatten(1).norm(dim=1).mean()):.1f}", "+1.00 (mean)"]]
    for name, kw in SETTINGS.items():
        delta, _ = synthesize_trigger(model, x, SRConfig(**kw), torch.Generator().manual_seed(seed))
        rows.append([name, *row(name, delta)[1:]])
    lo = info.normalize(torch.zeros(1, info.channels, 1, 1))
    hi = info.normalize(torch.ones(1, info.channels, 1, 1))
    sizes, overlap = [], None
    on_trigger = (real.abs().mean(0).amax(0) > 0.1).float()  # pixels the real trigger changes
    for c in range(info.num_classes):
        m, _ = search_mask(model, x, c, lo, hi, SRConfig(search="mask"), steps=200).parts()
        sizes.append(float(m.sum()))
        if c == attack.target:
            overlap = float((m[0, 0] * on_trigger).sum() / m.sum())
    others = sorted(s for c, s in enumerate(sizes) if c != attack.target)
    smallest = min(range(info.num_classes), key=sizes.__getitem__)
    nc = {"smallest-mask class": smallest, "target mask L1": round(sizes[attack.target], 1),
          "other classes' median": round(others[len(others) // 2], 1),
          "target mask on trigger pixels": f"{100 * overlap:.0f} %",
          "trigger pixels": int(on_trigger.sum())}
    return rows, nc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="+")
    ap.add_argument("--n", type=int, default=256, help="clean test images (non-target classes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    for path in args.students:
        meta = load_model(path).meta
        print(f"\n### {meta['attack']['name']}: `{path}` (target {meta['attack']['target']})\n")
        rows, nc = probe(path, args.n, args.seed, args.data_dir)
        print(markdown_table(["trigger", "% sent to target", "top class (share)", "L2 norm", "cosine with real"], rows))
        print("\nNeural Cleanse mask search per class (L1 0.01, 200 Adam steps): " +
              ", ".join(f"{k} {v}" for k, v in nc.items()))


if __name__ == "__main__":
    main()
