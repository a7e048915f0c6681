"""Strategies: fedabd's data-free distillation aggregator as a Flower strategy, and Flower's own
baselines (FedAvg, MultiKrum, FedMedian, FedTrimmedAvg) for comparison."""
from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum

from fedabd import federated as fed
from fedabd.config import ScenarioConfig
from fedabd.data import DatasetInfo


class DistillStrategy(FedAvg):
    """FedAvg's sampling and messaging; aggregation = data-free ensemble KD of the client models
    (the teachers) into the global student, warm-started from the current one."""

    def __init__(self, cfg: ScenarioConfig, info: DatasetInfo, device, progress=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cfg, self.info, self.device, self.progress = cfg, info, device, progress
        self.student_state: fed.StateDict | None = None
        self.last_info: dict = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if not m.has_error()]
        uploads = [upload_from_message(m) for m in replies]
        state, self.last_info = fed.distill_aggregate(self.cfg, self.info, server_round, uploads, self.student_state,
                                                      self.device, progress=self.progress)
        self.student_state = state
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key) if replies else None
        return ArrayRecord(state), metrics


def upload_from_message(msg: Message) -> fed.Upload:
    """An Upload from a reply; a reply that cannot be read raises ValueError with the reason."""
    content = msg.content
    try:
        metrics = content["metrics"]
        arrays = content["arrays"]
        pid = int(metrics["partition-id"])
        n = metrics["num-examples"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"reply from node {msg.metadata.src_node_id} lacks {e}") from None
    try:
        state = arrays.to_torch_state_dict()
    except Exception as e:  # a malformed ArrayRecord (wrong dtype/shape encoding)
        raise ValueError(f"reply from client {pid}: unreadable arrays ({e})") from None
    return fed.Upload(pid=pid, state=state, num_examples=int(n) if float(n).is_integer() else n,
                      metrics=dict(metrics))


def make_strategy(cfg: ScenarioConfig, info: DatasetInfo, device, progress=None):
    common = dict(fraction_train=cfg.fraction, fraction_evaluate=0.0, min_train_nodes=1,
                  min_available_nodes=cfg.clients)
    if cfg.aggregator == "distill":
        return DistillStrategy(cfg, info, device, progress, **common)
    if cfg.aggregator == "fedavg":
        return FedAvg(**common)
    if cfg.aggregator == "fedmedian":
        return FedMedian(**common)
    if cfg.aggregator == "fedtrimmedavg":
        return FedTrimmedAvg(beta=cfg.trim_beta, **common)
    if cfg.aggregator == "multikrum":
        f = cfg.krum_byzantine if cfg.krum_byzantine is not None else cfg.malicious
        n_sel = max(1, int(cfg.clients * cfg.fraction) - f)
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n_sel, **common)
    raise ValueError(f"unknown aggregator {cfg.aggregator!r}")
