"""Single-teacher (or ensemble-of-files) distillation: teacher files -> student, no Flower at all."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from .artifacts import LoadedModel, load_model, save_model
from .data import ImageSet, load_dataset
from .device import resolve_device, seed_everything, speed_switches
from .distill import DistillResult, create_distiller
from .distill.base import Progress
from .metrics import evaluate
from .models import create_model
from .report import RunDir, plot_curves

log = logging.getLogger(__name__)


def load_teachers(paths: list[str | Path], device: torch.device) -> list[LoadedModel]:
    """Load teacher files; they must share one dataset (same shape, classes and normalisation)."""
    if not paths:
        raise ValueError("give at least one teacher file")
    loaded = [load_model(p, device) for p in paths]
    first = loaded[0].info
    for t in loaded[1:]:
        if t.info != first:
            raise ValueError(f"teacher {t.path} was trained on {t.info.name}, {loaded[0].path} on {first.name}: "
                             "an ensemble needs teachers of one dataset")
    return loaded


def distill_files(teacher_paths: list[str | Path], method: str, student_arch: str, out: str | Path, *,
                  preset: str = "cpu", overrides: dict | None = None, defense=None, defense_name: str = "none",
                  seed: int = 0, device: str = "auto", eval_every: int = 0, data_dir: str | Path | None = None,
                  teacher_weights: list[float] | None = None, channels_last: bool | None = None,
                  bf16: bool | None = None,
                  progress: Progress | None = None, test: ImageSet | None = None,
                  real_data: ImageSet | None = None) -> DistillResult:
    """Distil teacher files into a fresh ``student_arch``; evaluate Acc/ASR with the trigger stored
    with the (first poisoned) teacher; write student, metrics, config and plot to ``out``."""
    dev = resolve_device(device)
    seed_everything(seed)
    teachers = load_teachers(teacher_paths, dev)
    info = teachers[0].info
    attack = next((t.attack for t in teachers if t.attack is not None), None)
    test = test if test is not None else load_dataset(info.name, "test", data_dir)
    if method == "vanilla" and real_data is None:
        real_data = load_dataset(info.name, "train", data_dir)
    student = create_model(student_arch, num_classes=info.num_classes, in_channels=info.channels,
                           image_size=info.image_size)
    channels_last, bf16 = speed_switches([t.model for t in teachers] + [student], dev, channels_last, bf16)
    distiller = create_distiller(method, [t.model for t in teachers], student, info, preset=preset,
                                 overrides=overrides, device=dev, seed=seed, defense=defense, real_data=real_data,
                                 teacher_weights=teacher_weights, channels_last=channels_last, bf16=bf16)
    run = RunDir(out)
    run.rewrite([])  # a distillation starts afresh: no rows left from an earlier or killed one
    config = {"method": method, "preset": preset, "config": asdict(distiller.cfg), "student": student_arch,
              "teachers": [str(t.path) for t in teachers], "teacher_metrics": [t.meta["metrics"] for t in teachers],
              "defense": defense_name, "defense_config": getattr(defense, "config_json", lambda: {})(),
              "seed": seed, "device": str(dev), "dataset": info.to_json(),
              "attack": attack.config() if attack else None, "eval_every": eval_every,
              "channels_last": channels_last, "bf16": bf16}
    run.write_json("config.json", config)

    def eval_fn(model):
        return evaluate(model, test, attack, dev)

    def on_progress(step, total, row):
        if "acc" in row:
            run.append(row)
        if progress is not None:
            progress(step, total, row)

    every = eval_every or max(1, distiller.total_iterations // 10)
    result = distiller.run(progress=on_progress, evaluate=eval_fn, eval_every=every)
    final = result.history[-1] if result.history else eval_fn(result.student)
    save_model(run.path / "student", result.student.cpu(), info, attack=attack, seed=seed,
               metrics={k: final[k] for k in ("acc", "asr", "r_acc") if k in final},
               extra={"distilled_from": config["teachers"], "method": method, "defense": defense_name})
    run.write_json("summary.json", {"final": final, "seconds": result.seconds, "defense_state": result.defense_state,
                                    "teacher_metrics": config["teacher_metrics"]})
    plot_curves(result.history, "iteration", None, run.path / "curves.png",
                title=f"{method}{'+' + defense_name if defense_name != 'none' else ''} -> {student_arch}")
    return result
