"""``fedabd evaluate``: Acc, ASR and R-Acc of a saved model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..artifacts import load_model
from ..attacks import create_attack
from ..data import load_dataset
from ..device import resolve_device
from .common import console, pct, user_errors

def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="NAME.safetensors (with NAME.json beside it).")],
    attack: Annotated[Optional[str], typer.Option(help="Measure ASR with this attack instead of the stored trigger ('none' for Acc only).")] = None,
    target: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[int, typer.Option(help="Seed for a fresh --attack trigger.")] = 0,
    dataset: Annotated[Optional[str], typer.Option(help="Test set (default: the model's dataset).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print Acc, ASR and R-Acc of a saved model (ASR uses the trigger stored with it)."""
    from ..metrics import evaluate

    with user_errors():
        dev = resolve_device(device)
        loaded = load_model(model, dev)
        test = load_dataset(dataset or loaded.info.name, "test", data_dir)
        if test.info.shape != loaded.info.shape or test.info.num_classes != loaded.info.num_classes:
            raise ValueError(f"dataset {test.info.name} does not fit the model ({loaded.info.name})")
        atk = loaded.attack
        if attack == "none":
            atk = None
        elif attack is not None:
            atk = create_attack(attack, test.info, target=target, seed=seed)
        m = evaluate(loaded.model, test, atk, dev)
        if as_json:
            print(json.dumps(m))
            return
        table = Table("model", "attack", "Acc %", "ASR %", "R-Acc %")
        table.add_row(str(model), atk.name if atk else "-", pct(m["acc"]), pct(m.get("asr")), pct(m.get("r_acc")))
        console.print(table)
