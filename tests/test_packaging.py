"""The package list in pyproject must name every package, or an installed fedabd misses modules."""
import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fedabd").rglob("__init__.py")}
    found |= {"fedabd.clients", "fedabd.server", "fedabd.scenarios"}
    assert set(conf["packages"]) == found
    assert conf["package-dir"] == {"fedabd.clients": "clients", "fedabd.server": "server",
                                   "fedabd.scenarios": "scenarios"}


def test_apps_import_under_the_fedabd_namespace():
    import fedabd.clients
    import fedabd.server

    assert Path(fedabd.clients.__file__).parent == ROOT / "clients"
    assert Path(fedabd.server.__file__).parent == ROOT / "server"


def test_the_library_never_imports_flower_the_apps_or_the_cli_and_no_file_is_long():
    import ast

    bad, long = [], []
    for path in sorted((ROOT / "fedabd").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if len(path.read_text().splitlines()) > 400:
            long.append(str(rel))
        if rel.parts[1] == "cli":  # the CLI may import everything
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                continue
            if any(m.split(".")[0] == "flwr" or m.startswith(("fedabd.server", "fedabd.clients", "fedabd.cli", ".cli"))
                   for m in mods):
                bad.append(f"{rel}: {mods}")
    for folder in ("server", "clients"):
        long += [str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*.py") if len(p.read_text().splitlines()) > 400]
    assert not bad, bad
    assert not long, long
