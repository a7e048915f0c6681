"""Classifier and generator registries: shapes, features, channels_last, parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fedabd.models import GENERATORS, MODELS, create_generator, create_model
from fedabd.models.staged import Staged, first_stage_using

SETTINGS = [(1, 28, 10), (3, 32, 43)]  # (channels, image_size, num_classes)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels,size,classes", SETTINGS)
def test_classifier_contract(name, channels, size, classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=channels, image_size=size)
    assert model.arch["name"] == name and model.arch["num_classes"] == classes
    x = torch.randn(4, channels, size, size)

    model.train()
    logits = model(x)
    assert logits.shape == (4, classes)
    logits2, feats = model(x, return_features=True)
    assert logits2.shape == (4, classes)
    assert isinstance(feats, list) and len(feats) >= 2
    assert all(isinstance(f, torch.Tensor) and f.dim() == 4 and f.shape[0] == 4 for f in feats)
    loss = nn.functional.cross_entropy(logits2, torch.randint(0, classes, (4,)))
    loss = loss + sum(f.pow(2).mean() for f in feats)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        ref = model(x)
        cl = model(x.contiguous(memory_format=torch.channels_last))
        cl_feats = model(x.contiguous(memory_format=torch.channels_last), return_features=True)[0]
    assert torch.allclose(ref, cl, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ref, cl_feats, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["lenet5", "wrn16_1", "resnet18"])
def test_other_input_sizes(name):
    model = create_model(name, num_classes=5, in_channels=2, image_size=16).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 16, 16)).shape == (2, 5)
    model = create_model(name, num_classes=5, in_channels=3, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_lenet_attributes_and_half():
    full = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    half = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    for m, widths in [(full, (6, 16, 120, 84)), (half, (3, 8, 60, 42))]:
        for attr in ("conv1", "conv2", "fc1", "fc2", "fc3"):
            assert hasattr(m, attr)
        assert isinstance(m.conv1, nn.Conv2d) and isinstance(m.conv2, nn.Conv2d)
        assert (m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features, m.fc2.out_features) == widths
        assert m.conv2.in_channels == m.conv1.out_channels
        assert m.fc2.in_features == m.fc1.out_features and m.fc3.in_features == m.fc2.out_features
        assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    # classic LeNet-5 on 28x28 (padded conv1): 16 x 5 x 5 into fc1
    assert full.fc1.in_features == 16 * 5 * 5
    assert n_params(half) < n_params(full)
    _, feats = full(torch.randn(2, 1, 28, 28), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(6, 14, 14), (16, 5, 5)]
    # unpadded 32x32 input follows the classic pipeline too
    full32 = create_model("lenet5", num_classes=10, in_channels=3, image_size=32)
    assert full32.fc1.in_features == 16 * 5 * 5


@pytest.mark.parametrize("name,k", [("wrn16_1", 1), ("wrn16_2", 2), ("wrn40_1", 1), ("wrn40_2", 2)])
def test_wrn_features(name, k):
    model = create_model(name, num_classes=10, in_channels=3, image_size=32)
    _, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert len(feats) == 3
    assert [f.shape[1] for f in feats] == [16 * k, 32 * k, 64 * k]
    assert [f.shape[-1] for f in feats] == [32, 16, 8]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name,expected", [("wrn16_1", 0.175e6), ("wrn16_2", 0.69e6), ("wrn40_2", 2.2e6),
                                           ("resnet18", 11.17e6)])
def test_param_counts_cifar10(name, expected):
    model = create_model(name, num_classes=10, in_channels=3, image_size=32)
    assert abs(n_params(model) - expected) / expected < 0.05


def test_resnet18_features():
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    _, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


@pytest.mark.parametrize("name", GENERATORS.names())
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 30, 64])
def test_generator_shapes(name, channels, size):
    torch.manual_seed(0)
    gen = create_generator(name, nz=16, channels=channels, image_size=size, width=8)
    z = torch.randn(5, 16)
    out = gen(z)
    assert out.shape == (5, channels, size, size)
    out.mean().backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    gen.eval()
    with torch.no_grad():
        assert gen(z).shape == (5, channels, size, size)


def test_cmi_output_range():
    gen = create_generator("cmi", nz=32, channels=3, image_size=32, width=16)
    out = gen(torch.randn(8, 32) * 10)
    assert out.min() >= 0 and out.max() <= 1
    # sigmoid output: no BN head
    assert isinstance(list(gen.modules())[-1], nn.Sigmoid)


def test_zskt_paper_width():
    gen = create_generator("zskt", nz=100, channels=3, image_size=32, width=64)
    assert gen.l1.out_features == 128 * 8 * 8
    assert isinstance(gen.head, nn.BatchNorm2d) and gen.head.affine
    out = gen(torch.randn(4, 100))
    # affine BN output (train mode): roughly zero-mean, unit-variance per channel
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_speed_switches_auto_on_for_batchnorm_convnets_only():
    import torch

    from fedabd.device import bf16_supported, speed_switches

    cpu = torch.device("cpu")
    assert speed_switches([create_model("lenet5", 10, 1, 28)], cpu) == (False, False)
    cl, bf = speed_switches([create_model("wrn16_1", 10, 3, 32)], cpu)
    assert cl is True and bf == bf16_supported(cpu)
    assert speed_switches([create_model("wrn16_1", 10, 3, 32)], cpu, channels_last=False, bf16=False) == (False, False)


@pytest.mark.parametrize("name", MODELS.names())
def test_a_forward_split_between_any_two_stages_gives_the_same_logits(name):
    """Staged classifiers (every shipped one): stopping after stage s and resuming there is the whole
    forward, and the feature maps are the stages marked as features."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    assert isinstance(m, Staged)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = m(x, return_features=True)
    for s in range(len(m.stages()) + 1):
        assert torch.equal(m(m(x, stop=s), start=s), logits)
    assert len(feats) == sum(st.feature for st in m.stages())


def test_first_stage_using_names_the_stage_that_runs_a_layer():
    lenet = create_model("lenet5", 10, 1, 28)
    assert first_stage_using(lenet, ["fc2", "conv2"]) == 1 and first_stage_using(lenet, ["fc1"]) == 2
    wrn = create_model("wrn16_1", 10, 3, 32)  # stem, 2 blocks per group x 3 groups, head
    assert first_stage_using(wrn, ["block3.layer.0.conv1"]) == 5
    assert first_stage_using(wrn, ["nothing"]) is None and first_stage_using(nn.Linear(2, 2), ["weight"]) is None


def test_the_cpu_max_pool_gives_max_pool2d_bitwise_ties_nan_odd_sizes_and_layouts_included():
    """LeNet's 2x2 pool: maxima of strided views without a gradient, F.max_pool2d with one; both
    exactly what F.max_pool2d gives, so no result moves by a bit."""
    import torch.nn.functional as F

    from fedabd.models.pool import max_pool2x2
    ties = torch.tensor([[[[1., 1., 0., 2.], [1., 0., 2., 2.], [3., 3., 0., 0.], [3., 3., 0., 0.]]]])
    nan = ties.clone()
    nan[0, 0, 0, 1] = float("nan")
    odd = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    for x in (ties, nan, odd, odd.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            assert torch.equal(max_pool2x2(x).nan_to_num(-7.0), F.max_pool2d(x, 2).nan_to_num(-7.0))
    assert max_pool2x2(nan)[0, 0, 0, 0].isnan() and max_pool2x2(ties).tolist() == [[[[1., 2.], [3., 0.]]]]
    x = odd.clone().requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    max_pool2x2(x).square().sum().backward()
    F.max_pool2d(y, 2).square().sum().backward()
    assert torch.equal(x.grad, y.grad)  # with a gradient: max_pool2d's own (first maximum of a window)
