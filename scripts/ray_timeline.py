"""Where Ray's time goes in a simulation: seconds from the start at which Ray starts, each round ends
and Ray stops, for the default demo's scenario with FedAvg (so nothing but Flower, Ray and the
clients' training takes the time).

    python scripts/ray_timeline.py OUT [ROUNDS]

OUT is the run folder (replaced). ``ray.init`` and ``ray.shutdown`` are wrapped to print when they
start and end; round 1's seconds beyond a later round's are the client actors' start (their imports
and first data load).
"""
from __future__ import annotations

import shutil
import sys
import time

T0 = time.time()


def stamp(what: str) -> None:
    print(f"{time.time() - T0:6.1f} s  {what}", flush=True)


def wrap(module, name: str) -> None:
    original = getattr(module, name)

    def timed(*args, **kwargs):
        stamp(f"{name} starts")
        out = original(*args, **kwargs)
        stamp(f"{name} done")
        return out

    setattr(module, name, timed)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 2
    import ray

    from fedabd.config import load_scenario
    from fedabd.server.simulation import simulate
    wrap(ray, "init")
    wrap(ray, "shutdown")
    stamp("imports done")
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_scenario(None, {"malicious": 2, "aggregator": "fedavg", "rounds": rounds, "device": "cpu", "out": out})
    simulate(cfg, on_round=lambda row: stamp(f"round {row['round']} done ({row.get('seconds') or 0:.1f} s)"))
    stamp("simulate returned")


if __name__ == "__main__":
    main()
