"""The round engine: everything a server does in a round, without Flower.

A transport (the Flower ServerApp, or a test's loop) asks the engine for the global model, trains
the sampled clients with it, and hands back what came in: the uploads that could be read and, by
client name, those that failed, never answered, left the federation or sent an unreadable reply.
The engine screens the uploads (:func:`fedabd.federated.validate_upload`), calls the scenario's
aggregator, evaluates the new global model, checkpoints the run and returns a
:class:`RoundReport`. The global model lives here only (``engine.state``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from . import federated as fed
from .aggregators import create_aggregator
from .config import ScenarioConfig, initial_model_state
from .data import dataset_info
from .device import resolve_device
from .models import create_model

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """Too few usable client models in a round; completed rounds stay checkpointed."""


@dataclass
class RoundReport:
    """One round: the global model's metrics and who took part, who was left out and why."""

    round: int
    metrics: dict
    clients: list[int] = field(default_factory=list)     # uploads the aggregator received
    malicious: list[int] = field(default_factory=list)   # of those, the ones that attacked
    failed: dict[str, str] = field(default_factory=dict)  # client -> error it reported
    missing: list[str] = field(default_factory=list)     # sampled, no answer before the timeout
    offline: list[str] = field(default_factory=list)     # seen before, gone from the federation
    rejected: dict[str, str] = field(default_factory=dict)  # client -> why its upload was refused
    aggregation: dict = field(default_factory=dict)      # what the aggregator decided / measured
    client_train: dict = field(default_factory=dict)     # sample-weighted mean of the clients' train metrics
    seconds: float = 0.0

    def row(self) -> dict:
        """The JSON row of metrics.jsonl / metrics.csv (and of the checkpoint)."""
        row = {"round": self.round, **self.metrics, "clients": self.clients, "malicious": self.malicious,
               "failed": self.failed, "missing": self.missing, "offline": self.offline, "rejected": self.rejected,
               "seconds": round(self.seconds, 2)}
        row.update({f"client_{k}": v for k, v in self.client_train.items()})
        row.update(self.aggregation)
        return row


def client_train_metrics(uploads: list[fed.Upload], keys=("train_loss", "train_acc")) -> dict:
    total = sum(u.num_examples for u in uploads)
    out = {}
    for k in keys:
        vals = [(u.metrics[k], u.num_examples) for u in uploads if isinstance(u.metrics.get(k), (int, float))]
        if vals and total:
            out[k] = round(sum(v * n for v, n in vals) / sum(n for _, n in vals), 6)
    return out


def detection_rates(uploads: list[fed.Upload], selected: list[int]) -> dict:
    """A filtering rule's detection against the known malicious set (simulation only): TPR = share
    of the malicious uploads it set aside, FPR = share of the honest ones it set aside; a rate whose
    group is empty this round is None."""
    kept = set(selected)
    bad = [u.pid for u in uploads if u.metrics.get("malicious")]
    good = [u.pid for u in uploads if not u.metrics.get("malicious")]
    rate = lambda group: round(sum(p not in kept for p in group) / len(group), 6) if group else None  # noqa: E731
    return {"tpr": rate(bad), "fpr": rate(good)}


PERSISTENT_ASR = 0.2  # a backdoor "lasts" while the ASR stays above this


def backdoor_lasts(cfg: ScenarioConfig, rnd: int, asr: float | None, previous: dict) -> int | None:
    """After the attack window closes (``attack_stop_round``), how many rounds in a row since then
    the global model's ASR has stayed above :data:`PERSISTENT_ASR` (it stops counting at the first
    round below); None while the window is open or where it never closes."""
    stop = cfg.attack_stop_round
    if stop is None or rnd <= stop or asr is None:
        return None
    before = previous.get("backdoor_lasts", 0) if rnd > stop + 1 else 0
    still = before == rnd - stop - 1 and asr > PERSISTENT_ASR
    return before + 1 if still else before


class RoundEngine:
    """The server side of a scenario: global model, aggregation, evaluation, checkpoints.

    ``resume``: continue after the run folder's last checkpointed round (``rows`` then holds the
    completed rounds and ``next_round`` the first to run); otherwise round 0 is the evaluated
    initial model. ``progress`` is passed to the aggregator (the distiller's progress callback).
    """

    def __init__(self, cfg: ScenarioConfig, resume: bool = False, progress=None,
                 device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.info = dataset_info(cfg.dataset)
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        self.aggregator = create_aggregator(cfg, self.info, self.device, progress)
        self.arch = type(self.aggregator).global_arch(cfg)
        self.checkpoint = fed.Checkpoint(cfg.out)
        self.resumed = False
        loaded = self.checkpoint.load() if resume else None
        if loaded is not None:
            done, self.state, self.rows, _ = loaded
            self.aggregator.restore(self.checkpoint.load_memory())
            self.next_round = done + 1
            self.resumed = True
            log.warning("resuming after round %d", done)
        else:
            self.state = self.initial_state()
            self.rows = [{"round": 0, **self.evaluate(self.state)}]
            self.next_round = 1

    def initial_state(self) -> fed.StateDict:
        """A fresh model from the seed, or the scenario's ``initial_model`` file (e.g. a model
        trained in clean rounds beforehand: the literature attacks a trained global model)."""
        torch.manual_seed(fed.derive_seed(self.cfg.seed, 0, 1))
        if self.cfg.initial_model:  # checked when the scenario loaded; read and checked again, it may have changed
            return initial_model_state(self.cfg)
        model = create_model(self.arch, num_classes=self.info.num_classes, in_channels=self.info.channels,
                             image_size=self.info.image_size)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def evaluate(self, state: fed.StateDict) -> dict:
        return fed.evaluate_state(self.cfg, self.info, self.arch, state, self.device)

    @property
    def rounds_left(self) -> range:
        return range(self.next_round, self.cfg.rounds + 1)

    def run_round(self, rnd: int, uploads: list[fed.Upload], failed: dict[str, str] | None = None,
                  missing: list[str] | None = None, offline: list[str] | None = None,
                  unreadable: dict[str, str] | None = None, started: float | None = None) -> RoundReport:
        """Screen, aggregate, evaluate and checkpoint round ``rnd``; raises :class:`RoundFailed` when
        fewer than ``min_clients`` uploads are usable (the state stays that of round ``rnd - 1``)."""
        t0 = time.perf_counter() if started is None else started
        valid, bad = fed.screen_uploads(self.cfg, self.info, uploads)
        rejected = dict(unreadable or {})
        rejected.update({str(pid): reason for pid, reason in bad.items()})
        failed, missing, offline = dict(sorted((failed or {}).items())), list(missing or []), list(offline or [])
        if len(valid) < self.cfg.min_clients:
            raise RoundFailed(
                f"round {rnd}: only {len(valid)} usable client model(s), min_clients is {self.cfg.min_clients} "
                f"(failed: {sorted(failed)}, missing: {missing}, offline: {offline}, rejected: {rejected}); "
                f"rounds up to {rnd - 1} are saved in {self.checkpoint.dir}")
        agg = self.aggregator.aggregate(rnd, valid, self.state)
        self.state = agg.state
        if self.aggregator.filters:
            agg.info.update(detection_rates(valid, agg.selected))
        metrics = self.evaluate(self.state)
        lasts = backdoor_lasts(self.cfg, rnd, metrics.get("asr"), self.rows[-1])
        if lasts is not None:
            metrics["backdoor_lasts"] = lasts
        report = RoundReport(rnd, metrics, clients=[u.pid for u in valid],
                             malicious=sorted(u.pid for u in valid if u.metrics.get("malicious")),
                             failed=failed, missing=missing, offline=offline, rejected=rejected,
                             aggregation=dict(agg.info, **({} if agg.selected == [u.pid for u in valid]
                                                           else {"selected": agg.selected})),
                             client_train=client_train_metrics(valid))
        report.seconds = time.perf_counter() - t0
        self.rows.append(report.row())
        self.checkpoint.save(rnd, self.arch, self.info, self.state, self.rows, self.cfg.run_record(),
                             memory=self.aggregator.memory())
        self.next_round = rnd + 1
        return report

