"""The Aggregator interface and the arithmetic the weight-averaging rules share.

An aggregator is built once per run from the scenario (``Aggregator(cfg, info, device, progress)``)
and called once per round with the round's screened uploads (sorted by client id) and the current
global state; it returns the new global state and what it decided (:class:`Aggregate`).

Rule-specific settings come from the scenario's ``aggregator_settings`` mapping, typed by the
class's ``config_cls`` dataclass (its defaults are the rule's published defaults); unknown keys,
wrong types and bad values are errors when the scenario loads.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ScenarioConfig
    from ..data import DatasetInfo
    from ..federated import StateDict, Upload

AGGREGATORS: Registry[type["Aggregator"]] = Registry("aggregator")


@dataclass(frozen=True)
class NoSettings:
    """An aggregator without settings of its own."""


@dataclass
class Aggregate:
    """One round's aggregation: the new global ``state``, the clients whose uploads it used
    (``selected``; the others were set aside by the rule) and JSON-able ``info`` for the round row."""

    state: "StateDict"
    selected: list[int]
    info: dict = field(default_factory=dict)
    weights: dict[int, float] | None = None  # a screening rule's weight factor per selected client


class Aggregator:
    """Base class. Subclasses implement :meth:`aggregate`.

    - ``averages_weights``: the rule combines the clients' weights, so every client must share the
      global architecture; False for rules that only query the client models (distillation).
    - ``uses_defense``: the rule honours the scenario's ``abd`` defence.
    - ``filters``: the rule accepts or rejects whole clients (``Aggregate.selected``), so the engine
      reports its detection rates against the known malicious set.
    """

    config_cls: ClassVar[type] = NoSettings
    averages_weights: ClassVar[bool] = True
    uses_defense: ClassVar[bool] = False
    filters: ClassVar[bool] = False  # the rule accepts or rejects clients (detection TPR/FPR are reported)
    #: a filter that measures the clients' updates against the global model (FLAME, FoolsGold, Krum):
    #: in a composition the global model must then share the clients' architecture
    compares_updates: ClassVar[bool] = True

    def __init__(self, cfg: "ScenarioConfig", info: "DatasetInfo", device: torch.device | str = "cpu",
                 progress=None) -> None:
        self.cfg, self.info, self.device, self.progress = cfg, info, torch.device(device), progress
        self.settings = self.settings_from(cfg)

    @classmethod
    def settings_from(cls, cfg: "ScenarioConfig"):
        """The rule's typed settings from ``cfg.aggregator_settings`` (ValueError naming a bad key)."""
        from ..distill.base import settings_with
        return settings_with(cls.config_cls, cfg.aggregator_settings)

    @classmethod
    def check(cls, cfg: "ScenarioConfig") -> None:
        """What the rule needs of the scenario beyond its own settings (e.g. enough clients per
        round); raises ValueError naming the problem. Called when the scenario loads."""

    @classmethod
    def global_arch(cls, cfg: "ScenarioConfig") -> str:
        """The global model's architecture: the clients' for weight averaging."""
        return cfg.client_arch

    @classmethod
    def resolved(cls, cfg: "ScenarioConfig") -> dict:
        """What the rule takes from defaults and presets rather than from the scenario (its typed
        settings; a distiller's preset), as JSON. A run folder records it, so a resumed run or a
        bench cell finished before a preset or default changed is refused instead of mixed."""
        settings = cls.settings_from(cfg)
        return {"settings": dataclasses.asdict(settings)} if dataclasses.is_dataclass(settings) else {}

    def aggregate(self, rnd: int, uploads: Sequence["Upload"], global_state: "StateDict") -> Aggregate:
        raise NotImplementedError

    def memory(self) -> dict[str, torch.Tensor]:
        """What the rule carries from round to round (e.g. FoolsGold's update history), saved with
        every checkpoint so that a resumed run continues it; empty for memoryless rules."""
        return {}

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`memory` returned at the checkpoint a run resumes from."""


def create_aggregator(cfg: "ScenarioConfig", info: "DatasetInfo", device: torch.device | str = "cpu",
                      progress=None) -> Aggregator:
    from .compose import aggregator_class
    return aggregator_class(cfg.aggregator)(cfg, info, device, progress)


def clients_share(cfg: "ScenarioConfig", arch: str) -> bool:
    """Every client model has architecture ``arch``: it is ``client_arch`` and ``client_archs`` does not
    mix architectures (what averaging client models into, or comparing them with, an ``arch`` model needs)."""
    return arch == cfg.client_arch and not (cfg.client_archs and len(set(cfg.client_archs)) > 1)


def sample_weights(uploads: Sequence["Upload"]) -> list[float]:
    """Each upload's share of the total declared sample count (FedAvg's weighting), each count
    times the upload's screening ``trust`` (1 unless a screening rule came first)."""
    counts = [u.num_examples * u.trust for u in uploads]
    total = float(sum(counts))
    return [c / total for c in counts]


def weighted_mean(states: Sequence["StateDict"], weights: Sequence[float]) -> "StateDict":
    """``sum_i w_i * state_i`` per tensor, accumulated in the order given.

    Floating tensors are accumulated in their own dtype; integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) in float64 and truncated back to their dtype. This is the arithmetic of
    Flower 1.42's ``aggregate_arrayrecords``, so FedAvg here and there give the same numbers.
    """
    out: dict[str, torch.Tensor] = {}
    for state, w in zip(states, weights, strict=True):
        for k, v in state.items():
            term = v * w if v.is_floating_point() else v.double() * w
            out[k] = term if k not in out else out[k] + term
    ref = states[0]
    return {k: v if ref[k].is_floating_point() else v.to(ref[k].dtype) for k, v in out.items()}


def per_tensor(states: Sequence["StateDict"], fn) -> "StateDict":
    """``fn(stacked)`` per tensor, where ``stacked`` is a numpy array (clients on axis 0); the
    result keeps the tensor's dtype."""
    out = {}
    for k, ref in states[0].items():
        stacked = np.stack([s[k].numpy() for s in states])
        out[k] = torch.from_numpy(np.asarray(fn(stacked))).to(ref.dtype)
    return out


def stacked_states(uploads: Sequence["Upload"]) -> np.ndarray:
    """Every upload's whole state (buffers included) as one row, numpy's dtype promotion (Flower's
    MultiKrum flattens the same way, so distances and ties match it)."""
    return np.stack([np.concatenate([v.numpy().ravel() for v in u.state.values()]) for u in uploads])




_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def weight_keys(state: "StateDict") -> list[str]:
    """The learnable weights of a state dict: floating tensors that are not normalisation statistics
    (BatchNorm's running mean and variance, its batch counter). Update-based rules measure, clip and
    perturb these only; buffers are averaged."""
    return [k for k, v in state.items() if v.is_floating_point() and not k.endswith(_BUFFERS)]


def weight_vector(state: "StateDict", keys: Sequence[str]) -> np.ndarray:
    """The tensors ``keys`` of ``state`` as one float64 vector."""
    return np.concatenate([state[k].double().numpy().ravel() for k in keys])


def client_updates(uploads: Sequence["Upload"], global_state: "StateDict") -> tuple[list[str], np.ndarray]:
    """The weight keys and each client's update ``W_i - G`` on them, one float64 row per upload."""
    keys = weight_keys(global_state)
    g = weight_vector(global_state, keys)
    return keys, np.stack([weight_vector(u.state, keys) - g for u in uploads])


def apply_update(global_state: "StateDict", keys: Sequence[str], update: np.ndarray,
                 buffers: Sequence["Upload"]) -> "StateDict":
    """``G + update`` on the weight ``keys`` (laid out as :func:`client_updates` lays them out); every
    other tensor (normalisation buffers) is the sample-weighted mean over ``buffers``' uploads."""
    out = weighted_mean([u.state for u in buffers], sample_weights(buffers)) if buffers else dict(global_state)
    pos = 0
    for k in keys:
        ref = global_state[k]
        n = ref.numel()
        out[k] = (ref.double() + torch.from_numpy(update[pos:pos + n]).reshape(ref.shape)).to(ref.dtype)
        pos += n
    return out
