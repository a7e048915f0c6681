"""Do two `fedabd simulate --compare` folders hold the same numbers? Per variant, every round's Acc,
ASR and R-Acc compared exactly (full float precision, from each variant's metrics.json).

    python scripts/same_numbers.py RUN_A RUN_B
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("acc", "asr", "r_acc")


def main(a: Path, b: Path) -> int:
    variants = sorted(p.parent.name for p in a.glob("*/metrics.json"))
    if not variants:
        print(f"{a}: no variant folders with metrics.json")
        return 2
    differ = 0
    for v in variants:
        ra = json.loads((a / v / "metrics.json").read_text())
        path_b = b / v / "metrics.json"
        rb = json.loads(path_b.read_text()) if path_b.exists() else []
        same = len(ra) == len(rb) and all(x.get(k) == y.get(k) for x, y in zip(ra, rb) for k in KEYS)
        differ += not same
        last = rb[-1] if rb else {}
        print(f"{v}: {'same' if same else 'DIFFERENT'} over {len(ra)} rows "
              f"(last round Acc {last.get('acc')}, ASR {last.get('asr')})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
