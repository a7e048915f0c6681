"""Reproduction cells side by side, one column per folder and defence, per seed and mean (used for
the SR phase lengths and the SV-only / SR-only ablation).

    python scripts/sr_length_table.py --kd ood --attack clean,trojan_3x3,l2_inv \
        --run none=results/reproduce_faithful_cmi_ood:none \
        --run "SR 15 %=results/reproduce_faithful_cmi_ood:sv+sr" \
        --run "SR 2 %=results/reproduce_ood_sr_default:sv+sr"

Each ``--run NAME=FOLDER:DEFENCE`` is a column read from ``FOLDER/runs/seedS/ATTACK/KD_DEFENCE/summary.json``;
cells are Acc / ASR % (Acc only for the clean teacher), ``-`` where the cell has not run. With
``--table RESULTS_JSON`` a cell without a summary is read from that table's per-seed values (a
``results.json`` a reproduction wrote) and marked ``*``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read(folder: Path, seed: int, attack: str, job: str, table: dict | None = None) -> dict | None:
    f = folder / "runs" / f"seed{seed}" / attack / job / "summary.json"
    if f.exists():
        return json.loads(f.read_text())["final"]
    kd, defense = job.split("_", 1)
    row = (table or {}).get(f"{attack}|{kd}|{defense.replace('_', '+')}", {}).get("per_seed", {}).get(str(seed))
    return dict(row, from_table=True) if row else None


def fmt(rows: list[dict]) -> str:
    if not rows:
        return "-"
    acc = statistics.mean(r["acc"] for r in rows)
    if rows[0].get("asr") is None:
        return f"{100 * acc:.1f}"
    return f"{100 * acc:.1f} / {100 * statistics.mean(r['asr'] for r in rows):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kd", required=True)
    ap.add_argument("--attack", required=True, help="comma list")
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER:DEFENCE")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--table", type=Path, help="results.json read for cells without a summary (marked *)")
    args = ap.parse_args()
    table = json.loads(args.table.read_text()) if args.table else None
    runs = []
    for spec in args.run:
        name, rest = spec.split("=", 1)
        folder, defense = rest.rsplit(":", 1)
        runs.append((name, Path(folder), f"{args.kd}_{defense.replace('+', '_')}"))
    print("| attack | seed | " + " | ".join(n for n, _, _ in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for attack in args.attack.split(","):
        got = {name: {} for name, _, _ in runs}
        for seed in range(args.seeds):
            cells = []
            for name, folder, job in runs:
                r = read(folder, seed, attack, job, table)
                if r is not None:
                    got[name][seed] = r
                cells.append(fmt([r]) + ("*" if r.get("from_table") else "") if r else "-")
            print(f"| {attack} | {seed} | " + " | ".join(cells) + " |")
        common = set.intersection(*(set(g) for g in got.values()))
        means = [fmt([got[name][s] for s in sorted(common)]) for name, _, _ in runs]
        print(f"| {attack} | mean of {len(common)} | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
