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
