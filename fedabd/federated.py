"""The federated scenario's building blocks in pure PyTorch (no Flower): client data and local
training, malicious-client selection, upload validation, evaluation and atomic per-round
checkpoints. The round itself is :mod:`fedabd.engine`; aggregation is :mod:`fedabd.aggregators`.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .artifacts import ModelFileError, _atomic_write_bytes, check_state_dict, read_tensors, save_model
from .attacks import Attack, create_attack, poison_dataset
from .config import ScenarioConfig
from .data import DatasetInfo, ImageSet, dataset_info, load_dataset
from .data.partition import partition
from .metrics import evaluate
from .models import create_model
from .train import TrainConfig, train_classifier

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from the run seed and e.g. (round, client id)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


# -- data --------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _load(name: str, split: str, data_dir: str | None) -> ImageSet:
    return load_dataset(name, split, data_dir)


def dataset_split(cfg: ScenarioConfig, split: str) -> ImageSet:
    return _load(cfg.dataset, split, cfg.data_dir)


@lru_cache(maxsize=8)
def _partitions(name: str, data_dir: str | None, clients: int, scheme: str, seed: int, alpha: float, k: int):
    return partition(_load(name, "train", data_dir).labels, clients, scheme, seed=seed, alpha=alpha,
                     classes_per_client=k)


def client_data(cfg: ScenarioConfig, pid: int) -> ImageSet:
    if not 0 <= pid < cfg.clients:
        raise ValueError(f"partition id {pid} is outside 0..{cfg.clients - 1}")
    parts = _partitions(cfg.dataset, cfg.data_dir, cfg.clients, cfg.partition, cfg.seed, cfg.alpha, cfg.classes_per_client)
    return dataset_split(cfg, "train").subset(torch.from_numpy(parts[pid]))


def scenario_attack(cfg: ScenarioConfig, info: DatasetInfo) -> Attack:
    """The scenario's trigger; every party derives the same one from the seed."""
    return create_attack(cfg.attack, info, target=cfg.target, rate=cfg.poison_rate, seed=cfg.seed)


def client_arch(cfg: ScenarioConfig, pid: int) -> str:
    return cfg.client_archs[pid] if cfg.client_archs else cfg.client_arch


def initial_client_state(cfg: ScenarioConfig, pid: int) -> StateDict:
    """A freshly initialised model of client ``pid``'s architecture (the reference for keys and shapes)."""
    info = dataset_info(cfg.dataset)
    model = create_model(client_arch(cfg, pid), num_classes=info.num_classes, in_channels=info.channels,
                         image_size=info.image_size)
    return model.state_dict()


def malicious_clients(cfg: ScenarioConfig, rnd: int) -> set[int]:
    """Who attacks in round ``rnd``: a fixed set (``malicious_ids``, or ``malicious`` clients drawn
    once from the seed), or ``malicious`` clients drawn afresh every round; none before
    ``attack_start_round`` or after ``attack_stop_round``."""
    if rnd < cfg.attack_start_round or (cfg.attack_stop_round is not None and rnd > cfg.attack_stop_round):
        return set()
    if cfg.malicious_ids is not None:
        return set(cfg.malicious_ids)
    rng = np.random.default_rng(derive_seed(cfg.seed, 7, rnd if cfg.malicious_mode == "random" else 0))
    return set(rng.choice(cfg.clients, size=cfg.malicious, replace=False).tolist())


# -- client side --------------------------------------------------------------------------------
@dataclass
class LocalResult:
    state: StateDict
    num_examples: int
    metrics: dict = field(default_factory=dict)


def local_update(cfg: ScenarioConfig, pid: int, rnd: int, start: StateDict | None, malicious: bool,
                 device: torch.device | str = "cpu") -> LocalResult:
    """Train client ``pid``'s model for ``local_epochs`` from ``start`` (None: fresh init)."""
    from .threats import create_threat

    clean = client_data(cfg, pid)
    data, seed, n_poisoned = clean, derive_seed(cfg.seed, rnd, pid), 0
    threat = create_threat(cfg) if malicious else None
    if threat is not None:
        poisoned = poison_dataset(threat.trigger(clean.info, pid, rnd), clean, seed=seed)
        data, n_poisoned = poisoned.dataset, len(poisoned.poisoned_index)
    torch.manual_seed(seed)
    model = create_model(client_arch(cfg, pid), num_classes=data.info.num_classes, in_channels=data.info.channels,
                         image_size=data.info.image_size)
    if start is not None:
        model.load_state_dict(start)
    train_cfg = TrainConfig(epochs=cfg.local_epochs, lr=cfg.local_lr, batch_size=cfg.local_batch_size, clip=cfg.local_clip,
                            channels_last=bool(cfg.channels_last))
    if threat is not None:
        stats = threat.train(model, data, clean, train_cfg, torch.device(device), seed, start)
    else:
        stats = train_classifier(model, data, train_cfg, torch.device(device), seed=seed)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if threat is not None and start is not None:
        state = threat.craft(start, state)
    return LocalResult(state, len(data), {"train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                                          "malicious": int(malicious), "n_poisoned": n_poisoned})


class ClientStore:
    """A heterogeneous client's own model after each round, on the client's disk.

    A client whose architecture differs from the global model trains its own model round after
    round. Flower's node state holds it only for the life of one run, so a resumed run would restart
    it; this store (``root/partition-<pid>/round-<r>.safetensors``, written atomically, the last two
    rounds kept) lets the client continue from its round ``r - 1`` model instead. safetensors only:
    nothing read from it is unpickled.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, pid: int, rnd: int) -> Path:
        return self.root / f"partition-{pid}" / f"round-{rnd}.safetensors"

    def save(self, pid: int, rnd: int, state: StateDict) -> None:
        from safetensors.torch import save_file

        target = self.path(pid, rnd)
        _atomic_write_bytes(target, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp))
        for old in target.parent.glob("round-*.safetensors"):
            r = old.stem.partition("-")[2]
            if r.isdigit() and int(r) < rnd - 1:
                old.unlink(missing_ok=True)

    def load(self, pid: int, rnd: int, reference: StateDict) -> StateDict | None:
        """The model saved after round ``rnd`` if there is one that matches ``reference``'s keys,
        shapes and dtypes; a missing file gives None, a bad one a warning and None (fresh start)."""
        path = self.path(pid, rnd)
        if not path.exists():
            return None
        try:
            tensors = read_tensors(path)
            check_state_dict(reference, tensors, str(path))
        except ModelFileError as e:
            log.warning("client %d: ignoring its saved model (%s); it starts afresh", pid, e)
            return None
        return tensors


# -- server side --------------------------------------------------------------------------------
@dataclass
class Upload:
    pid: int
    state: StateDict
    num_examples: int
    metrics: dict = field(default_factory=dict)
    trust: float = 1.0  # a screening rule's weight factor in [0, 1] (1: untouched)

    def with_trust(self, factor: float) -> "Upload":
        return replace(self, trust=self.trust * factor)


def validate_upload(cfg: ScenarioConfig, info: DatasetInfo, up: Upload) -> str | None:
    """None if the upload is usable, else the reason it is rejected."""
    if not 0 <= up.pid < cfg.clients:
        return f"unknown partition id {up.pid}"
    if not isinstance(up.num_examples, int) or up.num_examples < 1:
        return f"declared sample count {up.num_examples!r} is not a positive integer"
    expected = len(client_data(cfg, up.pid))
    if up.num_examples != expected:
        return f"declared {up.num_examples} samples, its partition has {expected}"
    ref = create_model(client_arch(cfg, up.pid), num_classes=info.num_classes, in_channels=info.channels,
                       image_size=info.image_size).state_dict()
    try:
        check_state_dict(ref, up.state, f"client {up.pid}", max_abs=cfg.max_weight_abs)
    except ModelFileError as e:
        return str(e)
    return None


def screen_uploads(cfg: ScenarioConfig, info: DatasetInfo, uploads: list[Upload]) -> tuple[list[Upload], dict[int, str]]:
    """Sorted valid uploads and {pid: reason} for the rejected ones (logged)."""
    valid, rejected = [], {}
    for up in sorted(uploads, key=lambda u: u.pid):
        reason = validate_upload(cfg, info, up)
        if reason is None:
            valid.append(up)
        else:
            rejected[up.pid] = reason
            log.warning("round upload of client %d rejected: %s", up.pid, reason)
    return valid, rejected


def evaluate_state(cfg: ScenarioConfig, info: DatasetInfo, arch: str, state: StateDict,
                   device: torch.device | str = "cpu") -> dict:
    """Acc, ASR and R-Acc of a global model on the server's test split, and the ASR of every extra
    trigger the threat names (``asr_<name>``, e.g. DBA's pieces)."""
    from .threats import create_threat

    model = create_model(arch, num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)
    model.load_state_dict(state)
    model.to(device)
    test = dataset_split(cfg, "test")
    out = evaluate(model, test, scenario_attack(cfg, info), device)
    for name, trigger in create_threat(cfg).eval_triggers(info).items():
        out[f"asr_{name}"] = evaluate(model, test, trigger, device)["asr"]
    return out


# -- checkpoints --------------------------------------------------------------------------------
class Checkpoint:
    """Atomic per-round checkpoint in ``out/checkpoint``: the global model, the metrics rows and the
    round number. Written to a temporary folder and renamed, so a kill leaves the last complete one."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.dir = self.out / "checkpoint"

    def save(self, rnd: int, arch: str, info: DatasetInfo, state: StateDict, rows: list[dict], config: dict,
             memory: StateDict | None = None) -> None:
        """``memory``: the aggregator's state between rounds (tensors), kept beside the model."""
        from safetensors.torch import save_file

        tmp = self.out / f".checkpoint.tmp{rnd}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if memory:
            save_file({k: v.contiguous() for k, v in memory.items()}, str(tmp / "aggregator.safetensors"))
        model = create_model(arch, num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)
        model.load_state_dict(state)
        save_model(tmp / "global", model, info, seed=config.get("seed"), metrics=rows[-1] if rows else {},
                   extra={"round": rnd})
        (tmp / "state.json").write_text(json.dumps({"round": rnd, "rows": rows, "config": config,
                                                    "saved": time.time()}, indent=2, default=float))
        old = self.out / ".checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(old)
        tmp.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def load(self) -> tuple[int, StateDict, list[dict], dict] | None:
        from .artifacts import load_model
        if not (self.dir / "state.json").exists():
            old = self.out / ".checkpoint.old"  # killed between the two renames
            if (old / "state.json").exists():
                old.rename(self.dir)
            else:
                return None
        meta = json.loads((self.dir / "state.json").read_text())
        loaded = load_model(self.dir / "global")
        return int(meta["round"]), {k: v for k, v in loaded.model.state_dict().items()}, meta["rows"], meta["config"]

    def load_memory(self) -> StateDict:
        """The aggregator's memory saved with the last checkpoint ({} if it kept none)."""
        path = self.dir / "aggregator.safetensors"
        return read_tensors(path) if path.exists() else {}
