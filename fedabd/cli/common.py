"""What every command shares: the Rich consoles, progress bars, and bad input as one line + exit 2."""
from __future__ import annotations

import contextlib

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..artifacts import ModelFileError
from ..data import DatasetUnavailableError
from ..registry import UnknownNameError
from ..runs import pct

console = Console()
err = Console(stderr=True)

USER_ERRORS = (ModelFileError, DatasetUnavailableError, UnknownNameError, ValueError, FileNotFoundError)
ABD_HELP = "ABD defence: bare --abd = SV + SR; or sv | sr | sv+sr | none."

__all__ = ["ABD_HELP", "console", "err", "parse_settings", "pct", "progress_bar", "split_names", "user_errors"]


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


def split_names(value: str, registry, extra: tuple[str, ...] = ()) -> list[str]:
    """``all`` or a comma list of registered names (plus ``extra``); unknown names are errors."""
    names = registry.names() if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in extra:
            registry.get(n)
    return names


def parse_settings(values: list[str] | None, what: str) -> dict:
    """``key=value`` pairs (values parsed as YAML scalars) -> dict."""
    from ..config import yaml_load

    out = {}
    for item in values or []:
        if "=" not in item:
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml_load(raw)
    return out
