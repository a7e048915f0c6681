"""``fedabd simulate``: a federated scenario with a live round table; ``--compare`` runs variants."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from ..aggregators import aggregator_class
from ..config import FIELDS, ConfigError, load_scenario, read_yaml
from ..runfolder import RESOLVED, RunFolderError, check_run_folder, config_differences, read_json
from ..runs import compare_variants, comparison_table, describe, explain, run_scenario, write_comparison
from ..supervise import Interrupted, run_supervised
from .common import ABD_HELP, classify_error, console, parse_settings, pct, progress_bar, styled, user_errors

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


def run_in_child(cfg, resume: bool, title: str, overwrite: bool, emit) -> list[dict]:
    """The run itself, in the supervised child process: rounds and progress go back through ``emit``."""
    from fedabd.server.simulation import simulate  # Flower lives in server/, imported only here

    return run_scenario(cfg, simulate, resume=resume, title=title, overwrite=overwrite,
                        on_round=lambda row: emit("round", row),
                        progress=lambda step, total, row: emit("progress", step, total))


def show_run(cfg, resume: bool = False, title: str = "", overwrite: bool = False) -> list[dict]:
    """:func:`fedabd.runs.run_scenario` in a supervised child process (Ctrl-C stops it and every
    process it started), with a live round table and a distillation progress bar."""
    title = title or describe(cfg)
    table, bar = round_table(title), progress_bar()
    distils = aggregator_class(cfg.aggregator).uses_defense
    task = bar.add_task("server distillation", total=None, info="", visible=distils)
    t0 = time.perf_counter()
    done: list[int] = []

    def on_event(kind: str, *payload) -> None:
        if kind == "round":
            add_round(table, payload[0])
            done.append(payload[0]["round"])
            bar.reset(task, total=None, info="", visible=distils and done[-1] < cfg.rounds)  # no bar left at the end
        else:
            step, total = payload
            bar.update(task, completed=step, total=total, info=f"{cfg.kd} iteration {step}/{total}")

    try:
        with Live(Group(table, bar), console=console, refresh_per_second=4, redirect_stderr=False, transient=False):
            rows = run_supervised(run_in_child, cfg, resume, title, overwrite, on_event=on_event,
                                  classify=classify_error)
    except Interrupted as e:
        console.line()
        saved = f"rounds up to {done[-1]} are saved" if done and done[-1] > 0 else "no round was completed"
        console.print(styled("bold yellow", f"interrupted ({e}): ", f"{saved} in {cfg.out}/checkpoint; "
                             f"continue with: fedabd simulate --resume {cfg.out}"), soft_wrap=True)  # one line: copyable
        raise typer.Exit(130) from None
    console.line()
    last = rows[-1]
    console.print(styled("bold", "final global model", f" after round {last['round']}: Acc {pct(last['acc'])} %, "
                         f"ASR {pct(last.get('asr'))} %  ({time.perf_counter() - t0:.0f} s)"))
    console.print(f"run folder: {cfg.out}/ (config.json, metrics.csv/.jsonl/.json, global.safetensors, acc_asr.png, checkpoint/)")
    console.print(explain(cfg, rows), highlight=False)
    return rows


def resumed_config(folder: Path, scenario: Optional[Path], flags: dict):
    """The run in ``folder`` with its stored config, writing to ``folder`` itself (wherever it has
    moved). Flags or a scenario given beside ``--resume`` must agree with the stored config: a key
    that differs is refused, naming it."""
    if not (folder / "config.json").is_file():
        raise RunFolderError(f"{folder}: no config.json: not a fedabd run folder")
    stored = read_json(folder / "config.json", "run config")
    cfg = load_scenario(None, {**{k: v for k, v in stored.items() if k != RESOLVED}, "out": str(folder)})
    given = {k: v for k, v in flags.items() if v is not None}
    if "out" in given and Path(given["out"]).resolve() != folder.resolve():
        raise ConfigError(f"--out {given['out']} and --resume {folder} name different folders")
    if scenario is not None or given:
        asked = load_scenario(scenario, {**given, "out": str(folder)}).to_json()
        keys = set(given) | (set(read_yaml(scenario)) if scenario is not None else set())
        diff = [k for k in config_differences(cfg.to_json(), asked) if k in keys]
        if diff:
            raise ConfigError(f"--resume {folder}: its run was made with other settings: "
                              + ", ".join(f"{k} {stored.get(k)!r} (asked: {asked[k]!r})" for k in diff))
    return cfg


def simulate_cmd(
    scenario: Annotated[Optional[str], typer.Option(help="Scenario YAML file or shipped scenario name (default: the shipped `default`).")] = None,
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
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder (wherever it is) after its last completed round.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Clear a run folder that holds another run, then run.")] = False,
) -> None:
    """Federated simulation (Flower) with malicious clients; Acc/ASR every round."""
    from ..scenario_files import resolve_scenario

    flags = {k: v for k, v in locals().items() if k in FIELDS}
    with user_errors():
        flags.update(parse_settings(set_, "--set"))
        if resume is not None:
            if compare or overwrite:
                raise ConfigError("--resume continues one run; it takes neither --compare nor --overwrite")
            cfg = resumed_config(resume, resolve_scenario(scenario) if scenario else None, flags)
        else:
            cfg = load_scenario(resolve_scenario(scenario or "default"), flags)
        variants = compare_variants(cfg, compare) if compare else None
        for v in (variants or {"": cfg}).values():  # every folder checked before the first run starts
            check_run_folder(v.out, v.run_record(), resume=resume is not None, overwrite=overwrite)
        if variants is None:
            show_run(cfg, resume=resume is not None, overwrite=overwrite)
            return
        results = {name: show_run(v, title=f"{cfg.name}: {name}", overwrite=overwrite) for name, v in variants.items()}
        headers, cells = comparison_table(results)
        table = Table(*headers, title=f"{cfg.name}: comparison")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        console.print(f"comparison plot: {write_comparison(cfg, results)}")
