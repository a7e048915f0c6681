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
    (("simulate", "--set", "seed=[1", "--out", "x"), "--set 'seed=[1': not a plain YAML value"),
    (("simulate", "--set", "seed=!!python/object/apply:os.system [echo]", "--out", "x"), "not a plain YAML value"),
    (("simulate", "--compare", ",", "--out", "x"), "--compare: no aggregator named"),
    (("simulate", "--seed", "-1", "--out", "x"), "seed: must be between 0"),
    (("simulate", "--set", "local_lr=.nan", "--out", "x"), "local_lr: must be a finite number"),
    (("simulate", "--device", "banana", "--out", "x"), "unknown device 'banana'"),
    (("simulate", "--clients", "10", "--fraction", "0.2", "--set", "min_clients=3", "--out", "x"),
     "min_clients: 3 is more than the 2 client(s) a round samples"),
    (("simulate", "--resume", "/nonexistent"), "no config.json"),
    (("train-teacher", "--out", "/proc/fedabd-out", "--epochs", "1"), "--out /proc/fedabd-out: cannot write there"),
    (("simulate", "--resume", "x", "--compare", "fedavg"), "takes neither --compare nor --overwrite"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(args, needle):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_distill_names_a_missing_teacher_before_making_its_folder_and_an_unwritable_out_before_work(
        tmp_path, teacher_dir):
    res = invoke("distill", "--teacher", tmp_path / "nope.safetensors", "--out", tmp_path / "out")
    assert res.exit_code == 2 and "nope.json: metadata file not found" in res.output, res.output
    assert not (tmp_path / "out").exists()
    res = invoke("distill", "--teacher", teacher_dir / "clean.safetensors", "--out", "/proc/x")
    assert res.exit_code == 2 and "--out /proc/x: cannot write there" in res.output, res.output


def test_an_out_that_is_a_file_and_paths_with_markup_print_literally(tmp_path):
    (tmp_path / "file").write_text("x")
    res = invoke("simulate", "--aggregator", "fedavg", "--out", tmp_path / "file")
    assert res.exit_code == 2 and "exists and is not a folder" in res.output and "Traceback" not in res.output
    odd = tmp_path / "[exp]" / "[/bold]"
    odd.mkdir(parents=True)
    (odd / "s.yaml").write_text("clients: 0\n")
    for args in (("scenarios", "validate", odd / "s.yaml"), ("simulate", "--scenario", odd / "s.yaml")):
        res = invoke(*args)
        assert res.exit_code == 2 and f"{odd / 's.yaml'}: clients: must be >= 1" in res.output


def test_a_distillation_into_a_used_folder_keeps_only_its_own_rows(tmp_path, teacher_dir):
    args = ("distill", "--teacher", teacher_dir / "clean.safetensors", "--kd", "zskt", "--out", tmp_path / "d",
            "--set", "pseudo_batches=2", "--set", "batch_size=16", "--set", "student_steps_per_pb=1",
            "--eval-every", "1", "--device", "cpu")
    rows = []
    for _ in range(2):
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        rows.append((tmp_path / "d" / "metrics.jsonl").read_text().splitlines())
    assert len(rows[1]) == len(rows[0]) > 0  # the second run's log is not appended to the first's


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


def test_a_run_ends_by_saying_what_its_numbers_mean():
    from fedabd.config import load_scenario
    from fedabd.runs import explain

    rows = [{"round": 0}, {"round": 1, "malicious": [3, 4]}, {"round": 2, "malicious": [4]}]
    text = explain(load_scenario(None, {"malicious": 2, "abd": "sv+sr", "target": 7}), rows)
    assert "clients 3, 4 attacked (poison: badnet_grid trigger, target class 7)" in text
    assert "puts in class 7" in text and "--compare fedavg,distill,distill+abd" in text
    text = explain(load_scenario(None, {"aggregator": "fedavg", "scale": 5.0}), [{"round": 0}, {"round": 1}])
    assert text.startswith("What this shows: no client attacked;") and "--compare" not in text
