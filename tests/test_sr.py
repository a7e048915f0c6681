"""Self-Retrospection (ABD's final phase): hypergradient correctness, trigger synthesis, hook
behaviour, and an end-to-end check that it lowers the ASR of a tiny backdoored student."""
from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedabd.defenses.abd.sr import (
    SelfRetrospection,
    SRConfig,
    _kl,
    implicit_hypergradient,
    outer_loss,
    patched_subset,
    search_mask,
    sr_forward_mode,
    synthesize_trigger,
)
from fedabd.distill.base import Defense, Distiller


class Tiny(nn.Module):
    """conv3x3 (1->3) - tanh - linear(48->4) on 1x4x4 inputs: smooth, so FD checks are exact."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(48, 4)

    def forward(self, x, return_features=False):
        h = torch.tanh(self.bn(self.conv(x)))
        out = self.fc(h.flatten(1))
        return (out, [h]) if return_features else out


def _tiny(seed=0, bn=False, dtype=torch.float64):
    torch.manual_seed(seed)
    m = Tiny(bn=bn).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _l_in(model, x, d, cfg):
    return -_kl(model(x), model(x + d)) + cfg.inner_reg * d.pow(2).sum()


def _fixed_point(model, x, start, cfg, phi_iters=30, newton_iters=20):
    """delta*(theta) = Phi(delta*, theta), i.e. a stationary point of L_in: a few Phi iterations
    from ``start``, then Newton's method on grad_d L_in (exact Hessian; delta is only 16 numbers).
    Returns (delta*, ||grad_d L_in(delta*)||, Hessian at delta*)."""
    d = start.clone()
    for _ in range(phi_iters):
        d.requires_grad_(True)
        (g,) = torch.autograd.grad(_l_in(model, x, d, cfg), d)
        d = (d - cfg.inner_lr * g).detach()
    n = d.numel()

    def f(v):
        return _l_in(model, x, v.view_as(start), cfg)

    for _ in range(newton_iters):
        v = d.flatten().requires_grad_(True)
        (g,) = torch.autograd.grad(f(v), v)
        if float(g.norm()) < 1e-13:
            break
        h = torch.autograd.functional.hessian(f, v.detach())
        d = (v.detach() - torch.linalg.solve(h, g)).view_as(start)
    v = d.flatten().requires_grad_(True)
    (g,) = torch.autograd.grad(f(v), v)
    h = torch.autograd.functional.hessian(f, v.detach()).reshape(n, n)
    return d.detach(), float(g.norm()), h


def _dot(a, b):
    return sum(float((x * y).sum()) for x, y in zip(a, b))


# -- hypergradient ------------------------------------------------------------------------------

def test_hypergradient_matches_finite_differences():
    m = _tiny()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    start = 0.5 * torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    # inner_reg 0.05 keeps the optimum away from 0 (where everything is trivially 0) and,
    # with inner_lr 1.0, Phi is a contraction around it.
    # inner_clean_grad: L_in's clean branch differentiable, so the hypergradient is the exact
    # total derivative (the authors' default detaches it: see the next test)
    cfg = SRConfig(inner_reg=0.05, inner_lr=1.0, fixed_point_iters=400, inner_clean_grad=True)
    idx = torch.tensor([1, 5])
    d_star, res, hess = _fixed_point(m, x, start, cfg)
    assert res < 1e-11 and float(d_star.norm()) > 1.0  # a converged, non-trivial fixed point
    # Phi is a contraction there: spectral radius of dPhi/dd = I - inner_lr * H is < 1
    rho = float(torch.linalg.eigvalsh(torch.eye(hess.shape[0], dtype=hess.dtype) - cfg.inner_lr * hess).abs().max())
    assert rho < 0.98, rho  # rho^K is the truncation factor of the Neumann series

    params = list(m.parameters())
    hyper = implicit_hypergradient(m, x, d_star, idx, cfg)
    assert [h.shape for h in hyper] == [p.shape for p in params]
    assert all(p.grad is None for p in params)  # .grad untouched

    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    eps = 1e-6
    vals = []
    for sign in (1.0, -1.0):
        mm = copy.deepcopy(m)
        with torch.no_grad():
            for p, du in zip(mm.parameters(), u):
                p.add_(sign * eps * du)
        d, res, _ = _fixed_point(mm, x, d_star, cfg, phi_iters=0)
        assert res < 1e-11
        vals.append(float(outer_loss(mm, x, d, idx).detach()))
    fd = (vals[0] - vals[1]) / (2 * eps)
    analytic = _dot(hyper, u)
    rel = abs(fd - analytic) / abs(fd)
    print(f"FD {fd:.8f} hypergradient {analytic:.8f} rel.err {rel:.2e} (contraction {rho:.3f})")
    assert rel < 1e-3

    # K = 1 (v_0 = 0, one term): the truncated estimate dL_out/dth + (dPhi/dth)^T dL_out/dd, by hand
    cfg0 = SRConfig(inner_reg=0.05, inner_lr=1.0, fixed_point_iters=1, inner_clean_grad=True)
    trunc = implicit_hypergradient(m, x, d_star, idx, cfg0)
    d = d_star.clone().requires_grad_(True)
    l_out = outer_loss(m, x, d, idx)
    gd, *gth = torch.autograd.grad(l_out, [d, *params])
    l_in = -_kl(m(x), m(x + d)) + cfg0.inner_reg * d.pow(2).sum()
    (gin,) = torch.autograd.grad(l_in, d, create_graph=True)
    phi = d - cfg0.inner_lr * gin
    jt = torch.autograd.grad(phi, params, grad_outputs=gd)
    for a, b, c in zip(trunc, gth, jt):
        torch.testing.assert_close(a, b + c)
    trunc_dot = _dot(trunc, u)
    assert abs(trunc_dot - fd) / abs(fd) > 1e-2  # truncation is visibly different from the truth
    print(f"K=1 truncated estimate {trunc_dot:.6f} (rel.err {abs(trunc_dot - fd) / abs(fd):.2e})")
    # K = 0: v stays 0, only the direct term dL_out/dth
    direct = implicit_hypergradient(m, x, d_star, idx, SRConfig(inner_reg=0.05, inner_lr=1.0, fixed_point_iters=0))
    for a, b in zip(direct, gth):
        torch.testing.assert_close(a, b)


def _neumann_by_hand(m, x, d0, idx, cfg, clean_grad, detach_outer, k):
    """The hypergradient written out: v_0 = 0, k times v <- J^T v + g, then dL_out/dth + (dPhi/dth)^T v."""
    params = list(m.parameters())
    d = d0.clone().requires_grad_(True)
    clean_out = m(x)
    l_out = _kl(clean_out.detach() if detach_outer else clean_out, m(x + d * _rows(x, idx)), reduction="none").sum() / x.shape[0]
    gd, *gth = torch.autograd.grad(l_out, [d, *params])
    clean_in = m(x) if clean_grad else m(x).detach()
    l_in = -_kl(clean_in, m(x + d)) + cfg.inner_reg * d.pow(2).sum()
    (gin,) = torch.autograd.grad(l_in, d, create_graph=True)
    phi = d - cfg.inner_lr * gin
    v = torch.zeros_like(d)
    for _ in range(k):
        (jv,) = torch.autograd.grad(phi, d, grad_outputs=v, retain_graph=True)
        v = jv + gd
    ind = torch.autograd.grad(phi, params, grad_outputs=v)
    return [a + b for a, b in zip(gth, ind)]


def _rows(x, idx):
    mask = torch.zeros(x.shape[0], *([1] * (x.dim() - 1)), dtype=x.dtype)
    mask[idx] = 1
    return mask


def test_hypergradient_defaults_are_the_authors():
    """v_0 = 0 with K = 5 terms; L_in's clean branch without gradient; L_out's clean branch detached
    only when asked (ZSKT); each pinned against the series written out by hand."""
    m = _tiny()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    d0 = 0.5 * torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([2, 6])
    cfg = SRConfig()
    assert cfg.fixed_point_iters == 5 and not cfg.inner_clean_grad
    for detach_outer in (False, True):
        got = implicit_hypergradient(m, x, d0, idx, cfg, detach_clean=detach_outer)
        want = _neumann_by_hand(m, x, d0, idx, cfg, clean_grad=False, detach_outer=detach_outer, k=5)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    # the three forms differ from each other (each switch matters on this model)
    a = implicit_hypergradient(m, x, d0, idx, cfg)
    b = implicit_hypergradient(m, x, d0, idx, SRConfig(inner_clean_grad=True))
    c = implicit_hypergradient(m, x, d0, idx, cfg, detach_clean=True)
    assert _dot(a, a) > 0 and abs(_dot(a, a) - _dot(a, b)) > 1e-6 * _dot(a, a)
    assert abs(_dot(a, a) - _dot(a, c)) > 1e-6 * _dot(a, a)


class _GradRecorder(nn.Module):
    """Wraps a model and records, per call, whether autograd was recording."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(torch.is_grad_enabled())
        return self.inner(x)


def test_trigger_search_and_inner_objective_run_the_clean_branch_without_gradient():
    rec = _GradRecorder(_tiny(dtype=torch.float32))
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    synthesize_trigger(rec, x, SRConfig(trigger_steps=3), torch.Generator().manual_seed(0))
    # clean once without gradient, then one perturbed call per step with gradient, then the final check
    assert rec.calls[0] is False and rec.calls[1:4] == [True, True, True]
    from fedabd.defenses.abd.sr import _phi
    rec.calls.clear()
    d = torch.zeros(1, 1, 4, 4, requires_grad=True)
    with torch.enable_grad():
        _phi(rec, x, d, SRConfig())
    assert rec.calls == [False, True]  # clean branch of L_in under no_grad, perturbed branch with


def test_outer_loss_only_patched_samples_count():
    m = _tiny()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    d = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    idx = torch.tensor([0, 3])
    per = _kl(m(x), m(x + d), reduction="none")
    torch.testing.assert_close(outer_loss(m, x, d, idx), per[idx].sum() / 6)
    # batch-dependent model (BN in train mode): the masked full-batch path
    mb = _tiny(bn=True).train()
    mask = torch.zeros(6, 1, 1, 1, dtype=torch.float64)
    mask[idx] = 1
    ref = _kl(mb(x), mb(x + d * mask), reduction="none").sum() / 6
    torch.testing.assert_close(outer_loss(mb, x, d, idx), ref)


def test_patched_subset_size_and_seed():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = patched_subset(128, 0.02, g1), patched_subset(128, 0.02, g2)
    assert a.tolist() == b.tolist() and a.numel() == 2
    assert patched_subset(10, 0.02).numel() == 1  # at least one sample
    assert patched_subset(10, 1.0).numel() == 10


# -- trigger synthesis ----------------------------------------------------------------------------

def test_trigger_synthesis_increases_kl_and_escapes_zero_with_adam():
    m = _tiny(dtype=torch.float32)
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for init in ("noise", "zero"):
        cfg = SRConfig(trigger_init=init, trigger_steps=10)
        delta, obj = synthesize_trigger(m, x, cfg, torch.Generator().manual_seed(0))
        assert delta.shape == (1, 1, 4, 4) and not delta.requires_grad
        assert float(delta.norm()) > 0.1  # moved, also from exactly zero (Adam's normalised step)
        with torch.no_grad():
            assert obj > float(_kl(m(x), m(x))) + 1e-3
    assert all(p.grad is None for p in m.parameters())  # no parameter gradients accumulated
    # the trap the spec warns about: at delta = 0 the objective's gradient is exactly 0
    d0 = torch.zeros(1, 1, 4, 4, requires_grad=True)
    (g0,) = torch.autograd.grad(_kl(m(x).detach(), m(x + d0)), d0)
    assert float(g0.abs().max()) < 1e-6


def test_trigger_restarts_and_norm_bound():
    m = _tiny(dtype=torch.float32)
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    one, obj1 = synthesize_trigger(m, x, SRConfig(restarts=1), torch.Generator().manual_seed(0))
    _, obj3 = synthesize_trigger(m, x, SRConfig(restarts=3), torch.Generator().manual_seed(0))
    assert obj3 >= obj1 - 1e-6  # first restart is the same search; the best one is kept
    bounded, _ = synthesize_trigger(m, x, SRConfig(trigger_norm_bound=0.5), torch.Generator().manual_seed(0))
    assert float(bounded.norm()) <= 0.5 + 1e-5


# -- the Defense hook -----------------------------------------------------------------------------

class _FakeDistiller:
    def __init__(self, teacher, student, seed=0):
        self.teacher, self.student, self.seed = teacher, student, seed
        self.device = torch.device("cpu")
        self.iteration_index = 7

    def prep(self, x):
        return x


def test_final_phase_step_adds_to_grad_keeps_teacher_and_bn_stats(caplog):
    for bn_mode in ("eval", "train"):
        teacher = _tiny(seed=1, bn=True, dtype=torch.float32).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = _tiny(seed=2, bn=True, dtype=torch.float32).train()
        x = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        # one ordinary training forward so the BN statistics are non-trivial
        student(x).sum().backward()
        before = {k: v.clone() for k, v in student.state_dict().items()}
        t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
        existing = [p.grad.clone() for p in student.parameters()]

        sr = SelfRetrospection(SRConfig(portion=0.2, bn_mode=bn_mode))
        dist = _FakeDistiller(teacher, student)
        sr.setup(dist)
        assert sr.source == "teacher"  # the default: the authors' defence runs take it from the teacher
        with caplog.at_level(logging.INFO, logger="fedabd.defenses.abd.sr"):
            sr.enter_final_phase(dist)
        assert "iteration 7" in caplog.text
        metrics = sr.final_phase_step(dist, x)
        assert set(metrics) >= {"sr_trigger_kl", "sr_outer", "sr_delta_norm"}
        assert all(isinstance(v, float) for v in metrics.values())
        assert metrics["sr_trigger_kl"] > 0 and metrics["sr_outer"] > 0

        # added on top of the existing gradient, equal to weight * hypergradient
        sr2 = SelfRetrospection(SRConfig(portion=0.2, bn_mode=bn_mode, weight=2.0))
        s2 = copy.deepcopy(student)
        for p in s2.parameters():
            p.grad = None
        sr2.final_phase_step(_FakeDistiller(teacher, s2), x)
        for p, e, q in zip(student.parameters(), existing, s2.parameters()):
            torch.testing.assert_close(p.grad - e, q.grad / 2.0, rtol=1e-4, atol=1e-6)
        assert any(float((p.grad - e).abs().max()) > 0 for p, e in zip(student.parameters(), existing))

        after = student.state_dict()
        for k, v in before.items():  # parameters and BN running stats untouched by SR
            assert torch.equal(after[k], v), (bn_mode, k)
        assert student.training and student.bn.training  # modes restored
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, t_before[k])
        assert all(p.grad is None for p in teacher.parameters())
        st = sr.state()
        assert st["sr_steps"] == 1 and st["started_at"] == 7 and st["config"]["bn_mode"] == bn_mode


def test_sr_forward_mode_restores_flags():
    m = _tiny(bn=True).train()
    m.fc.eval()
    with sr_forward_mode(m, "eval"):
        assert not any(mod.training for mod in m.modules())
    assert m.training and m.bn.training and not m.fc.training


def test_config_and_trigger_source():
    sr = SelfRetrospection(SRConfig(fraction=0.05))
    assert sr.final_phase_fraction == 0.05
    with pytest.raises(ValueError):
        SRConfig(trigger_init="ones")
    with pytest.raises(ValueError):
        SRConfig(trigger_source="generator")
    with pytest.raises(ValueError):
        SRConfig(fraction=0.0)
    with pytest.raises(ValueError):
        SRConfig(search="neural_cleanse")
    with pytest.raises(ValueError):
        SRConfig(search="mask", mask_steps=0)
    for bad in (dict(trigger_source="auto"), dict(divergence="kl2"), dict(lr_schedule="linear")):
        with pytest.raises(ValueError):
            SRConfig(**bad)
    assert SRConfig().trigger_source == "teacher"
    phase = sr.final_phase_optimizer  # the authors' SR phase: fresh optimiser, cosine to 0, no clipping
    assert phase.fresh and phase.schedule == "cosine" and not phase.clip
    old = SelfRetrospection(SRConfig(fresh_optimizer=False, lr_schedule="constant", clip=True)).final_phase_optimizer
    assert not old.fresh and old.schedule == "constant" and old.clip


def test_mask_search_finds_a_one_pixel_trigger():
    class CornerPixel(nn.Module):
        """Class 1 fires on the bottom-right pixel; class 0 otherwise."""

        def forward(self, x):
            one = 20.0 * x[:, 0, 3, 3] - 5.0
            return torch.stack([torch.zeros_like(one), one], 1)

    x = 0.1 * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    lo, hi = torch.tensor(-1.0).view(1, 1, 1, 1), torch.tensor(1.0).view(1, 1, 1, 1)
    trig = search_mask(CornerPixel(), x, 1, lo, hi, SRConfig(search="mask"), steps=200)
    m, p = trig.parts()
    assert int(m.flatten().argmax()) == 15 and float(m[0, 0, 3, 3]) > 0.5  # the corner pixel
    assert trig.size() < 2.0  # and little else
    assert float(p[0, 0, 3, 3]) > 0.5  # a bright pattern there
    assert bool((CornerPixel()(trig.stamp(x)).argmax(1) == 1).all())
    assert m.min() >= 0 and m.max() <= 1 and p.min() >= -1 and p.max() <= 1


class _RowsTeacher(nn.Module):
    """4 classes on 1x4x4 inputs, class c from the mean of row c; with ``trigger`` class 1 also
    fires on the bottom-right pixel (a one-pixel backdoor)."""

    def __init__(self, trigger: bool) -> None:
        super().__init__()
        self.trigger = trigger

    def forward(self, x):
        out = 10.0 * x[:, 0].mean(2)
        if self.trigger:
            out = out + F.one_hot(torch.tensor(1), 4) * (20.0 * x[:, 0, 3, 3:4] - 5.0)
        return out


def test_auto_search_uses_the_mask_only_when_one_class_stands_out(caplog):
    from fedabd.data.base import DatasetInfo

    info = DatasetInfo("tiny", 4, 1, 4, (0.5,), (0.5,))
    x = 0.1 * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    common = dict(portion=0.25, mask_steps=500, mask_l1=0.05)

    def run(trigger, search, steps=3):
        dist = _FakeDistiller(_RowsTeacher(trigger), _tiny(seed=2, dtype=torch.float32))
        dist.info = info
        sr = SelfRetrospection(SRConfig(search=search, **common))
        grads, metrics = [], []
        for _ in range(steps):
            for p in dist.student.parameters():
                p.grad = None
            metrics.append(sr.final_phase_step(dist, x))
            grads.append([p.grad.clone() for p in dist.student.parameters()])
        return sr, grads, metrics

    with caplog.at_level(logging.INFO, logger="fedabd.defenses.abd.sr"):
        sr, grads, metrics = run(True, "auto")
    st = sr.state()
    assert st["search"] == "mask" and st["mask_class"] == 1 and st["mask_ratio"] < 0.6, st
    assert "trigger: that mask" in caplog.text
    _, mask_grads, mask_metrics = run(True, "mask")
    assert metrics == mask_metrics
    for a, b in zip(grads, mask_grads):
        assert all(torch.equal(u, v) for u, v in zip(a, b))

    # no class stands out (no backdoor): the paper's search, and exactly the run it would have been
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedabd.defenses.abd.sr"):
        sr, grads, metrics = run(False, "auto")
    st = sr.state()
    assert st["search"] == "perturbation" and st["mask_ratio"] > 0.9, st
    assert "perturbation search (ratio not below 0.6)" in caplog.text
    _, pert_grads, pert_metrics = run(False, "perturbation")
    assert metrics == pert_metrics and "sr_trigger_kl" in metrics[0]
    for a, b in zip(grads, pert_grads):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="mask_ratio"):
        SRConfig(search="auto", mask_ratio=1.5)


# -- end to end: SR unlearns a backdoor of a tiny student -----------------------------------------

def _stamp(x):
    x = x.clone()
    x[..., -5:-1, -5:-1] = 1.0  # white 4x4 square, 1 px from the bottom-right corner
    return x


@pytest.mark.slow
def test_sr_lowers_asr_of_backdoored_student():
    import time

    from fedabd.data import load_dataset
    from fedabd.data.base import to_float
    from fedabd.models import create_model

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train = load_dataset("mnist_subset", "train")
    test = load_dataset("mnist_subset", "test")
    info = train.info
    x_all = to_float(train.images)
    y_all = train.labels.clone()
    pool = torch.nonzero(y_all != 0).flatten()
    poisoned = pool[torch.randperm(pool.numel(), generator=g)[: len(y_all) // 10]]
    x_all[poisoned] = _stamp(x_all[poisoned])
    y_all[poisoned] = 0
    xn = info.normalize(x_all)
    xt, yt = to_float(test.images[:1000]), test.labels[:1000]
    xt_clean = info.normalize(xt)
    xt_trig = info.normalize(_stamp(xt[yt != 0]))

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            acc = float((m(xt_clean).argmax(1) == yt).float().mean())
            asr = float((m(xt_trig).argmax(1) == 0).float().mean())
        m.train()
        return acc, asr

    model = create_model("lenet5_half", 10, 1, 28)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(400):
        i = torch.randint(0, len(y_all), (64,), generator=g)
        loss = F.cross_entropy(model(xn[i]), y_all[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc0, asr0 = evaluate(model)
    assert asr0 > 0.9, (acc0, asr0)

    keep = torch.ones(len(y_all), dtype=torch.bool)
    keep[poisoned] = False
    clean = xn[keep][:2000]

    class CleanKD(Distiller):
        """KD from the (backdoored, frozen) model on clean real images; SR on the same batches."""

        @property
        def total_iterations(self):
            return self.cfg.steps

        def setup(self):
            self.student_opt = torch.optim.Adam(self.student.parameters(), self.cfg.sr_lr)

        def iteration(self, it):
            x = clean[torch.randint(0, len(clean), (32,), generator=self.generator)]
            loss = _kl(self.teacher_logits(x), self.student_logits(x))
            self.student_opt.zero_grad(set_to_none=True)
            loss.backward()
            out = self.defense.final_phase_step(self, x) if self.in_final_phase else {}
            self.student_opt.step()
            return out

    # R = 20 (the paper's other setting) unlearns much faster than R = 10 here (stronger trigger);
    # portion 0.25 as in the calibration note (0.2 beat 0.02); LR 1e-3 (a control at 3e-3 already
    # erodes the backdoor by itself, which would make the comparison less clean).
    steps, lr = 150, 1e-3
    results, seconds = {}, {}
    for name, defense in (("control", Defense()),
                          ("sr", SelfRetrospection(SRConfig(fraction=1.0, portion=0.25, trigger_steps=20))),
                          ("mask", SelfRetrospection(SRConfig(fraction=1.0, portion=0.25, search="mask")))):
        student = copy.deepcopy(model)
        t0 = time.perf_counter()
        res = CleanKD(copy.deepcopy(model), student, info, SimpleNamespace(steps=steps, sr_lr=lr), seed=0,
                      defense=defense).run()
        seconds[name] = time.perf_counter() - t0
        results[name] = evaluate(student)
        if name != "control":
            assert res.defense_state["sr_steps"] == steps and res.defense_state["started_at"] == 0
        if name == "mask":  # the class with the smallest mask is the backdoor's target
            assert res.defense_state["mask_class"] == 0, res.defense_state["mask_sizes"]
    print(f"before {acc0:.3f}/{asr0:.3f}  control {results['control']}  SR {results['sr']}  "
          f"mask SR {results['mask']}  time control {seconds['control']:.1f}s SR {seconds['sr']:.1f}s "
          f"mask SR {seconds['mask']:.1f}s")
    acc_c, asr_c = results["control"]
    acc_s, asr_s = results["sr"]
    assert asr_c > 0.9 * asr0  # clean KD alone (same steps, same LR) does not remove the backdoor
    assert asr_s <= 0.7 * asr0  # SR: >= 30 % relative drop
    assert results["mask"][1] <= 0.7 * asr0  # the mask search's SR too
    assert asr_s < asr_c - 0.3
    assert acc_s > acc0 - 0.07  # clean accuracy within a few points (measured: -6.0 with the authors' SR phase; paper: ABD costs 3-10)
