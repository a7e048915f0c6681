"""The supervised child process group behind `fedabd simulate`: events and the result come back,
a known error comes back as one line with its exit code, and SIGINT kills the child's whole group."""
import os
import signal
import threading
import time

import pytest

from fedabd.cli.common import classify_error
from fedabd.supervise import ChildFailed, Interrupted, run_supervised


def count_to(n, emit):
    for i in range(n):
        emit("step", i)
    return {"pid": os.getpid(), "group": os.getpgrp()}


def refuse(emit):
    raise ValueError("bad setting: seed")


def crash(emit):
    raise KeyError("a bug")


def sleep_with_grandchild(path, emit):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    path.write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)


def test_events_and_the_result_come_back_from_a_child_in_its_own_process_group():
    seen = []
    out = run_supervised(count_to, 3, on_event=lambda kind, i: seen.append((kind, i)))
    assert seen == [("step", 0), ("step", 1), ("step", 2)]
    assert out["pid"] != os.getpid() and out["group"] == out["pid"] != os.getpgrp()


def test_errors_come_back_classified_or_with_their_traceback():
    with pytest.raises(ChildFailed) as known:
        run_supervised(refuse, classify=classify_error)
    assert (known.value.code, known.value.line, known.value.detail) == (2, "bad setting: seed", None)
    with pytest.raises(ChildFailed) as bug:
        run_supervised(crash, classify=classify_error)
    assert bug.value.code == 1 and "KeyError" in bug.value.line and "Traceback" in bug.value.detail


def test_sigint_kills_the_childs_whole_group(tmp_path):
    pids = tmp_path / "pids"

    def interrupt():
        while not pids.exists() or not pids.read_text():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted):
            run_supervised(sleep_with_grandchild, pids)
    finally:
        signal.signal(signal.SIGINT, previous)  # an interrupt leaves them ignored for the caller to exit
    deadline = time.monotonic() + 5
    alive = [int(p) for p in pids.read_text().split()]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        time.sleep(0.05)
    assert not alive
