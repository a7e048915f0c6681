"""Faults tried on real Flower simulations: a client hanging past the timeout, a round left with too
few usable clients, and a `fedabd simulate` process stopped by Ctrl-C and by SIGKILL mid-round,
leaving no process behind, then resumed (slow: Ray starts for each run)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedabd.server.app import RoundFailed
from fedabd.server.simulation import simulate
from .test_simulation import scenario

# Generous against a loaded 2-core machine: honest clients here train one epoch on ~3k images, and
# round 1, when Ray and the clients start, waits startup_timeout (300 s by default) on top.
HANG_TIMEOUT = 60.0


def faulty_app(cfg, fault):
    """The standard ClientApp with ``fault(pid, round)`` run before each client's training."""
    from fedabd.clients.app import make_client_app

    honest = make_client_app(cfg)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fault(int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"]))
        return honest(msg, context)

    return app


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """One simulation (one Ray start) through two faults: client 1 hangs in round 2 until the server
    has finished that round without it; in round 3 clients 0 and 1 crash, leaving one usable upload
    against min_clients 2. Returns (the rows, the exception, the run folder)."""
    tmp = tmp_path_factory.mktemp("faulty")
    cfg = scenario(tmp, clients=3, rounds=3, min_clients=2, client_timeout=HANG_TIMEOUT)
    release, rows = tmp / "release", []

    def fault(pid, rnd):
        if pid == 1 and rnd == 2:  # hangs until the server has finished the round without it
            deadline = time.monotonic() + 10 * HANG_TIMEOUT
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        if rnd == 3 and pid != 2:
            raise RuntimeError(f"client {pid} lost its disk")

    def on_round(row):
        rows.append(row)
        if row["round"] == 2:
            release.touch()

    with pytest.raises(RoundFailed) as info:
        simulate(cfg, on_round=on_round, client_app=faulty_app(cfg, fault))
    return rows, info.value, tmp / "run"


@pytest.mark.slow
def test_a_client_hanging_past_the_timeout_is_reported_missing_and_the_round_completes(faulty_run):
    rows, _, _ = faulty_run
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["clients"] == [0, 1, 2] and rows[1]["missing"] == []
    assert rows[2]["clients"] == [0, 2] and rows[2]["missing"] == ["1"] and rows[2]["failed"] == {}
    # the server waited for the timeout, not for the client (released after 10 timeouts at the latest)
    assert HANG_TIMEOUT <= rows[2]["seconds"] < 10 * HANG_TIMEOUT


@pytest.mark.slow
def test_too_few_usable_clients_fails_the_round_clearly_and_keeps_completed_rounds(faulty_run):
    _, error, run = faulty_run
    msg = str(error)
    assert "round 3: only 1 usable client model(s), min_clients is 2" in msg
    assert "failed: ['0', '1']" in msg and "rounds up to 2 are saved" in msg
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["round"] == 2 and [r["round"] for r in state["rows"]] == [0, 1, 2]


def _cli(*args, **kw):
    env = dict(os.environ, COLUMNS="120", OMP_NUM_THREADS="1")  # one thread, as the test worker that starts it
    return subprocess.Popen([sys.executable, "-m", "fedabd.cli", "simulate", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _checkpointed_round(out) -> int:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["round"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc), Ray's included."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return alive


def _stop_after_round(proc, out, rnd: int, sig: int) -> tuple[str, set[int]]:
    """Send ``sig`` to the CLI's process group once round ``rnd`` is checkpointed (as a terminal's
    Ctrl-C does for SIGINT); returns its output and the processes it had started."""
    deadline = time.monotonic() + 600
    while _checkpointed_round(out) < rnd:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"round {rnd} never completed"
        time.sleep(0.05)
    started = _descendants(proc.pid)
    os.killpg(proc.pid, sig)
    out_text, _ = proc.communicate(timeout=30)
    return out_text, started


@pytest.mark.slow
def test_ctrl_c_and_a_kill_stop_everything_and_the_run_resumes_to_the_uninterrupted_result(tmp_path):
    spec = {"clients": 3, "malicious": 1, "rounds": 3, "local_epochs": 1, "kd": "zskt",
            "kd_overrides": {"pseudo_batches": 10, "batch_size": 32, "student_steps_per_pb": 2, "generator_width": 8},
            "device": "cpu", "seed": 3}
    file = tmp_path / "scenario.yaml"
    file.write_text(yaml.safe_dump(spec))
    full, cut = tmp_path / "full", tmp_path / "cut"

    def gone_within(pids, seconds):
        deadline = time.monotonic() + seconds
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not _alive(pids)

    # Ctrl-C during round 2: a clean stop within seconds, every process gone, a line saying how to resume
    t0 = time.monotonic()
    out, started = _stop_after_round(_cli("--scenario", str(file), "--out", str(cut), start_new_session=True),
                                     cut, 1, signal.SIGINT)
    assert time.monotonic() - t0 < 600 and "continue with: fedabd simulate --resume" in out, out
    assert started and gone_within(started, 10), f"left behind: {_alive(started)}"
    assert _checkpointed_round(cut) == 1 and not (cut / "metrics.json").exists()

    # resumed, then killed (SIGKILL cannot be caught) during round 3: its processes follow it
    proc = _cli("--resume", str(cut), start_new_session=True)
    out, started = _stop_after_round(proc, cut, 2, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert started and gone_within(started, 10), f"left behind: {_alive(started)}"
    assert _checkpointed_round(cut) == 2

    resumed = _cli("--resume", str(cut))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "(resumed)" in out
    reference = _cli("--scenario", str(file), "--out", str(full))
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out

    def metrics(run):
        rows = json.loads((run / "metrics.json").read_text())
        return [{k: v for k, v in r.items() if k not in ("seconds", "distill_seconds", "resumed")} for r in rows]

    assert [r["round"] for r in metrics(cut)] == [0, 1, 2, 3]
    assert metrics(cut) == metrics(full)
    jsonl = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in jsonl] == [0, 1, 2, 3]  # no duplicated or lost round in the run log
