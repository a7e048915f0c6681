"""``fedabd bench``: the federated backdoor leaderboard, attacks x aggregators x seeds.

A bench spec (YAML) names a base scenario, the attacks (each a set of scenario keys over the base),
the aggregators (names as ``--compare`` takes them: ``flame+distill+abd``; each may add scenario
keys of its own, and a label of your own names its rule in them: ``{mean: {aggregator: distill,
ensemble_rule: logit_mean}}``) and the seeds::

    name: toy
    scenario: {clients: 10, malicious: 3, rounds: 5, attack_stop_round: 3}
    warmup: {rounds: 5, local_epochs: 2}   # optional: clean FedAvg rounds every cell of a seed starts from
    attacks:
      none: {malicious: 0}                  # the accuracy each aggregator costs without an attack
      poison_x5: {threat: poison, scale: 5}
    aggregators: [fedavg, flame, {distill+abd: {kd: cmi}}]
    seeds: 3                                # or a list of seeds

Every cell is a run folder ``OUT/cells/<attack>/<aggregator>/seed<k>`` written by
:func:`fedabd.runs.run_scenario` with the in-process transport (:mod:`fedabd.local`); a cell whose
``metrics.json`` exists is finished and never runs again, a stopped cell resumes from its last
checkpointed round, and a finished cell whose configuration differs from the spec's is refused (it
would mix two experiments in one table). The leaderboard (:mod:`fedabd.leaderboard`) is read from the cells' own files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ConfigError, ScenarioConfig, build, read_yaml, validate
from .runfolder import config_differences, read_json
from .runs import GLOBAL_FILES, folder_name, variant_keys

SPEC_KEYS = ("name", "description", "scenario", "warmup", "attacks", "aggregators", "seeds")


@dataclass(frozen=True)
class BenchSpec:
    name: str
    scenario: dict
    attacks: dict[str, dict]
    aggregators: dict[str, dict]   # name -> its own scenario keys
    seeds: tuple[int, ...]
    warmup: dict | None = None
    description: str = ""
    where: str = "bench spec"


@dataclass(frozen=True)
class Cell:
    attack: str
    aggregator: str
    seed: int
    cfg: ScenarioConfig

    @property
    def name(self) -> str:
        return f"{self.attack} / {self.aggregator} / seed {self.seed}"


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of scenario keys, got {type(value).__name__}")
    return value


def _names(value, key: str, where: str) -> dict[str, dict]:
    """``attacks`` / ``aggregators``: a mapping name -> keys, or a list of names and one-key mappings."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if isinstance(entry, str):
                items.append((entry, {}))
            elif isinstance(entry, dict) and len(entry) == 1:
                items.append(next(iter(entry.items())))
            else:
                raise ConfigError(f"{where}: {key}: each entry is a name or {{name: {{scenario keys}}}}, got {entry!r}")
    else:
        raise ConfigError(f"{where}: {key}: expected a list or mapping of names, got {type(value).__name__}")
    out: dict[str, dict] = {}
    for name, keys in items:
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ConfigError(f"{where}: {key}: {name!r} is not a usable name")
        if name in out:
            raise ConfigError(f"{where}: {key}: {name!r} is listed twice")
        out[name] = _mapping(keys, f"{where}: {key}.{name}")
    if not out:
        raise ConfigError(f"{where}: {key}: names nothing")
    return out


def parse_spec(data, where: str = "bench spec") -> BenchSpec:
    """A :class:`BenchSpec` from parsed YAML; ConfigError names the key that is wrong."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a bench spec must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("attacks", "aggregators"):
        if key not in data:
            raise ConfigError(f"{where}: missing key {key}")
    seeds = data.get("seeds", 1)

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if whole(seeds) and seeds >= 1:
        seeds = tuple(range(seeds))
    elif isinstance(seeds, list) and seeds and all(whole(v) and v >= 0 for v in seeds):
        seeds = tuple(dict.fromkeys(seeds))
    else:
        raise ConfigError(f"{where}: seeds: a number of seeds (>= 1) or a list of seeds >= 0, got {seeds!r}")
    warmup = data.get("warmup")
    scenario = _mapping(data.get("scenario"), f"{where}: scenario")
    if warmup is not None and scenario.get("initial_model"):
        raise ConfigError(f"{where}: warmup: the scenario already names an initial_model; use one or the other")
    return BenchSpec(name=str(data.get("name") or Path(where).stem), scenario=scenario,
                     attacks=_names(data["attacks"], "attacks", where),
                     aggregators=_names(data["aggregators"], "aggregators", where), seeds=seeds,
                     warmup=None if warmup is None else _mapping(warmup, f"{where}: warmup"),
                     description=str(data.get("description") or ""), where=where)


def load_spec(path: str | Path) -> BenchSpec:
    return parse_spec(read_yaml(path), str(path))


def select(spec: BenchSpec, attacks: list[str] | None = None, aggregators: list[str] | None = None,
           seeds: int | None = None) -> BenchSpec:
    """The spec restricted to some of its attacks and aggregators, or to its first ``seeds`` seeds."""
    def pick(table: dict, names: list[str] | None, key: str) -> dict:
        if not names:
            return table
        missing = [n for n in names if n not in table]
        if missing:
            raise ConfigError(f"--{key} {','.join(missing)}: not in {spec.where} ({', '.join(table)})")
        return {n: table[n] for n in names}

    return replace(spec, attacks=pick(spec.attacks, attacks, "attacks"),
                   aggregators=pick(spec.aggregators, aggregators, "aggregators"),
                   seeds=spec.seeds if seeds is None else tuple(range(seeds)))


def warmup_config(spec: BenchSpec, out: Path, seed: int) -> ScenarioConfig | None:
    """The clean FedAvg run whose global model starts every cell of ``seed`` (None: no warm-up)."""
    if spec.warmup is None:
        return None
    values = {**spec.scenario, "malicious": 0, "malicious_ids": None, "aggregator": "fedavg",
              "aggregator_settings": {}, "abd": "none", "initial_model": None, **spec.warmup,
              "seed": seed, "name": f"{spec.name} warm-up, seed {seed}", "out": str(out / "warmup" / f"seed{seed}")}
    return build(values, f"{spec.where}: warmup")


def warmup_model(warm: ScenarioConfig) -> Path:
    """The model file a warm-up leaves, which every cell of its seed starts from."""
    return Path(warm.out) / GLOBAL_FILES[0]


def plan_cells(spec: BenchSpec, out: str | Path) -> tuple[dict[int, ScenarioConfig], list[Cell]]:
    """Every warm-up and cell of the bench, each validated (ConfigError names the attack and the
    aggregator whose combination is wrong) before anything runs."""
    out = Path(out)
    warmups = {s: w for s in spec.seeds if (w := warmup_config(spec, out, s)) is not None}
    cells = []
    for attack, attack_keys in spec.attacks.items():
        for agg, agg_keys in spec.aggregators.items():
            where = f"{spec.where}: attacks.{attack} with aggregators.{agg}"
            own = dict(agg_keys)
            keys = variant_keys(str(own.pop("aggregator", agg)))  # a label may name its rule in its keys
            for seed in spec.seeds:
                folder = out / "cells" / attack / folder_name(agg) / f"seed{seed}"
                values = {**spec.scenario, **attack_keys, **keys, **own, "seed": seed,
                          "name": f"{attack} / {agg} / seed {seed}", "out": str(folder)}
                cfg = build(values, where)
                if seed in warmups:
                    warm = warmups[seed]
                    if cfg.global_arch != warm.global_arch:
                        raise ConfigError(f"{where}: its global model ({cfg.global_arch}) cannot start from the "
                                          f"warm-up's FedAvg model ({warm.global_arch})")
                    cfg = replace(cfg, initial_model=str(warmup_model(warm)))
                cells.append(Cell(attack, agg, seed, cfg))
    return warmups, cells


REBUILT = "rebuilt.json"  # a warm-up run again without its stored rounds (run_warmup)


def finished(cfg: ScenarioConfig) -> bool:
    return (Path(cfg.out) / "metrics.json").is_file()


def check_finished(cells: list[Cell]) -> None:
    """A finished cell must have run the configuration the spec gives it now."""
    for cell in cells:
        if finished(cell.cfg):
            stored = read_json(Path(cell.cfg.out) / "config.json", "run config")
            diff = config_differences(stored, cell.cfg.run_record())
            if diff:
                raise ConfigError(f"{cell.name}: its finished run ({cell.cfg.out}) used other settings "
                                  f"({', '.join(diff)}); remove that folder or run the bench with --overwrite")


def run_cell(cfg: ScenarioConfig) -> list[dict]:
    """One cell (or warm-up): its rows; a finished one is read, a stopped one resumes."""
    from .federated import Checkpoint
    from .local import simulate_local
    from .runs import run_scenario

    out = Path(cfg.out)
    if finished(cfg):
        return json.loads((out / "metrics.json").read_text())
    cfg = validate(cfg, cfg.name)  # the warm-up's model exists now
    resume = (out / "config.json").is_file() and Checkpoint(out).load() is not None
    return run_scenario(cfg, simulate_local, resume=resume, overwrite=not resume)


def _rounds(rows: list[dict]) -> list[tuple]:
    return [(r["round"], round(r["acc"], 6), round(r["asr"], 6)) for r in rows]


def run_warmup(cfg: ScenarioConfig, accept_rebuilt: bool = False) -> list[dict]:
    """A warm-up. A finished one whose model file is gone (a clone without the model) runs again from
    its seed in a side folder; its model is kept if the rounds are those stored, else the seed's
    finished cells started from another model (float results differ between machines and thread
    counts) and it is refused, unless ``accept_rebuilt``: then the rebuilt model is kept and both
    runs' rounds are recorded in ``rebuilt.json`` (the leaderboard names it)."""
    if not finished(cfg):
        return run_cell(cfg)
    import shutil

    from .local import simulate_local
    from .runs import run_scenario

    out = Path(cfg.out)
    stored = json.loads((out / "metrics.json").read_text())
    side = out / "rebuild"
    rows = run_scenario(replace(cfg, out=str(side)), simulate_local, resume=False, overwrite=True)
    same = _rounds(rows) == _rounds(stored)
    if not same and not accept_rebuilt:
        shutil.rmtree(side)
        raise ConfigError(f"{cfg.name}: its model file is gone and the run again from seed {cfg.seed} does not give "
                          f"the rounds it gave before (Acc {stored[-1]['acc']:.4f} then, {rows[-1]['acc']:.4f} now; "
                          "float results differ between machines and thread counts): its seed's finished cells "
                          "started from another model. --accept-rebuilt-warmup finishes the seed from the new one "
                          f"(both recorded in {out / REBUILT}); --overwrite runs the whole bench again")
    for name in GLOBAL_FILES:
        (side / name).replace(out / name)
    if not same:
        (out / REBUILT).write_text(json.dumps({"stored": stored, "rebuilt": rows}, indent=1))
    shutil.rmtree(side)
    return stored


def run_bench(spec: BenchSpec, out: str | Path, jobs: int = 1, on_done=None,
              accept_rebuilt: bool = False) -> list[Cell]:
    """Run every unfinished warm-up, then every unfinished cell (``jobs`` side by side); returns the
    cells. ``on_done(cfg, rows)`` after each; ``accept_rebuilt``: see :func:`run_warmup`."""
    import functools

    from .pool import run_jobs

    warmups, cells = plan_cells(spec, out)
    check_finished(cells)
    waiting = {c.seed for c in cells if not finished(c.cfg)}
    todo = [w for s, w in warmups.items() if not finished(w) or (s in waiting and not warmup_model(w).is_file())]
    run_jobs(functools.partial(run_warmup, accept_rebuilt=accept_rebuilt), todo, jobs, on_done)
    run_jobs(run_cell, [c.cfg for c in cells if not finished(c.cfg)], jobs, on_done)
    return cells
