"""Shipped scenario files (the repository's ``scenarios/`` folder, installed as ``fedabd.scenarios``)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def scenario_dir() -> Path:
    return Path(str(resources.files("fedabd.scenarios")))


def list_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(scenario_dir().glob("*.yaml"))}


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped scenario."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = list_scenarios()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"no scenario file {name_or_path!r} and no shipped scenario of that name; "
                            f"shipped: {', '.join(shipped)}")
