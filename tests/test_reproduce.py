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


@pytest.mark.slow
def test_parallel_workers_give_the_same_table_as_one_process(tmp_path):
    import torch

    def plan(out, jobs):
        return Plan(out=tmp_path / out, attacks=["badnet_sq", "blend"], kds=["zskt"], seeds=[0], defenses=["none", "sv+sr"],
                    ablation_top=0, teacher_epochs=1, overrides=TINY, device="cpu", sr={"fraction": 0.5}, jobs=jobs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two workers uses on a 2-core machine
    try:
        timed_run(plan("one", 1), "fedabd reproduce (test)")
    finally:
        torch.set_num_threads(threads)
    page = timed_run(plan("two", 2), "fedabd reproduce (test)").read_text()
    assert "2 worker process(es)" in page and '"fraction": 0.5' in page and "In progress" not in page
    one, two = collect(plan("one", 1)), collect(plan("two", 2))
    assert set(one) == set(two) and len(one) == 9  # 3 teachers + 3 x (zskt, zskt + ABD)
    for key in one:
        assert (one[key]["acc"], one[key].get("asr")) == (two[key]["acc"], two[key].get("asr")), key
    summary = json.loads((job_dir(plan("two", 2), 0, "blend", "zskt", "sv+sr") / "summary.json").read_text())
    assert summary["defense_state"]["sr"]["config"]["fraction"] == 0.5  # --sr reached the defence
