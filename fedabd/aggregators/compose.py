"""Composition by name: ``"flame+distill"`` = a filtering rule, then another aggregator on the
uploads it admitted.

Every part but the last must filter whole clients (``filters``: flame, foolsgold, multikrum,
bulyan, screen); the last is any aggregator. Each filter sees the uploads the previous one admitted and only
its choice of clients (and a screening rule's weight per client, ``Upload.trust``) is used (FLAME's clipping and noise, for example, are not applied to what the
last part produces). The last part's model is the round's global model, so ``flame+distill`` distils
FLAME's admitted teachers (with the scenario's ``abd`` defence, as plain ``distill`` does).

Settings go per part: ``aggregator_settings: {flame: {noise_lambda: 0.0}, distill: {}}``. Filters
that measure updates (FLAME, FoolsGold) take them against the global model, so a composition needs
the global model in the clients' architecture (for distillation: ``student`` = ``client_arch``).
"""
from __future__ import annotations

from dataclasses import replace

from .base import AGGREGATORS, Aggregate, Aggregator, clients_share


def aggregator_class(name: str) -> type[Aggregator]:
    """The registered rule ``name``, or a :class:`Composite` for ``"a+b+..."`` (KeyError: unknown
    part; ValueError: a part that cannot come first)."""
    if "+" not in name:
        return AGGREGATORS.get(name)
    parts = [p.strip() for p in name.split("+")]
    classes = [AGGREGATORS.get(p) for p in parts]
    if len(set(parts)) != len(parts):
        raise ValueError(f"{name!r} names a rule twice")
    for p, cls in zip(parts[:-1], classes[:-1]):
        if not cls.filters:
            raise ValueError(f"{p} does not filter clients, so it can only come last in {name!r} "
                             f"(filters: {', '.join(n for n in AGGREGATORS.names() if AGGREGATORS.get(n).filters)})")
    last = classes[-1]
    return type(f"Composite[{name}]", (Composite,), {
        "parts": tuple(parts), "filters": True, "uses_defense": last.uses_defense,
        "averages_weights": any(c.averages_weights for c in classes)})


def _part_cfg(cfg, part: str, settings: dict):
    return replace(cfg, aggregator=part, aggregator_settings=dict(settings.get(part) or {}))


class Composite(Aggregator):
    parts: tuple[str, ...] = ()

    @classmethod
    def settings_from(cls, cfg) -> dict:
        settings = dict(cfg.aggregator_settings or {})
        unknown = sorted(set(settings) - set(cls.parts))
        if unknown:
            raise ValueError(f"a composition takes settings per part ({', '.join(cls.parts)}); unknown: {', '.join(unknown)}")
        for part in cls.parts:
            if settings.get(part) is not None and not isinstance(settings[part], dict):
                raise ValueError(f"{part}: settings must be a mapping, got {settings[part]!r}")
            AGGREGATORS.get(part).settings_from(_part_cfg(cfg, part, settings))
        return settings

    @classmethod
    def check(cls, cfg) -> None:
        settings = cls.settings_from(cfg)
        for part in cls.parts:
            AGGREGATORS.get(part).check(_part_cfg(cfg, part, settings))
        last = AGGREGATORS.get(cls.parts[-1])
        if not any(AGGREGATORS.get(p).compares_updates for p in cls.parts[:-1]):
            return
        if not clients_share(cfg, last.global_arch(cfg)):
            raise ValueError(f"the filters of {'+'.join(cls.parts)} compare client models with the global model: "
                             f"the global model ({last.global_arch(cfg)}) and every client need one architecture "
                             f"(client_arch {cfg.client_arch})")

    @classmethod
    def global_arch(cls, cfg) -> str:
        return AGGREGATORS.get(cls.parts[-1]).global_arch(cfg)

    @classmethod
    def resolved(cls, cfg) -> dict:
        settings = cls.settings_from(cfg)
        return {part: AGGREGATORS.get(part).resolved(_part_cfg(cfg, part, settings)) for part in cls.parts}

    def __init__(self, cfg, info, device="cpu", progress=None) -> None:
        super().__init__(cfg, info, device, progress)
        self.rules = [AGGREGATORS.get(p)(_part_cfg(cfg, p, self.settings), info, device, progress) for p in self.parts]

    def aggregate(self, rnd, uploads, global_state) -> Aggregate:
        info: dict = {}
        for part, rule in zip(self.parts[:-1], self.rules[:-1]):
            if not uploads:
                break
            chosen = rule.aggregate(rnd, uploads, global_state)
            info[part] = chosen.info
            keep, factors = set(chosen.selected), chosen.weights or {}
            uploads = [u.with_trust(factors.get(u.pid, 1.0)) for u in uploads if u.pid in keep]
        if not uploads:
            return Aggregate(global_state, [], dict(info, skipped="the filters admitted no client"))
        final = self.rules[-1].aggregate(rnd, uploads, global_state)
        return Aggregate(final.state, final.selected, dict(info, **final.info))

    def memory(self):
        return {f"{p}.{k}": v for p, rule in zip(self.parts, self.rules) for k, v in rule.memory().items()}

    def restore(self, memory) -> None:
        for p, rule in zip(self.parts, self.rules):
            rule.restore({k[len(p) + 1:]: v for k, v in memory.items() if k.startswith(p + ".")})
