"""The default demo's scenario with other settings, run in process (the round engine without Flower
or Ray), one line per round: Acc / ASR %, the round's seconds and its distillation seconds.

    OMP_NUM_THREADS=1 python scripts/demo_variant.py OUT '{"scale": 2, "kd": "fast"}'

The JSON object holds scenario keys over the demo's (``fedabd simulate --malicious 2 --kd cmi
--abd``, without the shipped default scenario's boost and channels_last unless ``"scale": 2`` and
``"channels_last": true`` are given); OUT is the run folder. Same seed and thread count, same numbers
as the same scenario through ``fedabd simulate``.
"""
from __future__ import annotations

import json
import sys
import time

from fedabd.config import load_scenario
from fedabd.local import simulate_local
from fedabd.runs import run_scenario


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, overrides = sys.argv[1], json.loads(sys.argv[2])
    cfg = load_scenario(None, {"malicious": 2, "kd": "cmi", "abd": "sv+sr", "device": "cpu", "out": out, **overrides})
    t0 = time.perf_counter()
    for r in run_scenario(cfg, simulate_local):
        print(f"round {r['round']}: Acc {100 * r['acc']:.1f} %, ASR {100 * r['asr']:.1f} %, "
              f"{r.get('seconds') or 0:.0f} s (distillation {r.get('distill_seconds') or 0:.0f} s)", flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
