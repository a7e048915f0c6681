"""Detection quality of teacher screening (fedabd.screening), data-free, per attack.

1. Single-teacher: every teacher of ``results/reproduce/teachers`` (clean and ten attacks, three
   seeds; LeNet-5 on the MNIST subset) scored alone (no peers: the score is the anomaly index).
2. Federated: the cells of ``fedabd bench screening`` (10 clients, 3 malicious, five attacks, three
   seeds, scores logged every round) read back from their run folders.

For each attack: ROC-AUC of the score (malicious vs clean / honest teachers) and the TPR / FPR at the
default threshold, written to ``OUT/README.md`` tables.

    fedabd bench screening --out results/screening/bench --jobs 2
    python scripts/screening_probe.py --out results/screening
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from fedabd.artifacts import load_model
from fedabd.bench import load_spec, plan_cells
from fedabd.report import markdown_table
from fedabd.scenario_files import resolve_scenario
from fedabd.screening import ScreenConfig, screen_models


def rates(pos: list[float], neg: list[float], threshold: float) -> list[str]:
    auc = roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg) if pos and neg else None
    tpr = sum(s > threshold for s in pos) / len(pos) if pos else None
    fpr = sum(s > threshold for s in neg) / len(neg) if neg else None
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return [f(auc), f(tpr), f(fpr), len(pos), len(neg)]


def single_teacher(root: Path, cfg: ScreenConfig) -> tuple[str, list[dict]]:
    scored = []
    for path in sorted(glob.glob(str(root / "seed*" / "*.safetensors"))):
        lm = load_model(path)
        t0 = time.perf_counter()
        r = screen_models([lm.model], lm.info, cfg)[0]
        target = lm.attack.target if lm.attack is not None else None
        scored.append({"seed": Path(path).parent.name, "attack": Path(path).stem, "target": target, **r,
                       "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{path}: score {r['score']:.2f} class {r['class']} (target {target})", flush=True)
    clean = [s["score"] for s in scored if s["attack"] == "clean"]
    attacks = sorted({s["attack"] for s in scored} - {"clean"})
    rows = [[a, *rates([s["score"] for s in scored if s["attack"] == a], clean, cfg.threshold),
             f"{sum(s['class'] == s['target'] for s in scored if s['attack'] == a)}/"
             f"{sum(1 for s in scored if s['attack'] == a)}"] for a in attacks]
    rows.append(["all attacks", *rates([s["score"] for s in scored if s["attack"] != "clean"], clean, cfg.threshold), "-"])
    head = ["attack", "ROC-AUC", f"TPR at {cfg.threshold:g}", f"FPR at {cfg.threshold:g}", "poisoned", "clean",
            "suspected class = target"]
    return markdown_table(head, rows), scored


def federated(spec_name: str, out: Path, threshold: float, rounds: set[int] | None = None) -> str:
    """ROC-AUC and rates of the scores of the uploads of the given rounds (None: every round)."""
    spec = load_spec(resolve_scenario(spec_name, sub="bench", what="bench spec"))
    _, cells = plan_cells(spec, out)
    rows = []
    for attack in spec.attacks:
        pos, neg, seconds, seeds = [], [], [], 0
        for c in (c for c in cells if c.attack == attack):
            path = Path(c.cfg.out) / "metrics.json"
            if not path.exists():
                continue
            seeds += 1
            for row in json.loads(path.read_text())[1:]:
                if rounds is not None and row["round"] not in rounds:
                    continue
                screen = row.get("screen", {})
                seconds.append(screen.get("screen_seconds", 0.0) / max(len(screen.get("teachers", {})), 1))
                bad = set(row.get("malicious", []))
                for pid, t in screen.get("teachers", {}).items():
                    (pos if int(pid) in bad else neg).append(t["score"])
        if pos or neg:
            rows.append([attack, seeds, *rates(pos, neg, threshold), f"{sum(seconds) / max(len(seconds), 1):.2f}"])
    head = ["attack", "seeds", "ROC-AUC", f"TPR at {threshold:g}", f"FPR at {threshold:g}", "malicious uploads",
            "honest uploads", "s / teacher"]
    return markdown_table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/screening"))
    ap.add_argument("--teachers", type=Path, default=Path("results/reproduce/teachers"))
    args = ap.parse_args()
    cfg = ScreenConfig()
    table, scored = single_teacher(args.teachers, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "single_teacher_scores.json").write_text(json.dumps(scored, indent=1))
    text = ["## Single-teacher teachers (scored alone)", "", table,
            "## Federated uploads, round 1 (every client starts from the clean warm-up model)", "",
            federated("screening", args.out / "bench", cfg.threshold, {1}),
            "## Federated uploads, every attack round (FedAvg spreads the backdoor to the honest clients' start)", "",
            federated("screening", args.out / "bench", cfg.threshold)]
    (args.out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
