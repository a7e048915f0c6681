"""Vanilla KD (clean reference): real-data subset, Hinton loss, wiring, final phase, determinism, presets."""
from __future__ import annotations

import pytest
import torch

from fedabd.data import DatasetInfo, ImageSet, to_float
from fedabd.distill import DISTILLERS, Defense, create_distiller
from fedabd.distill.losses import hinton_loss
from fedabd.distill.methods.vanilla import VanillaConfig, VanillaKD
from fedabd.models import create_model
from fedabd.train import augment_batch

GRAY = DatasetInfo("tiny_gray", num_classes=10, channels=1, image_size=16, mean=(0.5,), std=(0.5,))
TINY = {"batch_size": 8, "epochs": 2}


def model(name: str, seed: int = 0, info: DatasetInfo = GRAY):
    torch.manual_seed(seed)
    return create_model(name, num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)


def real_set(n: int = 53, info: DatasetInfo = GRAY, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8, generator=g)
    # mark every image with its index in the first pixels so that subsets can be identified
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % info.num_classes, info)


def distiller(data=None, seed=0, defense=None, teacher=None, student=None, **overrides) -> VanillaKD:
    return create_distiller("vanilla", teacher or model("lenet5"), student or model("lenet5_half", 1), GRAY,
                            overrides={**TINY, **overrides}, seed=seed, defense=defense,
                            real_data=data if data is not None else real_set())


def params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_registered_and_presets():
    assert DISTILLERS.get("vanilla") is VanillaKD
    assert VanillaKD.unit == "step" and VanillaKD.needs_real_data
    cpu, paper = VanillaKD.presets["cpu"], VanillaKD.presets["paper"]
    assert cpu == VanillaConfig()
    assert (paper.data_fraction, paper.alpha, paper.tau) == (0.2, 0.95, 6.0)
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.batch_size, paper.epochs) == (0.1, 0.9, 5e-4, 128, 200)
    assert cpu.data_fraction == 0.2 and cpu.sr_lr == 5e-4
    d = create_distiller("vanilla", model("lenet5"), model("lenet5_half"), GRAY, preset="paper", real_data=real_set(1000))
    assert d.total_iterations == 200 * 2  # 200 samples, batch 128 -> 2 steps per epoch
    with pytest.raises(ValueError):
        create_distiller("vanilla", model("lenet5"), model("lenet5_half"), GRAY)  # no real data
    with pytest.raises(ValueError):
        VanillaConfig(data_fraction=0.0)


def test_subset_is_exact_fraction_and_seeded():
    data = real_set(53)
    d = distiller(data)
    d.setup()
    assert len(d.subset) == round(0.2 * 53) == 11
    assert len(set(d.subset_index.tolist())) == 11
    assert torch.equal(d.subset.images, data.images[d.subset_index])
    assert d.total_iterations == 2 * 2  # 11 samples, batch 8
    same = distiller(data)
    same.setup()
    other = distiller(data, seed=1)
    other.setup()
    assert torch.equal(same.subset_index, d.subset_index)
    assert not torch.equal(other.subset_index, d.subset_index)
    # only subset images are ever used for training
    seen = []
    orig = d.teacher_logits

    def spy(x, grad=False):
        seen.append(x)
        return orig(x, grad)

    d2 = distiller(data, epochs=3)
    d2.teacher_logits = spy
    d2.run()
    assert len(seen) == d2.total_iterations
    assert sum(len(x) for x in seen) == 3 * 11


def test_loss_matches_hinton_loss():
    data = real_set(40)
    d = distiller(data, batch_size=8, data_fraction=0.2, augment=True)
    d.setup()
    state = d.generator.get_state()
    out = d.iteration(0)
    # recompute the first step's loss from the same random draws
    d2 = distiller(data, batch_size=8, data_fraction=0.2, augment=True)
    d2.setup()
    d2.generator.set_state(state)
    xb, yb = d2._next_batch()
    x = d2.info.normalize(augment_batch(to_float(xb), GRAY.hflip, d2.generator))
    with torch.no_grad():
        ref = hinton_loss(d2.teacher(x), d2.student(x), yb, alpha=0.95, tau=6.0)
    assert out["loss"] == pytest.approx(ref.item(), rel=1e-5)


def test_student_changes_teacher_frozen():
    teacher = model("lenet5")
    t0 = params(teacher)
    d = distiller(teacher=teacher)
    s0 = params(d.student)
    res = d.run()
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert any(not torch.equal(s0[k], v) for k, v in res.student.state_dict().items())


def test_deterministic():
    a = distiller(seed=3).run().student.state_dict()
    b = distiller(seed=3).run().student.state_dict()
    c = distiller(seed=4).run().student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


class FinalPhaseRecorder(Defense):
    final_phase_fraction = 0.25

    def __init__(self):
        self.calls: list[tuple[int, float]] = []

    def final_phase_step(self, distiller, x):
        self.calls.append((distiller.iteration_index, distiller.student_opt.param_groups[0]["lr"]))
        return {"sr": 1.0}


def test_final_phase_hook_and_lr_reset():
    rec = FinalPhaseRecorder()
    d = distiller(defense=rec, epochs=4, data=real_set(80))  # 16 samples, batch 8 -> 8 steps
    res = d.run(evaluate=lambda m: {}, eval_every=1)
    assert d.total_iterations == 8 and d.final_phase_start == 6
    assert [i for i, _ in rec.calls] == [6, 7]
    assert all(lr == pytest.approx(5e-4) for _, lr in rec.calls)
    main = [r for r in res.history if r["phase"] == "main"]
    assert all("sr" not in r for r in main) and all(r["lr"] > 5e-4 for r in main[:3])
    assert [r["sr"] for r in res.history if r["phase"] == "final"] == [1.0, 1.0]


@pytest.mark.slow
def test_mnist_end_to_end(mnist_clean_teacher):
    from fedabd.metrics import evaluate

    teacher, train, test = mnist_clean_teacher
    torch.manual_seed(0)
    student = create_model("lenet5_half", 10, 1, 28)
    d = create_distiller("vanilla", teacher.model, student, train.info, overrides={"epochs": 30}, real_data=train)
    res = d.run()
    acc = evaluate(res.student, test)["acc"]
    print(f"vanilla KD student acc {acc:.4f}")
    assert acc >= 0.9, acc
