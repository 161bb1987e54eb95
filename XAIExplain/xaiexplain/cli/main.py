"""The ``xaiexplain`` command: explain, report, methods, metrics, demo, evaluate, benchmark, cohort."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from contextlib import contextmanager

from .. import __version__
from ..errors import CANCELLED, XAIError
from .cohort import add_cohort_parser
from .options import (OVERWRITE_HELP, add_explain_options, add_run_options, add_target_options, explain_settings,
                      parse_params, region_spec)
from .progress import ProgressBar, ProgressLines

EVALUATION_FILES = ("evaluation.json", "evaluation.csv")


def cmd_explain(args) -> int:
    from ..core.result import warning_text
    from ..io.folder_run import explain_to_folder
    from ..io.outputs import check_output_folder

    check_output_folder(args.out, overwrite=args.overwrite)
    settings, regions = explain_settings(args), region_spec(args)
    bar = ProgressLines() if args.progress_lines else ProgressBar(not args.quiet)
    try:
        results, written = explain_to_folder(args.model, args.input, args.out, roi=args.roi, outline=args.outline,
                                             references=args.reference, regions=regions,
                                             previews=not args.no_previews, report=args.report,
                                             overwrite=args.overwrite, summary_extra={"command": " ".join(sys.argv)},
                                             progress=bar, **settings)
    finally:
        bar.close()
    pred = results[0].prediction
    if pred["task"] == "classification":
        print(f"prediction: {pred['predicted_name']} (p={max(pred['probabilities']):.3f})")
    for r in results:
        print(f"{r.method}: {r.timings['seconds']:.2f} s, peak at voxel {list(r.peak_index())}")
        if r.regions:
            print(f"  top region: {r.regions[0]['name']} (score {r.regions[0]['score']:.4g})")
        if r.info.get("channel_shares"):
            print("  channels: " + ", ".join(f"{c['channel']} {c['abs_share']:.0%}" for c in r.info["channel_shares"]))
        for warning in r.warnings:  # e.g. a baseline the network cannot see: said where the map is reported
            print(f"  WARNING: {warning_text(warning)}")
        if r.trust:
            print(f"  trust card: {r.trust['verdict']} ({r.trust['text']})")
            for check in r.trust["checks"]:
                print(f"    {check['verdict']:12} {check['check']}: {check['text']}")
    warned = sum(len(r.warnings) for r in results)
    if warned:
        print(f"{warned} warning(s) above: those maps may not mean what they seem (also in summary.json)")
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from ..core.volume import read_volume
    from ..io.outputs import check_output_folder, read_results
    from ..io.report import write_report
    from ..protocol import REPORT_FILES, read_summary

    out = Path(args.out or args.results)
    check_output_folder(out, REPORT_FILES, overwrite=args.overwrite or out == Path(args.results))
    summary = read_summary(args.results)
    inputs = args.input or summary.get("inputs") or []
    if not inputs:
        raise XAIError(f"{args.results} does not say which image its maps are of", "give it with --input FILE")
    results = read_results(args.results)
    image = read_volume(inputs[0])
    if tuple(image.array.shape[1:]) != tuple(results[0].array.shape):
        raise XAIError(f"{inputs[0]} is not the image the maps in {args.results} were made on",
                       "give the run's first input with --input")
    out.mkdir(parents=True, exist_ok=True)
    written = write_report(out, image, results, summary, outline=read_volume(args.outline) if args.outline else None)
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0


def cmd_methods(args) -> int:
    from ..methods import REGISTRY

    if args.json:
        print(json.dumps([m.describe() for m in REGISTRY.values()], indent=2))
        return 0
    print(f"{'name':22} {'kind':8} {'family':12} {'signed':6} {'layers':6} {'passes (fwd/bwd)':18} title")
    for m in REGISTRY.values():
        cost = m.cost(m.params({}))
        per = f" per {cost['per']}" if "per" in cost else ""
        print(f"{m.name:22} {m.kind:8} {m.family:12} {str(m.signed):6} {str(m.needs_layers):6} "
              f"{cost['forward']:>4} / {cost['backward']:<4}{per:11} {m.title}")
    return 0


def cmd_metrics(args) -> int:
    from ..metrics import REGISTRY

    if args.json:
        print(json.dumps([m.describe() for m in REGISTRY.values()], indent=2))
        return 0
    wide = max([len(m.cost_text) for m in REGISTRY.values()] + [13])
    print(f"{'name':26} {'property':14} {'cost (passes)':{wide}} settings (defaults)")
    for m in REGISTRY.values():
        settings = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "-"
        print(f"{m.name:26} {m.co12:14} {m.cost_text:{wide}} {settings}")
    return 0


def cmd_demo(args) -> int:
    bar = ProgressBar(not args.quiet)
    try:
        if args.real:
            from ..real.demo import run_real_demo
            run_real_demo(args.out or "demo-real-output", methods=args.method or None, device=args.device,
                          progress=bar, overwrite=args.overwrite)
        else:
            from ..synthlesion.demo import run_demo
            run_demo(args.out or "demo-output", seed=args.seed, methods=args.method or None, device=args.device,
                     progress=bar, overwrite=args.overwrite)
    finally:
        bar.close()
    return 0


def cmd_evaluate(args) -> int:
    import csv
    from pathlib import Path

    from ..io.outputs import check_output_folder
    from ..metrics.evaluate import evaluate_volumes, summary_row

    check_output_folder(args.out, EVALUATION_FILES, overwrite=args.overwrite)
    bar = ProgressBar(not args.quiet)
    try:
        records = evaluate_volumes(args.model, args.input, args.method, target=args.target, mask=args.mask,
                                   substrate=args.substrate, metrics=args.metric, params=parse_params(args.param),
                                   settings=parse_params(args.setting, "--setting"), seed=args.seed,
                                   device=args.device, progress=bar)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EVALUATION_FILES[0]).write_text(json.dumps({"command": " ".join(sys.argv), "records": records}, indent=1),
                                           encoding="utf-8")
    rows = [summary_row(r) for r in records]
    with open(out / EVALUATION_FILES[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for record in records:
        print(f"{record['method']}:")
        for name, value in record["metrics"].items():
            shown = {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                     and k != "seconds"}
            passes = value["passes"]
            print(f"  {name:25} {passes['forward']:>4} fwd {passes['backward']:>4} bwd  "
                  + ", ".join(f"{k}={v:.4g}" for k, v in list(shown.items())[:4]))
    print(f"wrote evaluation.json and evaluation.csv to {out}")
    return 0


def cmd_benchmark(args) -> int:
    from ..io.outputs import check_output_folder
    from ..synthlesion.benchmark import run_benchmark
    from ..synthlesion.report import REPORT_FILES, write_report

    check_output_folder(args.out, REPORT_FILES.values(), overwrite=args.overwrite)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_benchmark(args.cases, methods=args.method, marked_cases=args.marked_cases, full=args.full,
                               device=args.device, progress=bar)
    finally:
        bar.close()
    written = write_report(result, args.out)
    print(written["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(p.name for p in written.values())} to {args.out}")
    return 0


def _case_arguments(parser) -> None:
    """What explain and evaluate both take: the model, the input channels, the methods, the target."""
    parser.add_argument("--model", required=True, help="TorchScript file, .pt2 program or MONAI bundle folder")
    parser.add_argument("--input", required=True, action="append",
                        help="volume file or DICOM folder (repeat for channels)")
    add_target_options(parser)


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line (what is wrong, and where the usage is), not the
    whole usage text; subcommands' parsers are made of this class too."""

    def error(self, message):
        raise XAIError(f"{self.prog}: {message}", f"see: {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xaiexplain", description="Explain 3D medical-imaging models.")
    parser.add_argument("--version", action="version", version=f"xaiexplain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="let the libraries' own warnings and logs (torch, ITK) through to the terminal")

    ex = sub.add_parser("explain", parents=[common], help="compute attribution maps for one case")
    _case_arguments(ex)
    add_explain_options(ex)
    add_run_options(ex)
    ex.add_argument("--progress-lines", action="store_true",
                    help="report progress as 'xaiexplain-progress {\"fraction\": F, \"message\": M}' lines on stdout")
    ex.add_argument("--outline", help="a mask on the input grid drawn as an outline in the previews and the report "
                                      "(default: the --roi mask)")
    ex.set_defaults(func=cmd_explain)

    rp = sub.add_parser("report", parents=[common], help="write report.html and report.pdf of an explain run's folder")
    rp.add_argument("--results", required=True, help="the folder an explain run wrote")
    rp.add_argument("--input", action="append", help="the run's first input (default: as its summary.json names it)")
    rp.add_argument("--outline", help="a mask on the input grid drawn as an outline (e.g. the ROI)")
    rp.add_argument("--out", help="where to write the report (default: the results folder)")
    rp.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    rp.set_defaults(func=cmd_report)

    me = sub.add_parser("methods", parents=[common], help="list the registered methods")
    me.add_argument("--json", action="store_true")
    me.set_defaults(func=cmd_methods)

    mt = sub.add_parser("metrics", parents=[common],
                        help="list the registered metrics: property, cost in passes, settings")
    mt.add_argument("--json", action="store_true")
    mt.set_defaults(func=cmd_metrics)

    de = sub.add_parser("demo", parents=[common],
                        help="generate a SynthLesion case and explain the demo model on it; with --real, "
                             "a real trained network (deepbet) on a real head scan (Colin27)")
    de.add_argument("--real", action="store_true",
                    help="deepbet's brain-extraction network on Colin27, its mask checked against ch2bet (needs "
                         "pip install deepbet --no-deps and Debian's mricron-data)")
    de.add_argument("--out", help="output folder (demo-output, or demo-real-output with --real)")
    de.add_argument("--seed", type=int, default=1000003)
    de.add_argument("--method", action="append", help="methods (default: every gradient, CAM and propagation method)")
    de.add_argument("--device", default="auto")
    de.add_argument("--quiet", action="store_true")
    de.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    de.set_defaults(func=cmd_demo)

    ev = sub.add_parser("evaluate", parents=[common],
                        help="measure the quality of maps: correctness, compactness, coherence, ...")
    _case_arguments(ev)
    ev.add_argument("--mask", help="ground-truth mask on the input grid (coherence metrics)")
    ev.add_argument("--substrate", help="deletion/insertion substrate: blur (default), constant, or a volume file")
    ev.add_argument("--metric", action="append", help="metric name (repeat; default: all)")
    ev.add_argument("--param", action="append", help="METHOD.NAME=VALUE, e.g. integrated-gradients.steps=16")
    ev.add_argument("--setting", action="append", help="METRIC.NAME=VALUE, e.g. deletion.steps=20")
    add_run_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    be = sub.add_parser("benchmark", parents=[common],
                        help="SynthLesion benchmark of every method and metric, both demo models")
    be.add_argument("--cases", type=int, default=2, help="SynthLesion positives per model (default 2)")
    be.add_argument("--marked-cases", type=int, help="marked positives for the shortcut test (default: --cases)")
    be.add_argument("--method", action="append", help="methods (default: every registered method)")
    be.add_argument("--full", action="store_true", help="the metrics' full settings (slower)")
    be.add_argument("--device", default="cpu")
    be.add_argument("--out", default="benchmark-report")
    be.add_argument("--quiet", action="store_true")
    be.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    be.set_defaults(func=cmd_benchmark)

    add_cohort_parser(sub, [common])
    return parser


@contextmanager
def _library_noise(verbose: bool):
    """Libraries' own console output (torch's logged tracebacks for a corrupt .pt2, ITK's C++ warnings for a
    folder without DICOM, Python warnings) kept off the terminal unless ``--verbose``: the command's own
    one-line error says what is wrong. Restored afterwards (main() also runs inside tests and notebooks)."""
    if verbose:
        yield
        return
    import logging

    import SimpleITK as sitk
    import torch  # noqa: F401 (importing torch sets its loggers' levels: set ours after it)

    loggers = [logging.getLogger(name) for name in ("torch", "nibabel")]  # nibabel: e.g. "setting 0 dims to 1"
    levels, itk_warnings = [log.level for log in loggers], sitk.ProcessObject.GetGlobalWarningDisplay()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)
            sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)


def _load_libraries() -> None:
    """The libraries with C cores, imported while start-up's Ctrl-C handler (:mod:`.start`: exit at once)
    still stands. An interrupt must not land inside them: torch's C++ swallows one that arrives while it loads
    numpy, and its next import of numpy then fails (numpy's core loads only once per process)."""
    import SimpleITK  # noqa: F401
    import monai  # noqa: F401
    import torch  # noqa: F401


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _load_libraries()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a stop goes through the finally blocks
        with _library_noise(getattr(args, "verbose", False)):
            return args.func(args)
    except XAIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(CANCELLED, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
