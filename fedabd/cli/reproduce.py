"""``fedabd reproduce``: the paper's single-teacher table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..attacks import ATTACKS
from ..data import DEFAULT_DATASET
from .common import console, parse_settings, pct, progress_bar, split_names, user_errors, writable_folder

def reproduce_cmd(
    out: Annotated[Path, typer.Option(help="Results folder (re-running resumes it).")] = Path("results/reproduce"),
    attack: Annotated[str, typer.Option(help="Attacks: 'all' or a comma list.")] = "all",
    kd: Annotated[str, typer.Option(help="Methods, comma list.")] = "vanilla,zskt,cmi,ood",
    abd: Annotated[str, typer.Option(help="Defence variants for the data-free methods, comma list.")] = "none,sv+sr",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1).")] = 3,
    ablation: Annotated[int, typer.Option(min=0, help="SV-only / SR-only runs for this many most-transferring attacks.")] = 3,
    preset: Annotated[str, typer.Option(help="cpu | paper")] = "cpu",
    dataset: Annotated[str, typer.Option()] = DEFAULT_DATASET,
    teacher_arch: Annotated[Optional[str], typer.Option(help="Default: lenet5 (wrn16_2 for 3-channel data).")] = None,
    student: Annotated[Optional[str], typer.Option(help="Default: lenet5_half (wrn16_1 for 3-channel data).")] = None,
    teacher_epochs: Annotated[int, typer.Option(min=1)] = 12,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method setting, method.key=value (repeatable).")] = None,
    sv: Annotated[Optional[list[str]], typer.Option(help="Shuffling Vaccine setting, key=value (repeatable).")] = None,
    sr: Annotated[Optional[list[str]], typer.Option(help="Self-Retrospection setting, key=value (repeatable).")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes running cells side by side (CPU: up to the cores).")] = 1,
    device: Annotated[str, typer.Option()] = "auto",
    data_dir: Annotated[Optional[str], typer.Option()] = None,
    base: Annotated[Optional[Path], typer.Option(help="Reuse the teachers and no-defence cells of this reproduction "
                                                 "(same data, models, preset, --set), e.g. to compare ABD settings.")] = None,
    base_cells: Annotated[bool, typer.Option("--base-cells/--base-teachers-only",
                                             help="With --base: reuse its no-defence cells too, or only its "
                                                  "teachers (when the distillers changed since it ran).")] = True,
) -> None:
    """The paper's single-teacher experiment: teachers, vanilla KD, ZSKT/CMI/OOD without and with ABD, ablation; a results page."""
    import sys

    from ..data import dataset_info
    from ..distill import DISTILLERS
    from ..reproduce import Plan, check_base, timed_run

    with user_errors():
        attacks = ATTACKS.names() if attack == "all" else split_names(attack, ATTACKS)
        kds = split_names(kd, DISTILLERS)
        variants = [v.strip() for v in abd.split(",") if v.strip()]
        from ..defenses import build_defense, parse_spec
        for v in variants:
            parse_spec(v)
        overrides: dict = {}
        for k, v in parse_settings(set_, "--set").items():
            method, _, key = k.partition(".")
            if method not in kds or not key:
                raise ValueError(f"--set {k}: expected METHOD.KEY with METHOD one of {', '.join(kds)}")
            overrides.setdefault(method, {})[key] = v
        rgb = dataset_info(dataset).channels == 3
        plan = Plan(out=out, attacks=attacks, kds=kds, seeds=list(range(seeds)), defenses=variants,
                    ablation_top=ablation, dataset=dataset,
                    teacher_arch=teacher_arch or ("wrn16_2" if rgb else "lenet5"),
                    student=student or ("wrn16_1" if rgb else "lenet5_half"), teacher_epochs=teacher_epochs,
                    preset=preset, overrides=overrides, device=device, data_dir=data_dir,
                    sv=parse_settings(sv, "--sv"), sr=parse_settings(sr, "--sr"), jobs=jobs, base=base, base_cells=base_cells)
        build_defense("sv+sr", sv=plan.sv, sr=plan.sr)  # bad ABD settings fail before any work
        check_base(plan)
        writable_folder(out)
        command = "fedabd " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else "fedabd reproduce ..."
        with progress_bar() as bar:
            jobs = bar.add_task("jobs", total=None, info="")
            inner = bar.add_task("current", total=None, info="")

            def notify(what: str, i: int, n: int) -> None:
                bar.update(jobs, completed=i - 1, total=n, info=what)
                bar.reset(inner, total=None)

            def on_progress(step, total, row):
                bar.update(inner, completed=step, total=total,
                           info=f"Acc {pct(row['acc'])} ASR {pct(row.get('asr'))}" if "acc" in row else "")

            page = timed_run(plan, command, notify, on_progress)
        console.print(page.read_text(), markup=False, highlight=False)
        console.print(f"results page: {page}")
