"""Two reproductions of one method side by side, beside the paper's row, with the claim judged twice.

    python scripts/compare_reproductions.py results/reproduce_faithful results/reproduce --kd zskt

For every attack of the first folder: the paper's ZSKT / ZSKT + ABD row (spec section 5), then the
no-defence and ABD cells of each folder (mean Acc / ASR % over the seeds both cells have, and on how
many of them ASR halved), and whether the paper's claim holds in the first folder: ASR halved (on the
paired seed means) at most 5 points of Acc lost, and at no more Acc lost than the paper's own
ZSKT + ABD row loses (2.9-11.3 points). Then the ablation cells (SV only, SR only) of both. Every
number is read from the folders' ``runs/*/summary.json`` (and the teachers' metadata).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedabd.reproduce import PAPER, Plan, claim, collect
from fedabd.report import markdown_table


def load(folder: Path, attacks: list[str] | None = None) -> tuple[Plan, dict]:
    """The folder's plan (its last command's), with ``attacks`` in place of the plan's when given (a
    folder filled by several commands: the cells of every attack named are read)."""
    raw = json.loads((folder / "plan.json").read_text())
    raw["attacks"] = attacks or raw["attacks"]
    plan = Plan(**{**raw, "out": Path(raw["out"]), "base": Path(raw["base"]) if raw.get("base") else None})
    return plan, collect(plan)


def pct(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.1f} / {100 * pair[1]:.1f}"


def cell(results: dict, attack: str, kd: str, defense: str) -> str:
    plain, other = results.get((attack, kd, "none")), results.get((attack, kd, defense))
    if plain is None or other is None:
        return "-"
    c = claim(plain, other)
    if c is None:  # no ASR (the clean teacher): Acc only
        return f"{100 * plain['acc'][0]:.1f} -> {100 * other['acc'][0]:.1f} (Acc, n={plain['n']}, {other['n']})"
    return (f"{100 * c['acc'][0]:.1f} / {100 * c['asr'][0]:.1f} -> {100 * c['acc'][1]:.1f} / {100 * c['asr'][1]:.1f}"
            f" (halved {c['halved_on']}/{len(c['seeds'])})")


def verdicts(results: dict, attack: str, kd: str) -> tuple[str, str]:
    plain, abd = results.get((attack, kd, "none")), results.get((attack, kd, "sv+sr"))
    c = claim(plain, abd) if plain and abd else None
    if c is None:
        return "-", "-"
    halved = c["asr"][1] <= c["asr"][0] / 2
    lost = 100 * (c["acc"][0] - c["acc"][1])
    paper = PAPER.get(attack)
    paper_loss = paper[1][0] - paper[2][0] if paper else None
    first = "yes" if halved and lost <= 5 else "no"
    second = "-" if paper_loss is None else ("yes" if halved and lost <= paper_loss else "no")
    return f"{first} ({lost:+.1f} pts)", f"{second} (paper loses {paper_loss:.1f})" if paper_loss is not None else second


def page(new_dir: Path, old_dir: Path, kd: str, attacks: list[str] | None = None) -> str:
    new_plan, new = load(new_dir, attacks)
    _, old = load(old_dir, attacks)
    attacks = [a for a in new_plan.attacks if a != "clean"]
    rows = []
    for attack in ["clean", *attacks]:
        p = PAPER.get(attack)
        paper = f"{pct((p[1][0] / 100, p[1][1] / 100))} -> {pct((p[2][0] / 100, p[2][1] / 100))}" if p else "-"
        v1, v2 = verdicts(new, attack, kd) if attack != "clean" else ("-", "-")
        rows.append([attack, paper, cell(old, attack, kd, "sv+sr"), cell(new, attack, kd, "sv+sr"), v1, v2])
    out = [f"# {kd.upper()} + ABD: {new_dir} beside {old_dir} and the paper\n",
           "Acc / ASR %, no defence -> ABD, mean over the seeds both cells have; (halved k/n): on how many of "
           "them ABD at least halved ASR. Claim: the mean ASR halved at <= 5 points of Acc, and at no more "
           "Acc than the paper's own ZSKT + ABD row loses.\n",
           markdown_table(["attack", "paper, ZSKT (CIFAR-10)", f"{old_dir.name}", f"{new_dir.name}",
                           "claim, <= 5 pts", "claim, <= paper's loss"], rows)]
    abl = []
    for attack in attacks:
        for d, name in (("sv", "SV only"), ("sr", "SR only")):
            a, b = cell(old, attack, kd, d), cell(new, attack, kd, d)
            if a != "-" or b != "-":
                abl.append([attack, name, a, b])
    if abl:
        out += ["\n## Ablation\n", markdown_table(["attack", "part", old_dir.name, new_dir.name], abl)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("--kd", default="zskt")
    ap.add_argument("--attack", default=None, help="comma list of attacks (default: the first folder's last plan)")
    args = ap.parse_args()
    print(page(args.new, args.old, args.kd, args.attack.split(",") if args.attack else None), end="")


if __name__ == "__main__":
    main()
