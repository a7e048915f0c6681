"""The leaderboard of a ``fedabd bench`` run (:mod:`fedabd.bench`): read from the cells' own files, it
gives per attack and aggregator the final Acc and ASR (mean and spread over seeds), the peak ASR,
detection rates, backdoor persistence and seconds per round, a summary line per aggregator, a CSV
and plots."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from .artifacts import atomic_write_text
from .bench import REBUILT, BenchSpec, finished, plan_cells, warmup_config
from .report import markdown_table, plot_curves
from .runs import pct


def cell_summary(rows: list[dict]) -> dict:
    """Final Acc / ASR, the highest ASR of any round (``peak``: a backdoor that the rounds after the
    attack wash out still shows), detection rates over the rounds that have them, backdoor
    persistence and seconds per round of one finished cell."""
    last = rows[-1]
    rated = [r for r in rows if r.get("tpr") is not None]
    timed = [r["seconds"] for r in rows[1:] if r.get("seconds") is not None]
    asrs = [r["asr"] for r in rows[1:] if r.get("asr") is not None]
    return {"acc": last.get("acc"), "asr": last.get("asr"), "peak": max(asrs) if asrs else None,
            "tpr": statistics.fmean(r["tpr"] for r in rated) if rated else None,
            "fpr": statistics.fmean(r["fpr"] for r in rated if r.get("fpr") is not None) if rated else None,
            "lasts": last.get("backdoor_lasts"), "seconds": statistics.fmean(timed) if timed else None}


def _stat(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)  # no spread from one seed


def collect(spec: BenchSpec, out: str | Path) -> list[dict]:
    """One entry per attack and aggregator, over the seeds whose cell finished: mean and spread
    (sample standard deviation) of each summary value, ``n`` the seeds, ``rounds`` the per-round
    Acc / ASR averaged over those seeds."""
    _, cells = plan_cells(spec, out)
    entries = []
    for attack in spec.attacks:
        for agg in spec.aggregators:
            runs = [json.loads((Path(c.cfg.out) / "metrics.json").read_text()) for c in cells
                    if c.attack == attack and c.aggregator == agg and finished(c.cfg)]
            entry: dict = {"attack": attack, "aggregator": agg, "n": len(runs)}
            summaries = [cell_summary(r) for r in runs]
            for key in ("acc", "asr", "peak", "tpr", "fpr", "lasts", "seconds"):
                entry[key], entry[f"{key}_sd"] = _stat([s[key] for s in summaries])
            entry["rounds"] = [{"round": rnd, **{k: _stat([r[i].get(k) for r in runs])[0] for k in ("acc", "asr")}}
                               for i, rnd in enumerate(r["round"] for r in runs[0])] if runs else []
            entries.append(entry)
    return entries


# What "kept clean" means in the leaderboard's summary: the ASR a backdoor may keep, and the Acc an aggregator may
# lose against FedAvg without an attack (issue #21's goal: ASR <= 5 % within 2 points of attack-free FedAvg).
CLEAN_ASR = 0.05
CLEAN_ACC_DROP = 0.02


def summary(spec: BenchSpec, entries: list[dict], reference: str = "fedavg") -> list[dict]:
    """Per aggregator, at a glance: its Acc without an attack (the spec's attack rows with ``malicious: 0``),
    how many attacks it holds to ASR <= CLEAN_ASR, how many of those also within CLEAN_ACC_DROP of the
    ``reference`` aggregator's Acc without an attack, its worst final ASR and its mean seconds per round.
    Means over seeds, as in the tables; an attack counts only where some seed finished."""
    by = {(e["attack"], e["aggregator"]): e for e in entries}
    clean = [t for t, keys in spec.attacks.items() if keys.get("malicious") == 0]
    attacked = [t for t in spec.attacks if t not in clean]
    ref = [by[(t, reference)]["acc"] for t in clean if (t, reference) in by and by[(t, reference)]["acc"] is not None]
    ref_acc = statistics.fmean(ref) if ref else None
    rows = []
    for agg in spec.aggregators:
        own = [by[(t, agg)]["acc"] for t in clean if by[(t, agg)]["acc"] is not None]
        done = [by[(t, agg)] for t in attacked if by[(t, agg)]["asr"] is not None]
        held = [e for e in done if e["asr"] <= CLEAN_ASR]
        secs = [by[(t, agg)]["seconds"] for t in spec.attacks if by[(t, agg)]["seconds"] is not None]
        rows.append({"aggregator": agg, "clean_acc": statistics.fmean(own) if own else None,
                     "attacks": len(done), "held": len(held),
                     "held_at_acc": None if ref_acc is None else
                     sum(e["acc"] >= ref_acc - CLEAN_ACC_DROP for e in held),
                     "worst_asr": max((e["asr"] for e in done), default=None),
                     "seconds": statistics.fmean(secs) if secs else None})
    return rows


def summary_markdown(rows: list[dict], reference: str = "fedavg") -> str:
    cells = [[r["aggregator"], "-" if r["clean_acc"] is None else pct(r["clean_acc"]),
              f"{r['held']} of {r['attacks']}", "-" if r["held_at_acc"] is None else f"{r['held_at_acc']} of {r['attacks']}",
              "-" if r["worst_asr"] is None else pct(r["worst_asr"]),
              "-" if r["seconds"] is None else f"{r['seconds']:.1f}"] for r in rows]
    return markdown_table(["aggregator", "Acc % without attack", f"attacks held to ASR <= {pct(CLEAN_ASR)} %",
                           f"... within {pct(CLEAN_ACC_DROP)} points of {reference} without attack",
                           "worst ASR %", "s / round"], cells)


def _pm(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else pct(mean) if sd is None else f"{pct(mean)} ± {pct(sd)}"


def leaderboard_markdown(spec: BenchSpec, entries: list[dict]) -> str:
    by = {(e["attack"], e["aggregator"]): e for e in entries}
    attacks, aggs = list(spec.attacks), list(spec.aggregators)
    text = [f"# Leaderboard: {spec.name}", ""]
    if spec.description:
        text += [spec.description.strip(), ""]
    text += ["## At a glance (final round, mean over seeds)", "", summary_markdown(summary(spec, entries)), ""]
    for key, title in (("asr", "ASR % after the last round (mean ± sd over seeds)"),
                       ("acc", "Acc % after the last round (mean ± sd over seeds)")):
        text += [f"## {title}", "",
                 markdown_table(["aggregator", *attacks],
                                [[a, *[_pm(by[(t, a)][key], by[(t, a)][f"{key}_sd"]) for t in attacks]] for a in aggs])]
    rows = []
    for t in attacks:
        for a in aggs:
            e = by[(t, a)]
            rates = "-" if e["tpr"] is None else f"{pct(e['tpr'])} / {pct(e['fpr'])}"
            rows.append([t, a, e["n"], _pm(e["acc"], e["acc_sd"]), _pm(e["asr"], e["asr_sd"]),
                         _pm(e["peak"], e["peak_sd"]), rates,
                         "-" if e["lasts"] is None else f"{e['lasts']:.1f}",
                         "-" if e["seconds"] is None else f"{e['seconds']:.1f}"])
    text += ["## Every cell", "",
             markdown_table(["attack", "aggregator", "seeds", "Acc %", "ASR %", "peak ASR % (any round)",
                             "detection TPR / FPR % (mean)",
                             "rounds ASR > 20 % after the attack", "s / round"], rows)]
    return "\n".join(text)


def leaderboard_csv(entries: list[dict]) -> str:
    keys = ["attack", "aggregator", "n", *[k + s for k in ("acc", "asr", "tpr", "fpr", "lasts", "seconds", "peak")
                                          for s in ("", "_sd")]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(entries)
    return buf.getvalue()


def plot_tradeoff(entries: list[dict], path: Path, title: str) -> Path:
    """Acc against ASR: one point per aggregator and attack (colour: aggregator, marker: attack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggs = list(dict.fromkeys(e["aggregator"] for e in entries))
    attacks = list(dict.fromkeys(e["attack"] for e in entries))
    markers = "os^vD<>pP*Xh"
    colours = plt.get_cmap("tab10" if len(aggs) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for e in entries:
        if e["acc"] is None or e["asr"] is None:
            continue
        ax.scatter(100 * e["asr"], 100 * e["acc"], color=colours(aggs.index(e["aggregator"])),
                   marker=markers[attacks.index(e["attack"]) % len(markers)], s=45, alpha=0.85)
    for i, a in enumerate(aggs):
        ax.scatter([], [], color=colours(i), marker="s", label=a)
    for j, t in enumerate(attacks):
        ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=t)
    ax.set_xlabel("ASR % (lower is better)")
    ax.set_ylabel("Acc % (higher is better)")
    ax.set_xlim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rebuilt_warmups(spec: BenchSpec, out: str | Path) -> list[str]:
    """A line per warm-up that was run again and differed (``--accept-rebuilt-warmup``): both final Acc
    values and how many of its seed's finished cells start from each model (a cell's round 0 is the
    Acc of the model it started from)."""
    warmups = {s: w for s in spec.seeds if (w := warmup_config(spec, Path(out), s)) is not None}
    rebuilt = {s: Path(w.out) / REBUILT for s, w in warmups.items() if (Path(w.out) / REBUILT).is_file()}
    if not rebuilt:
        return []
    _, cells = plan_cells(spec, out)
    lines = []
    for seed, path in rebuilt.items():
        runs = json.loads(path.read_text())
        then, now = runs["stored"][-1]["acc"], runs["rebuilt"][-1]["acc"]
        starts = [json.loads((Path(c.cfg.out) / "metrics.json").read_text())[0]["acc"]
                  for c in cells if c.seed == seed and finished(c.cfg)]
        lines.append(f"- Warm-up seed {seed} was run again (its model file was gone) and gave Acc {pct(now)} % where it "
                     f"had given {pct(then)} %: of its seed's {len(starts)} finished cells, "
                     f"{sum(abs(a - then) < 1e-6 for a in starts)} start from the first model and "
                     f"{sum(abs(a - now) < 1e-6 for a in starts)} from the rebuilt one.")
    return lines


def write_leaderboard(spec: BenchSpec, out: str | Path) -> Path:
    """``leaderboard.md`` / ``.csv``, ``tradeoff.png`` and ``curves_<attack>.png`` in ``out``, read
    from the cells' own files; returns the Markdown page's path."""
    out = Path(out)
    entries = collect(spec, out)
    page = out / "leaderboard.md"
    atomic_write_text(out / "leaderboard.csv", leaderboard_csv(entries))
    plot_tradeoff(entries, out / "tradeoff.png", f"{spec.name}: Acc against ASR")
    for attack in spec.attacks:
        series = {e["aggregator"]: e["rounds"] for e in entries if e["attack"] == attack and e["rounds"]}
        if series:
            plot_curves([], "round", series, out / f"curves_{attack}.png", title=f"{spec.name}, {attack}: per round")
    figures = ["", "![Acc against ASR](tradeoff.png)", "",
               *[f"![{a}](curves_{a}.png)" for a in spec.attacks if (out / f"curves_{a}.png").exists()]]
    notes = rebuilt_warmups(spec, out)
    notes = ["", "## Warm-ups run again", "", *notes] if notes else []
    atomic_write_text(page, leaderboard_markdown(spec, entries) + "\n".join(figures + notes) + "\n")
    return page
