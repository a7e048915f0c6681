"""``fedabd distill``: teacher files -> a student, data-free."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import ABD_HELP, console, parse_settings, pct, progress_bar, user_errors, writable_folder

def distill_cmd(
    teacher: Annotated[list[Path], typer.Option(help="Teacher model file (repeat for an ensemble).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    kd: Annotated[str, typer.Option(help="Method: vanilla | zskt | cmi | ood.")] = "zskt",
    student: Annotated[str, typer.Option(help="Student architecture.")] = "lenet5_half",
    abd: Annotated[str, typer.Option(help=ABD_HELP)] = "none",
    preset: Annotated[str, typer.Option(help="Hyper-parameter preset: cpu | paper.")] = "cpu",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a method setting, key=value (repeatable).")] = None,
    sv: Annotated[Optional[list[str]], typer.Option(help="Override an SV setting, key=value.")] = None,
    sr: Annotated[Optional[list[str]], typer.Option(help="Override an SR setting, key=value.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated teacher weights.")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N iterations (0: ten times per run).", min=0)] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (default: auto, on for BatchNorm conv nets).")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: auto, on for BatchNorm conv nets where the hardware has it).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option()] = None,
) -> None:
    """Distil teacher file(s) into a student without their data; Acc/ASR over training, plot, student file."""
    from ..artifacts import read_metadata
    from ..defenses import build_defense
    from ..single import distill_files

    with user_errors():
        defense = build_defense(abd, sv=parse_settings(sv, "--sv"), sr=parse_settings(sr, "--sr"))
        w = [float(v) for v in weights.split(",")] if weights else None
        for t in teacher:  # a missing or malformed teacher is named before the output folder is made
            read_metadata(t)
        writable_folder(out)
        with progress_bar() as bar:
            task = bar.add_task(f"{kd}{'+' + abd if abd != 'none' else ''}", total=None, info="")

            def on_progress(step, total, row):
                info = f"Acc {pct(row['acc'])} ASR {pct(row.get('asr'))}" if "acc" in row else ""
                bar.update(task, completed=step, total=total, **({"info": info} if info else {}))

            result = distill_files([str(t) for t in teacher], kd, student, out, preset=preset,
                                   overrides=parse_settings(set_, "--set"), defense=defense, defense_name=abd,
                                   seed=seed, device=device, eval_every=eval_every, data_dir=data_dir,
                                   teacher_weights=w, channels_last=channels_last, bf16=bf16, progress=on_progress)
        table = Table("iteration", "phase", "Acc %", "ASR %", "R-Acc %", "time s", title=f"{kd} -> {student}")
        for r in result.history:
            table.add_row(str(r["iteration"]), r["phase"], pct(r["acc"]), pct(r.get("asr")), pct(r.get("r_acc")),
                          f"{r['seconds']:.0f}")
        console.print(table)
        if result.defense_state:
            console.print("defence:", json.dumps(result.defense_state, default=str)[:2000])
        console.print(f"saved student, metrics, config and curves.png to {out}/")
