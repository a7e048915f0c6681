"""The results page of ``fedabd reproduce``: the paper's table beside ours, the claim per cell."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .report import markdown_table

if TYPE_CHECKING:  # pragma: no cover
    from .reproduce import Plan


def _fmt(entry: dict | None, seeds: int = 0) -> str:
    """``acc / asr`` in %, with the spread over seeds, and ``(n=k)`` where fewer than ``seeds`` seeds ran."""
    if entry is None:
        return "-"
    acc = entry["acc"]
    s = f"{100 * acc[0]:.1f}"
    if acc[2] > 1:
        s += f"±{100 * acc[1]:.1f}"
    if "asr" in entry:
        asr = entry["asr"]
        s += f" / {100 * asr[0]:.1f}" + (f"±{100 * asr[1]:.1f}" if asr[2] > 1 else "")
    if acc[2] < seeds:
        s += f" (n={acc[2]})"
    return s


def results_page(plan: "Plan", results: dict, command: str, seconds: float, pending: int = 0) -> str:
    from .reproduce import PAPER, claim, paper_acc_loss, transferring

    kds = [k for k in plan.kds if k != "vanilla"]
    cols = ["teacher"] + (["vanilla KD"] if "vanilla" in plan.kds else [])
    for kd in kds:
        cols += [kd] + ([f"{kd} + ABD"] if "sv+sr" in plan.defenses else [])
    n_seeds = len(plan.seeds)
    fmt = functools.partial(_fmt, seeds=n_seeds)
    rows = []
    for attack in ["clean", *plan.attacks]:
        r = [attack, fmt(results.get((attack, "teacher", "none")))]
        if "vanilla" in plan.kds:
            r.append(fmt(results.get((attack, "vanilla", "none"))))
        for kd in kds:
            r.append(fmt(results.get((attack, kd, "none"))))
            if "sv+sr" in plan.defenses:
                r.append(fmt(results.get((attack, kd, "sv+sr"))))
        rows.append(r)
    lines = [f"# Reproduction: data-free KD of poisoned teachers, with and without ABD ({plan.dataset})", "",
             f"Command: `{command}`  ", f"Run time: {seconds / 60:.1f} min on this machine ({os.cpu_count()} CPU cores, {plan.jobs} worker process(es)); "
             f"seeds: {', '.join(map(str, plan.seeds))}; teacher {plan.teacher_arch} ({plan.teacher_epochs} epochs), "
             f"student {plan.student}, method preset `{plan.preset}`"
             + (f", overrides `{json.dumps(plan.overrides)}`" if plan.overrides else "")
             + (f", ABD settings `{json.dumps({'sv': plan.sv, 'sr': plan.sr})}`" if plan.sv or plan.sr else "") + ".", "",
             *([f"Teachers and cells without a defence are reused from [{plan.base}]({os.path.relpath(Path(plan.base) / 'RESULTS.md', plan.out)}) "
               "where it has them (same data, models and method settings).", ""] if plan.base else []),
             *([f"**In progress: {pending} job(s) still to run** (re-run the command to resume).", ""] if pending else []),
             f"Cells: Acc / ASR in %, mean{'±std over ' + str(n_seeds) + ' seeds' if n_seeds > 1 else ' (one seed)'}.", "",
             markdown_table(["attack", *cols], rows)]
    top = [a for a in transferring(plan, results) if a != "clean"][:plan.ablation_top]
    if top:
        abl_rows = []
        for attack in top:
            for kd in kds:
                abl_rows.append([attack, kd] + [fmt(results.get((attack, kd, d))) for d in ("none", "sv", "sr", "sv+sr")])
        lines += ["## Ablation (attacks that transfer most)", "",
                  markdown_table(["attack", "method", "no defence", "SV only", "SR only", "SV + SR"], abl_rows)]
    lines += ["## The paper's claims checked", ""]
    checks = []
    for attack in plan.attacks:
        for kd in kds:
            plain, abd = results.get((attack, kd, "none")), results.get((attack, kd, "sv+sr"))
            if plain is None or "asr" not in plain:
                continue
            transfers = plain["asr"][0] >= 0.5
            verdict, against_paper = "-", "-"
            c = claim(plain, abd) if transfers and abd is not None else None
            if c is not None:
                verdict = ("yes" if c["met"] else "no") + \
                    f" (ASR {100 * c['asr'][0]:.1f} -> {100 * c['asr'][1]:.1f}, " \
                    f"Acc {100 * c['acc'][0]:.1f} -> {100 * c['acc'][1]:.1f}; " \
                    f"seeds {','.join(map(str, c['seeds']))}, halved on {c['halved_on']} of {len(c['seeds'])})"
                loss = paper_acc_loss(attack) if kd == "zskt" else None
                if loss is not None:
                    against_paper = ("yes" if c["halved"] and c["acc_loss"] <= loss else "no") + \
                        f" (loses {c['acc_loss']:.1f}, the paper {loss:.1f})"
            checks.append([attack, kd, "yes" if transfers else "no", verdict, against_paper])
    lines += [markdown_table(["attack", "method", "transfers (ASR >= 50 %)", "ABD halves ASR, Acc loss <= 5",
                              "ABD halves ASR, Acc loss <= the paper's ZSKT + ABD row's"], checks)]
    clean_kd = [a for a in plan.attacks if (a, "vanilla", "none") in results and "asr" in results[(a, "vanilla", "none")]]
    if clean_kd:
        lines += [f"Vanilla KD on clean data: max ASR over attacks "
                  f"{100 * max(results[(a, 'vanilla', 'none')]['asr'][0] for a in clean_kd):.1f} %.", ""]
    off = sorted({(a, kd) for (a, kd, d), e in results.items() if "sv" in d and "off" in e.get("sv_status", [])})
    if off:
        lines += ["Shuffle selection switched SV off (no good shuffle found) for: "
                  + ", ".join(f"{a}/{kd}" for a, kd in off) + ".", ""]
    paper_rows = []
    for attack, (t, z, za, ck) in PAPER.items():
        ours = [results.get((attack, "teacher", "none")), results.get((attack, "zskt", "none")),
                results.get((attack, "zskt", "sv+sr")), results.get((attack, "vanilla", "none"))]
        paper_rows.append([attack] + [f"{a:.1f} / {b:.1f}" for a, b in (t, z, za, ck)] + [fmt(o) for o in ours])
    lines += ["## Beside the paper (CIFAR-10, WRN-16-2 -> WRN-16-1; spec section 5)", "",
              markdown_table(["attack", "paper teacher", "paper ZSKT", "paper ZSKT + ABD", "paper clean KD",
                              "our teacher", "our ZSKT", "our ZSKT + ABD", "our vanilla KD"], paper_rows)]
    return "\n".join(lines)
