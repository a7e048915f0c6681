"""The ``fedabd`` command line. Thin Typer commands; Rich lives here only."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .artifacts import ModelFileError, load_model
from .attacks import ATTACKS, create_attack
from .data import DATASETS, DEFAULT_DATASET, DatasetUnavailableError, load_dataset
from .device import resolve_device
from .models import GENERATORS, MODELS
from .registry import UnknownNameError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated learning with backdoored clients, aggregated by data-free KD with the ABD defence.")
console = Console()
err = Console(stderr=True)

USER_ERRORS = (ModelFileError, DatasetUnavailableError, UnknownNameError, ValueError, FileNotFoundError)


@contextlib.contextmanager
def user_errors():
    """Known bad-input errors become one clear line on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _split_names(value: str, registry, extra: tuple[str, ...] = ()) -> list[str]:
    names = registry.names() if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in extra:
            registry.get(n)  # clear error for unknown names
    return names


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library progress.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


@app.command("list")
def list_registries() -> None:
    """List the registered datasets, models, generators and attacks."""
    table = Table("registry", "entries")
    for title, reg in (("datasets", DATASETS), ("models", MODELS), ("generators", GENERATORS), ("attacks", ATTACKS)):
        table.add_row(title, ", ".join(reg.names()))
    console.print(table)


@app.command("train-teacher")
def train_teacher_cmd(
    out: Annotated[Path, typer.Option(help="Output folder: one NAME.safetensors + NAME.json per teacher.")],
    attack: Annotated[str, typer.Option(help="Attack name, 'clean', a comma list, or 'all' (clean + every attack).")] = "clean",
    dataset: Annotated[str, typer.Option(help="Dataset name (see `fedabd list`).")] = DEFAULT_DATASET,
    arch: Annotated[str, typer.Option(help="Classifier architecture.")] = "lenet5",
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    rate: Annotated[float, typer.Option(help="Poison rate (fraction of the training set).", min=0.0, max=1.0)] = 0.1,
    target: Annotated[Optional[int], typer.Option(help="Target label (default: the dataset's).")] = None,
    attack_param: Annotated[Optional[list[str]], typer.Option(help="Attack setting key=value (repeatable), e.g. test_strength=0.4 for sig.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the dataset files.")] = None,
    download: Annotated[bool, typer.Option(help="Allow downloading the dataset.")] = False,
) -> None:
    """Train clean or poisoned teachers, print Acc/ASR, save them as safetensors + JSON."""
    from .teachers import train_teacher
    from .train import TrainConfig

    with user_errors():
        names = ["clean", *ATTACKS.names()] if attack == "all" else _split_names(attack, ATTACKS, extra=("clean",))
        dev = resolve_device(device)
        train = load_dataset(dataset, "train", data_dir, download)
        test = load_dataset(dataset, "test", data_dir, download)
        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size)
        rows = []
        with progress_bar() as bar:
            for name in names:
                task = bar.add_task(name, total=None, info="")
                t0 = time.perf_counter()
                res = train_teacher(dataset, arch, name, seed=seed, rate=rate, target=target, cfg=cfg, device=dev,
                                    attack_params=_parse_settings(attack_param, "--attack-param"),
                                    out=out / name, train=train, test=test,
                                    progress=lambda s, n, m, task=task: bar.update(
                                        task, completed=s, total=n, info=f"epoch {m['epoch']} loss {m['loss']:.3f}"))
                rows.append((name, res.metrics, time.perf_counter() - t0))
                bar.update(task, info=f"Acc {pct(res.metrics['acc'])}  ASR {pct(res.metrics.get('asr'))}")
        from .report import markdown_table

        headers = ["teacher", "Acc %", "ASR %", "R-Acc %"]
        cells = [[n, pct(m["acc"]), pct(m.get("asr")), pct(m.get("r_acc"))] for n, m, _ in rows]
        table = Table(*headers, "time s", title=f"{arch} teachers on {dataset} (seed {seed})")
        for row, (_, _, secs) in zip(cells, rows):
            table.add_row(*row, f"{secs:.0f}")
        console.print(table)
        (out / "teachers.md").write_text(markdown_table(headers, cells))
        console.print(f"saved to {out}/")


def _parse_settings(values: list[str] | None, what: str) -> dict:
    """``key=value`` pairs (values parsed as YAML scalars) -> dict."""
    from .config import yaml_load

    out = {}
    for item in values or []:
        if "=" not in item:
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml_load(raw)
    return out


@app.command("distill")
def distill_cmd(
    teacher: Annotated[list[Path], typer.Option(help="Teacher model file (repeat for an ensemble).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    kd: Annotated[str, typer.Option(help="Method: vanilla | zskt | cmi | ood.")] = "zskt",
    student: Annotated[str, typer.Option(help="Student architecture.")] = "lenet5_half",
    abd: Annotated[str, typer.Option(help=ABD_HELP)] = "none",
    preset: Annotated[str, typer.Option(help="Hyper-parameter preset: cpu | paper.")] = "cpu",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a method setting, key=value (repeatable).")] = None,
    sv: Annotated[Optional[list[str]], typer.Option(help="Override an SV setting, key=value.")] = None,
    sr: Annotated[Optional[list[str]], typer.Option(help="Override an SR setting, key=value.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated teacher weights.")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N iterations (0: ten times per run).", min=0)] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (default: auto, on for BatchNorm conv nets).")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: auto, on for BatchNorm conv nets where the hardware has it).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option()] = None,
) -> None:
    """Distil teacher file(s) into a student without their data; Acc/ASR over training, plot, student file."""
    from .defenses import build_defense
    from .single import distill_files

    with user_errors():
        defense = build_defense(abd, sv=_parse_settings(sv, "--sv"), sr=_parse_settings(sr, "--sr"))
        w = [float(v) for v in weights.split(",")] if weights else None
        with progress_bar() as bar:
            task = bar.add_task(f"{kd}{'+' + abd if abd != 'none' else ''}", total=None, info="")

            def on_progress(step, total, row):
                info = f"Acc {pct(row['acc'])} ASR {pct(row.get('asr'))}" if "acc" in row else ""
                bar.update(task, completed=step, total=total, **({"info": info} if info else {}))

            result = distill_files([str(t) for t in teacher], kd, student, out, preset=preset,
                                   overrides=_parse_settings(set_, "--set"), defense=defense, defense_name=abd,
                                   seed=seed, device=device, eval_every=eval_every, data_dir=data_dir,
                                   teacher_weights=w, channels_last=channels_last, bf16=bf16, progress=on_progress)
        table = Table("iteration", "phase", "Acc %", "ASR %", "R-Acc %", "time s", title=f"{kd} -> {student}")
        for r in result.history:
            table.add_row(str(r["iteration"]), r["phase"], pct(r["acc"]), pct(r.get("asr")), pct(r.get("r_acc")),
                          f"{r['seconds']:.0f}")
        console.print(table)
        if result.defense_state:
            console.print("defence:", json.dumps(result.defense_state, default=str)[:2000])
        console.print(f"saved student, metrics, config and curves.png to {out}/")


def _round_table(title: str) -> Table:
    return Table("round", "Acc %", "ASR %", "R-Acc %", "clients", "malicious", "excluded", "time s", title=title)


def _add_round(table: Table, row: dict) -> None:
    excluded = [f"{who} {why}" for why in ("failed", "missing", "rejected", "offline") for who in row.get(why, [])]
    table.add_row(str(row["round"]) + (" (resumed)" if row.get("resumed") else ""), pct(row["acc"]),
                  pct(row.get("asr")), pct(row.get("r_acc")), ",".join(map(str, row.get("clients", []))) or "-",
                  ",".join(map(str, row.get("malicious", []))) or "-", ",".join(map(str, excluded)) or "-",
                  f"{row['seconds']:.0f}" if "seconds" in row else "-")


def run_scenario(cfg, resume: bool = False, title: str = "") -> list[dict]:
    """Simulate ``cfg`` with a live round table and a distillation progress bar; write the run folder."""
    from rich.console import Group
    from rich.live import Live

    from .federated import Checkpoint
    from .report import RunDir, plot_curves
    from fedabd.server.simulation import simulate  # Flower lives in server/, imported only here

    out = Path(cfg.out)
    run = RunDir(out)
    run.write_json("config.json", cfg.to_json())
    table = _round_table(title or f"{cfg.name}: {cfg.aggregator}{'' if cfg.aggregator != 'distill' else ' (' + cfg.kd + (' + ABD ' + cfg.abd if cfg.abd != 'none' else '') + ')'}, "
                         f"{cfg.clients} clients, {cfg.malicious if cfg.malicious_ids is None else len(cfg.malicious_ids)} malicious ({cfg.attack})")
    bar = progress_bar()
    task = bar.add_task("server distillation", total=None, info="", visible=cfg.aggregator == "distill")
    t0 = time.perf_counter()

    def on_round(row: dict) -> None:
        _add_round(table, row)
        if not row.get("resumed"):
            run.append({k: v for k, v in row.items() if k != "defense"})
        bar.reset(task, total=None, info="")

    def on_progress(step: int, total: int, row: dict) -> None:
        bar.update(task, completed=step, total=total, info=f"{cfg.kd} iteration {step}/{total}")

    if resume:
        loaded = Checkpoint(out).load()
        run.rows = list(loaded[2]) if loaded else []
    with Live(Group(table, bar), console=console, refresh_per_second=4, redirect_stderr=False):
        rows = simulate(cfg, on_round=on_round, resume=resume, progress=on_progress)
    ckpt = Checkpoint(out).dir
    import shutil
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(ckpt / f"global{suffix}", out / f"global{suffix}")
    run.rewrite(rows)
    run.write_json("metrics.json", rows)
    plot_curves(rows, "round", None, out / "acc_asr.png", title=table.title)
    last = rows[-1]
    console.print(f"[bold]final global model[/] after round {last['round']}: Acc {pct(last['acc'])} %, "
                  f"ASR {pct(last.get('asr'))} %  ({time.perf_counter() - t0:.0f} s)")
    console.print(f"run folder: {out}/ (config.json, metrics.csv/.jsonl/.json, global.safetensors, acc_asr.png, checkpoint/)")
    return rows


@app.command("simulate")
def simulate_cmd(
    scenario: Annotated[Optional[str], typer.Option(help="Scenario YAML file or shipped scenario name.")] = None,
    clients: Annotated[Optional[int], typer.Option(help="Number of clients.")] = None,
    malicious: Annotated[Optional[int], typer.Option(help="Number of malicious clients.")] = None,
    rounds: Annotated[Optional[int], typer.Option()] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Fraction of clients per round.")] = None,
    partition: Annotated[Optional[str], typer.Option(help="iid | dirichlet | pathological")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Dirichlet alpha.")] = None,
    local_epochs: Annotated[Optional[int], typer.Option()] = None,
    attack: Annotated[Optional[str], typer.Option()] = None,
    poison_rate: Annotated[Optional[float], typer.Option(help="Poisoned fraction of a malicious client's data.")] = None,
    malicious_mode: Annotated[Optional[str], typer.Option(help="fixed | random (drawn each round)")] = None,
    attack_start_round: Annotated[Optional[int], typer.Option()] = None,
    scale: Annotated[Optional[float], typer.Option(help="Model-replacement boost of malicious updates.")] = None,
    kd: Annotated[Optional[str], typer.Option(help="zskt | cmi | ood")] = None,
    abd: Annotated[Optional[str], typer.Option(help=ABD_HELP)] = None,
    aggregator: Annotated[Optional[str], typer.Option(help="distill | fedavg | multikrum | fedmedian | fedtrimmedavg")] = None,
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
    from .config import ConfigError, load_scenario
    from .scenario_files import resolve_scenario

    flags = dict(clients=clients, malicious=malicious, rounds=rounds, fraction=fraction, partition=partition,
                 alpha=alpha, local_epochs=local_epochs, attack=attack, poison_rate=poison_rate,
                 malicious_mode=malicious_mode, attack_start_round=attack_start_round, scale=scale, kd=kd, abd=abd,
                 aggregator=aggregator, student=student, client_arch=client_arch, dataset=dataset, data_dir=data_dir,
                 seed=seed, out=out, device=device)
    try:
        flags.update(_parse_settings(set_, "--set"))
        if resume is not None:
            if scenario is not None or any(v is not None for v in flags.values()):
                raise ConfigError("--resume continues a run with its saved config; give no other scenario flags")
            cfg = load_scenario(None, json.loads((resume / "config.json").read_text())) if (resume / "config.json").exists() \
                else None
            if cfg is None:
                raise ConfigError(f"{resume}: no config.json: not a fedabd run folder")
        else:
            cfg = load_scenario(resolve_scenario(scenario) if scenario else None, flags)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    with user_errors():
        if resume is not None:
            run_scenario(cfg, resume=True)
            return
        if not compare:
            run_scenario(cfg)
            return
        from dataclasses import replace

        from .config import validate
        from .report import plot_curves

        variants = {}
        for name in [v.strip() for v in compare.split(",") if v.strip()]:
            agg, _, defence = name.partition("+")
            over = {"aggregator": agg, "abd": "sv+sr" if defence == "abd" else (defence or "none"),
                    "out": str(Path(cfg.out) / name.replace("+", "_"))}
            if agg != "distill":
                over["abd"] = "none"
            variants[name] = validate(replace(cfg, **over), f"--compare {name}")
        results = {name: run_scenario(v, title=f"{cfg.name}: {name}") for name, v in variants.items()}
        from .report import markdown_table

        headers = ["aggregator", *[f"round {r['round']} Acc / ASR %" for r in next(iter(results.values()))]]
        cells = [[n, *[f"{pct(r['acc'])} / {pct(r.get('asr'))}" for r in rows]] for n, rows in results.items()]
        table = Table(*headers, title=f"{cfg.name}: comparison")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        plot_curves([], "round", results, Path(cfg.out) / "compare.png", title=f"{cfg.name}: Acc and ASR per round")
        (Path(cfg.out) / "compare.md").write_text(markdown_table(headers, cells))
        console.print(f"comparison plot: {Path(cfg.out) / 'compare.png'}")


@app.command("reproduce")
def reproduce_cmd(
    out: Annotated[Path, typer.Option(help="Results folder (re-running resumes it).")] = Path("results/reproduce"),
    attack: Annotated[str, typer.Option(help="Attacks: 'all' or a comma list.")] = "all",
    kd: Annotated[str, typer.Option(help="Methods, comma list.")] = "vanilla,zskt,cmi,ood",
    abd: Annotated[str, typer.Option(help="Defence variants for the data-free methods, comma list.")] = "none,sv+sr",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1).")] = 3,
    ablation: Annotated[int, typer.Option(min=0, help="SV-only / SR-only runs for this many most-transferring attacks.")] = 3,
    preset: Annotated[str, typer.Option(help="cpu | paper")] = "cpu",
    dataset: Annotated[str, typer.Option()] = DEFAULT_DATASET,
    teacher_arch: Annotated[Optional[str], typer.Option(help="Default: lenet5 (wrn16_2 for 3-channel data).")] = None,
    student: Annotated[Optional[str], typer.Option(help="Default: lenet5_half (wrn16_1 for 3-channel data).")] = None,
    teacher_epochs: Annotated[int, typer.Option(min=1)] = 12,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method setting, method.key=value (repeatable).")] = None,
    sv: Annotated[Optional[list[str]], typer.Option(help="Shuffling Vaccine setting, key=value (repeatable).")] = None,
    sr: Annotated[Optional[list[str]], typer.Option(help="Self-Retrospection setting, key=value (repeatable).")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes running cells side by side (CPU: up to the cores).")] = 1,
    device: Annotated[str, typer.Option()] = "auto",
    data_dir: Annotated[Optional[str], typer.Option()] = None,
    base: Annotated[Optional[Path], typer.Option(help="Reuse the teachers and no-defence cells of this reproduction "
                                                 "(same data, models, preset, --set), e.g. to compare ABD settings.")] = None,
    base_cells: Annotated[bool, typer.Option("--base-cells/--base-teachers-only",
                                             help="With --base: reuse its no-defence cells too, or only its "
                                                  "teachers (when the distillers changed since it ran).")] = True,
) -> None:
    """The paper's single-teacher experiment: teachers, vanilla KD, ZSKT/CMI/OOD without and with ABD, ablation; a results page."""
    import sys

    from .data import dataset_info
    from .distill import DISTILLERS
    from .reproduce import Plan, timed_run

    with user_errors():
        attacks = ATTACKS.names() if attack == "all" else _split_names(attack, ATTACKS)
        kds = _split_names(kd, DISTILLERS)
        variants = [v.strip() for v in abd.split(",") if v.strip()]
        from .defenses import DEFENSES, build_defense
        for v in variants:
            if v not in DEFENSES:
                raise ValueError(f"unknown defence {v!r}; choose from {', '.join(DEFENSES)}")
        overrides: dict = {}
        for k, v in _parse_settings(set_, "--set").items():
            method, _, key = k.partition(".")
            if method not in kds or not key:
                raise ValueError(f"--set {k}: expected METHOD.KEY with METHOD one of {', '.join(kds)}")
            overrides.setdefault(method, {})[key] = v
        rgb = dataset_info(dataset).channels == 3
        plan = Plan(out=out, attacks=attacks, kds=kds, seeds=list(range(seeds)), defenses=variants,
                    ablation_top=ablation, dataset=dataset,
                    teacher_arch=teacher_arch or ("wrn16_2" if rgb else "lenet5"),
                    student=student or ("wrn16_1" if rgb else "lenet5_half"), teacher_epochs=teacher_epochs,
                    preset=preset, overrides=overrides, device=device, data_dir=data_dir,
                    sv=_parse_settings(sv, "--sv"), sr=_parse_settings(sr, "--sr"), jobs=jobs, base=base, base_cells=base_cells)
        build_defense("sv+sr", sv=plan.sv, sr=plan.sr)  # bad ABD settings fail before any work
        command = "fedabd " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else "fedabd reproduce ..."
        with progress_bar() as bar:
            jobs = bar.add_task("jobs", total=None, info="")
            inner = bar.add_task("current", total=None, info="")

            def notify(what: str, i: int, n: int) -> None:
                bar.update(jobs, completed=i - 1, total=n, info=what)
                bar.reset(inner, total=None)

            def on_progress(step, total, row):
                bar.update(inner, completed=step, total=total,
                           info=f"Acc {pct(row['acc'])} ASR {pct(row.get('asr'))}" if "acc" in row else "")

            page = timed_run(plan, command, notify, on_progress)
        console.print(page.read_text(), markup=False, highlight=False)
        console.print(f"results page: {page}")


scenarios_app = typer.Typer(help="Shipped scenario files: list, show, validate.", no_args_is_help=True)
app.add_typer(scenarios_app, name="scenarios")


@scenarios_app.command("list")
def scenarios_list() -> None:
    """The shipped scenarios with their one-line descriptions."""
    from .config import read_yaml
    from .scenario_files import list_scenarios

    table = Table("name", "description", "file")
    for name, path in list_scenarios().items():
        table.add_row(name, str(read_yaml(path).get("description", "")).strip().split("\n")[0], str(path))
    console.print(table)


@scenarios_app.command("show")
def scenarios_show(name: Annotated[str, typer.Argument(help="Shipped scenario name or YAML path.")]) -> None:
    """Print a scenario file and its fully resolved settings."""
    from .config import load_scenario
    from .scenario_files import resolve_scenario

    with user_errors():
        path = resolve_scenario(name)
        console.print(path.read_text(), highlight=False, markup=False)
        cfg = load_scenario(path)
        table = Table("key", "resolved value", title=f"{name}: resolved")
        for k, v in cfg.to_json().items():
            table.add_row(k, repr(v))
        console.print(table)


@scenarios_app.command("validate")
def scenarios_validate(paths: Annotated[Optional[list[str]], typer.Argument(help="Files or names (default: all shipped).")] = None) -> None:
    """Check scenario files; exit code 2 if any is invalid."""
    from .config import load_scenario
    from .scenario_files import list_scenarios, resolve_scenario

    bad = 0
    for item in paths or list(list_scenarios()):
        try:
            load_scenario(resolve_scenario(item))
            console.print(f"[green]ok[/]      {item}")
        except (ValueError, FileNotFoundError) as e:
            bad += 1
            err.print(f"[red]invalid[/] {e}", highlight=False)
    if bad:
        raise typer.Exit(2)


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="NAME.safetensors (with NAME.json beside it).")],
    attack: Annotated[Optional[str], typer.Option(help="Measure ASR with this attack instead of the stored trigger ('none' for Acc only).")] = None,
    target: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[int, typer.Option(help="Seed for a fresh --attack trigger.")] = 0,
    dataset: Annotated[Optional[str], typer.Option(help="Test set (default: the model's dataset).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print Acc, ASR and R-Acc of a saved model (ASR uses the trigger stored with it)."""
    from .metrics import evaluate

    with user_errors():
        dev = resolve_device(device)
        loaded = load_model(model, dev)
        test = load_dataset(dataset or loaded.info.name, "test", data_dir)
        if test.info.shape != loaded.info.shape or test.info.num_classes != loaded.info.num_classes:
            raise ValueError(f"dataset {test.info.name} does not fit the model ({loaded.info.name})")
        atk = loaded.attack
        if attack == "none":
            atk = None
        elif attack is not None:
            atk = create_attack(attack, test.info, target=target, seed=seed)
        m = evaluate(loaded.model, test, atk, dev)
        if as_json:
            print(json.dumps(m))
            return
        table = Table("model", "attack", "Acc %", "ASR %", "R-Acc %")
        table.add_row(str(model), atk.name if atk else "-", pct(m["acc"]), pct(m.get("asr")), pct(m.get("r_acc")))
        console.print(table)


ABD_HELP = "ABD defence: bare --abd = SV + SR; or sv | sr | sv+sr | none."


def normalize_argv(args: list[str]) -> list[str]:
    """A bare ``--abd`` (last, or followed by another option) means ``--abd sv+sr``."""
    out = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--abd" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("sv+sr")
    return out


def run() -> None:
    """Console-script entry point."""
    import sys

    app(args=normalize_argv(sys.argv[1:]), prog_name="fedabd")


if __name__ == "__main__":  # pragma: no cover
    run()
