"""The ``fedabd`` command line: one thin module per command; Rich lives here only."""
from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.table import Table

from . import bench, distill, evaluate, reproduce, scenarios, simulate, teachers
from .common import console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated learning with backdoored clients, aggregated by data-free KD with the ABD defence.")
app.command("train-teacher")(teachers.train_teacher_cmd)
app.command("distill")(distill.distill_cmd)
app.command("simulate")(simulate.simulate_cmd)
app.command("reproduce")(reproduce.reproduce_cmd)
app.command("bench")(bench.bench_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.add_typer(scenarios.app, name="scenarios")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library progress.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


def registries() -> dict:
    """Every registry by the name ``fedabd list`` shows."""
    from ..aggregators import AGGREGATORS
    from ..attacks import ATTACKS
    from ..data import DATASETS
    from ..data.partition import PARTITIONERS
    from ..defenses import DEFENSES
    from ..distill import DISTILLERS
    from ..models import GENERATORS, MODELS
    from ..threats import THREATS

    return {"datasets": DATASETS, "models": MODELS, "generators": GENERATORS, "attacks": ATTACKS,
            "threats": THREATS, "distillers": DISTILLERS, "defences": DEFENSES, "aggregators": AGGREGATORS,
            "partitioners": PARTITIONERS}


@app.command("list")
def list_registries() -> None:
    """List every registry: datasets, models, generators, attacks, threats, distillers, defences, aggregators,
    partitioners (aggregators compose by name: a filtering rule first, e.g. flame+distill)."""
    table = Table("registry", "entries")
    for title, reg in registries().items():
        table.add_row(title, ", ".join(reg.names()))
    console.print(table)


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
    app(args=normalize_argv(sys.argv[1:]), prog_name="fedabd")


__all__ = ["app", "normalize_argv", "run"]
