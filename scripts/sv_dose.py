"""The Shuffling Vaccine's dose-response on one attack: SV alone at several lambdas beside no defence.

    python scripts/sv_dose.py --attack badnet_sq --kd zskt \
        --none results/reproduce_faithful --none-table results/reproduce_faithful/results_2026-12-04.json \
        --dose 0.1=results/reproduce_faithful \
        --dose 0.3=results/reproduce_sv_dose/lam0.3 --dose 1.0=results/reproduce_sv_dose/lam1.0

Every number is read from the folders' ``runs/seedS/ATTACK/KD_DEFENCE/summary.json`` (``_none`` for
the no-defence row, ``_sv`` for the others); a no-defence seed whose folder is missing is read from
``--none-table`` (a ``results.json`` that reproduction wrote; default: the ``--none`` folder's) and
marked ``*``. For the clean teacher (no ASR) only Acc is shown: what SV costs where there is nothing
to remove. Cells are formatted as in ``sr_length_table.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sr_length_table import fmt as acc_asr  # mean Acc / ASR % of cells (Acc alone without ASR)
from sr_length_table import read  # one cell: its summary, else the results.json's per-seed row


def cells(folder: Path, attack: str, job: str) -> dict[int, dict]:
    out = {}
    for f in sorted(folder.glob(f"runs/seed*/{attack}/{job}/summary.json")):
        seed = int(f.parts[-4][len("seed"):])
        s = json.loads(f.read_text())
        out[seed] = dict(s["final"], sv=(s.get("defense_state") or {}).get("sv", {}).get("status"))
    return out


def none_cells(folder: Path, attack: str, kd: str, seeds: int, table: Path | None = None) -> dict[int, dict]:
    """No-defence cells, a seed without a summary read from ``table`` (marked ``from_table``)."""
    table = table or folder / "results.json"
    results = json.loads(table.read_text()) if table.exists() else None
    got = {s: read(folder, s, attack, f"{kd}_none", results) for s in range(seeds)}
    return {s: r for s, r in got.items() if r is not None}


def fmt(row: dict) -> str:
    return acc_asr([row]) + ("*" if row.get("from_table") else "")


def mean(rows: dict[int, dict]) -> str:
    return f"{acc_asr(list(rows.values()))} (n={len(rows)})" if rows else "-"


def table(attack: str, kd: str, none: Path, doses: list[tuple[str, Path]], seeds: int,
          none_table: Path | None = None) -> str:
    rows = [("no defence", none_cells(none, attack, kd, seeds, none_table))]
    rows += [(f"SV, lambda {lam}", cells(folder, attack, f"{kd}_sv")) for lam, folder in doses]
    head = ["setting", *[f"seed {s}" for s in range(seeds)], "mean", "SV status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, got in rows:
        status = sorted({str(r.get("sv")) for r in got.values() if r.get("sv")}) or ["-"]
        lines.append("| " + " | ".join([name, *[fmt(got[s]) if s in got else "-" for s in range(seeds)],
                                         mean(got), ", ".join(status)]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attack", required=True)
    ap.add_argument("--kd", default="zskt")
    ap.add_argument("--none", type=Path, required=True, help="reproduction holding the no-defence cells")
    ap.add_argument("--dose", action="append", default=[], help="LAMBDA=FOLDER holding that lambda's SV-only cells")
    ap.add_argument("--none-table", type=Path, default=None,
                    help="results.json read for no-defence seeds without a folder (default: --none's)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    doses = [(d.split("=", 1)[0], Path(d.split("=", 1)[1])) for d in args.dose]
    for attack in ("clean", args.attack):
        print(f"\n{attack}, {args.kd} (Acc{'' if attack == 'clean' else ' / ASR'} %):\n")
        print(table(attack, args.kd, args.none, doses, args.seeds, args.none_table))


if __name__ == "__main__":
    main()
