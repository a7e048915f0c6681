"""``fedabd scenarios list | show | validate``."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import console, err, error_line, styled, user_errors

app = typer.Typer(help="Shipped scenario files: list, show, validate.", no_args_is_help=True)


@app.command("list")
def scenarios_list() -> None:
    """The shipped scenarios with their one-line descriptions."""
    from ..config import read_yaml
    from ..scenario_files import list_scenarios

    table = Table("name", "description", "file")
    for name, path in list_scenarios().items():
        table.add_row(name, str(read_yaml(path).get("description", "")).strip().split("\n")[0], str(path))
    console.print(table)


@app.command("show")
def scenarios_show(name: Annotated[str, typer.Argument(help="Shipped scenario name or YAML path.")]) -> None:
    """Print a scenario file and its fully resolved settings."""
    from ..config import load_scenario
    from ..scenario_files import resolve_scenario

    with user_errors():
        path = resolve_scenario(name)
        console.print(path.read_text(), highlight=False, markup=False)
        cfg = load_scenario(path)
        table = Table("key", "resolved value", title=f"{name}: resolved")
        for k, v in cfg.to_json().items():
            table.add_row(k, repr(v))
        console.print(table)


@app.command("validate")
def scenarios_validate(paths: Annotated[Optional[list[str]], typer.Argument(help="Files or names (default: all shipped).")] = None) -> None:
    """Check scenario files; exit code 2 if any is invalid."""
    from ..config import load_scenario
    from ..scenario_files import list_scenarios, resolve_scenario

    bad = 0
    for item in paths or list(list_scenarios()):
        try:
            load_scenario(resolve_scenario(item))
            console.print(styled("green", "ok      ", str(item)))
        except (ValueError, FileNotFoundError) as e:
            bad += 1
            err.print(styled("red", "invalid ", error_line(e)), highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)
