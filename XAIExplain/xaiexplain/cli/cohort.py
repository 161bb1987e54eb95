"""``xaiexplain cohort``: explain every case of a CSV or a folder, resumably, then write the cohort's findings."""
from __future__ import annotations

from pathlib import Path

from ..errors import XAIError
from .options import add_explain_options, add_run_options, add_target_options, explain_settings, region_spec
from .progress import ProgressBar, ProgressLines

CASES_HELP = ("a CSV with a header 'case,input[,input2...][,mask][,roi][,reference][,labels][,group]' (one row per "
              "case; mask: drawn as the previews' outline; labels: the case's own label map, its regions; group: a "
              "subset the findings are also given for), or a folder of volumes and DICOM series folders")


def add_cohort_parser(sub, parents) -> None:
    co = sub.add_parser("cohort", parents=parents,
                        help="explain every case of a cohort (resumable; locally or on a Ray cluster) and write "
                             "cohort findings")
    co.add_argument("--model", required=True, help="TorchScript file, .pt2 program or MONAI bundle folder")
    co.add_argument("--cases", required=True, help=CASES_HELP)
    add_target_options(co)
    add_explain_options(co)
    add_run_options(co)
    co.add_argument("--workers", type=int, default=1, help="worker processes (or Ray actors), each holding the model")
    co.add_argument("--ray", metavar="ADDRESS",
                    help="run on a Ray cluster: its address, 'auto' (the one this machine is in) or 'local' (start "
                         "one here); needs pip install 'xaiexplain[cohort]'")
    co.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker holds (e.g. 1 or 0.5)")
    co.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray worker holds (1)")
    co.add_argument("--retries", type=int, default=2, help="how often a case whose worker died is tried again (2)")
    co.add_argument("--shard", help="I/N: run only every N-th case from the I-th (several machines, one folder)")
    co.add_argument("--progress-lines", action="store_true", help="progress as JSON lines on stdout (Slicer)")
    co.set_defaults(func=cmd_cohort)


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise XAIError(f"cannot read --shard '{text}'", "write it as I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(index), int(count)


def _absolute(value):
    """A path made absolute (workers may run elsewhere: Ray actors start in their own folders)."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def _job(args, cases):
    from ..cohort.work import CohortJob

    names, args.region_names = args.region_names, None if not args.regions else args.region_names
    spec = region_spec(args)
    if any(case.labels for case in cases):
        if spec:
            raise XAIError("the cases give their own labels and the command names regions too",
                           "drop --atlas / --regions / --supervoxels, or the cases' labels column")
        if not names:
            raise XAIError("the cases' label maps have no names", "give them with --region-names (CSV id,name or "
                                                                   "a Slicer colour table)")
        from ..regions.sets import read_region_names

        read_region_names(names)  # a malformed names file is refused before any case runs
        spec = {"names": _absolute(names)}
    elif names and not args.regions:
        raise XAIError("--region-names needs --regions or a labels column in the cases", "give the label volume")
    if spec.get("labels"):
        spec = {**spec, "labels": _absolute(spec["labels"]), "names": _absolute(spec.get("names"))}
    settings = explain_settings(args)
    for params in settings["params"].values():
        if isinstance(params.get("baseline"), str):
            params["baseline"] = _absolute(params["baseline"])
    return CohortJob(model=_absolute(args.model), out=str(Path(args.out).resolve()), settings=settings, regions=spec,
                     roi=_absolute(args.roi), references=tuple(_absolute(r) for r in args.reference),
                     previews=not args.no_previews, report=args.report)


def cmd_cohort(args) -> int:
    from ..cohort import cases as cohort_cases
    from ..cohort.findings import cohort_findings, write_findings
    from ..cohort.manifest import all_records
    from ..cohort.run import finished_summaries, run_cohort

    if args.workers < 1 or args.retries < 0 or args.gpus_per_worker < 0 or args.cpus_per_worker <= 0:
        raise XAIError("--workers and --cpus-per-worker must be positive, --retries and --gpus-per-worker not "
                       "negative", "e.g. --workers 2 --retries 2")
    if args.gpus_per_worker and not args.ray:
        raise XAIError("--gpus-per-worker is a Ray setting", "add --ray ADDRESS, or use --device cuda locally")
    shard = _shard(args.shard)
    cases = cohort_cases.read_cases(args.cases)
    job = _job(args, cases)
    bar = ProgressLines() if args.progress_lines else ProgressBar(not args.quiet)
    try:
        ran = run_cohort(job, cases, workers=args.workers, ray_address=args.ray, gpus_per_worker=args.gpus_per_worker,
                         cpus_per_worker=args.cpus_per_worker, retries=args.retries, shard=shard,
                         overwrite=args.overwrite, progress=bar)
    finally:
        bar.close()
    wanted = {case.case_id for case in cases}
    records = [r for r in all_records(job.out) if r["case"] in wanted]
    failed = {r["case"]: r.get("error", "") for r in records if r.get("status") == "failed"}
    summaries = finished_summaries(job.out, records)
    findings = cohort_findings(summaries, failed, {case.case_id: case.group for case in cases if case.group})
    written = write_findings(job.out, findings)
    print(f"{len(ran['done'])} cases explained, {len(ran['skipped'])} already finished, {len(ran['failed'])} failed"
          + (f" ({ran['lost']} lost with a worker and run again)" if ran["lost"] else ""))
    for case in ran["failed"]:
        print(f"  FAILED {case}: {failed.get(case, '')}")
    for method, found in findings["methods"].items():
        table = found["regions"].get("all cases") or []
        if table:
            print(f"{method}: first region {table[0]['region']} (first in {table[0]['top1_share']:.0%} of cases)")
        for subset, s in found["shortcut"].items():
            if subset.startswith("predicted "):
                continue  # in findings.html
            print(f"{method}: shortcut check flagged {len(s['flagged'])} of {s['cases']} cases ({subset})")
    print(f"wrote {len(summaries)} case folders and {', '.join(p.name for p in written)} to {job.out}")
    return 1 if failed else 0

