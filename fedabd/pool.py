"""Independent jobs side by side: ``jobs`` worker processes (spawned) that share the machine's cores.

Each worker sets torch's intra-op threads to ``cores // jobs`` before its first job, so two workers on
two cores do not fight over them. A finished job is reported at once (``on_done``) so that a caller
can keep its results page current; the first failed job stops the pool (jobs already finished stay
finished, which is what makes the callers resumable).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _call(fn: Callable, item: Any, threads: int):
    import torch

    torch.set_num_threads(threads)
    return fn(item)


def run_jobs(fn: Callable[[Any], Any], items: Sequence, jobs: int = 1,
             on_done: Callable[[Any, Any], None] | None = None) -> None:
    """``fn(item)`` for every item: in this process one after another when ``jobs <= 1`` (torch's
    threads untouched), else in ``jobs`` spawned workers. A single item with ``jobs > 1`` runs in this
    process with a worker's threads, so that a job's result does not depend on how many were left
    (torch's results depend on its thread count). ``fn`` must be a module-level function and the
    items picklable (a ``functools.partial`` of one is); ``on_done(item, result)`` runs in this
    process as each job finishes."""
    threads = threads_per_job(jobs)
    if jobs <= 1 or len(items) <= 1:
        import torch

        before = torch.get_num_threads()
        if jobs > 1:
            torch.set_num_threads(threads)
        try:
            for item in items:
                result = fn(item)
                if on_done:
                    on_done(item, result)
        finally:
            torch.set_num_threads(before)
        return
    with ProcessPoolExecutor(min(jobs, len(items)), mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(_call, fn, item, threads): item for item in items}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = running.pop(fut)
                try:
                    result = fut.result()
                except BaseException:
                    for other in running:
                        other.cancel()
                    raise
                if on_done:
                    on_done(item, result)
