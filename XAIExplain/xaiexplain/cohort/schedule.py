"""What the three schedulers (this process, worker processes, Ray actors) share: the log of events, the tally
of cases with its time estimate, and what to do with a case whose worker died."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .manifest import is_finished, read_record, write_record

LOG_FILE = "cohort-log.jsonl"  # one line per event (a case done, failed, or lost with its worker)


def log_event(out, record: dict, event: str | None = None) -> None:
    line = {"time": round(time.time(), 3), "case": record["case"], "event": event or record["status"],
            "attempt": record.get("attempt"), "pid": record.get("pid")}
    if record.get("error"):
        line["error"] = record["error"]
    with open(Path(out) / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


class Tally:
    """Progress over cases, with an estimate of the time left from the cases done so far in this run."""

    def __init__(self, plan, progress=None):  # plan: run.CohortPlan
        self.progress, self.total, self.skipped = progress, plan.total, len(plan.finished)
        self.done, self.failed, self.lost, self.start = [], [], 0, time.monotonic()
        self.report(f"{self.skipped} of {self.total} cases already finished, {len(plan.todo)} to run")

    def add(self, record: dict, out) -> None:
        (self.done if record["status"] == "done" else self.failed).append(record["case"])
        log_event(out, record)
        ran = len(self.done) + len(self.failed)
        left = self.total - self.skipped - ran
        eta = (time.monotonic() - self.start) / ran * left
        status = "done" if record["status"] == "done" else f"FAILED ({record['error']})"
        self.report(f"{record['case']} {status}; {ran + self.skipped}/{self.total} cases, about "
                    f"{_duration(eta)} left")

    def report(self, message: str) -> None:
        if self.progress is not None:
            finished = self.skipped + len(self.done) + len(self.failed)
            self.progress(finished / max(self.total, 1), message)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def lost_case(job, case, key: dict, attempt: int, retries: int, tally: Tally, pending) -> None:
    """A case whose worker died: done all the same if its record says so, else given to another worker until
    it has been tried ``retries`` more times, then recorded as failed."""
    if is_finished(job.out, case.case_id, key):
        tally.add(read_record(job.out, case.case_id), job.out)
        return
    record = read_record(job.out, case.case_id) or {}
    died = {"case": case.case_id, "attempt": attempt, "pid": record.get("pid"), "status": "failed"}
    if attempt <= retries:
        log_event(job.out, died, "worker died")
        pending.appendleft((case, key, attempt + 1))
        tally.lost += 1
    else:
        failed = {**died, "key": key, "error": f"its worker died {attempt} times (out of memory? see the worker's log)"}
        write_record(job.out, failed)
        tally.add(failed, job.out)
