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
    epochs: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    rate: Annotated[float, typer.Option(help="Poison rate (fraction of the training set).", min=0.0, max=1.0)] = 0.1,
    target: Annotated[Optional[int], typer.Option(help="Target label (default: the dataset's).")] = None,
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
                                    out=out / name, train=train, test=test,
                                    progress=lambda s, n, m, task=task: bar.update(
                                        task, completed=s, total=n, info=f"epoch {m['epoch']} loss {m['loss']:.3f}"))
                rows.append((name, res.metrics, time.perf_counter() - t0))
                bar.update(task, info=f"Acc {pct(res.metrics['acc'])}  ASR {pct(res.metrics.get('asr'))}")
        table = Table("teacher", "Acc %", "ASR %", "R-Acc %", "time s", title=f"{arch} teachers on {dataset} (seed {seed})")
        for name, m, secs in rows:
            table.add_row(name, pct(m["acc"]), pct(m.get("asr")), pct(m.get("r_acc")), f"{secs:.0f}")
        console.print(table)
        lines = ["| teacher | Acc % | ASR % | R-Acc % |", "|---|---|---|---|"]
        lines += [f"| {n} | {pct(m['acc'])} | {pct(m.get('asr'))} | {pct(m.get('r_acc'))} |" for n, m, _ in rows]
        (out / "teachers.md").write_text("\n".join(lines) + "\n")
        console.print(f"saved to {out}/")


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


if __name__ == "__main__":  # pragma: no cover
    app()
