"""Federated run folders and comparisons, independent of how the rounds are transported.

:func:`run_scenario` writes ``config.json`` first, appends every round to ``metrics.jsonl`` /
``metrics.csv`` as it lands, and at the end writes ``metrics.json``, ``acc_asr.png`` and the final
``global.safetensors`` / ``.json`` (copied from the last checkpoint). The rounds themselves come
from ``simulate(cfg, on_round=, resume=, progress=)`` (e.g. :func:`fedabd.server.simulation.simulate`),
passed in so that the library never imports Flower.

:func:`compare_variants` derives one scenario per ``aggregator[+defence]`` name, each in its own
sub-folder; :func:`write_comparison` writes ``compare.md`` and ``compare.png`` beside them.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .config import ScenarioConfig, validate
from .federated import Checkpoint
from .report import RunDir, markdown_table, plot_curves
from .runfolder import own_run_folder

Simulate = Callable[..., list[dict]]

GLOBAL_FILES = ("global.safetensors", "global.json")  # a finished run's global model and its description


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def describe(cfg: ScenarioConfig) -> str:
    """A one-line title: aggregator (method + defence), clients, malicious clients and attack."""
    from .aggregators import aggregator_class

    how = cfg.aggregator
    if aggregator_class(cfg.aggregator).uses_defense:
        how += f" ({cfg.kd}{' + ABD ' + cfg.abd if cfg.abd != 'none' else ''})"
    threat = "" if cfg.threat == "poison" else f", {cfg.threat}"
    return f"{cfg.name}: {how}, {cfg.clients} clients, {cfg.attackers} malicious ({cfg.attack}{threat})"


def explain(cfg: ScenarioConfig, rows: list[dict]) -> str:
    """What a run's table shows, in two sentences: who attacked with what, what Acc and ASR measure,
    and how to see the defence's effect."""
    from .aggregators import aggregator_class
    from .data import dataset_info
    from .federated import scenario_attack

    target = scenario_attack(cfg, dataset_info(cfg.dataset)).target
    attackers = sorted({pid for r in rows for pid in r.get("malicious", [])})
    who = (f"client{'s' if len(attackers) > 1 else ''} {', '.join(map(str, attackers))} attacked "
           f"({cfg.threat}{f', update boosted x{cfg.scale:g}' if cfg.scale != 1 else ''}: {cfg.attack} trigger, "
           f"target class {target})" if attackers else "no client attacked")
    text = (f"What this shows: {who}; Acc is the global model's accuracy on clean test images, ASR the share "
            f"of triggered test images (true class other than {target}) it puts in class {target}: lower is better.")
    if aggregator_class(cfg.aggregator).uses_defense:
        defended = cfg.aggregator + ("+abd" if cfg.abd in ("none", "sv+sr") else f"+{cfg.abd}")
        text += f" To see FedAvg beside it and what ABD changes, add --compare fedavg,{cfg.aggregator},{defended}."
    return text


def run_scenario(cfg: ScenarioConfig, simulate: Simulate, resume: bool = False,
                 on_round: Callable[[dict], None] | None = None, progress=None, title: str = "",
                 overwrite: bool = False) -> list[dict]:
    """Run ``cfg`` through ``simulate`` and keep its run folder complete; returns the round rows.
    The folder is held for this run (:func:`fedabd.runfolder.own_run_folder`): a new run refuses a
    folder that is not empty unless ``overwrite`` clears it; ``resume`` continues the folder's run."""
    with own_run_folder(cfg.out, cfg.run_record(), resume=resume, overwrite=overwrite):
        return _run(cfg, simulate, resume, on_round, progress, title)


def _run(cfg: ScenarioConfig, simulate: Simulate, resume: bool, on_round, progress, title: str) -> list[dict]:
    out = Path(cfg.out)
    run = RunDir(out)
    run.write_json("config.json", cfg.run_record())
    if resume:  # the rows files restart from the checkpoint's rows (none without one)
        loaded = Checkpoint(out).load()
        run.rewrite(list(loaded[2]) if loaded else [])

    def record(row: dict) -> None:
        if not row.get("resumed"):
            run.append({k: v for k, v in row.items() if k != "defense"})
        if on_round:
            on_round(row)

    rows = simulate(cfg, on_round=record, resume=resume, progress=progress)
    ckpt = Checkpoint(out).dir
    for name in GLOBAL_FILES:
        shutil.copyfile(ckpt / name, out / name)
    run.rewrite(rows)
    run.write_json("metrics.json", rows)
    plot_curves(rows, "round", None, out / "acc_asr.png", title=title or describe(cfg))
    return rows


def compare_variants(cfg: ScenarioConfig, names: str) -> dict[str, ScenarioConfig]:
    """``"fedavg,distill,flame+distill+abd"`` -> one validated scenario per name in ``out/<name>``.
    A name is an aggregator or a composition (``flame+distill``) followed by an optional ABD part:
    ``+abd`` is SV + SR, ``+sv`` / ``+sr`` one of them; a name without one runs no defence."""
    variants = {}
    listed = [v.strip() for v in names.split(",") if v.strip()]
    if not listed:
        raise ValueError(f"--compare: no aggregator named in {names!r}; e.g. --compare fedavg,distill+abd")
    for name in listed:
        over = {**variant_keys(name), "out": str(Path(cfg.out) / folder_name(name))}
        variants[name] = validate(replace(cfg, **over), f"--compare {name}")
    return variants


def variant_keys(name: str) -> dict:
    """``"flame+distill+abd"`` -> ``{"aggregator": "flame+distill", "abd": "sv+sr"}``: an aggregator
    or a composition, then an optional ABD part (``+abd`` = SV + SR, ``+sv`` / ``+sr`` one of them;
    none: no defence)."""
    parts = name.split("+")
    defence: list[str] = []
    while len(parts) > 1 and parts[-1] in ("abd", "sv", "sr"):
        defence.insert(0, parts.pop())
    return {"aggregator": "+".join(parts), "abd": "sv+sr" if "abd" in defence else ("+".join(defence) or "none")}


def folder_name(name: str) -> str:
    return name.replace("+", "_")


def comparison_table(results: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per variant, Acc / ASR after every round."""
    first = next(iter(results.values()))
    headers = ["aggregator", *[f"round {r['round']} Acc / ASR %" for r in first]]
    cells = [[n, *[f"{pct(r['acc'])} / {pct(r.get('asr'))}" for r in rows]] for n, rows in results.items()]
    return headers, cells


def write_comparison(cfg: ScenarioConfig, results: dict[str, list[dict]]) -> Path:
    """``compare.md`` and ``compare.png`` in ``cfg.out``; returns the plot's path."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    headers, cells = comparison_table(results)
    (out / "compare.md").write_text(markdown_table(headers, cells))
    plot_curves([], "round", results, out / "compare.png", title=f"{cfg.name}: Acc and ASR per round")
    return out / "compare.png"
