"""Tests of the ten registered backdoor triggers (fedabd.attacks.triggers)."""
from __future__ import annotations

import math

import pytest
import torch

from fedabd.attacks import ATTACKS, Attack, attack_from_saved, create_attack, poison_dataset
from fedabd.data.base import DatasetInfo, ImageSet, to_float

PAPER_ATTACKS = {"badnet_grid", "badnet_sq", "trojan_3x3", "trojan_8x8", "trojan_wm",
                 "l0_inv", "l2_inv", "blend", "sig", "cl"}
NAMES = ATTACKS.names()
SEEDED = ["trojan_3x3", "trojan_8x8", "trojan_wm", "l0_inv", "l2_inv", "blend"]
CLEAN_LABEL = ["sig", "cl"]

INFOS = {
    "1x28": DatasetInfo("mnistlike", 10, 1, 28, (0.1307,), (0.3081,), 0),
    "3x32": DatasetInfo("cifarlike", 10, 3, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 0),
    "3x40": DatasetInfo("odd40", 7, 3, 40, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3),
}
C32 = INFOS["3x32"]


def images(info: DatasetInfo, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_float(torch.randint(0, 256, (n, *info.shape), generator=g, dtype=torch.uint8))


def image_set(info: DatasetInfo, n: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *info.shape), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % info.num_classes
    return ImageSet(x, y[torch.randperm(n, generator=g)], info)


def make(name: str, info: DatasetInfo, seed: int = 0, **params) -> Attack:
    return create_attack(name, info, seed=seed, **params)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(H,W) bool: pixel positions where any image/channel differs."""
    return (a != b).any(0).any(0)


def region(info: DatasetInfo, top: int, left: int, k: int) -> torch.Tensor:
    m = torch.zeros(info.image_size, info.image_size, dtype=torch.bool)
    m[top:top + k, left:left + k] = True
    return m


# -- registry & generic contract ----------------------------------------------------------------
def test_all_paper_attacks_registered():
    assert PAPER_ATTACKS <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", list(INFOS))
def test_shape_dtype_range_purity_and_rebuild(name, shape):
    info = INFOS[shape]
    attack = make(name, info, seed=3)
    assert attack.name == name and attack.target == info.default_target
    assert attack.clean_label == (name in CLEAN_LABEL)
    x = images(info)
    before = x.clone()
    out = attack.apply(x)
    assert torch.equal(x, before), "apply must not modify its input"
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x), "the trigger must change the images"
    assert torch.equal(attack.apply(x), out), "apply must be deterministic"
    for v in attack.patterns.values():
        assert v.is_floating_point()
    # save / rebuild
    import json
    config = json.loads(json.dumps(attack.config()))
    rebuilt = attack_from_saved(config, attack.tensors(), info)
    assert type(rebuilt) is type(attack) and rebuilt.clean_label == attack.clean_label
    assert torch.equal(rebuilt.apply(x), out)
    # rebuilt from a different default seed would differ for seeded attacks -> tensors really are used
    assert all(torch.equal(rebuilt.patterns[k], attack.patterns[k]) for k in attack.patterns)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_clipping_on_saturated_images(name, fill):
    for info in INFOS.values():
        x = torch.full((2, *info.shape), fill)
        out = make(name, info, seed=5).apply(x)
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_wrong_image_shape_rejected(name):
    attack = make(name, C32)
    with pytest.raises(ValueError):
        attack.apply(torch.rand(2, 3, 28, 28))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_pattern(name):
    a, b = make(name, C32, seed=11), make(name, C32, seed=11)
    assert a.config() == b.config()
    assert a.patterns.keys() == b.patterns.keys()
    assert all(torch.equal(a.patterns[k], b.patterns[k]) for k in a.patterns)


@pytest.mark.parametrize("name", SEEDED)
def test_different_seed_different_pattern(name):
    a, b = make(name, C32, seed=1), make(name, C32, seed=2)
    assert any(not torch.equal(a.patterns[k], b.patterns[k]) for k in a.patterns)
    x = images(C32)
    assert not torch.equal(a.apply(x), b.apply(x))


def test_rebuild_rejects_bad_tensors():
    attack = make("blend", C32)
    with pytest.raises(ValueError):
        attack_from_saved(attack.config(), {}, C32)
    with pytest.raises(ValueError):
        attack_from_saved(attack.config(), {"noise": torch.rand(3, 8, 8)}, C32)


# -- where each trigger lands ----------------------------------------------------------------
@pytest.mark.parametrize("shape", list(INFOS))
def test_badnet_grid(shape):
    info = INFOS[shape]
    x = images(info)
    out = make("badnet_grid", info).apply(x)
    s = info.image_size
    k = 3 * max(1, round(s / 32))
    diff = changed(x, out)
    assert not (diff & ~region(info, s - k, s - k, k)).any()
    patch = out[:, :, s - k:, s - k:]
    assert set(patch.unique().tolist()) == {0.0, 1.0}
    if s == 32:
        expected = torch.tensor([[1., 0, 1], [0, 1, 0], [1, 0, 1]])
        assert torch.equal(patch, expected.expand_as(patch))


@pytest.mark.parametrize("shape", list(INFOS))
def test_badnet_sq(shape):
    info = INFOS[shape]
    x = images(info)
    out = make("badnet_sq", info).apply(x)
    s = info.image_size
    k, m = max(1, round(4 * s / 32)), max(1, round(s / 32))
    top = s - m - k
    diff = changed(x, out)
    assert not (diff & ~region(info, top, top, k)).any()
    assert (out[:, :, top:top + k, top:top + k] == 1).all()
    assert torch.equal(out[:, :, s - m:, :], x[:, :, s - m:, :])  # the margin stays untouched
    assert torch.equal(out[:, :, :, s - m:], x[:, :, :, s - m:])


def test_badnet_sq_paper_geometry_at_32():
    x = torch.zeros(1, 3, 32, 32)
    out = make("badnet_sq", C32).apply(x)
    white = (out[0] == 1).all(0).nonzero()
    assert white[:, 0].min() == 27 and white[:, 0].max() == 30
    assert white[:, 1].min() == 27 and white[:, 1].max() == 30
    assert white.shape[0] == 16


@pytest.mark.parametrize("name,size32", [("trojan_3x3", 3), ("trojan_8x8", 8)])
@pytest.mark.parametrize("shape", list(INFOS))
def test_trojan_patch_is_additive_and_local(name, size32, shape):
    info = INFOS[shape]
    attack = make(name, info, seed=4)
    s = info.image_size
    k, m = max(1, round(size32 * s / 32)), max(1, round(s / 32))
    patch = attack.patterns["patch"]
    assert patch.shape == (info.channels, k, k)
    assert (patch.abs() >= 0.5).all() and (patch.abs() <= 1).all()
    assert (patch > 0).any() and (patch < 0).any()
    if info.channels > 1:
        assert not torch.equal(patch[0], patch[1]), "coloured: channels differ"
    x = images(info)
    out = attack.apply(x)
    top = s - m - k
    assert not (changed(x, out) & ~region(info, top, top, k)).any()
    expected = (x[:, :, top:top + k, top:top + k] + patch).clamp(0, 1)
    assert torch.allclose(out[:, :, top:top + k, top:top + k], expected)
    # grey 0.5 images: every patch pixel changes by its full value
    half = torch.full((1, *info.shape), 0.5)
    assert torch.allclose(attack.apply(half)[0, :, top:top + k, top:top + k], (0.5 + patch).clamp(0, 1))


def test_trojan_wm():
    attack = make("trojan_wm", C32, seed=2)
    wm = attack.patterns["watermark"]
    assert wm.shape == C32.shape
    assert torch.allclose(wm.abs().unique(), torch.tensor([0.0, 0.3]))
    assert (wm > 0).any() and (wm < 0).any()
    assert torch.equal(wm[0], wm[-1]), "grey watermark: the same on every channel"
    on = (wm != 0).float().mean().item()
    assert 0.15 < on < 0.35
    x = torch.full((2, *C32.shape), 0.5)
    assert torch.allclose(attack.apply(x), x + wm)
    x = images(C32)
    assert torch.allclose(attack.apply(x), (x + wm).clamp(0, 1))


@pytest.mark.parametrize("shape", list(INFOS))
def test_l0_inv_changes_only_masked_pixels(shape):
    info = INFOS[shape]
    attack = make("l0_inv", info, seed=9)
    mask = attack.patterns["mask"]
    assert mask.shape == (1, info.image_size, info.image_size)
    n = int(mask.sum().item())
    assert n == max(1, round(0.015 * info.image_size ** 2))
    x = images(info)
    out = attack.apply(x)
    assert not (changed(x, out) & ~mask[0].bool()).any()
    m = mask[0].bool()
    assert torch.equal(out[:, :, m], attack.patterns["pattern"][:, m].expand(x.shape[0], -1, -1))


@pytest.mark.parametrize("shape", list(INFOS))
def test_l2_inv_norm(shape):
    info = INFOS[shape]
    attack = make("l2_inv", info, seed=1)
    delta = attack.patterns["delta"]
    rms = attack.params["rms"]
    assert 0.05 <= rms <= 0.1
    assert delta.norm().item() == pytest.approx(rms * math.sqrt(delta.numel()), rel=1e-4)
    x = torch.full((2, *info.shape), 0.5)
    assert torch.allclose(attack.apply(x), (x + delta).clamp(0, 1))


@pytest.mark.parametrize("shape", list(INFOS))
def test_blend_formula(shape):
    info = INFOS[shape]
    attack = make("blend", info, seed=7)
    noise = attack.patterns["noise"]
    assert noise.shape == info.shape and noise.min() >= 0 and noise.max() <= 1
    x = images(info)
    assert torch.allclose(attack.apply(x), 0.8 * x + 0.2 * noise, atol=1e-6)


@pytest.mark.parametrize("shape", list(INFOS))
def test_sig_formula(shape):
    info = INFOS[shape]
    attack = make("sig", info)
    assert attack.clean_label
    w = info.image_size
    j = torch.arange(w, dtype=torch.float64)
    v = ((1 + torch.sin(2 * math.pi * j * 6 / w)) / 2).float()
    x = images(info)
    expected = 0.8 * x + 0.2 * v.view(1, 1, 1, w)
    assert torch.allclose(attack.apply(x), expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(attack.poison_images(x, torch.zeros(len(x), dtype=torch.long), g), expected, atol=1e-6)


def test_sig_test_strength():
    attack = make("sig", C32, test_strength=0.3)
    x = images(C32)
    s = attack.patterns["signal"]
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(attack.apply(x), 0.7 * x + 0.3 * s, atol=1e-6)
    assert torch.allclose(attack.poison_images(x, torch.zeros(len(x), dtype=torch.long), g), 0.8 * x + 0.2 * s,
                          atol=1e-6)
    rebuilt = attack_from_saved(attack.config(), attack.tensors(), C32)
    assert torch.equal(rebuilt.apply(x), attack.apply(x))


@pytest.mark.parametrize("shape", list(INFOS))
def test_cl_test_trigger_only_corners(shape):
    info = INFOS[shape]
    x = images(info)
    out = make("cl", info).apply(x)
    s = info.image_size
    k = 3 * max(1, round(s / 32))
    corners = (region(info, 0, 0, k) | region(info, 0, s - k, k) | region(info, s - k, 0, k)
               | region(info, s - k, s - k, k))
    assert not (changed(x, out) & ~corners).any()
    for top, left in [(0, 0), (0, s - k), (s - k, 0), (s - k, s - k)]:
        patch = out[:, :, top:top + k, left:left + k]
        assert set(patch.unique().tolist()) == {0.0, 1.0}
        assert (patch[:, :, 0, 0] == 1).all() and (patch[:, :, -1, -1] == 1).all()


# -- poisoning -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in NAMES if n not in CLEAN_LABEL])
def test_dirty_label_poison_dataset(name):
    info = INFOS["1x28"]
    data = image_set(info, 60)
    attack = create_attack(name, info, target=2, rate=0.1, seed=1)
    res = poison_dataset(attack, data, seed=4)
    idx = res.poisoned_index
    assert idx.numel() == round(0.1 * 60)
    assert (data.labels[idx] != 2).all()
    assert (res.dataset.labels[idx] == 2).all()
    others = torch.ones(60, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(res.dataset.images[others], data.images[others])
    assert torch.equal(res.dataset.labels[others], data.labels[others])
    expected = (attack.apply(to_float(data.images[idx])) * 255).round().to(torch.uint8)
    assert torch.equal(res.dataset.images[idx], expected)
    assert res.dataset.meta["n_poisoned"] == idx.numel()
    # deterministic
    again = poison_dataset(attack, data, seed=4)
    assert torch.equal(again.poisoned_index, idx) and torch.equal(again.dataset.images, res.dataset.images)


@pytest.fixture(scope="module")
def cl_poisoned():
    info = INFOS["3x32"]
    data = image_set(info, 120)
    attack = create_attack("cl", info, target=0, rate=0.1, seed=0, steps=3)
    return info, data, attack, poison_dataset(attack, data, seed=3)


@pytest.mark.parametrize("name", CLEAN_LABEL)
def test_clean_label_poison_dataset(name, cl_poisoned):
    if name == "cl":
        info, data, attack, res = cl_poisoned
    else:
        info = INFOS["3x32"]
        data = image_set(info, 120)
        attack = create_attack(name, info, target=0, rate=0.1, seed=0)
        res = poison_dataset(attack, data, seed=3)
    idx = res.poisoned_index
    n_target = int((data.labels == 0).sum())
    assert idx.numel() == min(round(0.1 * 120), n_target) > 0
    assert (data.labels[idx] == 0).all()
    assert torch.equal(res.dataset.labels, data.labels)
    others = torch.ones(len(data), dtype=torch.bool)
    others[idx] = False
    assert torch.equal(res.dataset.images[others], data.images[others])
    assert not torch.equal(res.dataset.images[idx], data.images[idx])


def test_clean_label_capped_by_target_count():
    info = INFOS["1x28"]
    data = image_set(info, 50)  # 5 images per class
    res = poison_dataset(create_attack("sig", info, target=1, rate=0.5), data, seed=0)
    assert res.poisoned_index.numel() == 5
    assert (data.labels[res.poisoned_index] == 1).all()


def test_cl_pgd_bounded_and_corners_stamped(cl_poisoned):
    info, data, attack, res = cl_poisoned
    idx = res.poisoned_index
    s, k = info.image_size, 3
    inner = torch.ones(s, s, dtype=torch.bool)
    for top, left in [(0, 0), (0, s - k), (s - k, 0), (s - k, s - k)]:
        inner[top:top + k, left:left + k] = False
    before = to_float(data.images[idx])
    after = to_float(res.dataset.images[idx])
    diff = (after - before)[:, :, inner].abs()
    assert diff.max() <= 16 / 255 + 0.5 / 255 + 1e-6
    assert diff.max() > 8 / 255, "PGD should move pixels"
    # the test-time trigger is on every poisoned image
    assert torch.equal(after, attack.apply(after))


def test_cl_pgd_is_deterministic_and_increases_loss(cl_poisoned):
    info, data, attack, _ = cl_poisoned
    from torch.nn import functional as F
    x = to_float(data.images[:16])
    y = data.labels[:16]
    a = attack.perturb(x, y, torch.Generator().manual_seed(1))
    b = attack.perturb(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 16 / 255 + 1e-6 and a.min() >= 0 and a.max() <= 1
    model = attack.surrogate
    with torch.no_grad():
        clean = F.cross_entropy(model(info.normalize(x)), y)
        adv = F.cross_entropy(model(info.normalize(a)), y)
    assert adv > clean


def test_cl_needs_prepare():
    attack = create_attack("cl", C32)
    rebuilt = attack_from_saved(attack.config(), attack.tensors(), C32)
    with pytest.raises(RuntimeError):
        rebuilt.poison_images(images(C32), torch.zeros(6, dtype=torch.long), torch.Generator())


def test_cl_eps_is_pixel_space_16_over_255():
    for info in INFOS.values():
        assert make("cl", info).params["eps"] == pytest.approx(16 / 255)


@pytest.mark.parametrize("name", NAMES)
def test_bad_target_rejected(name):
    with pytest.raises(ValueError):
        create_attack(name, C32, target=10)


def test_cl_robust_surrogate_option():
    info = INFOS["1x28"]
    data = image_set(info, 64)
    attack = create_attack("cl", info, target=0, rate=0.1, seed=0, steps=2, surrogate_adv_eps=16 / 255)
    res = poison_dataset(attack, data, seed=1)
    assert res.poisoned_index.numel() > 0
    rebuilt = attack_from_saved(attack.config(), attack.tensors(), info)
    assert rebuilt.params["surrogate_adv_eps"] == pytest.approx(16 / 255)
