"""fedabd bench: the spec is checked before anything runs, cells resume, the leaderboard is read
from the cells' own files."""
import dataclasses
import json
import os
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from fedabd.bench import check_finished, load_spec, parse_spec, plan_cells, run_bench
from fedabd.leaderboard import collect, leaderboard_csv, summary, write_leaderboard
from fedabd.cli import app
from fedabd.config import ConfigError
from fedabd.scenario_files import list_scenarios

TOY = {"name": "toy", "scenario": {"clients": 2, "malicious": 1, "rounds": 1, "local_epochs": 1, "device": "cpu"},
       "attacks": {"none": {"malicious": 0}, "poison": {"threat": "poison"}},
       "aggregators": ["fedavg"], "seeds": 1}


@pytest.mark.parametrize("change, needle", [
    ({"attackz": {}}, "unknown key(s) attackz"),
    ({"attacks": None}, "attacks: expected a list or mapping"),
    ({"aggregators": []}, "aggregators: names nothing"),
    ({"aggregators": ["fedavg", "fedavg"]}, "'fedavg' is listed twice"),
    ({"aggregators": [{"a": {}, "b": {}}]}, "each entry is a name"),
    ({"seeds": 0}, "seeds:"),
    ({"seeds": [1, -1]}, "seeds:"),
    ({"seeds": True}, "seeds:"),
    ({"attacks": {"bad/name": {}}}, "not a usable name"),
    ({"attacks": {"x": {"rounds": "many"}}}, "rounds"),
    ({"attacks": {"x": {"treat": "poison"}}}, "attacks.x with aggregators.fedavg: unknown key(s) treat"),
    ({"aggregators": ["fedavgg"]}, "fedavgg"),
    ({"aggregators": ["fedavg+abd"]}, "aggregators.fedavg+abd"),
    ({"warmup": {"rounds": 0}}, "warmup"),
])
def test_a_bad_spec_names_the_key_before_anything_runs(tmp_path, change, needle):
    spec = {**TOY, **change}
    with pytest.raises(ConfigError) as e:
        plan_cells(parse_spec(spec, "toy.yaml"), tmp_path)
    assert needle in str(e.value)
    assert not any(tmp_path.iterdir())


def test_cells_cover_the_matrix_and_start_from_their_seeds_warm_up(tmp_path):
    spec = parse_spec({**TOY, "aggregators": ["fedavg", "flame+distill+abd"], "seeds": [0, 2],
                       "warmup": {"rounds": 2}}, "toy.yaml")
    warmups, cells = plan_cells(spec, tmp_path)
    assert sorted(warmups) == [0, 2] and warmups[2].seed == 2 and warmups[2].malicious == 0
    assert warmups[2].aggregator == "fedavg" and warmups[2].rounds == 2
    assert len(cells) == 2 * 2 * 2
    flame = [c for c in cells if c.aggregator == "flame+distill+abd" and c.attack == "poison" and c.seed == 2][0]
    assert flame.cfg.aggregator == "flame+distill" and flame.cfg.abd == "sv+sr" and flame.cfg.threat == "poison"
    assert flame.cfg.initial_model == os.path.join(warmups[2].out, "global.safetensors")
    assert flame.cfg.out == str(tmp_path / "cells" / "poison" / "flame_distill_abd" / "seed2")
    none = [c for c in cells if c.attack == "none"][0]
    assert none.cfg.malicious == 0


def test_an_aggregators_own_keys_apply_to_its_cells_only(tmp_path):
    spec = parse_spec({**TOY, "aggregators": ["distill", {"distill+abd": {"kd": "zskt"}}]}, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    assert {c.aggregator: c.cfg.kd for c in cells} == {"distill": "cmi", "distill+abd": "zskt"}


def test_a_label_names_its_rule_so_one_rule_can_run_under_two_settings(tmp_path):
    spec = parse_spec({**TOY, "aggregators": [{"mean": {"aggregator": "distill+abd", "ensemble_rule": "logit_mean"}},
                                              {"median": {"aggregator": "distill+abd"}}]}, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    got = {c.aggregator: (c.cfg.aggregator, c.cfg.abd, c.cfg.ensemble_rule) for c in cells}
    assert got == {"mean": ("distill", "sv+sr", "logit_mean"), "median": ("distill", "sv+sr", "norm_median")}
    assert cells[0].cfg.out.endswith("cells/none/mean/seed0")


def _fake_cell(cfg, accs, asrs, tpr=None, seconds=2.0):
    """A finished cell's files, written by hand (no training)."""
    os.makedirs(cfg.out, exist_ok=True)
    rows = [{"round": i, "acc": a, "asr": s, "seconds": None if i == 0 else seconds,
             **({} if tpr is None or i == 0 else {"tpr": tpr, "fpr": 0.0}), "backdoor_lasts": 0}
            for i, (a, s) in enumerate(zip(accs, asrs))]
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(cfg.run_record(), f)


def test_the_leaderboard_is_read_from_the_cells_files(tmp_path):
    spec = parse_spec({**TOY, "aggregators": ["fedavg", "flame"], "seeds": 2}, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    finals = {("poison", "fedavg", 0): (0.9, 0.8), ("poison", "fedavg", 1): (0.8, 0.6),
              ("poison", "flame", 0): (0.7, 0.1), ("none", "fedavg", 0): (0.95, 0.0)}
    for c in cells:
        if (c.attack, c.aggregator, c.seed) in finals:
            acc, asr = finals[(c.attack, c.aggregator, c.seed)]
            if c.aggregator == "flame":  # the backdoor peaks in round 1 and is gone by round 2
                _fake_cell(c.cfg, [0.1, 0.5, acc], [0.0, 0.9, asr], tpr=1.0)
            else:
                _fake_cell(c.cfg, [0.1, acc], [0.0, asr])
    by = {(e["attack"], e["aggregator"]): e for e in collect(spec, tmp_path)}
    assert by[("poison", "flame")]["peak"] == 0.9 and by[("poison", "fedavg")]["peak"] == pytest.approx(0.7)
    e = by[("poison", "fedavg")]
    assert e["n"] == 2 and e["acc"] == pytest.approx(0.85) and e["asr"] == pytest.approx(0.7)
    assert e["asr_sd"] == pytest.approx(0.1414, abs=1e-3) and e["tpr"] is None and e["seconds"] == 2.0
    assert e["rounds"][1]["asr"] == pytest.approx(0.7)
    assert by[("poison", "flame")]["tpr"] == 1.0 and by[("poison", "flame")]["n"] == 1
    assert by[("none", "flame")]["n"] == 0 and by[("none", "flame")]["acc"] is None
    page = write_leaderboard(spec, tmp_path).read_text()
    assert "85.0 ± 7.1" in page and "70.0 ± 14.1" in page and "100.0 / 0.0" in page
    assert "| poison | flame | 1 | 70.0 | 10.0 | 90.0 | 100.0 / 0.0 |" in page
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000 and (tmp_path / "curves_poison.png").exists()
    csv_rows = leaderboard_csv(collect(spec, tmp_path)).splitlines()
    assert csv_rows[0].startswith("attack,aggregator,n,acc,acc_sd,asr")
    assert any(r.startswith("poison,flame,1,0.7,,0.1,") for r in csv_rows)


def test_the_summary_counts_the_attacks_each_aggregator_holds_clean_at_what_accuracy(tmp_path):
    """Held: final ASR <= 5 %; at no cost: also within 2 points of FedAvg's Acc without an attack."""
    spec = parse_spec({**TOY, "aggregators": ["fedavg", "flame", "rlr"]}, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    finals = {("none", "fedavg"): (0.95, 0.0), ("none", "flame"): (0.93, 0.0),
              ("poison", "fedavg"): (0.96, 0.8), ("poison", "flame"): (0.94, 0.03), ("poison", "rlr"): (0.90, 0.01)}
    for c in cells:
        if (c.attack, c.aggregator) in finals:
            acc, asr = finals[(c.attack, c.aggregator)]
            _fake_cell(c.cfg, [0.1, acc], [0.0, asr], seconds={"fedavg": 1.0, "flame": 3.0, "rlr": 2.0}[c.aggregator])
    rows = {r["aggregator"]: r for r in summary(spec, collect(spec, tmp_path))}
    assert rows["fedavg"] == {"aggregator": "fedavg", "clean_acc": 0.95, "attacks": 1, "held": 0, "held_at_acc": 0,
                              "worst_asr": 0.8, "seconds": 1.0}
    assert (rows["flame"]["held"], rows["flame"]["held_at_acc"], rows["flame"]["clean_acc"]) == (1, 1, 0.93)
    assert (rows["rlr"]["held"], rows["rlr"]["held_at_acc"], rows["rlr"]["clean_acc"]) == (1, 0, None)
    assert rows["rlr"]["seconds"] == 2.0
    page = write_leaderboard(spec, tmp_path).read_text()
    assert "| flame | 93.0 | 1 of 1 | 1 of 1 | 3.0 | 3.0 |" in page
    assert "| rlr | - | 1 of 1 | 0 of 1 | 1.0 | 2.0 |" in page


def test_a_finished_cell_run_with_other_settings_is_refused(tmp_path):
    spec = parse_spec(TOY, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    _fake_cell(cells[0].cfg, [0.1, 0.9], [0.0, 0.0])
    cfg = json.loads((tmp_path / "cells" / "none" / "fedavg" / "seed0" / "config.json").read_text())
    cfg["local_epochs"] = 3
    (tmp_path / "cells" / "none" / "fedavg" / "seed0" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="local_epochs"):
        run_bench(spec, tmp_path)


def test_a_finished_cell_distilled_under_a_preset_that_changed_since_is_refused(tmp_path, monkeypatch):
    """The scenario names only ``kd_preset: fed``; the cell records the preset's contents, so a
    bench resumed after the preset changed does not mix cells of both (a folder written before the
    contents were recorded is accepted: nothing to compare)."""
    from fedabd.distill.methods import fast
    spec = parse_spec({**TOY, "aggregators": ["distill"], "scenario": {**TOY["scenario"], "kd": "fast"}}, "toy.yaml")
    _, cells = plan_cells(spec, tmp_path)
    _fake_cell(cells[0].cfg, [0.1, 0.9], [0.0, 0.0])
    check_finished(cells)  # recorded under today's preset
    monkeypatch.setitem(fast.presets, "fed", dataclasses.replace(fast.presets["fed"], kd_steps=7))
    with pytest.raises(ConfigError, match=r"used other settings \(kd\.kd_steps\)"):
        check_finished(cells)
    config = tmp_path / "cells" / "none" / "distill" / "seed0" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "resolved"}))
    check_finished(cells)


def test_shipped_specs_plan_cleanly(tmp_path):
    shipped = list_scenarios("bench")
    assert {"cpu", "cifar10_gpu"} <= set(shipped)
    for name, path in shipped.items():
        warmups, cells = plan_cells(load_spec(path), tmp_path / name)
        assert cells


@pytest.mark.slow
def test_a_two_cell_bench_runs_stops_and_resumes_without_rerunning_finished_cells(tmp_path):
    spec = parse_spec({**TOY, "warmup": {"rounds": 1}}, "toy.yaml")

    class Stop(Exception):
        pass

    seen = []

    def stop_after_first_cell(cfg, rows):
        seen.append(cfg.name)
        if cfg.name.startswith("none"):
            raise Stop

    with pytest.raises(Stop):
        run_bench(spec, tmp_path, on_done=stop_after_first_cell)
    warm = tmp_path / "warmup" / "seed0" / "metrics.json"
    first = tmp_path / "cells" / "none" / "fedavg" / "seed0" / "metrics.json"
    second = tmp_path / "cells" / "poison" / "fedavg" / "seed0" / "metrics.json"
    assert warm.exists() and first.exists() and not second.exists()
    stamps = warm.stat().st_mtime_ns, first.stat().st_mtime_ns
    seen.clear()
    run_bench(spec, tmp_path, on_done=lambda cfg, rows: seen.append(cfg.name))
    assert seen == ["poison / fedavg / seed 0"]
    assert (warm.stat().st_mtime_ns, first.stat().st_mtime_ns) == stamps
    rows = json.loads(second.read_text())
    assert rows[1]["malicious"] == [1] and 0.0 <= rows[1]["asr"] <= 1.0
    # every cell started from the warm-up's model: round 0 of a cell is the warm-up's last round
    warm_rows = json.loads(warm.read_text())
    assert json.loads(first.read_text())[0]["acc"] == pytest.approx(warm_rows[-1]["acc"])
    spec_file = tmp_path / "toy.yaml"
    spec_file.write_text(yaml.safe_dump({**TOY, "warmup": {"rounds": 1}}))
    res = CliRunner().invoke(app, ["bench", str(spec_file), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2 cells + 1 warm-ups" in res.output and "ASR %" in res.output
    board = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 3 and board[2].startswith("poison,fedavg,1,")

    # a fresh clone keeps metrics, not models: the warm-up runs again from its seed, and must match
    model = tmp_path / "warmup" / "seed0" / "global.safetensors"
    model.unlink()
    seen.clear()
    run_bench(spec, tmp_path, on_done=lambda cfg, rows: seen.append(cfg.name))
    assert seen == [] and not model.exists()  # every cell finished: the model is not needed
    shutil.rmtree(second.parent)
    run_bench(spec, tmp_path, on_done=lambda cfg, rows: seen.append(cfg.name))
    assert seen == ["toy warm-up, seed 0", "poison / fedavg / seed 0"] and model.exists()
    assert [r["acc"] for r in json.loads(warm.read_text())] == pytest.approx([r["acc"] for r in warm_rows])
    model.unlink()
    shutil.rmtree(second.parent)
    warm.write_text(json.dumps([{**r, "acc": r["acc"] / 2} for r in warm_rows]))
    with pytest.raises(ConfigError, match="does not give the rounds it gave before"):
        run_bench(spec, tmp_path)
    assert not model.exists() and json.loads(warm.read_text())[-1]["acc"] == pytest.approx(warm_rows[-1]["acc"] / 2)
    run_bench(spec, tmp_path, accept_rebuilt=True)  # both runs recorded, the leaderboard says which cell used which
    assert model.exists() and second.exists() and (warm.parent / "rebuilt.json").exists()
    assert "0 start from the first model and 2 from the rebuilt one" in write_leaderboard(spec, tmp_path).read_text()


def test_the_cli_names_a_bad_spec_key_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TOY, "aggregators": ["fedavg"], "attacks": {"x": {"scale": -1}}}))
    res = CliRunner().invoke(app, ["bench", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "attacks.x with aggregators.fedavg" in res.output and "scale" in res.output
    res = CliRunner().invoke(app, ["bench", "no_such_bench"])
    assert res.exit_code == 2 and "shipped bench spec" in res.output
    res = CliRunner().invoke(app, ["bench", str(bad), "--attacks", "y"])
    assert res.exit_code == 2 and "--attacks y" in res.output
    assert not (tmp_path / "o").exists()


def _threads(_item):
    import torch
    return torch.get_num_threads()


def test_a_single_job_runs_with_a_workers_threads_so_its_result_does_not_depend_on_how_many_were_left():
    import torch

    from fedabd.pool import run_jobs, threads_per_job
    seen, before = [], torch.get_num_threads()
    run_jobs(_threads, ["only"], jobs=2, on_done=lambda item, n: seen.append(n))
    assert seen == [threads_per_job(2)] and torch.get_num_threads() == before
    run_jobs(_threads, ["only"], jobs=1, on_done=lambda item, n: seen.append(n))
    assert seen[-1] == before
