"""The Deployment Engine: a SuperLink and two SuperNodes on 127.0.0.1 run one round of the same apps
(one node flagged malicious through --node-config), started with `flwr run`."""
import json
import os
import shutil
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLI is not installed")
def test_superlink_supernodes_flwr_run(tmp_path):
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr"), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_LOG_LEVEL="INFO", OMP_NUM_THREADS="1")
    port = free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink.local-test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []

    def start(name, args):
        f = open(logs / f"{name}.log", "w")
        procs.append((subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path), f))

    out = tmp_path / "run"
    try:
        start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                            "--database", str(tmp_path / "state.db")])
        time.sleep(3)
        for i in range(2):
            start(f"supernode{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                    "--port", str(free_port()),
                                    "--node-config", f"partition-id={i} malicious={'true' if i == 1 else 'false'}"])
        run_config = (f"out='{out}' "
                      "overrides='clients=2,malicious=0,rounds=1,aggregator=fedavg,local_epochs=1,device=cpu'")
        res = subprocess.run(["flwr", "run", str(ROOT), "local-test", "--run-config", run_config, "--stream"],
                             env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        state = out / "checkpoint" / "state.json"
        for _ in range(60):  # the stream may end a moment before the checkpoint is renamed in
            if state.exists():
                break
            time.sleep(1)
        assert state.exists(), res.stdout[-3000:] + res.stderr[-3000:] + "".join(
            p.read_text()[-2000:] for p in logs.iterdir())
        rows = json.loads(state.read_text())["rows"]
        assert rows[-1]["round"] == 1 and sorted(rows[-1]["clients"]) == [0, 1]
        assert rows[-1]["malicious"] == [1]  # the node flag, not the scenario (malicious=0), decided
        assert 0.0 <= rows[-1]["acc"] <= 1.0
    finally:
        for p, f in procs:
            p.terminate()
        for p, f in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
            f.close()
