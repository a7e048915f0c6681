"""fedabd's CMI, Fast and OOD (with and without SV, and their SR step) against the ABD authors' CMI and OOD
code, per step at the paper's configuration, side by side in one run.

    pip install kornia tqdm     # the authors' CMI imports them (not fedabd dependencies)
    python benchmarks/authors_cmi_ood.py --authors PATH [--steps 3] [--out benchmarks/results/authors_cmi_ood.md]

PATH: a checkout of github.com/illidanlab/ABD (measured at 19c89bf). From their ``cmi/`` folder this
imports and calls their own code: ``CMISynthesizer.synthesize`` (its generator steps), the KD step
``train`` of ``datafree_kd.py``, ``UnlearnOptimizer.step`` (SR) and ``train_kd`` of ``vanilla_kd_ood.py``,
with their ``BackdoorSuspectLoss`` as SV. Only what a CPU without their data and paths needs is changed:
``wandb`` stubbed, their ``registry`` / ``utils.config`` modules (dataset paths, directories made at
import) replaced by the names the imported files read (normalisation constants, empty paths), ``torchvision.models.utils`` (gone from torchvision)
pointed to ``torch.hub``, ``np.int`` (gone from NumPy) set to ``int`` as it was, and their hard-coded ``'cuda'`` of the SR step sent to the CPU. Their synthetic
images go to a temporary folder as PNGs (their ``ImagePool``) and are read back by their DataLoader, as
in their runs. Their OOD step gets its batches from an in-memory tensor dataset (their runs read JPEG
patches through PIL transforms in worker processes: left out, which favours their side). Nothing of
theirs is copied into fedabd.

Paper configuration: WRN-16-2 teacher -> WRN-16-1 student, 3x32x32, 10 classes. CMI: synthesis batch
256, 4,096 negatives from a full 40,960-row bank, head 256; an epoch = 200 generator steps + 400 KD
steps of batch 128 at T 20. Fast (fedabd's; Fang et al. 2022): 5 generator steps + a meta step per
epoch on batch 256, 400 KD steps of batch 256. OOD: batch 512, T 8, CutMix. SV: 3 shuffled copies of
5 layers. SR: 10 trigger steps on the teacher, 5 fixed-point iterations, portion 0.02.

Measured per step: a generator step is (time of a synthesis with 1 + n steps - time with 1) / n on
both sides, after a warm-up synthesis (what a synthesis costs besides its steps, their PNG writes
included, cancels); a KD /
OOD / SR step is the mean of n steps after one warm-up step (their DataLoader's worker start-up is
paid in the warm-up). An epoch is composed from the steps. fedabd runs fp32 (the API default) and
'fast' (channels_last + bf16 autocast where the CPU has bf16: the CLI's switches). Teachers are
randomly initialised: speed does not depend on what they learnt. GFLOP by torch's FlopCounterMode
(convolutions and matmuls, forward and backward) of one step of each. A watchdog ends the run with a
message if its resident memory passes --max-rss-gb (their ZSKT SR step reached 23 GB on this machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedabd.data import DatasetInfo
from fedabd.defenses import build_defense
from fedabd.device import bf16_supported
from fedabd.distill import create_distiller
from fedabd.models import create_model

from authors_patches import cpu_only, quiet  # noqa: E402  (benchmarks/, the script's folder)
from machine import machine  # noqa: E402  (benchmarks/, the script's folder)

INFO = DatasetInfo("synthetic32", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
SV_LAM = 0.1


def watchdog(limit_gb: float) -> None:
    """End the process (with a line saying why) when its resident memory passes ``limit_gb``."""
    def poll():
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2 ** 20
            if rss > limit_gb:
                print(f"authors_cmi_ood: resident memory {rss:.1f} GB > --max-rss-gb {limit_gb}: stopped", flush=True)
                os._exit(3)
            time.sleep(0.2)
    if Path("/proc/self/status").exists():
        threading.Thread(target=poll, daemon=True).start()


def per_step(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def gflop(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


# -- the authors' side --------------------------------------------------------------------------------

def import_authors(path: Path) -> SimpleNamespace:
    root = path / "cmi"
    if not (root / "datafree_kd.py").exists():
        sys.exit(f"--authors {path}: no cmi/datafree_kd.py there (a checkout of github.com/illidanlab/ABD)")
    sys.path.insert(0, str(root))
    sys.modules.setdefault("wandb", SimpleNamespace(log=lambda *a, **k: None, init=lambda *a, **k: None))
    tvu = types.ModuleType("torchvision.models.utils")
    tvu.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules["torchvision.models.utils"] = tvu
    norm = {"mean": INFO.mean, "std": INFO.std}
    sys.modules["registry"] = SimpleNamespace(NORMALIZE_DICT={"cifar10": norm})
    config = types.ModuleType("utils.config")
    config.__dict__.update(data_root="", DATA_PATHS={}, CHECKPOINT_ROOT="", backdoor_PT_model_path="",
                           make_if_not_exist=lambda p: None,
                           get_pretrained_path=lambda args: "")
    import utils  # noqa: F401  (theirs: cmi/utils)
    sys.modules["utils.config"] = config
    import numpy as np
    if not hasattr(np, "int"):  # their OOD CutMix calls np.int, gone since NumPy 1.24: the builtin it aliased
        np.int = int
    import datafree  # noqa: E402
    import datafree_kd  # noqa: E402
    import vanilla_kd_ood  # noqa: E402
    from datafree.models.classifiers.wresnet import wrn_16_1, wrn_16_2  # noqa: E402
    from datafree.models.generator import Generator  # noqa: E402
    return SimpleNamespace(datafree=datafree, kd=datafree_kd, ood=vanilla_kd_ood, wrn_16_1=wrn_16_1,
                           wrn_16_2=wrn_16_2, Generator=Generator)


def authors_models(A, sv: bool):
    """Their WRN-16-2 teacher, WRN-16-1 student (seeded) and, with ``sv``, their SV on the teacher."""
    torch.manual_seed(0)
    teacher, student = A.wrn_16_2(num_classes=10).eval(), A.wrn_16_1(num_classes=10)
    with quiet():
        suspect = (A.datafree.synthesis.BackdoorSuspectLoss(teacher, coef=SV_LAM, device="cpu", pseudo_test_batches=0)
                   if sv else None)
    return teacher, student, suspect


def authors_cmi(A, sv: bool, workdir: str):
    """Their CMISynthesizer as datafree_kd.py builds it for the paper (1 generator step a synthesis until
    set otherwise), its bank full."""
    from torchvision import transforms as T
    df = A.datafree
    teacher, student, suspect = authors_models(A, sv)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(INFO.mean, INFO.std)])
    with quiet():
        syn = df.synthesis.CMISynthesizer(
            teacher, student, A.Generator(nz=256, ngf=64, img_size=32, nc=3), nz=256, num_classes=10,
            img_size=(3, 32, 32), feature_layers=None, bank_size=40960, n_neg=4096, head_dim=256, iterations=1,
            lr_g=1e-3, synthesis_batch_size=256, sample_batch_size=128, adv=0.5, bn=1.0, oh=1.0, cr=0.8, cr_T=0.1,
            save_dir=workdir, transform=transform, normalizer=df.utils.Normalizer(INFO.mean, INFO.std), device="cpu",
            suspect_loss=suspect)
    for _ in range(40960 // 256):  # steady state: a full bank of past features
        syn.mem_bank.add(torch.randn(256, syn.mem_bank.dim_feat))
    return syn, teacher, student


def rate(gflop: float | None, seconds: float | None) -> float | None:
    return None if gflop is None or not seconds else gflop / seconds


def synth_times(synthesize, set_steps, n: int) -> tuple[float, float]:
    """(seconds per generator step, seconds of a 1-step synthesis): one warm-up synthesis of 1 step, then
    1 step and 1 + n steps on the same object (what a synthesis costs besides its steps cancels)."""
    set_steps(1)
    synthesize()
    t0 = time.perf_counter()
    synthesize()
    one = time.perf_counter() - t0
    set_steps(1 + n)
    t0 = time.perf_counter()
    synthesize()
    return (time.perf_counter() - t0 - one) / n, one


def authors_synth(A, sv: bool, n: int, workdir: str) -> tuple[float, float, float]:
    """(seconds per generator step, seconds of a 1-step synthesis, GFLOP of a 1-step synthesis)."""
    syn, _, _ = authors_cmi(A, sv, workdir)
    with quiet():
        step, one = synth_times(syn.synthesize, lambda g: setattr(syn, "iterations", g), n)
        syn.iterations = 1
        return step, one, gflop(syn.synthesize)


def authors_kd(A, sr: bool, n: int, workdir: str):
    """One KD step of their datafree_kd.train (SR: their UnlearnOptimizer.step), images from their pool."""
    df = A.datafree
    syn, teacher, student = authors_cmi(A, False, workdir)
    with quiet():
        for _ in range(-(-(n + 2) * 128 // 256)):  # enough pool images for the warm-up and n steps in one pass
            syn.synthesize()
    opt = torch.optim.SGD(student.parameters(), 0.1, weight_decay=1e-4, momentum=0.9)
    args = SimpleNamespace(kd_steps=1, gpu=None, autocast=df.utils.dummy_ctx, fp16=False, print_freq=0, current_epoch=0)
    criterion = df.criterions.KLDiv(T=20)
    unlearner = df.unlearn.UnlearnOptimizer(df.criterions.KLDiv(T=20), inner_round=10) if sr else None

    def step():
        with cpu_only(), quiet():
            A.kd.train(syn, [student, teacher], criterion, opt, args, unlearner=unlearner)
    return step


def authors_ood(A, sv: bool, sr: bool, n: int):
    """Their vanilla_kd_ood.train_kd over n + 1 batches of 512 (one warm-up)."""
    df = A.datafree
    teacher, student, suspect = authors_models(A, sv)
    data = torch.utils.data.TensorDataset(torch.randn((n + 1) * 512, 3, 32, 32), torch.zeros((n + 1) * 512, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=512)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    args = SimpleNamespace(beta=0.25, cutmix_prob=1.0)
    unlearner = df.unlearn.UnlearnOptimizer(df.criterions.KLDiv(T=8), inner_round=10) if sr else None
    with cpu_only(), quiet():
        t0 = time.perf_counter()
        A.ood.train_kd(args, student, teacher, opt, A.ood.KDLoss(8), loader, "cpu", unlearner=unlearner,
                       suspect_loss=suspect)
        total = time.perf_counter() - t0
    return total / (n + 1)  # their loop has no hook between batches: the warm-up batch is inside the mean


# -- fedabd's side ------------------------------------------------------------------------------------

def ours(method: str, sv: bool, sr: bool, fast: bool, **overrides):
    torch.manual_seed(0)
    teacher = create_model("wrn16_2", INFO.num_classes, 3, 32)
    student = create_model("wrn16_1", INFO.num_classes, 3, 32)
    abd = "+".join(n for n, on in (("sv", sv), ("sr", sr)) if on) or "none"
    defense = build_defense(abd, sv={"lam": SV_LAM} if sv else None, sr={"fraction": 1.0} if sr else None)
    d = create_distiller(method, [teacher], student, INFO, preset="paper", overrides=overrides,
                         device=torch.device("cpu"), seed=0, defense=defense,
                         channels_last=fast, bf16=fast and bf16_supported(torch.device("cpu")))
    d.setup()
    d.defense.setup(d)
    if method == "cmi":  # steady state: a full bank of past features
        d.bank = torch.randn(d.cfg.bank_size, d.bank.shape[1])
    if method == "fast":  # past the synthesis-only warm-up
        d.epochs_done = d.cfg.warmup
    return d


def enter_sr(d) -> None:
    d._enter_final_phase(1000)


def ours_synth(method: str, sv: bool, fast: bool, n: int) -> tuple[float, float, float]:
    """As :func:`authors_synth`, for fedabd's CMI or Fast (after its warm-up epochs: adversarial term on)."""
    d = ours(method, sv, False, fast, g_steps=1)
    step, one = synth_times(d.synthesize, lambda g: setattr(d, "cfg", replace(d.cfg, g_steps=g)), n)
    d.cfg = replace(d.cfg, g_steps=1)
    return step, one, gflop(d.synthesize)


def ours_kd_step(method: str, sr: bool, fast: bool):
    d = ours(method, False, sr, fast, kd_steps=1, g_steps=1)
    d.synthesize()
    if sr:
        enter_sr(d)
    return lambda: d.kd_epoch(0)


def ours_ood_step(sv: bool, sr: bool, fast: bool):
    d = ours("ood", sv, sr, fast, num_patches=2048)
    if sr:
        enter_sr(d)
    d.student.train()
    it = iter(range(10 ** 9))
    return lambda: d.iteration(next(it))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors", type=Path, required=True, help="checkout of github.com/illidanlab/ABD")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side and case")
    ap.add_argument("--sr", action=argparse.BooleanOptionalAction, default=True, help="time the SR steps too")
    ap.add_argument("--max-rss-gb", type=float, default=12.0)
    ap.add_argument("--out", default="benchmarks/results/authors_cmi_ood.md")
    args = ap.parse_args()
    watchdog(args.max_rss_gb)
    A = import_authors(args.authors)
    n = args.steps
    work = tempfile.mkdtemp(prefix="authors_cmi_")
    rows, synth = [], {}

    def row(name, theirs, ours_fp32, ours_fast, fast_fp32=None, fast_fast=None, gf=(None, None), gf_s=None):
        # gf_s: the seconds the GFLOP were counted over (default: the step's; a generator step's GFLOP are
        # counted over a 1-step synthesis, so its GFLOP/s divide by that synthesis' seconds)
        gf_s = gf_s or (theirs, ours_fp32)
        r = dict(name=name, theirs=theirs, fp32=ours_fp32, fast=ours_fast, f32=fast_fp32, ff=fast_fast,
                 gf_theirs=gf[0], gf_ours=gf[1], gfs_theirs=rate(gf[0], gf_s[0]), gfs_ours=rate(gf[1], gf_s[1]))
        print(r, flush=True)
        rows.append(r)

    for sv in (False, True):
        tag = " + SV" if sv else ""
        synth[sv] = s = {"theirs": authors_synth(A, sv, n, work), "fp32": ours_synth("cmi", sv, False, n),
                         "fast": ours_synth("cmi", sv, True, n), "f32": ours_synth("fast", sv, False, n),
                         "ff": ours_synth("fast", sv, True, n)}
        row(f"generator step{tag}", *(s[k][0] for k in ("theirs", "fp32", "fast", "f32", "ff")),
            gf=(s["theirs"][2], s["fp32"][2]), gf_s=(s["theirs"][1], s["fp32"][1]))
    theirs_kd, ours_kd = authors_kd(A, False, n, work), ours_kd_step("cmi", False, False)
    row("KD step", per_step(theirs_kd, n), per_step(ours_kd, n), per_step(ours_kd_step("cmi", False, True), n),
        per_step(ours_kd_step("fast", False, False), n), per_step(ours_kd_step("fast", False, True), n),
        gf=(gflop(theirs_kd), gflop(ours_kd)))
    if args.sr:
        theirs_sr, ours_sr = authors_kd(A, True, n, work), ours_kd_step("cmi", True, False)
        row("SR step (KD + trigger search + hypergradient)", per_step(theirs_sr, n), per_step(ours_sr, n),
            per_step(ours_kd_step("cmi", True, True), n), gf=(None, gflop(ours_sr)))
    for sv in (False, True):
        ours_step = ours_ood_step(sv, False, False)
        row("OOD step" + (" + SV" if sv else ""), authors_ood(A, sv, False, n), per_step(ours_step, n),
            per_step(ours_ood_step(sv, False, True), n), gf=(None, gflop(ours_step)))
    if args.sr:
        row("OOD SR step", authors_ood(A, False, True, n), per_step(ours_ood_step(False, True, False), n),
            per_step(ours_ood_step(False, True, True), n))
    write(args, rows, synth)


def write(args, rows: list[dict], synth: dict) -> None:
    bf16 = bf16_supported(torch.device("cpu"))
    fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    ratio = lambda a, b: "-" if a is None or b is None else f"{a / b:.1f}x"  # noqa: E731
    lines = [
        "# CMI, Fast and OOD per step at the paper's configuration: the ABD authors' code vs fedabd", "",
        f"Command: `python benchmarks/authors_cmi_ood.py --authors PATH --steps {args.steps}` (PATH: a checkout of "
        "github.com/illidanlab/ABD, 19c89bf; `pip install kornia tqdm` for their code)", "",
        f"Machine: {machine('cpu', f'bf16 fast path: {bf16}')}. 'fast' = fedabd with channels_last"
        + (" + bf16 autocast" if bf16 else "") + ". Seconds per step, mean of "
        f"{args.steps}; ratio = the authors' seconds / fedabd's (higher: fedabd faster). The Fast columns are "
        "fedabd's Fast distiller (another synthesiser: no contrastive head or local view; its KD batch is 256, "
        "CMI's 128). GFLOP: one step, forward and backward (the authors' SR and OOD steps are not counted: "
        "their loop cannot be entered for one step); GFLOP/s: those GFLOP over the seconds of the same work (a "
        "generator step's over a 1-step synthesis' seconds, which the table does not show).", "",
        "| step | authors s | fedabd CMI / OOD fp32 s | fast s | ratio fp32 | ratio fast | fedabd Fast fp32 s "
        "| Fast fast s | ratio fp32 | ratio fast | authors GFLOP | fedabd GFLOP | authors GFLOP/s | fedabd fp32 GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {fmt(r['theirs'])} | {fmt(r['fp32'])} | {fmt(r['fast'])} | "
                     f"{ratio(r['theirs'], r['fp32'])} | {ratio(r['theirs'], r['fast'])} | {fmt(r['f32'])} | "
                     f"{fmt(r['ff'])} | {ratio(r['theirs'], r['f32'])} | {ratio(r['theirs'], r['ff'])} | "
                     f"{fmt(r['gf_theirs'], 1)} | {fmt(r['gf_ours'], 1)} | {fmt(r['gfs_theirs'], 0)} | "
                     f"{fmt(r['gfs_ours'], 0)} |")
    kd = next(r for r in rows if r["name"] == "KD step")
    lines += ["", "## One epoch of the paper's schedule, composed from the steps", "",
              "A synthesis of G generator steps costs (1-step synthesis) + (G - 1) x (generator step): CMI "
              "G = 200, Fast G = 5 (its meta step is in the 1-step synthesis); then 400 KD steps.", "",
              "| epoch | authors CMI s | fedabd CMI fp32 s | fedabd CMI fast s | fedabd Fast fp32 s | "
              "fedabd Fast fast s | authors CMI / fedabd CMI fast | authors CMI / fedabd Fast fast |",
              "|---|---|---|---|---|---|---|---|"]
    for sv in (False, True):
        s = synth[sv]
        epoch = {k: s[k][1] + (g - 1) * s[k][0] + 400 * kd[k]
                 for k, g in (("theirs", 200), ("fp32", 200), ("fast", 200), ("f32", 5), ("ff", 5))}
        lines.append(f"| {'with SV' if sv else 'plain'} | {epoch['theirs']:.0f} | {epoch['fp32']:.0f} | "
                     f"{epoch['fast']:.0f} | {epoch['f32']:.0f} | {epoch['ff']:.0f} | "
                     f"{ratio(epoch['theirs'], epoch['fast'])} | {ratio(epoch['theirs'], epoch['ff'])} |")
    lines += ["", "Fast's 5 generator steps per epoch against CMI's 200 are its method (Fang et al. 2022: a "
              "meta-learned generator that starts each synthesis from what it has learnt); whether its student "
              "matches CMI's is a separate measurement (README, Fast; results/quickstart)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
