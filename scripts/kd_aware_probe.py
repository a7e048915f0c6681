"""Why the KD-aware attacker's backdoor reaches the distilled student: one round of local training from
the threats table's warm-up model, every client's model measured alone, and the teachers' mean
logits (what the server's student learns from) measured as a model.

    OMP_NUM_THREADS=1 python scripts/kd_aware_probe.py [--out results/threats]

(the recorded output used one torch thread; two give slightly different numbers: float summation order)

For each threat (plain poisoning; the KD-aware attacker; its schedule without the margin term) it
prints, per client, clean Acc, ASR, the update's L2 norm (learnable weights) and the mean largest
|logit| on clean and on triggered test images; then Acc and ASR of the ten teachers' mean logits.
Needs ``OUT/runs/warmup/global.safetensors`` (written by ``scripts/threats_table.py``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from fedabd.aggregators.base import weight_keys, weight_vector
from fedabd.config import load_scenario
from fedabd.data import to_float
from fedabd.federated import dataset_split, local_update, scenario_attack
from fedabd.metrics import evaluate
from fedabd.models import create_model
from fedabd.models.ensemble import Ensemble
from fedabd.report import markdown_table

ROWS = {"poison": {"threat": "poison"}, "kd_aware": {"threat": "kd_aware"},
        "kd_aware, weight 0": {"threat": "kd_aware", "threat_settings": {"weight": 0.0}}}
MALICIOUS = [3, 5, 7]  # as the threats table's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/threats"))
    args = ap.parse_args()
    warm = args.out / "runs" / "warmup" / "global.safetensors"
    start = load_file(str(warm))
    keys = weight_keys(start)
    for name, spec in ROWS.items():
        cfg = load_scenario(None, {"dataset": "mnist_subset", "clients": 10, "malicious_ids": MALICIOUS,
                                   "attack": "badnet_grid", "poison_rate": 0.3, "local_epochs": 5, "seed": 0,
                                   "device": "cpu", "aggregator": "fedavg", **spec})
        test = dataset_split(cfg, "test")
        trigger = scenario_attack(cfg, test.info)
        others = test.images[test.labels != trigger.target][:1000]
        clean_x = test.info.normalize(to_float(others))
        trig_x = test.info.normalize(trigger.apply(to_float(others)))
        models, rows = [], []
        for pid in range(cfg.clients):
            up = local_update(cfg, pid, 1, start, pid in MALICIOUS)
            model = create_model(cfg.client_arch, num_classes=test.info.num_classes, in_channels=test.info.channels,
                                 image_size=test.info.image_size)
            model.load_state_dict(up.state)
            model.eval()
            models.append(model)
            norm = np.linalg.norm(weight_vector(up.state, keys) - weight_vector(start, keys))
            with torch.no_grad():
                size = [model(x).abs().max(1).values.mean().item() for x in (clean_x, trig_x)]
            e = evaluate(model, test, trigger)
            rows.append([pid, "yes" if pid in MALICIOUS else "", f"{100 * e['acc']:.1f}", f"{100 * e['asr']:.1f}",
                         f"{norm:.2f}", f"{size[0]:.1f}", f"{size[1]:.1f}"])
        mean = evaluate(Ensemble(models), test, trigger)
        print(f"\n## {name}\n")
        print(markdown_table(["client", "malicious", "Acc %", "ASR %", "update norm", "max |logit| clean",
                              "max |logit| triggered"], rows))
        print(f"\nthe ten teachers' mean logits: Acc {100 * mean['acc']:.1f} %, ASR {100 * mean['asr']:.1f} %", flush=True)


if __name__ == "__main__":
    main()
