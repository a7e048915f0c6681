"""`fedabd reproduce` end to end at toy budgets: the page, the ablation choice, and resuming."""
import json

import pytest

from fedabd.reproduce import Plan, collect, job_dir, timed_run

TINY = {"vanilla": {"epochs": 1}, "zskt": {"pseudo_batches": 2, "batch_size": 32, "student_steps_per_pb": 2},
        "ood": {"steps": 3, "num_patches": 256, "batch_size": 32}}


@pytest.mark.slow
def test_reproduce_writes_page_and_resumes(tmp_path):
    plan = Plan(out=tmp_path, attacks=["badnet_sq"], kds=["vanilla", "zskt", "ood"], seeds=[0, 1],
                defenses=["none", "sv+sr"], ablation_top=1, teacher_epochs=1, overrides=TINY, device="cpu")
    page = timed_run(plan, "fedabd reproduce (test)")
    text = page.read_text()
    assert "| badnet_sq |" in text and "| clean |" in text and "Ablation" in text
    assert "paper ZSKT + ABD" in text  # the paper's numbers stand beside ours
    results = collect(plan)
    assert results[("badnet_sq", "zskt", "sv+sr")]["n"] == 2  # two seeds -> mean and spread
    assert ("badnet_sq", "ood", "sv") in results and ("badnet_sq", "zskt", "sr") in results  # ablation ran
    # resume: a finished job is not run again
    marker = job_dir(plan, 0, "badnet_sq", "zskt", "none") / "summary.json"
    before = marker.stat().st_mtime_ns
    timed_run(plan, "fedabd reproduce (test)")
    assert marker.stat().st_mtime_ns == before
    assert json.loads((tmp_path / "elapsed.json").read_text())["seconds"] > 0
