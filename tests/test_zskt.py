"""ZSKT distiller: wiring, caching, defence hooks, attention transfer, ensembles, determinism."""
from __future__ import annotations

import logging
import time

import pytest
import torch

from fedabd.data import DatasetInfo
from fedabd.distill import DISTILLERS, Defense, create_distiller, make_config
from fedabd.distill.losses import attention_map
from fedabd.distill.methods.zskt import ZSKT, ZSKTConfig
from fedabd.models import create_model

GRAY = DatasetInfo("tiny_gray", num_classes=10, channels=1, image_size=16, mean=(0.5,), std=(0.5,))
RGB = DatasetInfo("tiny_rgb", num_classes=10, channels=3, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster and steadier on small shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"batch_size": 16, "generator_width": 4, "pseudo_batches": 3, "student_steps_per_pb": 3}


def model(name: str, info: DatasetInfo, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)


def distiller(teacher, student, info=GRAY, seed=0, defense=None, **overrides) -> ZSKT:
    return create_distiller("zskt", teacher, student, info, overrides={**TINY, **overrides}, seed=seed,
                            defense=defense)


def params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def snapshot_generator(d: ZSKT) -> dict:
    """Wrap setup() so the freshly built generator's initial weights are recorded."""
    box: dict = {}
    original = d.setup

    def setup():
        original()
        box["gen0"] = params(d.gen)

    d.setup = setup
    return box


def test_registered_and_presets():
    assert DISTILLERS.get("zskt") is ZSKT
    assert ZSKT.unit == "pseudo-batch"
    cpu = ZSKT.presets["cpu"]
    assert cpu == ZSKTConfig()
    paper = ZSKT.presets["paper"]
    assert (paper.nz, paper.batch_size, paper.student_steps_per_pb, paper.generator_steps_per_pb) == (100, 128, 10, 1)
    assert (paper.g_lr, paper.s_lr, paper.beta, paper.grad_clip) == (1e-3, 2e-3, 250.0, 5.0)
    assert (paper.pseudo_batches, paper.generator_width) == (80000, 64)
    d = create_distiller("zskt", model("lenet5", GRAY), model("lenet5_half", GRAY), GRAY, preset="paper")
    assert d.cfg.pseudo_batches == 80000 and d.total_iterations == 80000
    d = create_distiller("zskt", model("lenet5", GRAY), model("lenet5_half", GRAY), GRAY)
    assert d.total_iterations == cpu.pseudo_batches


def test_config_validation():
    with pytest.raises(ValueError, match="unknown setting"):
        make_config(ZSKTConfig, ZSKT.presets, "cpu", {"no_such_knob": 1})
    with pytest.raises(ValueError, match="must be"):
        make_config(ZSKTConfig, ZSKT.presets, "cpu", {"batch_size": "big"})
    with pytest.raises(ValueError, match="unknown preset"):
        make_config(ZSKTConfig, ZSKT.presets, "gpu")
    assert make_config(ZSKTConfig, ZSKT.presets, "cpu", {"beta": 0}).beta == 0.0  # int -> float
    with pytest.raises(ValueError):
        ZSKTConfig(batch_size=0)
    with pytest.raises(ValueError):
        ZSKTConfig(s_lr=0.0)


def test_wiring_student_and_generator_train_teacher_frozen():
    teacher, student = model("lenet5", GRAY, 1), model("lenet5_half", GRAY, 2)
    t0, s0 = params(teacher), params(student)
    d = distiller(teacher, student)
    box = snapshot_generator(d)
    rows = []
    result = d.run(progress=lambda i, n, row: rows.append(row))
    assert result.student is student
    assert any(not torch.equal(s0[k], v) for k, v in params(student).items()), "student did not change"
    assert all(torch.equal(t0[k], v) for k, v in params(teacher).items()), "teacher changed"
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert any(not torch.equal(box["gen0"][k], v) for k, v in params(d.gen).items()), "generator did not train"
    assert len(rows) == 3 and [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"loss_g", "loss_s", "kl_s", "at"} <= set(r)
        assert all(isinstance(r[k], float) for k in ("loss_g", "loss_s", "at"))
        assert r["loss_g"] <= 0.0  # -KL
    assert d.at_status == "on"
    assert not student.training  # run() leaves the student in eval mode


def _count_forwards(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


@pytest.mark.parametrize("naive,batch", [(False, "before"), (False, "after"), (True, "after")])
def test_teacher_and_generator_calls_per_pseudo_batch(naive, batch):
    n_s, pbs = 3, 2
    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), pseudo_batches=pbs,
                  student_steps_per_pb=n_s, naive=naive, student_batch=batch)
    t_calls = _count_forwards(d.teacher)
    g_calls: list = []
    original = d.setup

    def setup():
        original()
        d.gen.register_forward_hook(lambda m, i, o: g_calls.append(1))

    d.setup = setup
    d.run()
    per_pb_teacher = 1 + n_s if naive else 2   # G step + (every student step | once, cached)
    # cached: the G step's batch is reused ("before") or G(z) is drawn once more after its step ("after")
    per_pb_gen = 1 + n_s if naive else (1 if batch == "before" else 2)
    assert len(t_calls) == pbs * per_pb_teacher
    assert len(g_calls) == pbs * per_pb_gen
    assert d.teacher_calls == len(t_calls)


class RecordingDefense(Defense):
    final_phase_fraction = 0.5

    def __init__(self):
        self.gen_calls: list[int] = []
        self.final_calls: list[tuple[int, float, bool]] = []
        self.entered = 0
        self.setup_calls = 0

    def setup(self, distiller):
        self.setup_calls += 1

    def generator_loss(self, distiller, x, t_logits):
        assert x.requires_grad and t_logits.shape == (x.shape[0], 10)
        self.gen_calls.append(distiller.iteration_index)
        return 0.0 * x.mean()  # a tensor term that joins the graph

    def enter_final_phase(self, distiller):
        self.entered += 1

    def final_phase_step(self, distiller, x):
        assert not x.requires_grad
        grads_ready = all(p.grad is not None for p in distiller.student.parameters())
        self.final_calls.append((distiller.iteration_index, distiller.student_opt.param_groups[0]["lr"], grads_ready))
        return {"sr_called": 1.0}


def test_defense_hooks_and_final_phase_lr():
    defense = RecordingDefense()
    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), defense=defense, pseudo_batches=4,
                  student_steps_per_pb=3, sr_lr=3e-4)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert defense.setup_calls == 1 and defense.entered == 1
    assert defense.gen_calls == [0, 1, 2, 3]              # once per pseudo-batch
    assert d.final_phase_start == 2
    assert [c[0] for c in defense.final_calls] == [2, 2, 2, 3, 3, 3]  # every student step of the last half
    assert all(lr == pytest.approx(3e-4) for _, lr, _ in defense.final_calls)
    assert all(ready for *_, ready in defense.final_calls)  # called after backward
    assert [r["phase"] for r in rows] == ["main", "main", "final", "final"]
    assert ["sr_called" in r for r in rows] == [False, False, True, True]
    assert d.student_opt.param_groups[0]["lr"] == pytest.approx(3e-4)  # the cosine did not overwrite it
    assert rows[1]["lr"] < 2e-3  # the cosine was running in the main phase


def test_attention_transfer_on_for_wrn_pair():
    teacher, student = model("wrn16_2", RGB), model("wrn16_1", RGB)
    d = distiller(teacher, student, info=RGB, batch_size=4, pseudo_batches=1, student_steps_per_pb=1)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert d.at_enabled and d.at_status == "on"
    assert rows[0]["at"] > 0
    assert rows[0]["loss_s"] == pytest.approx(rows[0]["kl_s"] + 250.0 * rows[0]["at"], rel=1e-5)


def test_attention_transfer_off_when_shapes_differ(caplog):
    d = distiller(model("lenet5", RGB), model("wrn16_1", RGB), info=RGB, batch_size=4, pseudo_batches=2,
                  student_steps_per_pb=2)
    rows = []
    with caplog.at_level(logging.WARNING, logger="fedabd.distill.methods.zskt"):
        d.run(progress=lambda i, n, row: rows.append(row))
    assert not d.at_enabled and d.at_status.startswith("off (")
    assert "feature maps" in d.at_status
    msgs = [r for r in caplog.records if "attention transfer disabled" in r.getMessage()]
    assert len(msgs) == 1
    assert all("at" not in r for r in rows)
    assert all(r["loss_s"] == pytest.approx(r["kl_s"]) for r in rows)


def test_attention_switched_off_by_config():
    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), attention=False, pseudo_batches=1)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert d.at_status == "off (config)" and "at" not in rows[0]


def test_ensemble_teacher():
    members = [model("lenet5", GRAY, 1), model("lenet5", GRAY, 2)]
    before = [params(m) for m in members]
    d = distiller(members, model("lenet5_half", GRAY), pseudo_batches=2)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert d.at_status == "on" and all("at" in r for r in rows)
    for m, b in zip(members, before):
        assert all(torch.equal(b[k], v) for k, v in params(m).items())
    # the cached targets: mean logits and the per-layer mean of the members' attention maps
    x = torch.randn(5, 1, 16, 16)
    logits, attn = d._teacher_targets(x)
    with torch.no_grad():
        outs = [m(x, return_features=True) for m in members]
    assert torch.allclose(logits, (outs[0][0] + outs[1][0]) / 2, atol=1e-5)
    assert len(attn) == 2
    for layer in range(2):
        expected = (attention_map(outs[0][1][layer]) + attention_map(outs[1][1][layer])) / 2
        assert torch.allclose(attn[layer], expected, atol=1e-5)


def test_same_seed_same_student():
    def run(seed):
        d = distiller(model("lenet5", GRAY, 1), model("lenet5_half", GRAY, 2), seed=seed)
        return params(d.run().student)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_naive_mode_runs_the_same_loop():
    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), naive=True, pseudo_batches=2)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert d.at_status == "on" and {"loss_g", "loss_s", "at"} <= set(rows[-1])


@pytest.mark.slow
def test_clean_lenet_teacher_distils_to_80_percent(mnist_clean_teacher):
    from fedabd.metrics import evaluate

    teacher, train, test = mnist_clean_teacher
    student = model("lenet5_half", train.info, seed=0)
    d = create_distiller("zskt", teacher.model, student, train.info, overrides={"pseudo_batches": 150}, seed=0)
    t0 = time.perf_counter()
    result = d.run()
    acc = evaluate(result.student, test)["acc"]
    print(f"ZSKT 150 pseudo-batches: acc {acc:.4f} in {time.perf_counter() - t0:.1f}s (teacher {teacher.metrics['acc']:.4f})")
    assert acc >= 0.80


# -- the authors' loss scale and SR phase -----------------------------------------------------------
def test_kl_scale_is_the_authors_kl_over_classes():
    """On known logits: T = (0, log 3, 0, 0) -> p = (1/6, 1/2, 1/6, 1/6); S = 0 -> q = 1/4 each."""
    import math
    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY))
    t = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0]])
    s = torch.zeros(1, 4)
    kl = 3 * (1 / 6) * math.log((1 / 6) / 0.25) + 0.5 * math.log(0.5 / 0.25)
    assert d.divergence(t, s).item() == pytest.approx(kl / 4, rel=1e-6)  # PyTorch's 'mean': / (B * C)
    assert d.sr_divergence(t, s).item() == pytest.approx(kl / 4, rel=1e-6)
    old = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), kl_reduction="batchmean")
    assert old.divergence(t, s).item() == pytest.approx(kl, rel=1e-6)
    # and the student loss of a run uses it: loss_s = KL / C + beta * AT (no AT for LeNet at 16 px)
    rows = []
    d.run(progress=lambda i, n, row: rows.append(row))
    assert rows[-1]["kl_s"] < 0.25  # KL / 10 of an untrained pair; the per-sample KL is about 10x


def test_student_steps_use_the_generator_output_after_its_step():
    for batch in ("after", "before"):
        d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), pseudo_batches=2, student_batch=batch)
        seen: dict = {"gen": [], "after": [], "student": []}
        orig_g, orig_s = d._generator_step, d._student_step

        def gen_step(z, orig_g=orig_g, d=d, seen=seen):
            loss, x = orig_g(z)
            seen["gen"].append(x)
            with torch.no_grad():
                seen["after"].append(d._sample(z))
            return loss, x

        def student_step(x, t, a, orig_s=orig_s, seen=seen):
            seen["student"].append(x)
            return orig_s(x, t, a)

        d._generator_step, d._student_step = gen_step, student_step
        d.run()
        firsts = seen["student"][::TINY["student_steps_per_pb"]]
        for x, x_gen, x_after in zip(firsts, seen["gen"], seen["after"]):
            if batch == "after":
                assert torch.equal(x, x_after) and not torch.equal(x, x_gen)  # G moved; the student sees G(z) after it
            else:
                assert torch.equal(x, x_gen)


def test_sr_phase_fresh_adam_annealed_to_zero_without_clipping():
    from fedabd.defenses import build_defense

    d = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), pseudo_batches=6, student_steps_per_pb=2,
                  sr_lr=4e-4, defense=build_defense("sr", sr={"fraction": 0.5, "trigger_steps": 1}))
    clips: list[bool] = []
    opts: list = []
    orig_clip = d._clip

    def clip(params):
        clips.append(d.in_final_phase)
        return orig_clip(params)

    d._clip = clip
    rows = []

    def progress(i, n, row):
        rows.append(row)
        opts.append((d.student_opt, len(d.student_opt.state)))

    d.run(progress=progress)
    assert [r["phase"] for r in rows] == ["main"] * 3 + ["final"] * 3
    final = [r["lr"] for r in rows[3:]]
    assert final == pytest.approx([4e-4, 4e-4 * 0.75, 4e-4 * 0.25])  # cosine over the 3 SR pseudo-batches
    assert d.student_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # ... reaching 0 at the end
    assert opts[2][0] is not opts[3][0]  # a fresh Adam for the SR phase
    # clipping: main pseudo-batches clip the generator step and both student steps (3 calls each);
    # SR pseudo-batches only the generator step (the authors' SR branch does not clip the student)
    assert clips.count(False) == 3 * 3 and clips.count(True) == 3
    # fedabd's earlier phase, as an option: same optimiser, constant LR, clipped
    d2 = distiller(model("lenet5", GRAY), model("lenet5_half", GRAY), pseudo_batches=6, student_steps_per_pb=2,
                   sr_lr=4e-4, defense=build_defense("sr", sr={"fraction": 0.5, "trigger_steps": 1,
                                                              "fresh_optimizer": False, "lr_schedule": "constant",
                                                              "clip": True}))
    rows2 = []
    d2.run(progress=lambda i, n, row: rows2.append(row))
    assert [r["lr"] for r in rows2[3:]] == pytest.approx([4e-4] * 3)
