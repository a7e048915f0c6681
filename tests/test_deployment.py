"""The Deployment Engine: a SuperLink and SuperNodes on 127.0.0.1 run the same apps, started with
`flwr run`: one run (one federation, shared by the tests) of two rounds, with a node flagged malicious
through --node-config and another SuperNode killed mid-run."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    """A SuperLink and SuperNodes on 127.0.0.1 (processes in their own sessions, logs in tmp)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr"), FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                        FLWR_LOG_LEVEL="INFO", OMP_NUM_THREADS="1")
        self.port = free_port()
        (tmp_path / "flwr").mkdir()
        (tmp_path / "flwr" / "config.toml").write_text(
            f'[superlink.local-test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.procs: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(self, name, args):
        f = open(self.logs / f"{name}.log", "w")
        self.procs[name] = (subprocess.Popen(args, env=self.env, stdout=f, stderr=subprocess.STDOUT, cwd=self.tmp,
                                             start_new_session=True), f)

    def __enter__(self):
        self.start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                                 "--database", str(self.tmp / "state.db")])
        self.wait_for("superlink", "Uvicorn running", 1)
        return self

    def wait_for(self, name, text, count, timeout=180):
        """Wait until ``text`` appears ``count`` times in a process's log: a fixed sleep raced the
        SuperLink's start-up on a loaded machine (`flwr run` found no SuperLink)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.logs / f"{name}.log").read_text().count(text) >= count:
                return
            if self.procs[name][0].poll() is not None:
                pytest.fail(f"{name} exited:\n" + self.logs_text())
            time.sleep(0.1)
        pytest.fail(f"{name} did not log {text!r} {count}x within {timeout} s:\n" + self.logs_text())

    def supernode(self, pid, malicious=False):
        self.start(f"supernode{pid}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                                       "--port", str(free_port()),
                                       "--node-config", f"partition-id={pid} malicious={str(malicious).lower()}"])

    def kill(self, name):
        os.killpg(self.procs[name][0].pid, signal.SIGKILL)

    def flwr_run(self, out, overrides):
        nodes = sum(name.startswith("supernode") for name in self.procs)
        self.wait_for("superlink", "Activated node_id", nodes)  # every SuperNode has joined
        return subprocess.Popen(["flwr", "run", str(ROOT), "local-test", "--stream", "--run-config",
                                 f"out='{out}' overrides='{overrides}'"], env=self.env, cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def logs_text(self):
        return "".join(p.read_text()[-2000:] for p in self.logs.iterdir())

    def __exit__(self, *exc):
        for p, f in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p, f in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            f.close()


def checkpoint(out, at_least=1, wait=60, run=None):
    """The run's checkpoint once it holds round >= at_least (the stream may end a moment before the
    checkpoint is renamed in), else None; gives up 10 s after ``run`` (the `flwr run` process) ended."""
    state = out / "checkpoint" / "state.json"
    deadline, ended = time.monotonic() + wait, None
    while time.monotonic() < deadline:
        try:
            data = json.loads(state.read_text())
            if data["round"] >= at_least:
                return data
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if run is not None and ended is None and run.poll() is not None:
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > 10:
            return None
        time.sleep(0.05)
    return None


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory):
    """One federation (a SuperLink and three SuperNodes, node 1 flagged malicious through its node
    config) and one `flwr run` of two rounds; SuperNode 2 is killed once round 1 is checkpointed,
    while round 2's message to it is out. Returns the final checkpoint's rows."""
    if shutil.which("flower-superlink") is None:
        pytest.skip("Flower's CLI is not installed")
    tmp = tmp_path_factory.mktemp("deployment")
    out = tmp / "run"
    with Federation(tmp) as fed:
        for i in range(3):
            fed.supernode(i, malicious=i == 1)
        run = fed.flwr_run(out, "clients=3,malicious=0,rounds=2,aggregator=fedavg,local_epochs=1,device=cpu")
        first = checkpoint(out, 1, wait=600, run=run)
        if first is None:
            run.kill()
            pytest.fail("no round-1 checkpoint; flwr run printed:\n" + run.communicate()[0][-3000:] + fed.logs_text())
        fed.kill("supernode2")  # round 2 has started: its message is out, the node will never answer
        stdout, _ = run.communicate(timeout=600)
        state = checkpoint(out, 2)
        assert state is not None, stdout[-3000:] + fed.logs_text()
    return state["rows"]


@pytest.mark.slow
def test_superlink_supernodes_flwr_run(deployed_run):
    first = deployed_run[1]
    assert first["round"] == 1 and sorted(first["clients"]) == [0, 1, 2]
    assert first["malicious"] == [1]  # the node flag, not the scenario (malicious=0), decided
    assert 0.0 <= first["acc"] <= 1.0


@pytest.mark.slow
def test_a_supernode_killed_mid_run_is_reported_and_the_run_completes(deployed_run):
    last = deployed_run[-1]
    assert last["round"] == 2 and last["clients"] == [0, 1]
    # the SuperLink answers for the dead node once its heartbeats stop; the row names the client
    assert list(last["failed"]) == ["2"] and "heartbeat" in last["failed"]["2"].lower()
