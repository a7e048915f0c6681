"""``fedabd simulate``: a federated scenario with a live round table; ``--compare`` runs variants."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from ..aggregators import aggregator_class
from ..config import FIELDS, ConfigError, load_scenario
from ..runs import compare_variants, comparison_table, describe, run_scenario, write_comparison
from .common import ABD_HELP, console, err, parse_settings, pct, progress_bar, user_errors

def round_table(title: str) -> Table:
    return Table("round", "Acc %", "ASR %", "R-Acc %", "clients", "malicious", "excluded", "TPR / FPR %", "time s",
                 title=title)


def add_round(table: Table, row: dict) -> None:
    excluded = [f"{who} {why}" for why in ("failed", "missing", "rejected", "offline") for who in row.get(why, [])]
    table.add_row(str(row["round"]) + (" (resumed)" if row.get("resumed") else ""), pct(row["acc"]),
                  pct(row.get("asr")), pct(row.get("r_acc")), ",".join(map(str, row.get("clients", []))) or "-",
                  ",".join(map(str, row.get("malicious", []))) or "-", ",".join(map(str, excluded)) or "-",
                  f"{pct(row['tpr'])} / {pct(row['fpr'])}" if "tpr" in row else "-",
                  f"{row['seconds']:.0f}" if "seconds" in row else "-")


def show_run(cfg, resume: bool = False, title: str = "") -> list[dict]:
    """:func:`fedabd.runs.run_scenario` with a live round table and a distillation progress bar."""
    from fedabd.server.simulation import simulate  # Flower lives in server/, imported only here

    title = title or describe(cfg)
    table, bar = round_table(title), progress_bar()
    distils = aggregator_class(cfg.aggregator).uses_defense
    task = bar.add_task("server distillation", total=None, info="", visible=distils)
    t0 = time.perf_counter()

    def on_round(row: dict) -> None:
        add_round(table, row)
        bar.reset(task, total=None, info="")

    def on_progress(step: int, total: int, row: dict) -> None:
        bar.update(task, completed=step, total=total, info=f"{cfg.kd} iteration {step}/{total}")

    with Live(Group(table, bar), console=console, refresh_per_second=4, redirect_stderr=False):
        rows = run_scenario(cfg, simulate, resume=resume, on_round=on_round, progress=on_progress, title=title)
    last = rows[-1]
    console.print(f"[bold]final global model[/] after round {last['round']}: Acc {pct(last['acc'])} %, "
                  f"ASR {pct(last.get('asr'))} %  ({time.perf_counter() - t0:.0f} s)")
    console.print(f"run folder: {cfg.out}/ (config.json, metrics.csv/.jsonl/.json, global.safetensors, acc_asr.png, checkpoint/)")
    return rows


def simulate_cmd(
    scenario: Annotated[Optional[str], typer.Option(help="Scenario YAML file or shipped scenario name.")] = None,
    clients: Annotated[Optional[int], typer.Option(help="Number of clients.")] = None,
    malicious: Annotated[Optional[int], typer.Option(help="Number of malicious clients.")] = None,
    rounds: Annotated[Optional[int], typer.Option()] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Fraction of clients per round.")] = None,
    partition: Annotated[Optional[str], typer.Option(help="Partitioner (see `fedabd list`).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Dirichlet alpha.")] = None,
    local_epochs: Annotated[Optional[int], typer.Option()] = None,
    attack: Annotated[Optional[str], typer.Option()] = None,
    poison_rate: Annotated[Optional[float], typer.Option(help="Poisoned fraction of a malicious client's data.")] = None,
    malicious_mode: Annotated[Optional[str], typer.Option(help="fixed | random (drawn each round)")] = None,
    attack_start_round: Annotated[Optional[int], typer.Option()] = None,
    scale: Annotated[Optional[float], typer.Option(help="Model-replacement boost of malicious updates.")] = None,
    threat: Annotated[Optional[str], typer.Option(help="What malicious clients do (see `fedabd list`).")] = None,
    kd: Annotated[Optional[str], typer.Option(help="Data-free method (see `fedabd list`).")] = None,
    abd: Annotated[Optional[str], typer.Option(help=ABD_HELP)] = None,
    aggregator: Annotated[Optional[str], typer.Option(help="Aggregator (see `fedabd list`).")] = None,
    student: Annotated[Optional[str], typer.Option()] = None,
    client_arch: Annotated[Optional[str], typer.Option()] = None,
    dataset: Annotated[Optional[str], typer.Option()] = None,
    data_dir: Annotated[Optional[str], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder.")] = None,
    device: Annotated[Optional[str], typer.Option()] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any scenario key, key=value (repeatable).")] = None,
    compare: Annotated[Optional[str], typer.Option(help="Run the scenario under several aggregators, e.g. fedavg,distill,distill+abd.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder after its last completed round.")] = None,
) -> None:
    """Federated simulation (Flower) with malicious clients; Acc/ASR every round."""
    from ..scenario_files import resolve_scenario

    flags = {k: v for k, v in locals().items() if k in FIELDS}
    try:
        flags.update(parse_settings(set_, "--set"))
        if resume is not None:
            if scenario is not None or any(v is not None for v in flags.values()):
                raise ConfigError("--resume continues a run with its saved config; give no other scenario flags")
            if not (resume / "config.json").exists():
                raise ConfigError(f"{resume}: no config.json: not a fedabd run folder")
            cfg = load_scenario(None, json.loads((resume / "config.json").read_text()))
        else:
            cfg = load_scenario(resolve_scenario(scenario) if scenario else None, flags)
        variants = compare_variants(cfg, compare) if compare and resume is None else None
    except (ConfigError, FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    with user_errors():
        if variants is None:
            show_run(cfg, resume=resume is not None)
            return
        results = {name: show_run(v, title=f"{cfg.name}: {name}") for name, v in variants.items()}
        headers, cells = comparison_table(results)
        table = Table(*headers, title=f"{cfg.name}: comparison")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        console.print(f"comparison plot: {write_comparison(cfg, results)}")
