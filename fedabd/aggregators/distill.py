"""Data-free ensemble distillation: the client models are the teachers of the global student,
warm-started from the current one; the scenario's ``kd`` method runs with its ``abd`` defence.

The teachers' ensemble weights are their declared sample counts (``weight_by_samples``), else equal;
their logits are combined by ``ensemble_rule`` (:mod:`fedabd.models.ensemble`; the default
``norm_median`` lets no teacher steer the target by the size of its logits, ``logit_mean`` is the
usual average).

A method that carries state from run to run (``fast``: its meta-learned generator and recent synthetic
images) continues each round from the previous round's (:meth:`Distiller.memory`), kept as this rule's
memory so that a resumed run continues it too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..federated import client_arch, derive_seed
from ..models import create_model
from .base import AGGREGATORS, Aggregate, Aggregator, clients_share, sample_weights, weighted_mean

STARTS = ("global", "average")


@dataclass(frozen=True)
class DistillSettings:
    start: str = "global"  # where the student starts: the global model, or the teachers' average (FedDF)

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")


@AGGREGATORS.register("distill")
class Distill(Aggregator):
    config_cls = DistillSettings
    averages_weights = False
    uses_defense = True

    @classmethod
    def check(cls, cfg) -> None:
        if cls.settings_from(cfg).start == "average" and not clients_share(cfg, cfg.student):
            raise ValueError(f"start: average averages the teachers into the student, so every client needs the "
                             f"student's architecture ({cfg.student}); client_arch is {cfg.client_arch}"
                             + (f", client_archs {sorted(set(cfg.client_archs))}" if cfg.client_archs else ""))

    @classmethod
    def global_arch(cls, cfg) -> str:
        return cfg.student

    @classmethod
    def resolved(cls, cfg) -> dict:
        """Its settings, the distiller's preset with the overrides, and every ABD part's settings."""
        from ..defenses import defense_settings, parse_spec
        from ..distill.base import method_config
        out = super().resolved(cfg)
        out["kd"] = dataclasses.asdict(method_config(cfg.kd, cfg.kd_preset, cfg.kd_overrides))
        out.update({p: dataclasses.asdict(defense_settings(p, getattr(cfg, p, None))) for p in parse_spec(cfg.abd)})
        return out

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._memory: dict[str, torch.Tensor] = {}  # the distiller's state for the next round (Fast's generator)

    def memory(self) -> dict[str, torch.Tensor]:
        return dict(self._memory)

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        self._memory = dict(memory)

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        from ..defenses import build_defense
        from ..device import speed_switches
        from ..distill import create_distiller

        cfg, info = self.cfg, self.info
        if not uploads:
            raise ValueError("no valid teacher to distil from")
        teachers = []
        for up in uploads:
            t = create_model(client_arch(cfg, up.pid), num_classes=info.num_classes, in_channels=info.channels,
                             image_size=info.image_size)
            t.load_state_dict(up.state)
            teachers.append(t)
        student = create_model(cfg.student, num_classes=info.num_classes, in_channels=info.channels,
                               image_size=info.image_size)
        if self.settings.start == "average":
            student.load_state_dict(weighted_mean([u.state for u in uploads], sample_weights(uploads)))
        elif global_state is not None:
            student.load_state_dict(global_state)
        weights = ([float(u.num_examples) * u.trust for u in uploads] if cfg.weight_by_samples else
                   [u.trust for u in uploads] if any(u.trust != 1.0 for u in uploads) else None)
        seed = derive_seed(cfg.seed, rnd, 99)
        torch.manual_seed(seed)
        channels_last, bf16 = speed_switches([*teachers, student], self.device, channels_last=cfg.channels_last)
        distiller = create_distiller(cfg.kd, teachers, student, info, preset=cfg.kd_preset, overrides=cfg.kd_overrides,
                                     device=self.device, seed=seed, teacher_weights=weights, ensemble_rule=cfg.ensemble_rule,
                                     defense=build_defense(cfg.abd, sv=cfg.sv, sr=cfg.sr),
                                     channels_last=channels_last, bf16=bf16, memory=self._memory)
        result = distiller.run(progress=self.progress)
        self._memory = distiller.memory()
        state = {k: v.detach().cpu() for k, v in result.student.state_dict().items()}
        info_row = {"distill_seconds": round(result.seconds, 2)}
        if result.defense_state:
            info_row["defense"] = result.defense_state
        return Aggregate(state, [u.pid for u in uploads], info_row)
