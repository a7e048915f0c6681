"""Run a long job in a child process group that cannot outlive the caller.

Ray, which Flower's simulation starts, makes its driver a process-group leader (``os.setpgrp``)
and blocks SIGINT in its own processes: run in the ``fedabd`` process itself, a Ctrl-C from the
terminal no longer reaches it, and its processes stay behind when it is killed. So the job runs in
a child instead:

- the child makes itself the leader of a new process group before anything starts; every process
  it starts (Ray's included) belongs to that group;
- the parent stays in the terminal's group and turns SIGINT and SIGTERM into
  :class:`Interrupted`, after killing the child's whole group (``killpg``: within a second, the
  last completed work is whatever the job saved atomically before);
- a watchdog thread in the child kills the group when the parent disappears (SIGKILL of the
  parent cannot be caught; the child notices within half a second);
- the child reports through a pipe: events (``emit(kind, *payload)``), its result, or its error as
  ``(exit_code, one line, traceback or None)``.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any


class Interrupted(Exception):
    """The caller was asked to stop (SIGINT or SIGTERM); the child's process group is gone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ChildFailed(Exception):
    """The job raised in the child: ``code`` 2 for bad input, 1 otherwise; ``detail`` is the
    traceback of an unexpected error (None for a known one)."""

    def __init__(self, code: int, line: str, detail: str | None = None) -> None:
        super().__init__(line)
        self.code, self.line, self.detail = code, line, detail


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            _kill_group(os.getpgrp())
            os._exit(1)  # pragma: no cover - the group kill above ends this process first
        threading.Event().wait(0.5)


def _child(conn, parent: int, fn: Callable, args: tuple, kwargs: dict, classify: Callable) -> None:
    os.setpgrp()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills this group

    def emit(kind: str, *payload) -> None:
        conn.send(("event", kind, payload))

    try:
        conn.send(("result", fn(*args, emit=emit, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which exits accordingly
        known = classify(e)
        conn.send(("error", known[0], known[1], None) if known else
                  ("error", 1, f"{type(e).__name__}: {e}", traceback.format_exc()))
    finally:
        conn.close()


def unknown(e: BaseException) -> None:
    """The default ``classify``: every error is unexpected (exit code 1, with its traceback)."""
    return None


def run_supervised(fn: Callable, *args, on_event: Callable[..., None] | None = None,
                   classify: Callable[[BaseException], tuple[int, str] | None] = unknown, **kwargs) -> Any:
    """``fn(*args, emit=..., **kwargs)`` in a child process group; returns its result.

    ``on_event(kind, *payload)`` receives the child's ``emit`` calls, in the parent. ``classify(e)``
    (run in the child; a module-level function) maps a known error to ``(exit_code, one line)``; others become exit code 1
    with their traceback. Raises :class:`Interrupted` on SIGINT / SIGTERM (the two signals then stay
    ignored: the caller is expected to report and exit) and :class:`ChildFailed` when the job raised
    or the child died."""
    if os.name != "posix":  # pragma: no cover - no process groups: run here, Ctrl-C as Python handles it
        return fn(*args, emit=lambda kind, *payload: on_event and on_event(kind, *payload), **kwargs)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(theirs, os.getpid(), fn, args, kwargs, classify), daemon=False)

    def on_signal(signum, frame):
        for sig in previous:  # a second signal (a shell forwarding the first) must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    def died() -> ChildFailed:
        return ChildFailed(1, f"the run's process ended unexpectedly (exit code {child.exitcode})")

    try:
        child.start()
        theirs.close()
        while True:
            try:
                if not ours.poll(0.2):
                    if not child.is_alive() and not ours.poll(0):
                        raise died()
                    continue
                message = ours.recv()
            except EOFError:
                raise died() from None
            if message[0] == "event":
                if on_event is not None:
                    on_event(message[1], *message[2])
            elif message[0] == "result":
                child.join()
                return message[1]
            else:
                child.join()
                raise ChildFailed(*message[1:])
    finally:
        if child.pid is not None and child.is_alive():
            _kill_group(child.pid)
            child.kill()  # in case it had not yet made its own group
            child.join(timeout=5)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # after an interrupt they stay ignored
            for sig, handler in previous.items():
                signal.signal(sig, handler)
