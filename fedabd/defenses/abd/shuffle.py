"""SV's shuffled teacher T~: which layers are shuffled, how, and the copies run with shared stages.

Which layers (:func:`shuffle_layers`): the last ``n`` convolutions in forward (registration) order,
excluding the stem (the first layer, whose input is the image). When the model has fewer than ``n``
such convolutions, the list continues with the Linear layers that follow the last convolution (the
model's last stage), in forward order, never including the final classifier layer (the last
Linear). So:

- WRN-16-2 (n=5): the 5 convolutions of the last group (block3: conv1, conv2, conv_shortcut of
  its first block; conv1, conv2 of its second block) -- "all of the last stage" of the paper.
- LeNet-5 (n=5): conv2, fc1, fc2 (only 3 layers exist under the rule). This is the choice that
  separated triggered from clean images in the MNIST calibration; shuffling fc3 (the classifier's
  input) destroyed the signal.

A Linear layer that consumes a flattened convolutional feature map (LeNet's fc1: in_features =
C*h*w, C the out_channels of the preceding convolution) is shuffled by permuting whole channel
groups (the C blocks of h*w inputs move together), i.e. the same operation as shuffling the input
channels of a convolution; any other Linear gets its in_features permuted.

Every permutation is drawn from the ``torch.Generator`` the caller passes (SV seeds it from the run's
seed). Copies are frozen.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ...models.ensemble import Ensemble, SharedStemCopies, freeze, same_arch
from ...models.staged import first_stage_using


# -- which layers, and how to shuffle them -----------------------------------------------------------

def _layers_in_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))]


def shuffle_layers(model: nn.Module, n: int) -> list[str]:
    """Names of the layers whose input channels SV permutes (rule: module docstring).

    The last ``n`` convolutions excluding the stem; if fewer exist, continued with the Linear
    layers after the last convolution (forward order), never the final classifier.
    """
    if isinstance(model, Ensemble):
        model = model.members[0]
    layers = _layers_in_order(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no convolution or Linear layer to shuffle")
    body = layers[1:]  # drop the stem: the first layer, whose input is the image
    convs = [name for name, m in body if isinstance(m, _ConvNd)]
    chosen = convs[-n:] if n > 0 else []
    if len(chosen) < n:
        last_conv = max((i for i, (_, m) in enumerate(layers) if isinstance(m, _ConvNd)), default=0)
        linears = [name for i, (name, m) in enumerate(layers)
                   if isinstance(m, nn.Linear) and i > last_conv and i > 0]
        last_linear = [name for name, m in layers if isinstance(m, nn.Linear)][-1:]
        linears = [name for name in linears if name not in last_linear]  # never the classifier
        chosen += linears[: n - len(chosen)]
    if not chosen:
        raise ValueError(f"{type(model).__name__}: no layer to shuffle under the SV rule")
    return chosen


def _channel_groups(model: nn.Module, name: str) -> int | None:
    """For a Linear right after the last-but-not-yet-flattened convolution: its number of channel groups.

    Returns C when ``name`` is the first Linear after a convolution with C output channels and its
    in_features is a multiple C*h*w with h*w > 1 (a flattened C x h x w map), else None.
    """
    layers = _layers_in_order(model)
    names = [nm for nm, _ in layers]
    i = names.index(name)
    if i == 0 or not isinstance(layers[i][1], nn.Linear):
        return None
    prev = layers[i - 1][1]
    if not isinstance(prev, _ConvNd):
        return None
    c, fin = prev.out_channels, layers[i][1].in_features
    if fin % c == 0 and fin // c > 1:
        return c
    return None


@torch.no_grad()
def shuffled_copy(model: nn.Module, layers: list[str], generator: torch.Generator) -> nn.Module:
    """A frozen deep copy of ``model`` with the input channels of ``layers`` randomly permuted.

    Convolution: the weight's dim 1 is permuted. Linear consuming a flattened C x h x w map: the
    C groups of h*w inputs are permuted as blocks. Other Linear: in_features permuted. One
    independent permutation per layer, drawn (on the CPU) from ``generator``. Biases and all other
    parameters are untouched; so is ``model``.
    """
    out = freeze(copy.deepcopy(model))
    modules = dict(out.named_modules())
    for name in layers:
        m = modules[name]
        w = m.weight
        if isinstance(m, _ConvNd):
            perm = torch.randperm(w.shape[1], generator=generator).to(w.device)
            w.copy_(w[:, perm].clone())
        elif isinstance(m, nn.Linear):
            groups = _channel_groups(out, name)
            if groups is None:
                perm = torch.randperm(w.shape[1], generator=generator).to(w.device)
                w.copy_(w[:, perm].clone())
            else:
                perm = torch.randperm(groups, generator=generator).to(w.device)
                blocks = w.reshape(w.shape[0], groups, -1)
                w.copy_(blocks[:, perm].reshape_as(w).clone())
        else:
            raise TypeError(f"layer {name!r} is a {type(m).__name__}, not a convolution or Linear")
    return out


def build_shuffled_teacher(teacher: nn.Module, k: int, n: int, generator: torch.Generator) -> tuple[Ensemble, list[str]]:
    """T~: k shuffled copies of the teacher (of every member of an Ensemble teacher).

    T~(x): each member's k copies' mean logits, combined across members by the teacher ensemble's
    own rule and weights (for ``logit_mean``, the mean of all copies' logits, each member's copies
    sharing its weight). Same-arch :class:`~fedabd.models.staged.Staged` members: the stages before
    the first shuffled layer run once per member (:class:`SharedStemCopies`), the copies then one
    after another on the CPU (faster than one vmapped call in every case measured,
    benchmarks/results/sv_copies.md) and, with several members, batched on an accelerator (fewer
    kernel launches; not measured here), as :meth:`Ensemble.vmapped` decides at each call.
    """
    if isinstance(teacher, Ensemble):
        members, weights, rule = list(teacher.members), [float(w) for w in teacher.weights], teacher.combine
    else:
        members, weights, rule = [teacher], [1.0], "logit_mean"
    layers = shuffle_layers(members[0], n)
    copies, cw = [], []
    for member, wm in zip(members, weights):
        names = shuffle_layers(member, n)
        for _ in range(k):
            copies.append(shuffled_copy(member, names, generator))
            cw.append(wm / k)
    start = first_stage_using(members[0], layers)
    if start and same_arch(members) and len(copies) > 1:  # one member's copies always in turn
        batched = None if len(members) > 1 else False
        return SharedStemCopies(copies, cw, combine=rule, group=k, start=start, batched=batched), layers
    return Ensemble(copies, cw, combine=rule, group=k), layers
