"""``fedabd train-teacher``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..attacks import ATTACKS
from ..data import DEFAULT_DATASET, load_dataset
from ..device import resolve_device
from .common import console, parse_settings, pct, progress_bar, split_names, user_errors, writable_folder

def train_teacher_cmd(
    out: Annotated[Path, typer.Option(help="Output folder: one NAME.safetensors + NAME.json per teacher.")],
    attack: Annotated[str, typer.Option(help="Attack name, 'clean', a comma list, or 'all' (clean + every attack).")] = "clean",
    dataset: Annotated[str, typer.Option(help="Dataset name (see `fedabd list`).")] = DEFAULT_DATASET,
    arch: Annotated[str, typer.Option(help="Classifier architecture.")] = "lenet5",
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    rate: Annotated[float, typer.Option(help="Poison rate (fraction of the training set).", min=0.0, max=1.0)] = 0.1,
    target: Annotated[Optional[int], typer.Option(help="Target label (default: the dataset's).")] = None,
    attack_param: Annotated[Optional[list[str]], typer.Option(help="Attack setting key=value (repeatable), e.g. test_strength=0.4 for sig.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the dataset files.")] = None,
    download: Annotated[bool, typer.Option(help="Allow downloading the dataset.")] = False,
) -> None:
    """Train clean or poisoned teachers, print Acc/ASR, save them as safetensors + JSON."""
    from ..teachers import train_teacher
    from ..train import TrainConfig

    with user_errors():
        names = ["clean", *ATTACKS.names()] if attack == "all" else split_names(attack, ATTACKS, extra=("clean",))
        dev = resolve_device(device)
        train = load_dataset(dataset, "train", data_dir, download)
        test = load_dataset(dataset, "test", data_dir, download)
        writable_folder(out)
        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size)
        rows = []
        with progress_bar() as bar:
            for name in names:
                task = bar.add_task(name, total=None, info="")
                t0 = time.perf_counter()
                res = train_teacher(dataset, arch, name, seed=seed, rate=rate, target=target, cfg=cfg, device=dev,
                                    attack_params=parse_settings(attack_param, "--attack-param"),
                                    out=out / name, train=train, test=test,
                                    progress=lambda s, n, m, task=task: bar.update(
                                        task, completed=s, total=n, info=f"epoch {m['epoch']} loss {m['loss']:.3f}"))
                rows.append((name, res.metrics, time.perf_counter() - t0))
                bar.update(task, info=f"Acc {pct(res.metrics['acc'])}  ASR {pct(res.metrics.get('asr'))}")
        from ..report import markdown_table

        headers = ["teacher", "Acc %", "ASR %", "R-Acc %"]
        cells = [[n, pct(m["acc"]), pct(m.get("asr")), pct(m.get("r_acc"))] for n, m, _ in rows]
        table = Table(*headers, "time s", title=f"{arch} teachers on {dataset} (seed {seed})")
        for row, (_, _, secs) in zip(cells, rows):
            table.add_row(*row, f"{secs:.0f}")
        console.print(table)
        (out / "teachers.md").write_text(markdown_table(headers, cells))
        console.print(f"saved to {out}/")
