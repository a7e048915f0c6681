"""Check the ``--sr search=auto`` rule on the ZSKT reproduction and its mask-search twin.

For every (seed, attack) with both ABD runs done, reads the mask search's class sizes from
``results/reproduce_mask`` (``defense_state.sr.mask_sizes``), and the Acc / ASR of plain ZSKT and of
ABD with the paper's search from ``results/reproduce``. The rule keeps the mask when smallest /
second-smallest mask L1 < RATIO. A ``search=auto`` run is by construction the mask run when the rule
keeps the mask and the paper-search run otherwise (the class search draws no random numbers; see
``tests/test_sr.py::test_auto_search_uses_the_mask_only_when_one_class_stands_out``), so its
Acc / ASR is read from the matching column.

    python scripts/sr_auto_rule.py [--ratio 0.6] [--fit-seed 0] [--paper results/reproduce] [--mask results/reproduce_mask]
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
    ap.add_argument("--fit-seed", type=int, default=0, help="the seed the ratio was chosen on")
    ap.add_argument("--paper", type=Path, default=Path("results/reproduce"))
    ap.add_argument("--mask", type=Path, default=Path("results/reproduce_mask"))
    args = ap.parse_args()
    found = rows(args.paper, args.mask)
    print("| seed | attack | class found | ratio | ZSKT | ABD paper search | ABD mask search | auto picks "
          "| claim met: paper / mask / auto |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in found:
        r["pick"] = "mask" if r["ratio"] < args.ratio else "paper"
        r["auto"] = r[r["pick"]]
        r["met"] = {k: _met(r["zskt"], r[k]) for k in ("paper", "mask", "auto")}
        r["lower"] = r["backdoor"] and r["pick"] == ("mask" if r["mask"]["asr"] < r["paper"]["asr"] else "paper")
        met = " / ".join("yes" if r["met"][k] else "no" for k in ("paper", "mask", "auto"))
        print(f"| {r['seed']} | {r['attack']} | {r['class']}{' (target)' if r['right'] and r['backdoor'] else ''} "
              f"| {r['ratio']:.2f} | {_cell(r['zskt'])} | {_cell(r['paper'])} | {_cell(r['mask'])} | {r['pick']} "
              f"| {met} |")
    print(f"\nRule: mask if ratio < {args.ratio} (chosen on seed {args.fit_seed}).")
    groups = [("all seeds", found)]
    held_out = [r for r in found if r["seed"] != args.fit_seed]
    if held_out and len(held_out) < len(found):
        groups.append((f"held out (seeds other than {args.fit_seed})", held_out))
    for name, group in groups:
        backdoor = [r for r in group if r["backdoor"]]
        n = len(backdoor)
        counts = {k: sum(r["met"][k] for r in backdoor) for k in ("paper", "mask", "auto")}
        print(f"- {name}: {len(group)} runs, {n} with a backdoor; auto took the column with the lower ASR in "
              f"{sum(r['lower'] for r in backdoor)} of {n}; claim met (ASR >= 50 % halved, <= 5 Acc points "
              f"lost): paper search {counts['paper']}, mask search {counts['mask']}, auto {counts['auto']} of {n}.")
    right = [r["ratio"] for r in found if r["right"] and r["backdoor"]]
    wrong = [r["ratio"] for r in found if not (r["right"] and r["backdoor"])]
    if right and wrong:
        print(f"- ratio where the class found is the target: {min(right):.2f}-{max(right):.2f} ({len(right)} runs); "
              f"otherwise (wrong class or no backdoor): {min(wrong):.2f}-{max(wrong):.2f} ({len(wrong)} runs).")

if __name__ == "__main__":
    main()
