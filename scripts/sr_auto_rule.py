"""Check the ``--sr search=auto`` rule on the ZSKT reproduction and its mask-search twin.

For every (seed, attack) with both ABD runs done, reads the mask search's class sizes from
``results/reproduce_mask`` (``defense_state.sr.mask_sizes``), and the Acc / ASR of plain ZSKT and of
ABD with the paper's search from ``results/reproduce``. The rule keeps the mask when smallest /
second-smallest mask L1 < RATIO. A ``search=auto`` run is by construction the mask run when the rule
keeps the mask and the paper-search run otherwise (the class search draws no random numbers; see
``tests/test_sr.py::test_auto_search_uses_the_mask_only_when_one_class_stands_out``), so its
Acc / ASR is read from the matching column.

    python scripts/sr_auto_rule.py [--ratio 0.6] [--paper results/reproduce] [--mask results/reproduce_mask]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _final(path: Path) -> dict | None:
    f = path / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


def rows(paper: Path, mask: Path, target: int = 0) -> list[dict]:
    out = []
    for seed_dir in sorted((mask / "runs").glob("seed*")):
        for attack_dir in sorted(seed_dir.iterdir()):
            m = _final(attack_dir / "zskt_sv_sr")
            base = paper / "runs" / seed_dir.name / attack_dir.name
            p, z = _final(base / "zskt_sv_sr"), _final(base / "zskt_none")
            if not (m and p and z):
                continue
            sizes = m["defense_state"]["sr"]["mask_sizes"]
            first, second = sorted(sizes)[:2]
            out.append({"seed": int(seed_dir.name[4:]), "attack": attack_dir.name,
                        "class": m["defense_state"]["sr"]["mask_class"], "ratio": first / second,
                        "zskt": z["final"], "paper": p["final"], "mask": m["final"],
                        "backdoor": attack_dir.name != "clean", "right": sizes.index(first) == target})
    return out


def _cell(final: dict) -> str:
    asr = final.get("asr")
    return f"{100 * final['acc']:.1f} / " + ("-" if asr is None else f"{100 * asr:.1f}")


def _met(z: dict, d: dict) -> bool:
    return z.get("asr") is not None and z["asr"] >= 0.5 and d["asr"] <= z["asr"] / 2 and d["acc"] >= z["acc"] - 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--paper", type=Path, default=Path("results/reproduce"))
    ap.add_argument("--mask", type=Path, default=Path("results/reproduce_mask"))
    args = ap.parse_args()
    found = rows(args.paper, args.mask)
    print("| seed | attack | class found | ratio | ZSKT | ABD paper search | ABD mask search | auto picks | auto: claim met |")
    print("|---|---|---|---|---|---|---|---|---|")
    lower_picked, met = 0, {"paper": 0, "mask": 0, "auto": 0}
    for r in found:
        pick = "mask" if r["ratio"] < args.ratio else "paper"
        r["auto"] = r[pick]
        for k in ("paper", "mask", "auto"):
            met[k] += _met(r["zskt"], r[k])
        if r["backdoor"]:
            lower = "mask" if r["mask"]["asr"] < r["paper"]["asr"] else "paper"
            lower_picked += pick == lower
        print(f"| {r['seed']} | {r['attack']} | {r['class']}{' (target)' if r['right'] and r['backdoor'] else ''} "
              f"| {r['ratio']:.2f} | {_cell(r['zskt'])} | {_cell(r['paper'])} | {_cell(r['mask'])} | {pick} "
              f"| {'yes' if _met(r['zskt'], r['auto']) else 'no'} |")
    n = sum(r["backdoor"] for r in found)
    sep = [r for r in found if r["backdoor"]]
    print(f"\n{len(found)} runs ({n} with a backdoor), rule: mask if ratio < {args.ratio}.")
    print(f"auto picked the column with the lower ASR in {lower_picked} of {n} backdoor runs.")
    print(f"claim met (ASR >= 50 % halved, <= 5 Acc points lost): paper search {met['paper']}, "
          f"mask search {met['mask']}, auto {met['auto']} of {n}.")
    right = [r["ratio"] for r in sep if r["right"]]
    wrong = [r["ratio"] for r in found if not (r["right"] and r["backdoor"])]
    if right and wrong:
        print(f"ratio where the class found is the target: {min(right):.2f}-{max(right):.2f}; "
              f"otherwise (wrong class or no backdoor): {min(wrong):.2f}-{max(wrong):.2f}.")


if __name__ == "__main__":
    main()
