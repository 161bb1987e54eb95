"""Cohorts: many cases through one loaded model per worker (locally or on Ray), resumable, with findings."""
from .cases import CohortCase, read_cases
from .findings import cohort_findings, write_findings
from .run import run_cohort
from .work import CohortJob

__all__ = ["CohortCase", "read_cases", "CohortJob", "run_cohort", "cohort_findings", "write_findings"]
