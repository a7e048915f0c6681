"""How the teachers' logits combine: the robust rules' defining properties on hand-made logits."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedabd.config import load_scenario
from fedabd.defenses.abd.shuffle import build_shuffled_teacher
from fedabd.models import create_model
from fedabd.models.ensemble import COMBINE, Ensemble, combine_logits

EQUAL5 = torch.full((5,), 0.2)


def honest_and_boosted(boost: float = 1e4) -> torch.Tensor:
    """Five members on 4 samples: three honest ones rank class 3 first (moderate logits), two
    malicious ones put a huge logit on class 0."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, 10, generator=g)
    z[:3, :, 3] += 4.0
    z[3:, :, 0] += boost
    return z


@pytest.mark.parametrize("rule", COMBINE)
def test_one_member_keeps_its_own_softmax(rule):
    z = torch.randn(1, 6, 10) * 3 + 2
    out = combine_logits(z, torch.ones(1), rule)
    assert torch.allclose(F.softmax(out, 1), F.softmax(z[0], 1), atol=1e-6)


@pytest.mark.parametrize("rule", COMBINE)
def test_identical_members_give_the_members_centred_logits(rule):
    z = (torch.randn(1, 3, 10) * 5).expand(4, 3, 10)
    assert torch.allclose(combine_logits(z, torch.full((4,), 0.25), rule), z[0] - z[0].mean(1, keepdim=True)
                          if rule != "logit_mean" else z[0], atol=1e-5)


def test_a_minority_with_huge_logits_steers_the_mean_but_not_the_median():
    z = honest_and_boosted()
    assert (combine_logits(z, EQUAL5, "logit_mean").argmax(1) == 0).all()
    assert (combine_logits(z, EQUAL5, "norm_median").argmax(1) == 3).all()
    # the median's output stays inside the honest members' standardised range, times their scale
    out = combine_logits(z, EQUAL5, "norm_median")
    assert out.abs().max() < 20


def test_norm_mean_does_not_count_a_member_more_for_larger_logits():
    z = honest_and_boosted(boost=0.0)
    boosted = z.clone()
    boosted[4] *= 100.0

    def shape(t):  # the output up to its scale
        c = t - t.mean(1, keepdim=True)
        return c / c.norm(dim=1, keepdim=True)

    a, b = combine_logits(z, EQUAL5, "norm_mean"), combine_logits(boosted, EQUAL5, "norm_mean")
    assert torch.allclose(shape(a), shape(b), atol=1e-5)
    m = combine_logits(z, EQUAL5, "logit_mean")
    mb = combine_logits(boosted, EQUAL5, "logit_mean")
    assert not torch.allclose(shape(m), shape(mb), atol=1e-2)


def test_norm_mean_uses_the_weights():
    z = torch.zeros(2, 1, 3)
    z[0, 0, 0], z[1, 0, 1] = 1.0, 1.0
    out = combine_logits(z, torch.tensor([0.9, 0.1]), "norm_mean")
    assert out[0, 0] > out[0, 1]
    out = combine_logits(z, torch.tensor([0.1, 0.9]), "norm_mean")
    assert out[0, 1] > out[0, 0]


def test_gradients_reach_the_input_through_the_median():
    torch.manual_seed(0)
    members = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(3)]
    ens = Ensemble(members, combine="norm_median")
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    F.cross_entropy(ens(x), torch.arange(4)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("z", logits)

    def forward(self, x, return_features=False):
        return self.z.expand(x.shape[0], -1)


def test_groups_average_each_members_copies_before_the_rule():
    rows = torch.randn(6, 10)
    ens = Ensemble([Fixed(r) for r in rows], [1, 1, 1, 1, 1, 1], combine="norm_median", group=2)
    per_member = rows.view(3, 2, 10).mean(1)
    expect = combine_logits(per_member.unsqueeze(1), torch.full((3,), 1 / 3), "norm_median")
    assert torch.allclose(ens(torch.zeros(1, 1)), expect, atol=1e-6)
    flat = Ensemble([Fixed(r) for r in rows], [1, 2, 3, 4, 5, 6], combine="logit_mean", group=2)
    w = torch.tensor([1, 2, 3, 4, 5, 6.0]) / 21
    assert torch.allclose(flat(torch.zeros(1, 1)), (w[:, None] * rows).sum(0, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="groups of 4"):
        Ensemble([Fixed(r) for r in rows], group=4)
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        Ensemble([Fixed(r) for r in rows], combine="max")


def test_svs_shuffled_teacher_combines_by_the_teachers_rule():
    torch.manual_seed(0)
    members = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(3)]
    teacher = Ensemble(members, combine="norm_median")
    shuffled, _ = build_shuffled_teacher(teacher, k=2, n=3, generator=torch.Generator().manual_seed(1))
    assert shuffled.combine == "norm_median" and shuffled.group == 2 and len(shuffled.members) == 6


def test_the_scenario_default_is_the_robust_rule_and_names_are_checked():
    assert load_scenario(None, {}).ensemble_rule == "norm_median"
    with pytest.raises(ValueError, match="ensemble_rule"):
        load_scenario(None, {"ensemble_rule": "max"})


@pytest.mark.parametrize("rule", ["logit_mean", "norm_median"])
def test_cmi_inverts_the_same_combined_target_the_student_learns(rule):
    """CMI's synthesis sees the teachers through the ensemble's rule: a boosted teacher that cannot
    steer the KD target under norm_median cannot steer the synthesised images either."""
    from fedabd.data import dataset_info
    from fedabd.distill import create_distiller
    from fedabd.models import create_model
    torch.manual_seed(0)
    teachers = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(3)]
    with torch.no_grad():
        teachers[2].fc3.weight.mul_(100.0)
    student = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    d = create_distiller("cmi", teachers, student, dataset_info("mnist_subset"), preset="smoke",
                         teacher_weights=[1.0, 1.0, 1.0], ensemble_rule=rule)
    d.setup()
    x = torch.randn(4, 1, 28, 28)
    inverted, _ = d._invert_forward(x)
    assert torch.allclose(inverted, d.teacher_logits(x), atol=1e-5)


def test_the_cpu_runs_the_members_in_turn_with_the_batched_calls_numbers():
    """Auto (``batched=None``) loops on the CPU (faster there, benchmarks/results/ensemble_loop.md);
    ``batched=True`` vmaps: same logits, features and input gradients either way."""
    torch.manual_seed(0)
    members = [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(3)]
    auto, vmapped = Ensemble(members, combine="norm_median"), Ensemble(members, combine="norm_median", batched=True)
    x = torch.randn(4, 1, 28, 28)
    assert not auto.vmapped(x) and vmapped.vmapped(x)
    assert auto.vmapped(x.to("meta"))  # an accelerator's tensor takes the batched call
    grads = []
    for ens in (auto, vmapped):
        xi = x.clone().requires_grad_(True)
        logits, feats = ens(xi, return_features=True)
        F.cross_entropy(logits, torch.arange(4)).backward()
        grads.append((logits.detach(), [f.detach() for f in feats[2]], xi.grad))
        xs = torch.randn(3, 2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        grads[-1] += (ens.each_member(xs).detach(),)
    (la, fa, ga, ea), (lb, fb, gb, eb) = grads
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ga, gb, atol=1e-6) and torch.allclose(ea, eb, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fa, fb))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap fallback note
def test_a_teacher_ensemble_of_conv_nets_moves_to_channels_last():
    """The distillers move BN conv-net teachers to channels_last (the speed switch): the stacked copy
    for the vmapped call follows the members instead of failing on its 5-d weights."""
    torch.manual_seed(0)
    members = [create_model("wrn16_2", num_classes=10, in_channels=3, image_size=32).eval() for _ in range(2)]
    x = torch.randn(2, 3, 32, 32)
    for batched in (True, None):
        ens = Ensemble(members, batched=batched)
        before = ens(x)
        ens.to(memory_format=torch.channels_last)
        assert torch.allclose(ens(x.contiguous(memory_format=torch.channels_last)), before, atol=1e-5)
