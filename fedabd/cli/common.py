"""What every command shares: the Rich consoles, progress bars, and bad input as one line + exit 2."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..artifacts import ModelFileError
from ..config import ConfigError, one_line, yaml_load
from ..data import DatasetUnavailableError
from ..engine import RoundFailed
from ..registry import UnknownNameError
from ..runs import pct
from ..supervise import ChildFailed

# markup off: user strings (names, paths, messages) print literally; styles come as Text objects
console = Console(markup=False)
err = Console(stderr=True, markup=False)

# bad input (exit 2) and a run that failed for a cause outside fedabd (exit 1), each as one line
USER_ERRORS = (ModelFileError, DatasetUnavailableError, UnknownNameError, ValueError, FileNotFoundError)
RUN_ERRORS = (RoundFailed, OSError)
ABD_HELP = "ABD defence: bare --abd = SV + SR; or sv | sr | sv+sr | none."

__all__ = ["ABD_HELP", "classify_error", "console", "err", "error_line", "parse_settings", "pct", "progress_bar",
           "split_names", "styled", "user_errors", "writable_folder"]


def styled(style: str, label: str, message: str = "") -> Text:
    """``label`` in ``style`` followed by ``message`` as plain text (no markup read from it)."""
    return Text.assemble((label, style), message)


def error_line(e: BaseException) -> str:
    """An exception as one line: its message, or for an OSError the cause and the file."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return one_line(e) or type(e).__name__


def classify_error(e: BaseException) -> tuple[int, str] | None:
    """``(exit code, one line)`` for bad input (2) and a run failing for an outside cause (1);
    None for anything else (a bug: its traceback is shown)."""
    if isinstance(e, USER_ERRORS):
        return 2, error_line(e)
    if isinstance(e, RUN_ERRORS):
        return 1, error_line(e)
    return None


@contextlib.contextmanager
def user_errors():
    """Bad input becomes one line on stderr and exit code 2; a run that fails for a cause outside
    fedabd (too few usable clients, a full disk, a folder that cannot be written) one line and exit
    code 1. No traceback either way."""
    try:
        yield
    except (ChildFailed, *USER_ERRORS, *RUN_ERRORS) as e:
        if isinstance(e, ChildFailed):  # a supervised job's error, already classified in its process
            if e.detail:
                err.print(e.detail, highlight=False)
            code, line = e.code, e.line
        else:
            code, line = classify_error(e)
        err.print(styled("bold red", "error: " if code == 2 else "run failed: ", line), highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:  # commands that run in this process (train-teacher, distill, reproduce)
        err.print(styled("bold yellow", "interrupted", ": finished outputs are kept; the rest was not written"),
                  highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def writable_folder(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and check that a file can be written in it, before any work starts
    (a ValueError naming the flag otherwise), so that hours of training never end unsaved."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(),
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
    out = {}
    for item in values or []:
        if "=" not in item:
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml_load(raw)
        except (yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"{what} {item!r}: not a plain YAML value ({one_line(e)})") from None
    return out
