"""A run folder belongs to one run: refused when it holds another, cleared only when asked, locked
while a run writes, resumed where it is (moved or not) and only under its own configuration."""
import dataclasses
import json
import shutil

import pytest

from fedabd.cli.simulate import resumed_config
from fedabd.config import ConfigError, load_scenario
from fedabd.local import simulate_local
from fedabd.runfolder import RunFolderError, check_run_folder, own_run_folder
from fedabd.runs import run_scenario

SPEC = {"clients": 10, "fraction": 0.2, "malicious": 1, "rounds": 2, "local_epochs": 1, "aggregator": "fedavg", "device": "cpu", "seed": 2}


class Stop(Exception):
    pass


def stop_after_round_1(cfg, on_round=None, resume=False, progress=None):
    """The in-process transport, stopped (like a killed run) once round 1 is checkpointed."""
    def record(row):
        on_round(row)
        if row["round"] == 1:
            raise Stop
    return simulate_local(cfg, on_round=record, resume=resume, progress=progress)


def rows_of(folder):
    return [{k: v for k, v in r.items() if k not in ("seconds", "resumed")}
            for r in json.loads((folder / "metrics.json").read_text())]


def test_a_moved_run_folder_resumes_where_it_is_and_ends_like_an_uninterrupted_run(tmp_path):
    cut, moved, full = tmp_path / "cut", tmp_path / "elsewhere" / "moved", tmp_path / "full"
    with pytest.raises(Stop):
        run_scenario(load_scenario(None, {**SPEC, "out": str(cut)}), stop_after_round_1)
    moved.parent.mkdir()
    shutil.move(cut, moved)
    cfg = resumed_config(moved, None, {})
    assert cfg.out == str(moved)
    run_scenario(cfg, simulate_local, resume=True)
    assert not cut.exists()  # nothing written back to where the run was made
    run_scenario(load_scenario(None, {**SPEC, "out": str(full)}), simulate_local)
    assert [r["round"] for r in rows_of(moved)] == [0, 1, 2]
    assert rows_of(moved) == rows_of(full)


def test_resume_refuses_flags_that_disagree_with_the_stored_run_and_a_foreign_checkpoint(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_scenario(load_scenario(None, {**SPEC, "rounds": 1, "out": str(a)}), simulate_local)
    run_scenario(load_scenario(None, {**SPEC, "rounds": 1, "seed": 5, "out": str(b)}), simulate_local)
    assert resumed_config(a, None, {"clients": 10, "aggregator": "fedavg"}).out == str(a)  # agreeing flags are fine
    with pytest.raises(ConfigError, match=r"other settings: clients 10 \(asked: 4\)"):
        resumed_config(a, None, {"clients": 4})
    with pytest.raises(ConfigError, match="name different folders"):
        resumed_config(a, None, {"out": str(b)})
    shutil.rmtree(a / "checkpoint")
    shutil.copytree(b / "checkpoint", a / "checkpoint")  # another run's checkpoint in a's folder
    with pytest.raises(RunFolderError, match="written by another configuration .*seed"):
        check_run_folder(a, resumed_config(a, None, {}).to_json(), resume=True)
    with pytest.raises(RunFolderError, match="no config.json"):
        resumed_config(tmp_path / "nothing", None, {})


def test_resume_refuses_a_checkpoint_distilled_under_a_preset_that_changed_since(tmp_path, monkeypatch):
    """The scenario says ``kd_preset: smoke``; the checkpoint records what that preset held, so a
    run is not continued with other distillation settings after the preset changed."""
    from fedabd.distill.methods import fast
    out = tmp_path / "run"
    spec = {**SPEC, "aggregator": "distill", "kd": "fast", "kd_preset": "smoke", "abd": "sr", "out": str(out)}
    with pytest.raises(Stop):
        run_scenario(load_scenario(None, spec), stop_after_round_1)
    stored = json.loads((out / "config.json").read_text())
    assert stored["kd_preset"] == "smoke" and stored["resolved"]["kd"]["kd_steps"] == fast.presets["smoke"].kd_steps
    assert stored["resolved"]["sr"]["fraction"] > 0  # the defence's settings too
    check_run_folder(out, resumed_config(out, None, {}).run_record(), resume=True)  # unchanged: resumes
    monkeypatch.setitem(fast.presets, "smoke", dataclasses.replace(fast.presets["smoke"], kd_steps=5))
    with pytest.raises(RunFolderError, match=r"another configuration \(differs in kd\.kd_steps\)"):
        run_scenario(resumed_config(out, None, {}), simulate_local, resume=True)


def test_a_new_run_refuses_a_folder_holding_another_unless_asked_to_overwrite_it(tmp_path):
    out = tmp_path / "run"
    cfg = load_scenario(None, {**SPEC, "rounds": 1, "out": str(out)})
    run_scenario(cfg, simulate_local)
    before = json.loads((out / "metrics.json").read_text())
    with pytest.raises(RunFolderError, match="not empty, it holds another run .*--resume .*--overwrite"):
        run_scenario(load_scenario(None, {**SPEC, "rounds": 1, "seed": 9, "out": str(out)}), simulate_local)
    assert json.loads((out / "metrics.json").read_text()) == before  # untouched
    with pytest.raises(Stop):  # overwrite clears the old run first: a new run cut short leaves none of it
        run_scenario(load_scenario(None, {**SPEC, "seed": 9, "out": str(out)}), stop_after_round_1, overwrite=True)
    assert not (out / "metrics.json").exists() and not (out / "global.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["seed"] == 9
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="exists and is not a folder"):
        check_run_folder(tmp_path / "file", {})


def test_a_second_run_on_a_folder_being_written_is_refused(tmp_path):
    with own_run_folder(tmp_path / "run", {}):
        with pytest.raises(RunFolderError, match=r"another fedabd run \(pid \d+\) is writing"):
            with own_run_folder(tmp_path / "run", {}, wait=0.2):
                pass
    with own_run_folder(tmp_path / "run", {}, overwrite=True):  # released when the first ended
        pass
