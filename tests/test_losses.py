"""Distillation losses on hand-computed values (fedabd/distill/losses.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedabd.distill.losses import attention_loss, attention_map, hinton_loss, kd_loss, kl_div

LN3 = math.log(3.0)
# p_T = (1/2, 1/2), p_S = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
KL_REF = 0.5 * math.log(4.0 / 3.0)


def test_kl_div_known_value():
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, LN3]])
    assert kl_div(t, s).item() == pytest.approx(KL_REF, rel=1e-6)


def test_kl_div_is_teacher_first_and_asymmetric():
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, LN3]])
    # KL(S || T) = 1/4 ln(1/2) + 3/4 ln(3/2)
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_div(s, t).item() == pytest.approx(reverse, rel=1e-6)
    assert abs(kl_div(s, t).item() - kl_div(t, s).item()) > 1e-3


def test_kl_div_temperature_scales_logits():
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, 2 * LN3]])
    assert kl_div(t, s, tau=2.0).item() == pytest.approx(KL_REF, rel=1e-6)
    assert kd_loss(t, s, tau=2.0).item() == pytest.approx(4.0 * KL_REF, rel=1e-6)


def test_kl_div_reductions():
    t = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    s = torch.tensor([[0.0, LN3], [1.0, -2.0]])  # second sample: identical -> 0
    per = kl_div(t, s, reduction="none")
    assert per.shape == (2,)
    assert per[0].item() == pytest.approx(KL_REF, rel=1e-6)
    assert per[1].item() == pytest.approx(0.0, abs=1e-7)
    assert kl_div(t, s).item() == pytest.approx(KL_REF / 2, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        kl_div(t, s, reduction="sum")


def test_kl_div_matches_torch_and_is_nonnegative():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 10, generator=g) * 3
    s = torch.randn(8, 10, generator=g) * 3
    ref = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    assert kl_div(t, s).item() == pytest.approx(ref.item(), rel=1e-5)
    assert (kl_div(t, s, reduction="none") >= -1e-6).all()
    assert kl_div(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # shift invariance of softmax
    assert kl_div(t + 5.0, s - 2.0).item() == pytest.approx(kl_div(t, s).item(), rel=1e-5)


def test_kl_div_float32_under_bf16_inputs():
    t = torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16)
    s = torch.tensor([[0.0, LN3]], dtype=torch.bfloat16)
    out = kl_div(t, s)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(KL_REF, rel=2e-2)


def test_kl_div_gradient_reaches_both_sides():
    t = torch.tensor([[0.0, 0.0]], requires_grad=True)
    s = torch.tensor([[0.0, LN3]], requires_grad=True)
    kl_div(t, s).backward()
    # d KL / d s = p_S - p_T = (1/4 - 1/2, 3/4 - 1/2)
    assert torch.allclose(s.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-6)
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_hinton_loss_known_value():
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, 2 * LN3]])
    y = torch.tensor([1])
    # alpha * tau^2 * KL_tau + (1 - alpha) * CE; CE = -log(9 / 10) since softmax(0, 2 ln 3) = (1/10, 9/10)
    expected = 0.95 * 4.0 * KL_REF + 0.05 * math.log(10.0 / 9.0)
    assert hinton_loss(t, s, y, alpha=0.95, tau=2.0).item() == pytest.approx(expected, rel=1e-6)
    # alpha = 0: pure cross-entropy; alpha = 1: pure KD term
    assert hinton_loss(t, s, y, alpha=0.0, tau=2.0).item() == pytest.approx(math.log(10 / 9), rel=1e-6)
    assert hinton_loss(t, s, y, alpha=1.0, tau=2.0).item() == pytest.approx(4.0 * KL_REF, rel=1e-6)


def _feat() -> torch.Tensor:
    # (B=1, C=2, H=1, W=2): channel 0 = [1, 2], channel 1 = [3, 0]
    return torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])


def test_attention_map_known_value():
    # mean_c f^2 = [(1 + 9) / 2, (4 + 0) / 2] = [5, 2]; L2-normalised: [5, 2] / sqrt(29)
    a = attention_map(_feat())
    assert a.shape == (1, 2)
    assert torch.allclose(a, torch.tensor([[5.0, 2.0]]) / math.sqrt(29.0), atol=1e-7)


def test_attention_map_properties():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 4, 5, 6, generator=g)
    a = attention_map(f)
    assert a.shape == (3, 30) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(attention_map(7.0 * f), a, atol=1e-6)      # scale invariant
    assert torch.allclose(attention_map(-f), a, atol=1e-7)           # sign invariant (squares)
    # channel count does not matter, only the spatial layout: a map with duplicated channels
    assert torch.allclose(attention_map(torch.cat([f, f], 1)), a, atol=1e-6)
    # channels_last memory format gives the same map
    assert torch.allclose(attention_map(f.contiguous(memory_format=torch.channels_last)), a, atol=1e-7)
    assert attention_map(f.to(torch.bfloat16)).dtype == torch.float32


def test_attention_loss_known_value():
    # a(S) = [5, 2] / sqrt 29, a_T = [1, 0]:
    # mean_j (a_S - a_T)_j^2 = ((5/sqrt29 - 1)^2 + 4/29) / 2 = 1 - 5/sqrt29
    expected = 1.0 - 5.0 / math.sqrt(29.0)
    out = attention_loss([_feat()], [torch.tensor([[1.0, 0.0]])])
    assert out.item() == pytest.approx(expected, rel=1e-6)
    # two layers are summed; a batch of two equal samples has the same mean
    two = attention_loss([_feat(), _feat()], [torch.tensor([[1.0, 0.0]])] * 2)
    assert two.item() == pytest.approx(2 * expected, rel=1e-6)
    batch = attention_loss([torch.cat([_feat(), _feat()])], [torch.tensor([[1.0, 0.0], [1.0, 0.0]])])
    assert batch.item() == pytest.approx(expected, rel=1e-6)


def test_attention_loss_zero_on_match_and_gradient():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    assert attention_loss([f], [attention_map(f.detach())]).item() == pytest.approx(0.0, abs=1e-12)
    loss = attention_loss([f], [attention_map(torch.randn(2, 5, 4, 4, generator=g))])
    assert loss.item() > 0
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_attention_loss_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="feature maps"):
        attention_loss([_feat(), _feat()], [torch.tensor([[1.0, 0.0]])])
