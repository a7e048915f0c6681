"""The federated threats and defences, measured: each threat under FedAvg and norm clipping; plain,
boosted and KD-aware poisoning under data-free distillation without and with ABD; each defence
against the boosted poisoning attack and the KD-aware attacker (default dataset, 10 clients of which
3 malicious, one seed).

    python scripts/threats_table.py --out results/threats

Every cell starts from the global model of ``WARMUP`` clean FedAvg rounds (run once, ``OUT/runs/warmup``)
and is one run folder under ``OUT/runs/<cell>`` (``run_scenario`` with the in-process transport of
:mod:`fedabd.local`); a cell whose ``metrics.json`` exists is not run again, so the command resumes. The tables are read from the run folders and written to ``OUT/tables.md``.
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

# the attacks start from a trained global model (as in the literature): WARMUP clean FedAvg rounds first
WARMUP = {"dataset": "mnist_subset", "clients": 10, "malicious": 0, "local_epochs": 2, "rounds": 5,
          "aggregator": "fedavg", "seed": 0, "device": "cpu"}
BASE = {"dataset": "mnist_subset", "clients": 10, "malicious": 3, "attack": "badnet_grid", "poison_rate": 0.3,
        "local_epochs": 5, "rounds": 5, "attack_start_round": 1, "attack_stop_round": 3, "seed": 0, "device": "cpu",
        "ensemble_rule": "logit_mean"}  # what these tables measured (before the robust default existed)
BOOST = 5.0
THREATS = {  # row -> scenario keys; each row runs under FedAvg and under norm clipping
    "poison": {"threat": "poison"},
    f"poison x{BOOST:g}": {"threat": "poison", "scale": BOOST},
    "dba": {"threat": "dba"},
    f"dba x{BOOST:g}": {"threat": "dba", "scale": BOOST},
    "neurotoxin": {"threat": "neurotoxin"},
    f"neurotoxin x{BOOST:g}": {"threat": "neurotoxin", "scale": BOOST},
    "constrain_scale": {"threat": "constrain_scale"},
    "kd_aware": {"threat": "kd_aware"},
    "kd_aware, weight 0": {"threat": "kd_aware", "threat_settings": {"weight": 0.0}},  # its schedule, no margin term
}
DISTILLED = ["poison", f"poison x{BOOST:g}", "kd_aware", "kd_aware, weight 0"]  # also under distillation (CMI)
PROTECTED = [f"poison x{BOOST:g}", "kd_aware"]  # also under distillation with ABD (SV + SR)
DEFENCES = ["fedavg", "clip", "flame", "foolsgold", "rlr", "multikrum", "fedmedian", "fedtrimmedavg"]


def cells() -> dict[str, dict]:
    out = {f"{agg}, {name}": {**BASE, "aggregator": agg, **keys} for agg in ("fedavg", "clip")
           for name, keys in THREATS.items()}
    for name in DISTILLED:
        out[f"distill, {name}"] = {**BASE, "aggregator": "distill", "kd": "cmi", **THREATS[name]}
    for agg in DEFENCES:
        for name in (f"poison x{BOOST:g}", "kd_aware"):
            out.setdefault(f"{agg}, {name}", {**BASE, "aggregator": agg, **THREATS[name]})
    for name in PROTECTED:
        out[f"distill+abd, {name}"] = {**BASE, "aggregator": "distill", "kd": "cmi", "abd": "sv+sr", **THREATS[name]}
    return out


def folder(root: Path, cell: str) -> Path:
    return root / "runs" / cell.replace(", ", "__").replace(" ", "_").replace("+", "_")


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
    warm = folder(args.out, "warmup")
    if not (warm / "global.safetensors").exists():  # only metrics and configs are kept in git
        print("warm-up: running", flush=True)
        run_scenario(load_scenario(None, {**WARMUP, "name": "warmup", "out": str(warm)}), simulate_local, overwrite=True)
    results = {}
    for cell, keys in cells().items():
        keys = {**keys, "initial_model": str(warm / "global.safetensors")}
        run = folder(args.out, cell)
        if not (run / "metrics.json").exists():
            t0 = time.perf_counter()
            print(f"{cell}: running", flush=True)
            # a cell without metrics.json did not finish: its folder is cleared and the cell runs again
            run_scenario(load_scenario(None, {**keys, "name": cell, "out": str(run)}), simulate_local, overwrite=True)
            print(f"{cell}: {time.perf_counter() - t0:.0f} s", flush=True)
        results[cell] = summary(json.loads((run / "metrics.json").read_text()), BASE["attack_stop_round"])
    stop, last = BASE["attack_stop_round"], BASE["rounds"]
    head = [f"round {stop} Acc / ASR %", f"round {last} Acc / ASR %", "ASR > 20 % for rounds after the attack",
            "s / round"]
    def acc_asr(r: dict) -> list[str]:
        return [f"{pct(r['acc_end'])} / {pct(r['asr_end'])}", f"{pct(r['acc_last'])} / {pct(r['asr_last'])}"]

    t1 = [[name, *acc_asr(results[f"fedavg, {name}"]), *acc_asr(results[f"clip, {name}"]),
           results[f"fedavg, {name}"]["lasts"], results[f"clip, {name}"]["lasts"]] for name in THREATS]
    def defences(threat: str) -> list[list]:
        return [[agg, *acc_asr(r), r["lasts"], "-" if r["tpr"] is None else f"{pct(r['tpr'])} / {pct(r['fpr'])}",
                 f"{r['seconds']:.1f}"] for agg in DEFENCES for r in [results[f"{agg}, {threat}"]]]

    def protected(name: str) -> list[str]:
        return acc_asr(results[f"distill+abd, {name}"]) if f"distill+abd, {name}" in results else ["-", "-"]

    pieces = lambda c: ", ".join(f"{k[4:]} {pct(v)} %" for k, v in results[c]["pieces"].items())  # noqa: E731
    text = ["# Threats under FedAvg and under norm clipping", "",
            markdown_table(["threat", f"FedAvg {head[0]}", f"FedAvg {head[1]}", f"clip {head[0]}", f"clip {head[1]}",
                            "FedAvg: rounds ASR > 20 % after the attack", "clip: rounds ASR > 20 % after"], t1),
            f"DBA under FedAvg, ASR of each piece alone at round {stop}: {pieces('fedavg, dba')} (x{BOOST:g}: "
            f"{pieces(f'fedavg, dba x{BOOST:g}')})",
            "", "# Against data-free distillation (CMI), without and with ABD", "",
            markdown_table(["threat", f"FedAvg {head[0]}", f"FedAvg {head[1]}", f"distill {head[0]}", f"distill {head[1]}",
                            f"distill+ABD {head[0]}", f"distill+ABD {head[1]}"],
                           [[n, *acc_asr(results[f"fedavg, {n}"]), *acc_asr(results[f"distill, {n}"]), *protected(n)]
                            for n in DISTILLED])]
    for threat in (f"poison x{BOOST:g}", "kd_aware"):
        text += ["", f"# Defences against {threat}", "",
                 markdown_table(["aggregator", *head[:3], "TPR / FPR % (attack rounds)", head[3]], defences(threat))]
    (args.out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
