"""``fedabd bench``: the federated backdoor leaderboard, attacks x aggregators x seeds.

A bench spec (YAML) names a base scenario, the attacks (each a set of scenario keys over the base),
the aggregators (names as ``--compare`` takes them: ``flame+distill+abd``; each may add scenario
keys of its own, and a label of your own names its rule in them: ``{mean: {aggregator: distill,
ensemble_rule: logit_mean}}``) and the seeds::

    name: toy
    scenario: {clients: 10, malicious: 3, rounds: 5, attack_stop_round: 3}
    warmup: {rounds: 5, local_epochs: 2}   # optional: clean FedAvg rounds every cell of a seed starts from
    attacks:
      none: {malicious: 0}                  # the accuracy each aggregator costs without an attack
      poison_x5: {threat: poison, scale: 5}
    aggregators: [fedavg, flame, {distill+abd: {kd: cmi}}]
    seeds: 3                                # or a list of seeds

Every cell is a run folder ``OUT/cells/<attack>/<aggregator>/seed<k>`` written by
:func:`fedabd.runs.run_scenario` with the in-process transport (:mod:`fedabd.local`); a cell whose
``metrics.json`` exists is finished and never runs again, a stopped cell resumes from its last
checkpointed round, and a finished cell whose configuration differs from the spec's is refused (it
would mix two experiments in one table). The leaderboard is read from the cells' own files.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from .artifacts import atomic_write_text
from .config import ConfigError, ScenarioConfig, build, read_yaml, validate
from .report import markdown_table, plot_curves
from .runfolder import config_differences, read_json
from .runs import folder_name, pct, variant_keys

SPEC_KEYS = ("name", "description", "scenario", "warmup", "attacks", "aggregators", "seeds")


@dataclass(frozen=True)
class BenchSpec:
    name: str
    scenario: dict
    attacks: dict[str, dict]
    aggregators: dict[str, dict]   # name -> its own scenario keys
    seeds: tuple[int, ...]
    warmup: dict | None = None
    description: str = ""
    where: str = "bench spec"


@dataclass(frozen=True)
class Cell:
    attack: str
    aggregator: str
    seed: int
    cfg: ScenarioConfig

    @property
    def name(self) -> str:
        return f"{self.attack} / {self.aggregator} / seed {self.seed}"


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of scenario keys, got {type(value).__name__}")
    return value


def _names(value, key: str, where: str) -> dict[str, dict]:
    """``attacks`` / ``aggregators``: a mapping name -> keys, or a list of names and one-key mappings."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if isinstance(entry, str):
                items.append((entry, {}))
            elif isinstance(entry, dict) and len(entry) == 1:
                items.append(next(iter(entry.items())))
            else:
                raise ConfigError(f"{where}: {key}: each entry is a name or {{name: {{scenario keys}}}}, got {entry!r}")
    else:
        raise ConfigError(f"{where}: {key}: expected a list or mapping of names, got {type(value).__name__}")
    out: dict[str, dict] = {}
    for name, keys in items:
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ConfigError(f"{where}: {key}: {name!r} is not a usable name")
        if name in out:
            raise ConfigError(f"{where}: {key}: {name!r} is listed twice")
        out[name] = _mapping(keys, f"{where}: {key}.{name}")
    if not out:
        raise ConfigError(f"{where}: {key}: names nothing")
    return out


def parse_spec(data, where: str = "bench spec") -> BenchSpec:
    """A :class:`BenchSpec` from parsed YAML; ConfigError names the key that is wrong."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a bench spec must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("attacks", "aggregators"):
        if key not in data:
            raise ConfigError(f"{where}: missing key {key}")
    seeds = data.get("seeds", 1)

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if whole(seeds) and seeds >= 1:
        seeds = tuple(range(seeds))
    elif isinstance(seeds, list) and seeds and all(whole(v) and v >= 0 for v in seeds):
        seeds = tuple(dict.fromkeys(seeds))
    else:
        raise ConfigError(f"{where}: seeds: a number of seeds (>= 1) or a list of seeds >= 0, got {seeds!r}")
    warmup = data.get("warmup")
    scenario = _mapping(data.get("scenario"), f"{where}: scenario")
    if warmup is not None and scenario.get("initial_model"):
        raise ConfigError(f"{where}: warmup: the scenario already names an initial_model; use one or the other")
    return BenchSpec(name=str(data.get("name") or Path(where).stem), scenario=scenario,
                     attacks=_names(data["attacks"], "attacks", where),
                     aggregators=_names(data["aggregators"], "aggregators", where), seeds=seeds,
                     warmup=None if warmup is None else _mapping(warmup, f"{where}: warmup"),
                     description=str(data.get("description") or ""), where=where)


def load_spec(path: str | Path) -> BenchSpec:
    return parse_spec(read_yaml(path), str(path))


def select(spec: BenchSpec, attacks: list[str] | None = None, aggregators: list[str] | None = None,
           seeds: int | None = None) -> BenchSpec:
    """The spec restricted to some of its attacks and aggregators, or to its first ``seeds`` seeds."""
    def pick(table: dict, names: list[str] | None, key: str) -> dict:
        if not names:
            return table
        missing = [n for n in names if n not in table]
        if missing:
            raise ConfigError(f"--{key} {','.join(missing)}: not in {spec.where} ({', '.join(table)})")
        return {n: table[n] for n in names}

    return replace(spec, attacks=pick(spec.attacks, attacks, "attacks"),
                   aggregators=pick(spec.aggregators, aggregators, "aggregators"),
                   seeds=spec.seeds if seeds is None else tuple(range(seeds)))


def warmup_config(spec: BenchSpec, out: Path, seed: int) -> ScenarioConfig | None:
    """The clean FedAvg run whose global model starts every cell of ``seed`` (None: no warm-up)."""
    if spec.warmup is None:
        return None
    values = {**spec.scenario, "malicious": 0, "malicious_ids": None, "aggregator": "fedavg",
              "aggregator_settings": {}, "abd": "none", "initial_model": None, **spec.warmup,
              "seed": seed, "name": f"{spec.name} warm-up, seed {seed}", "out": str(out / "warmup" / f"seed{seed}")}
    return build(values, f"{spec.where}: warmup")


def plan_cells(spec: BenchSpec, out: str | Path) -> tuple[dict[int, ScenarioConfig], list[Cell]]:
    """Every warm-up and cell of the bench, each validated (ConfigError names the attack and the
    aggregator whose combination is wrong) before anything runs."""
    out = Path(out)
    warmups = {s: w for s in spec.seeds if (w := warmup_config(spec, out, s)) is not None}
    cells = []
    for attack, attack_keys in spec.attacks.items():
        for agg, agg_keys in spec.aggregators.items():
            where = f"{spec.where}: attacks.{attack} with aggregators.{agg}"
            own = dict(agg_keys)
            keys = variant_keys(str(own.pop("aggregator", agg)))  # a label may name its rule in its keys
            for seed in spec.seeds:
                folder = out / "cells" / attack / folder_name(agg) / f"seed{seed}"
                values = {**spec.scenario, **attack_keys, **keys, **own, "seed": seed,
                          "name": f"{attack} / {agg} / seed {seed}", "out": str(folder)}
                cfg = build(values, where)
                if seed in warmups:
                    warm = warmups[seed]
                    if cfg.global_arch != warm.global_arch:
                        raise ConfigError(f"{where}: its global model ({cfg.global_arch}) cannot start from the "
                                          f"warm-up's FedAvg model ({warm.global_arch})")
                    cfg = replace(cfg, initial_model=str(Path(warm.out) / "global.safetensors"))
                cells.append(Cell(attack, agg, seed, cfg))
    return warmups, cells


def finished(cfg: ScenarioConfig) -> bool:
    return (Path(cfg.out) / "metrics.json").is_file()


def check_finished(cells: list[Cell]) -> None:
    """A finished cell must have run the configuration the spec gives it now."""
    for cell in cells:
        if finished(cell.cfg):
            stored = read_json(Path(cell.cfg.out) / "config.json", "run config")
            diff = config_differences(stored, cell.cfg.to_json())
            if diff:
                raise ConfigError(f"{cell.name}: its finished run ({cell.cfg.out}) used other settings "
                                  f"({', '.join(diff)}); remove that folder or run the bench with --overwrite")


def run_cell(cfg: ScenarioConfig) -> list[dict]:
    """One cell (or warm-up): its rows; a finished one is read, a stopped one resumes."""
    from .federated import Checkpoint
    from .local import simulate_local
    from .runs import run_scenario

    out = Path(cfg.out)
    if finished(cfg):
        return json.loads((out / "metrics.json").read_text())
    cfg = validate(cfg, cfg.name)  # the warm-up's model exists now
    resume = (out / "config.json").is_file() and Checkpoint(out).load() is not None
    return run_scenario(cfg, simulate_local, resume=resume, overwrite=not resume)


def run_bench(spec: BenchSpec, out: str | Path, jobs: int = 1, on_done=None) -> list[Cell]:
    """Run every unfinished warm-up, then every unfinished cell (``jobs`` side by side); returns the
    cells. ``on_done(cfg, rows)`` after each."""
    from .pool import run_jobs

    warmups, cells = plan_cells(spec, out)
    check_finished(cells)
    run_jobs(run_cell, [w for w in warmups.values() if not finished(w)], jobs, on_done)
    run_jobs(run_cell, [c.cfg for c in cells if not finished(c.cfg)], jobs, on_done)
    return cells


# -- the leaderboard ------------------------------------------------------------------------------

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
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


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
    return "-" if mean is None else f"{pct(mean)} ± {pct(sd)}"


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
    atomic_write_text(page, leaderboard_markdown(spec, entries) + "\n".join(figures) + "\n")
    return page
