"""Explaining a cohort: every case through one loaded model per worker, each case written into ``DIR/<case>/``
exactly as ``xaiexplain explain`` writes it, atomically, and recorded in the manifest.

Three ways to run the same cases (:func:`run_cohort`): in this process (one worker), in worker processes on
this machine (:mod:`.local_workers`), or as Ray actors (:mod:`.ray_workers`). Whatever runs a case,
:func:`~.work.run_case` does the work; the scheduler only hands out cases, one in flight per worker (a slow disk
or GPU holds cases back instead of piling them up in memory), and gives a case whose worker died to another
worker, up to ``retries`` times (:mod:`.schedule`)."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.provenance import versions
from ..errors import XAIError
from ..io.outputs import remove_stale_staging
from ..protocol import SUMMARY_FILE
from .manifest import all_records, case_key, is_finished
from .schedule import Tally
from .work import STAGING, CohortJob, run_case

COHORT_FILE = "cohort.json"  # the run's model and settings: a folder holds one cohort's results


def prepare_folder(job: CohortJob, model_digest: str, overwrite: bool = False) -> None:
    """Refuse, before anything runs, a folder holding another cohort (another model or other settings) or
    files of its own; write the run's description (``cohort.json``); clear staging left by dead runs."""
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise XAIError(f"the cohort folder {out} is a file", "give a folder path (it is created if missing)")
    described = {"model": job.model, "model_sha256": model_digest, "settings": _key_settings(job)}
    cohort_file = out / COHORT_FILE
    if cohort_file.is_file():
        try:
            held = json.loads(cohort_file.read_text(encoding="utf-8"))
        except ValueError:
            held = {}
        differs = [name for name in described if json.dumps(held.get(name), sort_keys=True, default=str)
                   != json.dumps(described[name], sort_keys=True, default=str)]
        if differs and not overwrite:
            what = " and ".join(dict.fromkeys("another model" if name.startswith("model") else "other settings"
                                              for name in differs))
            raise XAIError(f"{out} holds a cohort run with {what}",
                           "give a new folder, or add --overwrite to rerun its cases with these settings")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise XAIError(f"{out} is not empty and holds no cohort run", "give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{COHORT_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps({**described, "versions": versions(), "command": " ".join(sys.argv)}, indent=1,
                                    default=str), encoding="utf-8")
    os.replace(temporary, cohort_file)
    remove_stale_staging(out / STAGING)


def _key_settings(job: CohortJob) -> dict:
    """The settings a finished case must have been made with (the device aside: a case done on the CPU need
    not be redone on a GPU)."""
    return json.loads(json.dumps({"settings": {k: v for k, v in job.settings.items() if k != "device"},
                                  "regions": job.regions, "roi": job.roi, "references": list(job.references),
                                  "previews": job.previews, "report": job.report}, default=str))


@dataclass
class CohortPlan:
    """The cases of this run: to do (with their keys) and already finished."""

    todo: list = field(default_factory=list)  # (case, key)
    finished: list = field(default_factory=list)  # case ids

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.finished)


def plan_cases(job: CohortJob, cases, model_digest: str, shard: tuple[int, int] | None = None) -> CohortPlan:
    """Which cases still need work: those without a record that says done with the same inputs, model and
    settings (``shard`` (i, n): only every n-th case from the i-th, 1-based)."""
    if shard:
        index, count = shard
        cases = [c for number, c in enumerate(cases) if number % count == index - 1]
    plan, settings = CohortPlan(), _key_settings(job)
    for case in cases:
        key = case_key(case, model_digest, settings)
        if is_finished(job.out, case.case_id, key):
            plan.finished.append(case.case_id)
        else:
            plan.todo.append((case, key))
    return plan


def run_cohort(job: CohortJob, cases, *, workers: int = 1, ray_address: str | None = None,
               gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, retries: int = 2,
               shard: tuple[int, int] | None = None, overwrite: bool = False, progress=None) -> dict:
    """Explain every unfinished case of ``cases``; returns {"done": [...], "failed": [...], "skipped": [...],
    "lost": N (worker deaths survived)}. The model is loaded here first (a model that cannot load stops the
    run before any case), then once per worker."""
    from collections import deque

    cluster = None
    if ray_address:  # joined and checked before any case runs or anything is written
        from .ray_workers import RayCluster  # Ray is optional: imported only when asked for
        cluster = RayCluster(ray_address, workers=workers, cpus=cpus_per_worker, gpus=gpus_per_worker)
    try:
        model = job.load()
        prepare_folder(job, model.sha256, overwrite=overwrite)
        plan = plan_cases(job, cases, model.sha256, shard)
        tally = Tally(plan, progress)
        pending = deque((case, key, 1) for case, key in plan.todo)
        if cluster is not None:
            cluster.run(job, pending, tally, workers=workers, retries=retries)
        elif workers > 1 and len(pending) > 1:
            from .local_workers import run_in_processes
            run_in_processes(job, pending, tally, workers=min(workers, len(pending)), retries=retries)
        else:
            while pending:
                case, key, attempt = pending.popleft()
                tally.add(run_case(job, model, case, key, attempt), job.out)
    finally:
        if cluster is not None:
            cluster.close()
    return {"done": tally.done, "failed": tally.failed, "skipped": plan.finished, "lost": tally.lost}


def finished_summaries(out, records=None) -> dict[str, dict]:
    """{case: its summary.json} of every case whose record says done (``records``: the manifest's, if read)."""
    summaries = {}
    for record in all_records(out) if records is None else records:
        path = Path(out) / record["case"] / SUMMARY_FILE
        if record.get("status") == "done" and path.is_file():
            summaries[record["case"]] = json.loads(path.read_text(encoding="utf-8"))
    return summaries
