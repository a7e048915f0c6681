"""Where the default demo's time goes: one round of ``fedabd simulate --malicious 2 --kd cmi --abd``
run in process (the same round engine, without Flower) under cProfile, its time split by phase.

    python benchmarks/profile_demo.py [--rounds 1] [--out benchmarks/results/profile_demo.md]

Phases are the cumulative times of the functions that do them (a phase's time includes what it
calls; SV's shuffled copies run inside CMI's synthesis, SR inside the KD steps of the last epoch).
The Flower path adds Ray's start and a process per client: time the command itself for that
(``/usr/bin/time fedabd simulate ... --rounds 1``), as the recorded page does.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path


from fedabd.config import load_scenario
from fedabd.local import simulate_local
from fedabd.report import markdown_table
from fedabd.runs import run_scenario
from machine import machine

# phase -> (file suffix, function name); times are cumulative
PHASES = {
    "client training (5 clients)": ("fedabd/federated.py", "local_update"),
    "server distillation, all of it": ("fedabd/distill/base.py", "run"),
    "  CMI synthesis (generator + teachers)": ("fedabd/distill/methods/cmi.py", "synthesize"),
    "    of which SV's shuffled copies": ("fedabd/defenses/abd/sv.py", "generator_loss"),
    "  KD steps (student)": ("fedabd/distill/methods/cmi.py", "kd_epoch"),
    "    of which SR (trigger search + hypergradient)": ("fedabd/defenses/abd/sr.py", "final_phase_step"),
    "      of which SR's trigger search": ("fedabd/defenses/abd/sr.py", "synthesize_trigger"),
    "evaluation (Acc, ASR, R-Acc)": ("fedabd/engine.py", "evaluate"),
    "checkpoint": ("fedabd/federated.py", "save"),
}


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for phase, (suffix, name) in PHASES.items():
        out[phase] = sum(v[3] for (path, _, func), v in stats.stats.items()
                         if path.replace("\\", "/").endswith(suffix) and func == name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_demo.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_scenario(None, {"malicious": 2, "kd": "cmi", "abd": "sv+sr", "rounds": args.rounds,
                                   "device": "cpu", "out": str(Path(tmp) / "run")})
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        rows = run_scenario(cfg, simulate_local)
        prof.disable()
        total = time.perf_counter() - t0
    times = phase_times(pstats.Stats(prof))
    table = markdown_table(["phase", "seconds", "share of the run"],
                           [[k, f"{v:.1f}", f"{100 * v / total:.0f} %"] for k, v in times.items()]
                           + [["whole run (in process)", f"{total:.1f}", "100 %"]])
    last = rows[-1]
    text = (f"# Profile of the default demo ({args.rounds} round(s), in process)\n\n"
            f"`python benchmarks/profile_demo.py --rounds {args.rounds}` on {machine(date=False)}; "
            f"Acc {100 * last['acc']:.1f} %, "
            f"ASR {100 * last['asr']:.1f} % after round {last['round']}.\n\n{table}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
