"""``fedabd bench``: attacks x aggregators x seeds, resumable, and a leaderboard."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, pct, progress_bar, styled, user_errors, writable_folder


def bench_cmd(
    spec: Annotated[str, typer.Argument(help="Bench spec: a YAML file or a shipped name (cpu, adaptive, cifar10_gpu, screening, ensemble_rules).")],
    out: Annotated[Optional[Path], typer.Option(help="Results folder (default runs/bench/NAME); re-running resumes it.")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Cells run side by side in worker processes (CPU: up to the cores).")] = 1,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Only the first N seeds.")] = None,
    attacks: Annotated[Optional[str], typer.Option(help="Only these attacks of the spec (comma list).")] = None,
    aggregators: Annotated[Optional[str], typer.Option(help="Only these aggregators of the spec (comma list).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device of every cell (default: the spec's, else auto).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete the folder's earlier cells first.")] = False,
    accept_rebuilt_warmup: Annotated[bool, typer.Option(help="A warm-up whose model file is gone and whose run again from its seed differs (another machine): finish its seed from the new model, both runs recorded in the warm-up's rebuilt.json.")] = False,
) -> None:
    """The federated backdoor leaderboard: every cell of the spec, then leaderboard.md / .csv and plots."""
    from dataclasses import replace

    from ..bench import finished, load_spec, plan_cells, run_bench, select
    from ..leaderboard import write_leaderboard
    from ..scenario_files import resolve_scenario

    def names(value: Optional[str]) -> Optional[list[str]]:
        return [v.strip() for v in value.split(",") if v.strip()] if value else None

    with user_errors():
        bench = load_spec(resolve_scenario(spec, sub="bench", what="bench spec"))
        bench = select(bench, names(attacks), names(aggregators), seeds)
        if device is not None:
            bench = replace(bench, scenario={**bench.scenario, "device": device})
        folder = out or Path("runs/bench") / bench.name
        warmups, cells = plan_cells(bench, folder)  # every cell checked before anything runs
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        writable_folder(folder)
        total = len(warmups) + len(cells)
        console.print(f"{bench.name}: {len(bench.attacks)} attacks x {len(bench.aggregators)} aggregators x "
                      f"{len(bench.seeds)} seeds = {len(cells)} cells"
                      + (f" + {len(warmups)} warm-ups" if warmups else "") + f", {jobs} at a time -> {folder}")
        with progress_bar() as bar:
            task = bar.add_task("cells", total=total, info="")
            bar.update(task, completed=sum(map(finished, [*warmups.values(), *(c.cfg for c in cells)])))

            def on_done(cfg, rows) -> None:
                last = rows[-1]
                bar.update(task, advance=1, info=f"{cfg.name}: Acc {pct(last.get('acc'))} ASR {pct(last.get('asr'))}")

            run_bench(bench, folder, jobs, on_done, accept_rebuilt_warmup)
            bar.update(task, info="")
        page = write_leaderboard(bench, folder)
    console.print(page.read_text().split("## Every cell")[0].rstrip(), highlight=False)
    console.print(styled("bold green", "leaderboard: ", f"{page} (and leaderboard.csv, tradeoff.png, curves_*.png)"))
