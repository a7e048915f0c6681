"""The federated threats and defences, measured: each threat under FedAvg, each defence against the
boosted poisoning attack (default dataset, 10 clients of which 3 malicious, one seed).

    python scripts/threats_table.py --out results/threats

Every cell is one run folder under ``OUT/runs/<cell>`` (``run_scenario`` with the in-process
transport of :mod:`fedabd.local`); a cell whose ``metrics.json`` exists is not run again, so the
command resumes. The tables are read from the run folders and written to ``OUT/tables.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean

from fedabd.config import load_scenario
from fedabd.local import simulate_local
from fedabd.report import markdown_table
from fedabd.runs import pct, run_scenario

BASE = {"dataset": "mnist_subset", "clients": 10, "malicious": 3, "attack": "badnet_grid", "poison_rate": 0.3,
        "local_epochs": 2, "rounds": 6, "attack_start_round": 2, "attack_stop_round": 4, "seed": 0, "device": "cpu"}
BOOST = 3.0
THREATS = {  # cell -> scenario keys, all under FedAvg
    "poison": {"threat": "poison"},
    "poison x3": {"threat": "poison", "scale": BOOST},
    "constrain_scale": {"threat": "constrain_scale"},
    "dba": {"threat": "dba"},
    "neurotoxin": {"threat": "neurotoxin"},
}
DEFENCES = ["fedavg", "clip", "flame", "foolsgold", "rlr", "multikrum", "fedmedian", "fedtrimmedavg"]


def cells() -> dict[str, dict]:
    out = {f"fedavg, {name}": {**BASE, "aggregator": "fedavg", **keys} for name, keys in THREATS.items()}
    for agg in DEFENCES:
        out.setdefault(f"{agg}, poison x3", {**BASE, "aggregator": agg, "threat": "poison", "scale": BOOST})
    return out


def folder(root: Path, cell: str) -> Path:
    return root / "runs" / cell.replace(", ", "__").replace(" ", "_")


def summary(rows: list[dict], stop: int) -> dict:
    attack = [r for r in rows if BASE["attack_start_round"] <= r["round"] <= stop]
    end, last = rows[stop], rows[-1]
    rates = [r for r in attack if r.get("tpr") is not None]
    return {"acc_end": end["acc"], "asr_end": end["asr"], "acc_last": last["acc"], "asr_last": last["asr"],
            "lasts": last.get("backdoor_lasts"), "tpr": mean(r["tpr"] for r in rates) if rates else None,
            "fpr": mean(r["fpr"] for r in rates) if rates else None,
            "seconds": mean(r["seconds"] for r in rows[1:]),
            "pieces": {k: end[k] for k in end if k.startswith("asr_piece")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/threats"))
    args = ap.parse_args()
    results = {}
    for cell, keys in cells().items():
        run = folder(args.out, cell)
        if not (run / "metrics.json").exists():
            t0 = time.perf_counter()
            print(f"{cell}: running", flush=True)
            run_scenario(load_scenario(None, {**keys, "name": cell, "out": str(run)}), simulate_local)
            print(f"{cell}: {time.perf_counter() - t0:.0f} s", flush=True)
        results[cell] = summary(json.loads((run / "metrics.json").read_text()), BASE["attack_stop_round"])
    stop, last = BASE["attack_stop_round"], BASE["rounds"]
    head = [f"round {stop} Acc / ASR %", f"round {last} Acc / ASR %", "ASR > 20 % for rounds after the attack",
            "s / round"]
    t1 = [[c.split(", ")[1], f"{pct(r['acc_end'])} / {pct(r['asr_end'])}", f"{pct(r['acc_last'])} / {pct(r['asr_last'])}",
           r["lasts"], f"{r['seconds']:.1f}"] for c, r in results.items() if c.startswith("fedavg, ")]
    t2 = [[c.split(", ")[0], f"{pct(r['acc_end'])} / {pct(r['asr_end'])}", f"{pct(r['acc_last'])} / {pct(r['asr_last'])}",
           r["lasts"], "-" if r["tpr"] is None else f"{pct(r['tpr'])} / {pct(r['fpr'])}", f"{r['seconds']:.1f}"]
          for c, r in results.items() if c.endswith("poison x3")]
    pieces = results["fedavg, dba"]["pieces"]
    text = ["# Threats under FedAvg", "", markdown_table(["threat", *head], t1),
            "DBA, ASR of each piece alone at round %d: %s" % (stop, ", ".join(f"{k[4:]} {pct(v)} %" for k, v in pieces.items())),
            "", f"# Defences against poisoning boosted x{BOOST:g}", "",
            markdown_table(["aggregator", *head[:3], "TPR / FPR % (attack rounds)", head[3]], t2)]
    (args.out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
