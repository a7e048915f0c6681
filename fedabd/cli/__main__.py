"""``python -m fedabd.cli``."""
from . import run

run()
