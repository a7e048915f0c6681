"""Fast (Fang et al. 2022, meta-learned generator): its defining parts on hand-made inputs, and the
memory that carries the generator from one federated round to the next."""
from __future__ import annotations

import torch
from torch import nn

from fedabd.aggregators import create_aggregator
from fedabd.config import load_scenario
from fedabd.data import dataset_info
from fedabd.defenses import build_defense
from fedabd.distill import create_distiller
from fedabd.distill.methods.fast import (_MomentumBNHook, add_fomaml_grad, bn_momentum_loss,
                                         set_reptile_grad)
from fedabd.federated import Upload
from fedabd.models import create_model

INFO = dataset_info("mnist_subset")


def _lenets(n, seed=0):
    torch.manual_seed(seed)
    return [create_model("lenet5", num_classes=10, in_channels=1, image_size=28) for _ in range(n)]


def test_bn_momentum_loss_on_hand_computed_statistics():
    bn = nn.BatchNorm2d(1)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    x = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(4, 1, 1, 1)  # mean 3, biased var 5
    loss, (m, v) = bn_momentum_loss(x, bn, None, 0.9)
    assert float(m) == 3.0 and float(v) == 5.0
    assert float(loss) == abs(4 - 5) + abs(1 - 3)  # DeepInversion's loss without a past
    past = (torch.tensor([1.0]), torch.tensor([4.0]))
    loss, _ = bn_momentum_loss(x, bn, past, 0.9)
    # blended mean 0.1*3 + 0.9*1 = 1.2, var 0.1*5 + 0.9*4 = 4.1
    assert abs(float(loss) - (0.1 + 0.2)) < 1e-6


def test_momentum_statistics_update_blends_the_last_batch_in():
    bn = nn.BatchNorm2d(1)
    hook = _MomentumBNHook(bn, (torch.tensor([1.0]), torch.tensor([4.0])), 0.9)
    bn(torch.tensor([0.0, 2.0, 4.0, 6.0]).view(4, 1, 1, 1))
    m, v = hook.updated()
    assert abs(float(m) - (0.9 * 1 + 0.1 * 3)) < 1e-6 and abs(float(v) - (0.9 * 4 + 0.1 * 5)) < 1e-6
    hook.remove()
    fresh = _MomentumBNHook(bn, None, 0.9)
    bn(torch.tensor([0.0, 2.0]).view(2, 1, 1, 1))
    assert [float(t) for t in fresh.updated()] == [1.0, 1.0]  # the first epoch's statistics as they are


def test_fomaml_sums_the_inner_gradients_and_reptile_points_back_to_the_fast_weights():
    meta = [torch.zeros(3)]
    meta[0].grad = torch.zeros(3)
    fast = [torch.tensor([1.0, 2.0, 3.0], requires_grad=True)]
    for g in ([1.0, 0.0, -1.0], [0.5, 0.5, 0.5]):
        fast[0].grad = torch.tensor(g)
        add_fomaml_grad(meta, fast)
    assert meta[0].grad.tolist() == [1.5, 0.5, -0.5]
    set_reptile_grad(meta, fast, scale=67.0)
    assert meta[0].grad.tolist() == [-67.0, -134.0, -201.0]


def test_one_inner_step_moves_the_meta_generator_with_the_fast_copy():
    """First-order MAML with one inner step: the meta generator's gradient is the fast copy's, and
    both first Adam steps move each weight by its LR times sign(grad): the meta LR is g_lr * g_steps."""
    d = create_distiller("fast", _lenets(2), _lenets(1, 9)[0], INFO, preset="smoke", seed=0,
                         overrides={"g_steps": 1, "epochs": 1, "kd_steps": 1})
    d.setup()
    d.defense.setup(d)
    before = {k: v.clone() for k, v in d.meta_gen.state_dict().items()}
    d.synthesize()
    moved = 0
    for name, p in d.meta_gen.named_parameters():
        meta_step = p.detach() - before[name]
        fast_step = dict(d.fast_generator.named_parameters())[name].detach() - before[name]
        assert torch.allclose(meta_step, fast_step, atol=1e-6), name
        moved += int((meta_step != 0).sum())
    assert moved > 0


def test_reptile_moves_the_meta_generator_towards_the_fast_copy():
    d = create_distiller("fast", _lenets(2), _lenets(1, 9)[0], INFO, preset="smoke", seed=0,
                         overrides={"meta": "reptile", "g_steps": 3})
    d.setup()
    d.defense.setup(d)
    before = {k: v.clone() for k, v in d.meta_gen.named_parameters()}
    d.synthesize()
    fast = dict(d.fast_generator.named_parameters())
    for name, p in d.meta_gen.named_parameters():
        delta_meta, delta_fast = p.detach() - before[name], fast[name].detach() - before[name]
        big = delta_fast.abs() > 1e-4
        assert (torch.sign(delta_meta[big]) == torch.sign(delta_fast[big])).all(), name


def test_memory_carries_generator_pool_and_epoch_count_to_the_next_run():
    teachers, student = _lenets(3), _lenets(1, 9)[0]
    first = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=0,
                             teacher_weights=[1.0, 1.0, 1.0], defense=build_defense("sv+sr"))
    first.run()
    mem = first.memory()
    assert int(mem["epochs_done"]) == 2 and mem["pool"].shape[0] == 16
    second = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=1, memory=mem)
    second.setup()
    for k, v in second.meta_gen.state_dict().items():
        assert torch.equal(v, mem[f"generator.{k}"])
    assert torch.equal(second.pool, mem["pool"]) and second.epochs_done == 2
    # carry off, or a memory that does not fit (another generator width): a fresh start
    off = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=1, memory=mem,
                           overrides={"carry": False})
    off.setup()
    assert off.epochs_done == 0 and off.pool.shape[0] == 0
    wide = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=1, memory=mem,
                            overrides={"generator_width": 4})
    wide.setup()
    assert wide.epochs_done == 2 and wide.meta_gen.l1.weight.shape != mem["generator.l1.weight"].shape


def test_the_distill_rule_continues_fast_from_its_checkpointed_memory():
    """A resumed run (a new rule given the saved memory) distils round 2 exactly as the run that
    never stopped."""
    cfg = load_scenario(None, {"clients": 3, "malicious": 0, "aggregator": "distill", "kd": "fast",
                               "kd_preset": "smoke", "device": "cpu", "out": "unused"})
    uploads = [Upload(i, t.state_dict(), 100) for i, t in enumerate(_lenets(3))]
    student = _lenets(1, 9)[0].state_dict()
    running = create_aggregator(cfg, INFO)
    state1 = running.aggregate(1, uploads, student).state
    saved = running.memory()
    assert saved and "pool" in saved
    state2 = running.aggregate(2, uploads, state1).state
    resumed = create_aggregator(cfg, INFO)
    resumed.restore(saved)
    again = resumed.aggregate(2, uploads, state1).state
    assert all(torch.equal(state2[k], again[k]) for k in state2)
    fresh = create_aggregator(cfg, INFO).aggregate(2, uploads, state1).state
    assert any(not torch.equal(state2[k], fresh[k]) for k in state2)


def test_the_warm_up_synthesises_without_distilling_and_is_paid_once_across_runs():
    teachers, student = _lenets(2), _lenets(1, 9)[0]
    first = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=0, overrides={"warmup": 3})
    assert first.total_iterations == 5
    rows = []
    first.run(progress=lambda i, n, row: rows.append(row))
    assert ["loss_kd" in r for r in rows] == [False, False, False, True, True]
    assert all(r["loss_adv"] == 0.0 for r in rows[:2]) and int(first.memory()["epochs_done"]) == 5
    second = create_distiller("fast", teachers, student, INFO, preset="smoke", seed=1, overrides={"warmup": 3},
                              memory=first.memory())
    assert second.total_iterations == 2
