"""Scenario configuration: one frozen dataclass, loaded from YAML (safe_load) and CLI overrides.

Unknown keys, wrong types and impossible values are :class:`ConfigError` naming the key and the
file, raised before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .limits import MAX_TEXT, check_document_size, read_text_limited


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` is a float (YAML 1.2) rather than a string (YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str):
    """Parse YAML text safely (never constructs Python objects); exponent floats without a dot
    allowed; bounded in size (:data:`MAX_TEXT`), values (:data:`MAX_NODES`, aliases expanded) and
    depth. Raises ``yaml.YAMLError`` or ValueError."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"YAML text longer than {MAX_TEXT} characters")
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    check_document_size(data)
    return data

class ConfigError(ValueError):
    """A bad setting; the message names the key and where it came from."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (PyYAML's span several, with a caret drawing)."""
    return " ".join(str(e).split())


@dataclass(frozen=True)
class ScenarioConfig:
    """Every setting of a federated scenario. Defaults: the embedded quickstart on the CPU."""

    name: str = "default"
    description: str = ""
    # data
    dataset: str = "mnist_subset"
    data_dir: Optional[str] = None
    partition: str = "iid"  # a registered partitioner (fedabd list)
    alpha: float = 0.5
    classes_per_client: int = 2
    # federation
    clients: int = 5
    rounds: int = 3
    fraction: float = 1.0
    min_clients: int = 1
    local_epochs: int = 5
    local_lr: float = 0.05
    local_batch_size: int = 64
    # L2 bound on each local step's gradient (0 = off). From a distilled global student the first
    # steps' norms (12-14, then 50-69) killed the honest client's model (train Acc 11-28 %); clipped at
    # 5 it trains as from a fresh model (91-92 %), whose median norm is about 2
    # (benchmarks/results/local_clip.md; 10 restored only 56-81 %)
    local_clip: float = 5.0
    client_arch: str = "lenet5"
    client_archs: Optional[list] = None  # heterogeneous: one architecture per client (overrides client_arch)
    # attack
    malicious: int = 0
    malicious_ids: Optional[list] = None
    malicious_mode: Literal["fixed", "random"] = "fixed"
    attack: str = "badnet_grid"
    target: Optional[int] = None
    poison_rate: float = 0.3  # fraction of a malicious client's own data that is poisoned
    attack_start_round: int = 1
    attack_stop_round: Optional[int] = None  # last round with attacks (None: to the end)
    scale: float = 1.0  # model-replacement boost of a malicious update (1 = none)
    threat: str = "poison"  # what a malicious client does (a registered threat, fedabd list)
    threat_settings: dict = field(default_factory=dict)  # the threat's own settings
    initial_model: Optional[str] = None  # start from this global model file (safetensors) instead of a fresh one
    # server
    aggregator: str = "distill"  # a registered aggregator (fedabd list)
    aggregator_settings: dict = field(default_factory=dict)  # the aggregator's own settings (e.g. beta, byzantine)
    kd: str = "cmi"  # a registered data-free distiller
    kd_preset: str = "fed"  # per-round budget: "fed" (CPU, warm-started rounds), "cpu" or "paper"
    kd_overrides: dict = field(default_factory=dict)  # the method's settings over the preset
    abd: str = "none"  # "none" or '+'-joined defences: sv, sr, sv+sr
    sv: dict = field(default_factory=dict)  # Shuffling Vaccine settings
    sr: dict = field(default_factory=dict)  # Self-Retrospection settings
    student: str = "lenet5"
    weight_by_samples: bool = True
    ensemble_rule: Literal["logit_mean", "norm_mean", "norm_median"] = "norm_median"  # how the teachers' logits combine
    # validation of uploads
    max_weight_abs: float = 1e4
    # run
    seed: int = 0
    device: str = "auto"
    # channels_last memory format in the clients' training and the server's distillation: true / false;
    # null (auto) keeps the format runs had before this setting (the distillation: BatchNorm conv nets;
    # the clients: the default), so that recorded runs reproduce bitwise. LeNet-5 on the CPU: its steps
    # with a backward pass 1.2x (benchmarks/results/lenet_pool.md), the demo 7 % (results/quickstart)
    channels_last: Optional[bool] = None
    out: str = "runs/simulate"
    client_timeout: float = 600.0  # seconds a round waits for the clients' replies
    startup_timeout: float = 300.0  # extra wait in a run's first round: clients start (Ray, torch imports)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def run_record(self) -> dict:
        """:meth:`to_json` plus, under ``resolved``, what the aggregator takes from presets and
        defaults (:meth:`Aggregator.resolved`): what a run folder's config.json and checkpoint hold."""
        from .aggregators import aggregator_class
        from .runfolder import RESOLVED
        return {**self.to_json(), RESOLVED: aggregator_class(self.aggregator).resolved(self)}

    @property
    def attackers(self) -> int:
        """How many clients attack: ``malicious_ids`` when given, else ``malicious``."""
        return len(self.malicious_ids) if self.malicious_ids is not None else self.malicious

    @property
    def per_round(self) -> int:
        """How many clients a round samples: ``fraction`` of ``clients``, at least one."""
        return max(int(self.clients * self.fraction), 1)

    @property
    def global_arch(self) -> str:
        """The global model's architecture (the student when the aggregator distils)."""
        from .aggregators import aggregator_class
        return aggregator_class(self.aggregator).global_arch(self)


FIELDS = {f.name: f for f in dataclasses.fields(ScenarioConfig)}
_HINTS = typing.get_type_hints(ScenarioConfig)


def _check_type(key: str, value: Any, where: str) -> Any:
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    allowed: tuple = (hint,)
    if origin is typing.Union or origin is types.UnionType:
        allowed = typing.get_args(hint)
    for typ in allowed:
        if typ is type(None) and value is None:
            return value
        if typing.get_origin(typ) is Literal:
            if value in typing.get_args(typ):
                return value
            raise ConfigError(f"{where}: {key} must be one of {', '.join(map(str, typing.get_args(typ)))}, got {value!r}")
        base = typing.get_origin(typ) or typ
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base in (int, float) and isinstance(value, bool):
            continue
        if isinstance(base, type) and isinstance(value, base):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{where}: {key} must be {names}, got {value!r} ({type(value).__name__})")


def validate(cfg: ScenarioConfig, where: str = "config") -> ScenarioConfig:
    """Cross-field checks and registry names. Returns ``cfg`` unchanged when valid."""
    from .aggregators import aggregator_class
    from .attacks import ATTACKS
    from .data import DATASETS
    from .data.partition import PARTITIONERS
    from .defenses import defense_settings, parse_spec
    from .distill import DISTILLERS
    from .distill.base import method_config
    from .models import MODELS
    from .threats import THREATS

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {msg}")

    if cfg.clients < 1:
        raise bad("clients", f"must be >= 1, got {cfg.clients}")
    if cfg.rounds < 1:
        raise bad("rounds", f"must be >= 1, got {cfg.rounds}")
    if not 0 < cfg.fraction <= 1:
        raise bad("fraction", f"must be in (0, 1], got {cfg.fraction}")
    if not 1 <= cfg.min_clients <= cfg.clients:
        raise bad("min_clients", f"must be between 1 and clients ({cfg.clients}), got {cfg.min_clients}")
    if cfg.malicious < 0 or cfg.malicious > cfg.clients:
        raise bad("malicious", f"must be between 0 and clients ({cfg.clients}), got {cfg.malicious}")
    if cfg.malicious_ids is not None:
        ids = cfg.malicious_ids
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < cfg.clients for i in ids) or len(set(ids)) != len(ids):
            raise bad("malicious_ids", f"must be distinct client ids in 0..{cfg.clients - 1}, got {ids}")
    if cfg.alpha <= 0:
        raise bad("alpha", f"must be > 0, got {cfg.alpha}")
    if cfg.classes_per_client < 1:
        raise bad("classes_per_client", f"must be >= 1, got {cfg.classes_per_client}")
    for key in ("local_epochs", "local_batch_size"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    for key in ("attack_start_round", "startup_timeout"):
        if getattr(cfg, key) < 0:
            raise bad(key, f"must be >= 0, got {getattr(cfg, key)}")
    if cfg.attack_stop_round is not None and cfg.attack_stop_round < cfg.attack_start_round:
        raise bad("attack_stop_round", f"{cfg.attack_stop_round} is before attack_start_round {cfg.attack_start_round}")
    if not 0 < cfg.poison_rate <= 1:
        raise bad("poison_rate", f"must be in (0, 1], got {cfg.poison_rate}")
    for key, hint in _HINTS.items():
        value = getattr(cfg, key)
        if float in (hint, *typing.get_args(hint)) and isinstance(value, float) and not math.isfinite(value):
            raise bad(key, f"must be a finite number, got {value}")
    for key in ("local_lr", "scale", "max_weight_abs", "client_timeout"):
        if getattr(cfg, key) <= 0:
            raise bad(key, f"must be > 0, got {getattr(cfg, key)}")
    if cfg.local_clip < 0:
        raise bad("local_clip", f"must be >= 0 (0 = off), got {cfg.local_clip}")
    if not 0 <= cfg.seed < 2**63:
        raise bad("seed", f"must be between 0 and 2**63 - 1, got {cfg.seed}")
    if cfg.min_clients > cfg.per_round:
        raise bad("min_clients", f"{cfg.min_clients} is more than the {cfg.per_round} client(s) a round samples "
                                 f"(clients {cfg.clients} x fraction {cfg.fraction})")
    try:
        from .device import resolve_device
        resolve_device(cfg.device)
    except (RuntimeError, ValueError) as e:
        raise bad("device", one_line(e).strip("'\"")) from None
    if cfg.dataset not in DATASETS:
        raise bad("dataset", f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS.names())}")
    if cfg.attack not in ATTACKS:
        raise bad("attack", f"unknown attack {cfg.attack!r}; choose one of: {', '.join(ATTACKS.names())}")
    for key, registry in (("partition", PARTITIONERS), ("kd", DISTILLERS)):
        if getattr(cfg, key) not in registry:
            raise bad(key, f"unknown {registry.kind} {getattr(cfg, key)!r}; choose one of: {', '.join(registry.names())}")
    method = DISTILLERS.get(cfg.kd)
    if method.needs_real_data:
        raise bad("kd", f"{cfg.kd} needs the clients' data; the server distils data-free")
    if cfg.kd_preset not in method.presets:
        raise bad("kd_preset", f"unknown preset {cfg.kd_preset!r} for {cfg.kd}; choose one of: {', '.join(method.presets)}")
    try:
        aggregator = aggregator_class(cfg.aggregator)
    except (KeyError, ValueError) as e:
        raise bad("aggregator", str(e).strip("'\"")) from None
    try:
        parts = parse_spec(cfg.abd)
    except (KeyError, ValueError) as e:
        raise bad("abd", str(e)) from None
    if cfg.threat not in THREATS:
        raise bad("threat", f"unknown threat {cfg.threat!r}; choose one of: {', '.join(THREATS.names())}")
    threat = THREATS.get(cfg.threat)
    checks = [("kd_overrides", lambda: method_config(cfg.kd, cfg.kd_preset, cfg.kd_overrides)),
              ("threat_settings", lambda: threat.settings_from(cfg)),
              ("threat", lambda: threat.check(cfg)),
              ("aggregator_settings", lambda: aggregator.settings_from(cfg)),
              ("aggregator", lambda: aggregator.check(cfg))]
    checks += [(p, lambda p=p: defense_settings(p, getattr(cfg, p, None))) for p in parts]
    for key, check in checks:
        try:
            check()
        except (TypeError, ValueError) as e:
            raise bad(key, str(e)) from None
    for key in ("student", "client_arch"):
        if getattr(cfg, key) not in MODELS:
            raise bad(key, f"unknown model {getattr(cfg, key)!r}; choose one of: {', '.join(MODELS.names())}")
    if cfg.client_archs is not None:
        if len(cfg.client_archs) != cfg.clients:
            raise bad("client_archs", f"needs one architecture per client ({cfg.clients}), got {len(cfg.client_archs)}")
        unknown = [a for a in cfg.client_archs if a not in MODELS]
        if unknown:
            raise bad("client_archs", f"unknown model(s) {unknown}; choose from: {', '.join(MODELS.names())}")
        if aggregator.averages_weights and len(set(cfg.client_archs)) > 1:
            raise bad("aggregator", f"{cfg.aggregator} averages weights and needs one client architecture; "
                                    "heterogeneous clients need an aggregator that distils (distill)")
    if cfg.initial_model is not None:
        check_initial_model(cfg, bad)
    if cfg.target is not None:
        from .data import dataset_info
        if not 0 <= cfg.target < dataset_info(cfg.dataset).num_classes:
            raise bad("target", f"not a class of {cfg.dataset}")
    if parts and not aggregator.uses_defense:
        raise bad("abd", f"ABD protects distillation; {cfg.aggregator} does not distil (use aggregator: distill)")
    return cfg


def initial_model_state(cfg: ScenarioConfig) -> dict:
    """The global architecture's tensors from the ``initial_model`` file, in the model's key order
    (read as safetensors, never unpickled; ModelFileError names what is wrong with the file)."""
    from .artifacts import check_state_dict, read_tensors
    from .data import dataset_info
    from .models import create_model

    info = dataset_info(cfg.dataset)
    ref = create_model(cfg.global_arch, num_classes=info.num_classes, in_channels=info.channels,
                       image_size=info.image_size).state_dict()
    loaded = read_tensors(cfg.initial_model)
    check_state_dict(ref, loaded, f"initial_model {cfg.initial_model}", max_abs=cfg.max_weight_abs)
    return {k: loaded[k] for k in ref}


def check_initial_model(cfg: ScenarioConfig, bad) -> None:
    """A bad ``initial_model`` file stops the run when the scenario loads, before any client trains."""
    from .artifacts import ModelFileError, model_paths

    try:
        found = bool(cfg.initial_model.strip()) and model_paths(cfg.initial_model)[0].is_file()
    except (ValueError, OSError):  # e.g. a path without a file name
        found = False
    if not found:
        raise bad("initial_model", f"{cfg.initial_model!r}: no such model file")
    try:
        initial_model_state(cfg)
    except ModelFileError as e:
        raise bad("initial_model", f"{e} (expected a {cfg.global_arch} model)") from None


def build(values: dict, where: str) -> ScenarioConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELDS)}")
    clean = {k: _check_type(k, v, where) for k, v in values.items()}
    try:
        cfg = ScenarioConfig(**clean)
    except TypeError as e:  # pragma: no cover - guarded above
        raise ConfigError(f"{where}: {e}") from None
    return validate(cfg, where)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: scenario file not found")
    try:
        data = yaml_load(read_text_limited(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {one_line(e)}") from None
    except ValueError as e:  # read_text_limited and the size checks name the file or the limit
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a scenario must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _label(path: Path) -> str:
    """How errors name a scenario file: a shipped one by its name, any other by its path."""
    from .scenario_files import scenario_dir
    try:
        if path.resolve().parent == scenario_dir().resolve():
            return f"scenario {path.stem!r}"
    except OSError:
        pass
    return str(path)


def load_scenario(path: str | Path | None = None, overrides: dict | None = None) -> ScenarioConfig:
    """Defaults <- YAML file <- CLI overrides (only keys whose value is not None)."""
    values: dict = {}
    where = "defaults"
    if path is not None:
        values.update(read_yaml(path))
        where = _label(Path(path))
        build(values, where)  # errors in the file name the file
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(overrides)
    if overrides:
        where = f"{where} + command-line flags" if path is not None else "command-line flags"
    return build(values, where)


def scenario_from_run_config(run_config) -> ScenarioConfig:
    """A scenario from a Flower run config (``flwr run``'s ``[tool.flwr.app.config]`` and
    ``--run-config``): ``scenario`` names a YAML file or a shipped scenario; ``overrides`` is a
    comma-separated ``key=value`` list of scenario keys (Flower accepts only the keys declared in
    pyproject, so the scenario's other keys travel in that one string); any other key is a
    scenario key, dashes allowed for underscores."""
    from .scenario_files import resolve_scenario

    values = {str(k).replace("-", "_"): v for k, v in dict(run_config).items()}
    name = values.pop("scenario", None) or None
    for item in filter(None, (s.strip() for s in str(values.pop("overrides", "") or "").split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"run config overrides: expected key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = yaml_load(raw)
    return load_scenario(resolve_scenario(name) if name else None, values)
