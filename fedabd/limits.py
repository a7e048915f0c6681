"""Bounds on what fedabd reads from users and others: regular files of bounded size, and parsed
documents of bounded size and depth (checked before anything expands or allocates)."""
from __future__ import annotations

from pathlib import Path

MAX_TEXT = 1 << 20      # bytes of a scenario file, a metadata file or a flag value
MAX_NODES = 100_000     # values in a parsed YAML document, aliases expanded
MAX_DEPTH = 64          # nesting of a parsed YAML document


def read_text_limited(path: str | Path, limit: int = MAX_TEXT) -> str:
    """The text of a regular file of at most ``limit`` bytes (OSError or ValueError naming the cause).
    Devices, pipes and folders are refused before any read, so a link to /dev/zero cannot fill memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def check_document_size(obj, limit: int = MAX_NODES, depth: int = MAX_DEPTH) -> None:
    """ValueError when a parsed document holds more than ``limit`` values once its aliases are
    expanded, or nests deeper than ``depth`` (a YAML alias bomb is a few hundred bytes that expand to
    billions of values). Stops counting at the limit, so checking a bomb is cheap."""
    count = 0
    stack = [(obj, 0)]
    while stack:
        value, level = stack.pop()
        count += 1
        if count > limit:
            raise ValueError(f"more than {limit} values once aliases are expanded (a YAML alias bomb?)")
        if level > depth:
            raise ValueError(f"nested deeper than {depth} levels")
        if isinstance(value, dict):
            stack.extend((v, level + 1) for kv in value.items() for v in kv)
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
