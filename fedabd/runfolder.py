"""A run folder belongs to one run: a lock while it writes, no mixing with another run's files.

:func:`own_run_folder` is entered before a run writes anything:

- it takes an exclusive lock on ``OUT/.lock`` (``fcntl.flock``: released by the kernel when the
  process dies, even by SIGKILL, so a crashed run never leaves a stale lock); a second run on the
  same folder is refused while the first holds it;
- a new run refuses a folder that is not empty (it may hold another run's config, metrics or
  global model), unless ``overwrite`` is given, which clears the folder first;
- a resumed run needs the folder's ``config.json``, and refuses a checkpoint written under another
  configuration (the run folder's path aside: a moved folder resumes where it is).

Errors are :class:`RunFolderError` (a ``ValueError``: one line and exit 2 in the CLI).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .limits import read_text_limited

LOCK = ".lock"
RESOLVED = "resolved"  # a run record's key for what the run takes from presets (ScenarioConfig.run_record)


class RunFolderError(ValueError):
    """The run folder cannot be used by this run (held by another, not empty, or mismatched)."""


def config_differences(a: dict, b: dict, ignore: tuple[str, ...] = ("out",)) -> list[str]:
    """The keys whose values differ between two run records (``ignore`` aside), sorted. The
    ``resolved`` settings (:meth:`ScenarioConfig.run_record`) count only when both hold them (folders
    written before they were recorded); a difference in them is named by its path (``kd.g_steps``)."""
    keys = sorted(k for k in set(a) | set(b) if k not in ignore and k != RESOLVED and a.get(k) != b.get(k))
    if RESOLVED in a and RESOLVED in b:
        keys += _leaf_differences(a[RESOLVED], b[RESOLVED])
    return keys


def _leaf_differences(a, b, path: str = "") -> list[str]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [path or RESOLVED]
    return [d for k in sorted(set(a) | set(b)) for d in _leaf_differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)]


def read_json(path: Path, what: str) -> dict:
    """A small JSON object from a regular file (a RunFolderError naming ``what`` otherwise)."""
    try:
        data = json.loads(read_text_limited(path))
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: cannot read the {what}: {e}") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: the {what} is not a JSON object")
    return data


def _lock(out: Path, wait: float):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, the other checks still hold
        return None
    f = open(out / LOCK, "a+")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:  # e.g. a killed run's processes still exiting
                time.sleep(0.1)
                continue
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunFolderError(f"{out}: another fedabd run (pid {holder}) is writing to this folder; "
                                 "wait for it or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _not_a_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder")


def check_run_folder(out: str | Path, config: dict, resume: bool = False, overwrite: bool = False) -> list[str]:
    """What :func:`own_run_folder` would refuse, checked without taking or changing anything (e.g.
    for every variant of a comparison before the first runs); returns the entries a new run clears."""
    out = Path(out)
    _not_a_file(out)
    if resume:
        if not (out / "config.json").is_file():
            raise RunFolderError(f"{out}: no config.json: not a fedabd run folder")
        state = out / "checkpoint" / "state.json"
        if state.is_file():
            diff = config_differences(read_json(state, "checkpoint").get("config", {}), config)
            if diff:
                raise RunFolderError(f"{out}: its checkpoint was written by another configuration "
                                     f"(differs in {', '.join(diff)}); not resuming")
        return []
    held = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if held and not overwrite:
        what = "another run (config.json)" if "config.json" in held else f"{len(held)} entries"
        raise RunFolderError(f"{out}: not empty, it holds {what}; continue it with --resume {out}, "
                             "replace it with --overwrite, or choose another --out")
    return held


@contextlib.contextmanager
def own_run_folder(out: str | Path, config: dict, resume: bool = False, overwrite: bool = False,
                   wait: float = 3.0) -> Iterator[Path]:
    """Hold ``out`` for one run (see the module docstring); yields the folder. A lock held by
    another process is waited for up to ``wait`` seconds (a killed run's last processes exiting)."""
    out = Path(out)
    _not_a_file(out)  # before mkdir, which would report it less clearly
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock(out, wait)
    except OSError as e:
        raise RunFolderError(f"{out}: cannot write the run folder: {e.strerror or e}") from None
    try:
        if check_run_folder(out, config, resume, overwrite):
            _clear(out)
        yield out
    finally:
        if lock is not None:
            lock.close()
