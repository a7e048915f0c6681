"""``fedabd reproduce``: the paper's single-teacher experiment as resumable jobs and a results page.

For every seed and attack (plus the clean teacher): train the teacher, then distil it with vanilla
KD and each data-free method without and with ABD; then an ablation (SV only, SR only) on the
attacks that transfer most. Every job writes its own folder; a finished job is never run again,
so an interrupted reproduction resumes where it stopped.
"""
from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


# Spec section 5: the paper's CIFAR-10 numbers (WRN-16-2 -> WRN-16-1, ZSKT), Acc / ASR %.
PAPER = {
    "badnet_grid": ((92.1, 99.9), (71.9, 96.9), (68.3, 0.7), (74.6, 4.3)),
    "trojan_wm": ((93.8, 100), (82.7, 93.9), (78.2, 22.5), (77.5, 11.1)),
    "trojan_3x3": ((93.4, 98.7), (80.9, 96.8), (71.7, 33.3), (72.9, 1.7)),
    "blend": ((93.9, 99.7), (77.0, 74.4), (71.5, 23.1), (78.0, 4.3)),
    "trojan_8x8": ((93.7, 99.6), (80.5, 57.2), (72.6, 17.8), (75.2, 9.3)),
    "badnet_sq": ((93.4, 97.8), (80.8, 37.8), (77.9, 1.9), (76.2, 9.1)),
    "cl": ((91.2, 94.3), (76.8, 17.5), (67.4, 10.2), (69.4, 2.1)),
    "sig": ((90.5, 97.3), (77.9, 0.0), (72.2, 0.0), (77.4, 0.0)),
    "l2_inv": ((93.9, 100), (82.0, 0.3), (70.7, 1.9), (77.2, 1.2)),
    "l0_inv": ((92.4, 99.6), (72.8, 8.3), (69.4, 0.0), (79.2, 3.7)),
}


@dataclass
class Plan:
    out: Path
    attacks: list[str]
    kds: list[str]
    seeds: list[int]
    defenses: list[str] = field(default_factory=lambda: ["none", "sv+sr"])
    ablation_top: int = 3
    dataset: str = "mnist_subset"
    teacher_arch: str = "lenet5"
    student: str = "lenet5_half"
    teacher_epochs: int = 12
    preset: str = "cpu"
    overrides: dict = field(default_factory=dict)  # method -> {setting: value}
    device: str = "auto"
    data_dir: str | None = None
    sv: dict = field(default_factory=dict)  # ABD setting overrides (all methods)
    sr: dict = field(default_factory=dict)
    jobs: int = 1                           # worker processes (cells run side by side)
    base: Path | None = None                # another reproduction: its teachers and no-defence cells are reused
    base_cells: bool = True                 # False: only the base's teachers (its cells ran older code)


# what a base reproduction must share for its teachers and no-defence cells to be this plan's
SHARED_WITH_BASE = ("dataset", "teacher_arch", "student", "teacher_epochs", "preset", "overrides", "data_dir")


def check_base(plan: Plan) -> None:
    """A clear error unless ``plan.base`` is a reproduction folder with the same shared settings."""
    if plan.base is None:
        return
    path = Path(plan.base) / "plan.json"
    if not path.exists():
        raise ValueError(f"--base {plan.base}: not a reproduction folder (no plan.json)")
    other = json.loads(path.read_text())
    differ = [k for k in SHARED_WITH_BASE if other.get(k) != getattr(plan, k)]
    if differ:
        raise ValueError(f"--base {plan.base}: "
                         + "; ".join(f"{k} is {other.get(k)!r} there, {getattr(plan, k)!r} here" for k in differ)
                         + " (teachers and cells are reused only when these match)")
    if Path(plan.base).resolve() == Path(plan.out).resolve():
        raise ValueError("--base must be another folder than --out")


def needs_data(kd: str) -> bool:
    """Whether method ``kd`` trains on real data (vanilla KD, the clean reference): no defence cells."""
    from .distill import DISTILLERS
    return DISTILLERS.get(kd).needs_real_data


def _job_path(root: Path, seed: int, attack: str, kd: str, defense: str) -> Path:
    return Path(root) / "runs" / f"seed{seed}" / attack / f"{kd}_{defense.replace('+', '_')}"


def teacher_path(plan: Plan, seed: int, attack: str) -> Path:
    from .artifacts import model_paths

    own = Path(plan.out) / "teachers" / f"seed{seed}" / attack
    if plan.base is not None and not model_paths(own)[1].exists():
        theirs = Path(plan.base) / "teachers" / f"seed{seed}" / attack
        if model_paths(theirs)[1].exists():
            return theirs
    return own


def job_dir(plan: Plan, seed: int, attack: str, kd: str, defense: str) -> Path:
    """The job's folder: this plan's own, or the base reproduction's for a finished no-defence job
    (its result does not depend on the ABD settings, the only thing a plan with a base changes)."""
    own = _job_path(plan.out, seed, attack, kd, defense)
    if plan.base is not None and plan.base_cells and defense == "none" and not _done(own):
        theirs = _job_path(plan.base, seed, attack, kd, defense)
        if _done(theirs):
            return theirs
    return own


def _done(path: Path) -> bool:
    return (path / "summary.json").exists()


Notify = Callable[[str, int, int], None]
Job = tuple[int, str, str, str]  # seed, attack, method, defence


def _job_name(job: Job) -> str:
    seed, attack, kd, defense = job
    return f"{attack} seed {seed}: {kd}{'' if defense == 'none' else ' + ' + defense}"


@functools.lru_cache(maxsize=1)
def _datasets(name: str, data_dir: str | None):
    """Train and test split, read once per process (a worker process runs many jobs)."""
    from .data import load_dataset

    return load_dataset(name, "train", data_dir), load_dataset(name, "test", data_dir)


def run_job(plan: Plan, job: Job, progress=None) -> None:
    """One cell of the table: train the teacher if its file is missing, then distil it."""
    from .artifacts import model_paths
    from .defenses import build_defense
    from .single import distill_files
    from .teachers import train_teacher
    from .train import TrainConfig

    seed, attack, kd, defense = job
    target = job_dir(plan, seed, attack, kd, defense)
    if _done(target):
        return
    train, test = _datasets(plan.dataset, plan.data_dir)
    tpath = teacher_path(plan, seed, attack)
    if not model_paths(tpath)[1].exists():
        train_teacher(plan.dataset, plan.teacher_arch, attack, seed=seed, cfg=TrainConfig(epochs=plan.teacher_epochs),
                      device=plan.device if plan.device != "auto" else _auto(), out=tpath, train=train, test=test)
    distill_files([model_paths(tpath)[0]], kd, plan.student, target, preset=plan.preset,
                  overrides=plan.overrides.get(kd), defense=build_defense(defense, sv=plan.sv, sr=plan.sr),
                  defense_name=defense, seed=seed, device=plan.device, test=test,
                  real_data=train if needs_data(kd) else None, progress=progress)


def _run_all(plan: Plan, jobs: list[Job], on_done: Callable[[Job], None], notify: Notify | None, progress) -> None:
    """Run ``jobs`` (missing ones only) one after another, or in ``plan.jobs`` worker processes."""
    todo = [j for j in jobs if not _done(job_dir(plan, *j))]
    if plan.jobs <= 1 or len(todo) <= 1:
        for i, job in enumerate(todo, 1):
            if notify:
                notify(_job_name(job), i, len(todo))
            run_job(plan, job, progress)
            on_done(job)
        return
    from .pool import run_jobs

    # a teacher is trained by the first job that needs it: one job per teacher first, then the rest
    first, seen = [], set()
    for job in todo:
        if job[:2] not in seen:
            seen.add(job[:2])
            first.append(job)
    rest = [j for j in todo if j not in first]
    done = 0

    def finished(job: Job, _result) -> None:
        nonlocal done
        done += 1
        if notify:
            notify(f"done: {_job_name(job)}", done + 1, len(todo) + 1)
        on_done(job)

    for batch in (first, rest):  # a failed job stops the reproduction (finished jobs stay done)
        run_jobs(functools.partial(run_job, plan), batch, plan.jobs, finished)


def run_plan(plan: Plan, notify: Notify | None = None, progress=None,
             on_done: Callable[[Job], None] | None = None) -> dict:
    """Run every missing job of the plan; returns the collected results.
    ``on_done(job)`` is called after each job (e.g. to rewrite the results page)."""
    check_base(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "plan.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in plan.__dict__.items()}, indent=2))
    callback = on_done or (lambda job: None)
    _run_all(plan, main_jobs(plan), callback, notify, progress)
    _run_all(plan, ablation_jobs(plan, collect(plan)), callback, notify, progress)
    return collect(plan)


def _auto() -> str:
    from .device import resolve_device
    return str(resolve_device("auto"))


def main_jobs(plan: Plan) -> list[Job]:
    jobs = []
    for seed in plan.seeds:
        for attack in ["clean", *[a for a in plan.attacks if a != "clean"]]:
            for kd in plan.kds:
                for d in (["none"] if needs_data(kd) else plan.defenses):
                    jobs.append((seed, attack, kd, d))
    return jobs


def transferring(plan: Plan, results: dict) -> list[str]:
    """Attacks ordered by the mean ASR that data-free KD (no defence) carries into the student."""
    scores = {}
    for attack in plan.attacks:
        asr = [results[(attack, kd, "none")]["asr"][0] for kd in plan.kds
               if not needs_data(kd) and (attack, kd, "none") in results]
        if asr:
            scores[attack] = sum(asr) / len(asr)
    return sorted(scores, key=scores.get, reverse=True)


def ablation_jobs(plan: Plan, results: dict) -> list[Job]:
    top = [a for a in transferring(plan, results) if a != "clean"][:plan.ablation_top]
    return [(s, a, kd, d) for s in plan.seeds for a in top for kd in plan.kds if not needs_data(kd) for d in ("sv", "sr")]


def _stat(values: list[float]) -> tuple[float, float, int]:
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def _job_dirs(plan: Plan, seed: int, attack: str) -> dict[str, Path]:
    """Finished jobs of one seed and attack: folder name (``kd_defence``) -> folder; the base's
    no-defence jobs for this plan's methods are included where this plan has none of its own."""
    found = {}
    own = Path(plan.out) / "runs" / f"seed{seed}" / attack
    if own.exists():
        found = {d.name: d for d in sorted(own.iterdir()) if _done(d)}
    for kd in plan.kds:
        d = job_dir(plan, seed, attack, kd, "none")
        if _done(d):
            found.setdefault(d.name, d)
    return found


def collect(plan: Plan) -> dict:
    """(attack, method, defence) -> {"acc": (mean, std, n), "asr": (...), "seconds": ..., "per_seed":
    {seed: {"acc", "asr"}}}; method "teacher" too."""
    from .artifacts import model_paths

    raw: dict = {}
    for seed in plan.seeds:
        for attack in ["clean", *plan.attacks]:
            meta_p = model_paths(teacher_path(plan, seed, attack))[1]
            if meta_p.exists():
                m = json.loads(meta_p.read_text())["metrics"]
                raw.setdefault((attack, "teacher", "none"), []).append(dict(m, seed=seed))
            for name, d in _job_dirs(plan, seed, attack).items():
                s = json.loads((d / "summary.json").read_text())
                kd, _, defense = name.partition("_")
                raw.setdefault((attack, kd, defense.replace("_", "+")), []).append(
                    dict(s["final"], seconds=s["seconds"], defense_state=s.get("defense_state"), seed=seed))
    out = {}
    for key, rows in raw.items():
        entry = {"acc": _stat([r["acc"] for r in rows]), "n": len(rows),
                 "per_seed": {r["seed"]: {k: r[k] for k in ("acc", "asr") if k in r} for r in rows}}
        if all("asr" in r for r in rows):
            entry["asr"] = _stat([r["asr"] for r in rows])
        if all("seconds" in r for r in rows):
            entry["seconds"] = sum(r["seconds"] for r in rows)
        entry["sv_status"] = [((r.get("defense_state") or {}).get("sv") or {}).get("status") for r in rows]
        out[key] = entry
    return out


def claim(plain: dict, abd: dict) -> dict | None:
    """The paper's claim on one cell, over the seeds both runs have (paired): ABD cuts the mean ASR
    at least in half and costs at most 5 points of mean Acc. None without a common seed with ASR."""
    seeds = sorted(s for s in plain["per_seed"] if "asr" in plain["per_seed"][s] and "asr" in abd["per_seed"].get(s, {}))
    if not seeds:
        return None

    def mean(entry, k):
        return statistics.mean(entry["per_seed"][s][k] for s in seeds)

    asr0, asr1, acc0, acc1 = mean(plain, "asr"), mean(abd, "asr"), mean(plain, "acc"), mean(abd, "acc")
    halved_on = sum(abd["per_seed"][s]["asr"] <= plain["per_seed"][s]["asr"] / 2 for s in seeds)
    return {"seeds": seeds, "asr": (asr0, asr1), "acc": (acc0, acc1), "halved_on": halved_on,
            "halved": asr1 <= asr0 / 2, "acc_loss": 100 * (acc0 - acc1),
            "met": asr1 <= asr0 / 2 and 100 * (acc0 - acc1) <= 5}


def paper_acc_loss(attack: str) -> float | None:
    """Points of Acc the paper's own ZSKT + ABD row loses against its ZSKT row (spec section 5)."""
    row = PAPER.get(attack)
    return None if row is None else row[1][0] - row[2][0]


def write_page(plan: Plan, results: dict, command: str, seconds: float, pending: int = 0) -> Path:
    from .reproduce_page import results_page

    page = plan.out / "RESULTS.md"
    page.write_text(results_page(plan, results, command, seconds, pending))
    (plan.out / "results.json").write_text(json.dumps({"|".join(k): v for k, v in results.items()}, indent=2))
    return page


def timed_run(plan: Plan, command: str, notify: Notify | None = None, progress=None) -> Path:
    """Run the plan; the results page is rewritten after every finished job, so an interrupted
    reproduction still shows what it has (and re-running the command resumes it)."""
    check_base(plan)  # before anything is written to plan.out
    t0 = time.perf_counter()
    state_file = plan.out / "elapsed.json"
    before = json.loads(state_file.read_text())["seconds"] if state_file.exists() else 0.0
    plan.out.mkdir(parents=True, exist_ok=True)

    def elapsed() -> float:
        return before + time.perf_counter() - t0

    def on_done(job: Job) -> None:
        state_file.write_text(json.dumps({"seconds": elapsed()}))
        results = collect(plan)
        pending = [j for j in main_jobs(plan) + ablation_jobs(plan, results) if not _done(job_dir(plan, *j))]
        write_page(plan, results, command, elapsed(), pending=len(pending))

    try:
        results = run_plan(plan, notify, progress, on_done)
    finally:
        state_file.write_text(json.dumps({"seconds": elapsed()}))
    return write_page(plan, results, command, elapsed())
