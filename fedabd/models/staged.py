"""Classifiers whose forward is a chain of stages, so that a forward can start or stop between them.

A :class:`Staged` model lists its stages in forward order (:meth:`Staged.stages`): each stage names
the modules whose parameters it uses, maps the previous stage's output to its own, and may be one
of the feature maps ``forward(x, return_features=True)`` returns. ``forward(x, start=i)`` takes the
output of stage ``i - 1`` instead of an image; ``forward(x, stop=j)`` returns stage ``j - 1``'s
output instead of logits. Models that are copies of one another up to stage ``s`` (SV's shuffled
copies: only later layers are permuted) can then share the stages before ``s``
(:func:`first_stage_using`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Stage:
    modules: tuple[str, ...]                       # names of the submodules the stage runs
    fn: Callable[[torch.Tensor], torch.Tensor]
    feature: bool = False                          # its output is one of the returned feature maps


class Staged(nn.Module):
    """Mixin for a classifier: implement :meth:`stages`; ``forward`` runs them."""

    def stages(self) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False, start: int = 0, stop: int | None = None):
        feats, h = [], x
        for st in self.stages()[start:stop]:
            h = st.fn(h)
            if st.feature:
                feats.append(h)
        return (h, feats) if return_features else h


def first_stage_using(model: nn.Module, layers: list[str]) -> int | None:
    """Index of the first stage that runs any of ``layers`` (module names); None when ``model`` is not
    :class:`Staged` or no stage names one of them."""
    if not isinstance(model, Staged):
        return None
    for i, st in enumerate(model.stages()):
        if any(layer == m or layer.startswith(m + ".") for layer in layers for m in st.modules):
            return i
    return None
