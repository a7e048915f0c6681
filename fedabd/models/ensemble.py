"""Frozen teachers: one model or an ensemble of K models, their logits combined by a rule.

Same-architecture members can run as ONE batched call (torch.func.stack_module_state +
functional_call + vmap) instead of a Python loop. ``batched=None`` (the default) vmaps on an
accelerator and loops on the CPU, where the loop was faster in every case of
benchmarks/results/ensemble_loop.md for LeNet-5 and WRN-16-2 teachers, 1.1-2.6x at 5-100 members
(the batched call's member-wide activations are memory-bound there; an older measurement on another
CPU, benchmarks/results/distill_speed.md section 2, found the vmapped call faster for 8 LeNet-5
teachers in a ZSKT pseudo-batch, which zskt_ensemble_forms.md does not reproduce here: neither form
wins at 2-8 teachers); ``batched=True`` vmaps everywhere, ``False`` never. Mixed
architectures always loop.

How the members' logits ``z_k`` (per sample, C classes) become the ensemble's (:data:`COMBINE`):

- ``logit_mean``: ``sum_k w_k z_k`` (the usual ensemble distillation target). One member with
  logits far larger than the others' (a boosted or KD-aware upload: 60-80x in results/threats)
  decides the target alone.
- ``norm_mean``: every member's logits standardised per sample, ``(z_k - mean_c z_k) / std_c z_k``,
  then averaged with the weights and rescaled by the median over members of ``std_c z_k``: no member
  counts more because its logits are larger, and the target keeps the members' typical scale (so
  a distillation temperature means what it did).
- ``norm_median``: as ``norm_mean`` but the coordinate-wise weighted median over members (the
  lower median, as ``torch.median``, for equal weights) instead of the weighted mean, and the
  weighted median of the stds as the scale: members holding less than half the weight, whatever
  their logits, cannot move the target beyond the other members' range.

For one member every rule gives ``z - mean_c z``, whose softmax is the member's own.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (input gradients still flow)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


COMBINE = ("logit_mean", "norm_mean", "norm_median")


def combine_logits(logits: torch.Tensor, weights: torch.Tensor, rule: str = "logit_mean") -> torch.Tensor:
    """Members' logits ``(K, B, C)`` -> the ensemble's ``(B, C)`` by ``rule`` (see the module docstring);
    ``weights`` (K,) sum to one."""
    w = weights.to(logits.dtype)
    if rule == "logit_mean":
        return torch.einsum("k,kbc->bc", w, logits)
    if rule not in COMBINE:
        raise ValueError(f"unknown ensemble rule {rule!r}; one of {', '.join(COMBINE)}")
    centred = logits - logits.mean(dim=2, keepdim=True)
    std = centred.pow(2).mean(dim=2, keepdim=True).clamp_min(1e-12).sqrt()  # (K, B, 1)
    z = centred / std
    scale = weighted_median(std, w)  # (B, 1)
    if rule == "norm_mean":
        return torch.einsum("k,kbc->bc", w, z) * scale
    return weighted_median(z, w) * scale


def same_arch(models: list[nn.Module]) -> bool:
    """All of ``models`` built by :func:`~fedabd.models.create_model` with one architecture (``.arch``)."""
    arch = getattr(models[0], "arch", None)
    return arch is not None and all(getattr(m, "arch", None) == arch for m in models)


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per coordinate over dim 0: the smallest value whose cumulative weight reaches half the
    total (``torch.median``'s lower median for equal weights); the gradient reaches that value."""
    ordered, idx = values.sort(dim=0)
    w = weights.to(values.dtype).view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    cum = w.gather(0, idx).cumsum(0)
    pos = (cum < 0.5 * w.sum(0, keepdim=True) - 1e-9).sum(0, keepdim=True).clamp_max(values.shape[0] - 1)
    return ordered.gather(0, pos).squeeze(0)


class Ensemble(nn.Module):
    """The members' logits combined by ``combine`` (:data:`COMBINE`; weights apply to the means).
    Members are frozen. ``group`` > 1: consecutive runs of ``group`` members are one member's copies
    (SV's shuffled teachers): their logits are averaged first, then the groups combined.

    ``forward(x, return_features=True)`` returns ``(logits, per_member_features)`` where
    ``per_member_features[k]`` is member k's feature-map list (channels of different members do
    not correspond, so they are not averaged here).
    """

    def __init__(self, members: list[nn.Module], weights: list[float] | torch.Tensor | None = None,
                 batched: bool | None = None, combine: str = "logit_mean", group: int = 1) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        if combine not in COMBINE:
            raise ValueError(f"unknown ensemble rule {combine!r}; one of {', '.join(COMBINE)}")
        if group < 1 or len(members) % group:
            raise ValueError(f"{len(members)} members do not split into groups of {group}")
        self.combine, self.group = combine, group
        self.members = nn.ModuleList(freeze(m) for m in members)
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(members),) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"ensemble weights must be {len(members)} finite non-negative numbers with a positive sum")
        self.register_buffer("weights", w / w.sum())
        same = same_arch(members)
        self.batched = (same and len(members) > 1) if batched is None else (batched and same)
        self.batched_on_cpu = bool(batched)  # auto (None): the CPU loops (module docstring)
        if self.batched:
            self._stack()
            base = copy.deepcopy(members[0]).to("meta")
            self._base = [base]  # a list, so it is not registered as a submodule

    def _stack(self) -> None:
        """The members' weights and buffers stacked for the vmapped call (rebuilt after a move)."""
        params, buffers = stack_module_state(list(self.members))
        self._params = {k: v.detach() for k, v in params.items()}
        self._buffers_stacked = buffers

    @property
    def arch(self):
        return getattr(self.members[0], "arch", None)

    def train(self, mode: bool = True):  # members stay in eval mode: teachers are frozen
        return super().train(False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.batched:  # from the moved members: ``fn`` may not apply to a stacked tensor (channels_last)
            self._stack()
        return out

    def vmapped(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs the members as one vmapped call (else one after another)."""
        return self.batched and (self.batched_on_cpu or x.device.type != "cpu")

    def member_logits(self, x: torch.Tensor, return_features: bool = False):
        """Logits of every member, shape ``(K, B, C)`` (and per-member features)."""
        if self.vmapped(x):
            base = self._base[0]

            def call(params, buffers, inp):
                return functional_call(base, (params, buffers), (inp,), {"return_features": return_features})

            out = torch.vmap(call, in_dims=(0, 0, None), randomness="different")(self._params, self._buffers_stacked, x)
            if return_features:
                logits, feats = out
                return logits, [[f[k] for f in feats] for k in range(len(self.members))]
            return out
        outs = [m(x, return_features=return_features) for m in self.members]
        if return_features:
            return torch.stack([o[0] for o in outs]), [o[1] for o in outs]
        return torch.stack(outs)

    def each_member(self, xs: torch.Tensor) -> torch.Tensor:
        """Member k on its own inputs ``xs[k]``: ``(K, N, ...)`` -> logits ``(K, N, C)`` (one batched
        call when the members share an architecture, as :meth:`member_logits`)."""
        if self.vmapped(xs):
            base = self._base[0]

            def call(params, buffers, inp):
                return functional_call(base, (params, buffers), (inp,))

            return torch.vmap(call, in_dims=(0, 0, 0), randomness="different")(self._params, self._buffers_stacked, xs)
        return torch.stack([m(x) for m, x in zip(self.members, xs)])

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if len(self.members) == 1:
            return self.members[0](x, return_features=return_features)
        out = self.member_logits(x, return_features)
        logits, feats = out if return_features else (out, None)
        w = self.weights
        if self.group > 1 and self.combine != "logit_mean":  # each member's copies averaged, then the rule
            # (for logit_mean the flat weighted mean over all copies is the same number, summed as before)
            k, g = len(self.members) // self.group, self.group
            wg = w.view(k, g)
            logits = torch.einsum("kg,kgbc->kbc", (wg / wg.sum(1, keepdim=True)).to(logits.dtype),
                                  logits.view(k, g, *logits.shape[1:]))
            w = wg.sum(1)
        combined = combine_logits(logits, w, self.combine)
        return (combined, feats) if return_features else combined


class SharedStemCopies(Ensemble):
    """``group`` copies of each of K models, every copy equal to its model in the stages before
    ``start`` (:class:`~fedabd.models.staged.Staged`; SV's shuffled copies permute later layers only).

    Same logits as ``Ensemble(copies, weights, combine=combine, group=group)``, computed with the
    shared stages run once per model (on its first copy, whose stages before ``start`` are the
    model's) instead of once per copy. Vmapped (``batched`` as :class:`Ensemble`'s: by default on an
    accelerator only): one call over the K models up to ``start``, one over the K x group copies from
    there. Otherwise one model, then each of its copies, after the other (plain module calls).
    ``copies[i * group + j]`` is model i's copy j; one architecture.
    """

    def __init__(self, copies: list[nn.Module], weights: list[float] | torch.Tensor, combine: str, group: int,
                 start: int, batched: bool | None = None) -> None:
        super().__init__(copies, weights, batched=batched, combine=combine, group=group)
        if start < 1:
            raise ValueError("SharedStemCopies needs start >= 1 (stage 0 is the first stage the copies share)")
        self.start = start

    def member_logits(self, x: torch.Tensor, return_features: bool = False):
        if return_features:
            return super().member_logits(x, return_features)
        k, g, start = len(self.members) // self.group, self.group, self.start
        if not self.vmapped(x):
            out = []
            for i in range(k):
                h = self.members[i * g](x, stop=start)
                out += [self.members[i * g + j](h, start=start) for j in range(g)]
            return torch.stack(out)
        base = self._base[0]

        def run(params, buffers, inp, **part):
            return functional_call(base, (params, buffers), (inp,), part)

        stems = [{n: v[::g] for n, v in d.items()} for d in (self._params, self._buffers_stacked)]
        h = torch.vmap(lambda p, b, inp: run(p, b, inp, stop=start), in_dims=(0, 0, None),
                       randomness="different")(*stems, x)
        per_copy = torch.vmap(lambda p, b, inp: run(p, b, inp, start=start), in_dims=(0, 0, None),
                              randomness="different")
        split = [{n: v.view(k, g, *v.shape[1:]) for n, v in d.items()} for d in (self._params, self._buffers_stacked)]
        logits = torch.vmap(per_copy, in_dims=(0, 0, 0), randomness="different")(*split, h)
        return logits.reshape(k * g, *logits.shape[2:])
