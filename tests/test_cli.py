"""The command line as a user meets it: outputs, files, and clear errors with exit code 2."""
import json

import pytest
from typer.testing import CliRunner

from fedabd.cli import app, normalize_argv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv(list(map(str, args))))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    res = invoke("train-teacher", "--attack", "clean,badnet_sq", "--epochs", "3", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    return out


def test_train_teacher_writes_models_and_table(teacher_dir):
    for name in ("clean", "badnet_sq"):
        meta = json.loads((teacher_dir / f"{name}.json").read_text())
        assert meta["arch"]["name"] == "lenet5" and meta["dataset"]["name"] == "mnist_subset"
        assert 0.85 < meta["metrics"]["acc"] <= 1.0
    assert json.loads((teacher_dir / "badnet_sq.json").read_text())["attack"]["name"] == "badnet_sq"
    table = (teacher_dir / "teachers.md").read_text()
    assert "| clean |" in table and "| badnet_sq |" in table


def test_evaluate_uses_the_stored_trigger(teacher_dir):
    res = invoke("evaluate", teacher_dir / "badnet_sq.safetensors", "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    stored = json.loads((teacher_dir / "badnet_sq.json").read_text())["metrics"]
    assert m == pytest.approx(stored, abs=1e-6)
    res = invoke("evaluate", teacher_dir / "clean.safetensors", "--json", "--attack", "badnet_sq", "--device", "cpu")
    assert json.loads(res.output.strip().splitlines()[-1])["asr"] < 0.2  # a clean model ignores the trigger


@pytest.mark.parametrize("args, needle", [
    (("train-teacher", "--attack", "nope", "--out", "x"), "unknown attack 'nope'"),
    (("train-teacher", "--dataset", "cifar10", "--data-dir", "/nonexistent", "--out", "x"), "cifar10"),
    (("evaluate", "/nonexistent/model.safetensors"), "not found"),
    (("simulate", "--malicious", "9", "--clients", "3"), "malicious"),
    (("simulate", "--kd", "bogus"), "kd: unknown distillation method 'bogus'"),
    (("simulate", "--abd", "sr", "--set", "sr={fracton: 0.1}", "--out", "x"), "sr: unknown setting 'fracton'"),
    (("simulate", "--kd", "zskt", "--set", "kd_overrides={pseudo_batch: 3}", "--out", "x"),
     "kd_overrides: unknown setting 'pseudo_batch'"),
    (("simulate", "--scenario", "no_such_scenario"), "no scenario file"),
    (("simulate", "--threat", "dba", "--set", "threat_settings={pieces: 9}", "--out", "x"),
     "9 pieces need at least 9"),
    (("simulate", "--aggregator", "fedavg+distill", "--out", "x"), "fedavg does not filter clients"),
    (("distill", "--teacher", "/nonexistent.safetensors", "--out", "x"), "not found"),
    (("distill", "--teacher", "/nonexistent.safetensors", "--out", "x", "--abd", "bogus"), "unknown defence"),
    (("reproduce", "--out", "x", "--base", "/nonexistent"), "not a reproduction folder"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(args, needle):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_pickled_model_is_refused(tmp_path, teacher_dir):
    import torch

    torch.save({"a": torch.zeros(1)}, tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text((teacher_dir / "clean.json").read_text())
    res = invoke("evaluate", tmp_path / "m.safetensors")
    assert res.exit_code == 2 and "pickle" in res.output


def test_bare_abd_flag_means_sv_and_sr():
    assert normalize_argv(["simulate", "--abd", "--kd", "cmi"]) == ["simulate", "--abd", "sv+sr", "--kd", "cmi"]
    assert normalize_argv(["simulate", "--abd"]) == ["simulate", "--abd", "sv+sr"]
    assert normalize_argv(["simulate", "--abd", "sv"]) == ["simulate", "--abd", "sv"]


def test_scenarios_validate_and_list():
    res = invoke("scenarios", "validate")
    assert res.exit_code == 0, res.output
    res = invoke("scenarios", "list")
    assert res.exit_code == 0 and "quickstart" in res.output


def test_scenarios_validate_reports_bad_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("clients: 2\nmalicious: 5\n")
    res = invoke("scenarios", "validate", p)
    assert res.exit_code == 2 and "malicious" in res.output and str(p) in res.output
