"""Shipped scenario files (the repository's ``scenarios/`` folder, installed as ``fedabd.scenarios``)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def scenario_dir() -> Path:
    return Path(str(resources.files("fedabd.scenarios")))


def list_scenarios(sub: str = "") -> dict[str, Path]:
    """Shipped scenarios by name (``sub="bench"``: the shipped bench specs)."""
    return {p.stem: p for p in sorted((scenario_dir() / sub).glob("*.yaml"))}


def resolve_scenario(name_or_path: str | Path, sub: str = "", what: str = "scenario") -> Path:
    """A file path, or the name of a shipped scenario (or, with ``sub="bench"``, bench spec)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = list_scenarios(sub)
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"no {what} file {name_or_path!r} and no shipped {what} of that name; "
                            f"shipped: {', '.join(shipped)}")
