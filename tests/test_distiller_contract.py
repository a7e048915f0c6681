"""What every registered distiller owes the defences: the final-phase hook fires on every student
update of the final phase, after the KD backward and before the optimiser step, with the
optimiser switched to the defence's final phase; never before it."""
import math

import pytest
import torch

from fedabd.data import load_dataset
from fedabd.distill import DISTILLERS, Defense, create_distiller
from fedabd.distill.base import FinalPhase
from fedabd.models import create_model


class Spy(Defense):
    """A defence with a final phase that records each call and the state it was called in."""

    final_phase_fraction = 0.5

    def __init__(self):
        self.calls, self.entered = [], None

    @property
    def final_phase_optimizer(self):
        return FinalPhase(fresh=True, schedule="constant", clip=False)

    def enter_final_phase(self, distiller):
        self.entered = distiller.iteration_index

    def final_phase_step(self, distiller, x):
        grads = [p.grad for p in distiller.student.parameters()]
        self.calls.append({"iteration": distiller.iteration_index, "batch": tuple(x.shape),
                           "kd_grad": all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads),
                           "lr": distiller.student_lr(), "weights": [p.detach().clone() for p in distiller.student.parameters()]})
        for p in distiller.student.parameters():  # the step must use what the hook adds: a marker
            p.grad.zero_()
        return {"spy": 1.0}


@pytest.mark.parametrize("method", DISTILLERS.names())
def test_final_phase_hook_fires_between_backward_and_step(method):
    cls = DISTILLERS.get(method)
    assert "smoke" in cls.presets, f"{method} has no 'smoke' preset (see the Distiller docstring)"
    torch.manual_seed(0)
    data = load_dataset("mnist_subset", "train")
    info = data.info
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    spy = Spy()
    kw = {"real_data": data.subset(torch.arange(64))} if cls.needs_real_data else {}
    d = create_distiller(method, teacher, student, info, preset="smoke", overrides={"sr_lr": 1.234e-4},
                         seed=0, defense=spy, **kw)
    result = d.run()
    assert spy.entered == d.final_phase_start > 0
    assert spy.calls, f"{method}: the final-phase hook never fired"
    assert {c["iteration"] for c in spy.calls} == set(range(d.final_phase_start, d.total_iterations))
    assert all(c["kd_grad"] for c in spy.calls), "the hook must run after the KD backward"
    assert all(c["lr"] == pytest.approx(1.234e-4) for c in spy.calls), "final-phase optimiser not switched"
    # the hook zeroed the gradient; a fresh Adam / plain SGD step on zero gradient leaves the weights
    # where the hook saw them, so the step came after the hook
    final = [p.detach() for p in result.student.parameters()]
    assert all(torch.allclose(a, b) for a, b in zip(spy.calls[-1]["weights"], final))


class CosineSpy(Spy):
    final_phase_fraction = 0.1

    @property
    def final_phase_optimizer(self):
        return FinalPhase(fresh=True, schedule="cosine", clip=False)


@pytest.mark.parametrize("method", ["cmi", "fast"])
def test_a_step_granular_final_phase_is_the_last_fraction_of_the_kd_steps(method):
    """``final_phase_unit="step"`` (the fed presets): SR's fraction counts KD steps, not epochs (the
    last 10 % of 4 x 10 steps is 4 steps, not the last epoch's 10), its LR annealed per step from
    sr_lr towards 0."""
    torch.manual_seed(0)
    info = load_dataset("mnist_subset", "train").info
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    student = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    spy = CosineSpy()
    d = create_distiller(method, teacher, student, info, preset="smoke", seed=0, defense=spy,
                         overrides={"epochs": 4, "kd_steps": 10, "sr_lr": 1e-3, "final_phase_unit": "step"})
    d.run()
    assert len(spy.calls) == 4 and {c["iteration"] for c in spy.calls} == {3}
    lrs = [c["lr"] for c in spy.calls]
    expected = [0.5e-3 * (1 + math.cos(math.pi * j / 4)) for j in range(4)]
    assert lrs == pytest.approx(expected)
    epoch = create_distiller(method, teacher, student, info, preset="smoke", seed=0, defense=CosineSpy(),
                             overrides={"epochs": 4, "kd_steps": 10})
    epoch.run()
    assert len(epoch.defense.calls) == 10  # the authors' unit: the whole last epoch
