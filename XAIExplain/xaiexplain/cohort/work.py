"""What a worker does with one case of a cohort: explain it into ``DIR/<case>/`` exactly as ``xaiexplain
explain`` writes it (staged, then moved into place whole) and record how it ended in the manifest."""
from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XAIError
from ..io.outputs import STAGING_PREFIX
from .manifest import write_record

STAGING = ".cases"  # cases being written (named as io.outputs stages: its process id first): moved in once complete


@dataclass(frozen=True)
class CohortJob:
    """What every worker needs to explain any case (picklable: it travels to processes and Ray actors).
    ``settings``: :func:`~..core.explain.explain`'s keywords; ``regions``: a :func:`~..io.folder_run.case_regions`
    spec (a case's own ``labels`` replace its label volume); ``roi`` and ``references``: for every case
    without its own."""

    model: str
    out: str
    settings: dict
    regions: dict = field(default_factory=dict)
    roi: str | None = None
    references: tuple[str, ...] = ()
    previews: bool = True
    report: bool = False

    def load(self):
        from ..core.models import load_model

        return load_model(self.model, device=self.settings.get("device", "auto"))


def run_case(job: CohortJob, model, case, key: dict, attempt: int = 1) -> dict:
    """Explain one case into ``DIR/<case>/`` and record how it ended; never raises for the case's own faults
    (a bad input is recorded with its one-line error, and the cohort goes on)."""
    from ..io.folder_run import explain_to_folder

    out, started = Path(job.out), time.time()
    base = {"case": case.case_id, "key": key, "attempt": attempt, "pid": os.getpid(), "host": socket.gethostname()}
    write_record(out, {**base, "status": "running", "started": started})
    staging = out / STAGING / f"{STAGING_PREFIX}{os.getpid()}-{case.case_id}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        regions = {"labels": case.labels, "names": job.regions.get("names")} if case.labels else job.regions
        references = [case.reference] if case.reference else list(job.references) or None
        results, _ = explain_to_folder(model, case.inputs, staging, roi=case.roi or job.roi, outline=case.mask,
                                       references=references, regions=regions, previews=job.previews,
                                       report=job.report, summary_extra={"case": case.case_id, "cohort": str(out)},
                                       **job.settings)
        _move_into_place(staging, out / case.case_id)
        record = {**base, "status": "done", "seconds": round(time.time() - started, 3),
                  "prediction": results[0].prediction.get("predicted_name"),
                  "trust": {r.method: r.trust["verdict"] for r in results if r.trust}}
    except XAIError as err:
        record = {**base, "status": "failed", "error": str(err)}
    except Exception as err:  # an engine fault on this case: recorded, and the others go on
        record = {**base, "status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_record(out, record)
    return record


def _move_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` by the complete folder ``staging`` (renames on one file system: never half there)."""
    old = staging.with_name(f"{STAGING_PREFIX}{os.getpid()}-old-{final.name}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
