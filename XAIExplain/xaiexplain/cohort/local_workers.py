"""A cohort's cases in worker processes on this machine: each loads the model once and takes one case at a
time; one that dies (killed, out of memory) is replaced and its case given out again."""
from __future__ import annotations

import multiprocessing
import os
import queue


def _serve(job, tasks, results, threads: int) -> None:
    """A worker process: the model loaded once, then cases until told to stop (None)."""
    import signal

    import torch

    from .work import run_case

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers itself
    torch.set_num_threads(threads)  # the machine's cores shared out, not each worker taking them all
    model = job.load()
    for case, key, attempt in iter(tasks.get, None):
        results.put(run_case(job, model, case, key, attempt))


class _Worker:
    def __init__(self, context, job, results, threads: int):
        self.tasks = context.Queue()
        self.process = context.Process(target=_serve, args=(job, self.tasks, results, threads), daemon=True)
        self.process.start()
        self.case = None  # (case, key, attempt) being explained

    def give(self, item) -> None:
        self.case = item
        self.tasks.put(item)

    def stop(self, wait: float = 5.0) -> None:
        if self.process.is_alive():
            self.tasks.put(None)
            self.process.join(wait)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def run_in_processes(job, pending, tally, *, workers: int, retries: int) -> None:
    """Run ``pending`` ((case, key, attempt) in order) on ``workers`` processes (spawned: a fresh interpreter,
    no state forked from this one)."""
    from .schedule import lost_case

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = [_Worker(context, job, results, threads) for _ in range(workers)]
    try:
        while pending or any(w.case for w in pool):
            for worker in pool:
                if worker.case is None and pending:
                    worker.give(pending.popleft())
            try:
                record = results.get(timeout=0.5)
            except queue.Empty:
                for number, worker in enumerate(pool):
                    if worker.case and not worker.process.is_alive():
                        case, key, attempt = worker.case
                        lost_case(job, case, key, attempt, retries, tally, pending)
                        pool[number] = _Worker(context, job, results, threads)
                continue
            worker = next(w for w in pool if w.case and w.case[0].case_id == record["case"])
            worker.case = None
            tally.add(record, job.out)
    finally:
        for worker in pool:
            worker.stop()
