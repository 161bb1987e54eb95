"""The ``xaiexplain`` command: explain, report, methods, metrics, demo, evaluate, benchmark."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from contextlib import contextmanager

from .. import __version__
from ..errors import CANCELLED, XAIError
from .progress import ProgressBar, ProgressLines

EVALUATION_FILES = ("evaluation.json", "evaluation.csv")
OVERWRITE_HELP = "replace the results a previous run left in --out (without it, such a folder is refused)"


def _parse_params(items: list[str], flag: str = "--param") -> dict:
    """``--param smoothgrad.samples=50`` -> {'smoothgrad': {'samples': 50}} (values read as JSON if they parse);
    ``flag='--setting'`` reads metric settings alike."""
    params: dict = {}
    owner, example = ("METRIC", "deletion.steps=20") if flag == "--setting" else ("METHOD", "smoothgrad.samples=50")
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise XAIError(f"cannot read {flag} '{item}'", f"write it as {owner}.NAME=VALUE, e.g. {example}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        params.setdefault(method, {})[name] = value
    return params


def _preprocessing_overrides(args) -> dict:
    out = {}
    if args.orientation:
        out["orientation"] = args.orientation
    if args.spacing:
        out["spacing"] = args.spacing
    if args.size:
        out["spatial_size"] = args.size
    if args.intensity:
        kind, _, rest = args.intensity.partition(":")
        try:
            values = [float(v) for v in rest.split(",")] if rest else []
        except ValueError:
            values = None  # refused below, with the forms that work
        if values is None:
            pass
        elif kind == "range" and len(values) == 4:
            out["intensity"] = {"kind": "range", "a_min": values[0], "a_max": values[1], "b_min": values[2], "b_max": values[3]}
        elif kind == "percentiles" and len(values) == 2:
            out["intensity"] = {"kind": "percentiles", "lower": values[0], "upper": values[1], "b_min": 0.0, "b_max": 1.0}
        elif kind == "zscore" and not values:
            out["intensity"] = {"kind": "zscore"}
        if "intensity" not in out:
            raise XAIError(f"cannot read --intensity '{args.intensity}'",
                           "use range:AMIN,AMAX,BMIN,BMAX or percentiles:LOW,HIGH or zscore")
    return out


def _inferer_overrides(args) -> dict | None:
    """--window / --overlap / --blend / --window-batch (each overrides the model's own), --no-window (none)."""
    given = {key: value for key, value in (("roi_size", args.window), ("overlap", args.overlap),
                                           ("mode", args.blend), ("sw_batch_size", args.window_batch))
             if value is not None}
    if args.no_window:
        if given:
            raise XAIError("--no-window and the window settings contradict each other", "give one or the other")
        return {}
    return given or None


def _regions(args, volume):
    """The region source named by --atlas / --regions / --supervoxels (None: none given)."""
    from ..regions import harvard_oxford_regions, label_regions, supervoxel_regions

    given = [flag for flag, value in (("--atlas", args.atlas), ("--regions", args.regions),
                                      ("--supervoxels", args.supervoxels)) if value is not None]
    if len(given) > 1:
        raise XAIError(f"{' and '.join(given)} both name regions", "give only one region source")
    if args.region_names and not args.regions:
        raise XAIError("--region-names needs --regions", "give the label volume with --regions LABELS")
    if args.atlas:
        return harvard_oxford_regions(volume, registration=args.registration, threshold=args.atlas_threshold)
    if args.regions:
        return label_regions(args.regions, args.region_names, volume)
    if args.supervoxels is not None:
        return supervoxel_regions(volume, n_segments=args.supervoxels)
    return None


def _with_baseline(params: dict, methods: list[str], baseline: str | None) -> dict:
    """--baseline sets the ``baseline`` parameter of every chosen method that has one (--param wins)."""
    from ..methods import REGISTRY, get_method

    if baseline is None:
        return params
    takers = [get_method(m) for m in methods if "baseline" in get_method(m).defaults]
    if not takers:
        users = [name for name, m in REGISTRY.items() if "baseline" in m.defaults]
        raise XAIError("--baseline was given but no chosen method uses a baseline",
                       f"drop --baseline, or choose one of: {', '.join(users)}")
    for method in takers:
        params.setdefault(method.name, {}).setdefault("baseline", baseline)
    return params


def cmd_explain(args) -> int:
    from ..core.explain import explain
    from ..core.result import warning_text
    from ..core.targets import roi_component
    from ..core.volume import read_volume
    from ..io.outputs import check_output_folder, write_results

    check_output_folder(args.out, overwrite=args.overwrite)
    volumes = [read_volume(path) for path in args.input]
    checks = _checks(args)
    # a mask file is read once: explained as the ROI and drawn as the previews' outline
    roi = args.roi if args.roi in (None, "predicted") or roi_component(args.roi) else read_volume(args.roi)
    outline = read_volume(args.outline) if args.outline else None if isinstance(roi, str) else roi
    bar = ProgressLines() if args.progress_lines else ProgressBar(not args.quiet)
    try:
        regions = _regions(args, volumes[0])
        params = _with_baseline(_parse_params(args.param), args.method, args.baseline)
        results = explain(args.model, volumes, args.method, target=args.target, versus=args.versus,
                          roi=roi, references=args.reference,
                          layer=args.layer, params=params, seed=args.seed, device=args.device,
                          preprocessing=_preprocessing_overrides(args), progress=bar, regions=regions,
                          inferer=_inferer_overrides(args), checks=checks,
                          check_settings=_parse_params(args.check_setting, "--check-setting"))
    finally:
        bar.close()
    written = write_results(args.out, volumes[0], results, {"inputs": [str(p) for p in args.input],
                                                        "command": " ".join(sys.argv)},
                            previews=not args.no_previews, overwrite=args.overwrite, outline=outline,
                            report=args.report)
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


def _checks(args):
    """--check alone: every check; --check NAME ...: those; none: no trust card."""
    if args.check is None:
        if args.check_setting:
            raise XAIError("--check-setting needs --check", "add --check (all checks) or --check NAME ...")
        return None
    return args.check or True


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
    print(f"{'name':22} {'family':12} {'signed':6} {'layers':6} {'passes (fwd/bwd)':18} title")
    for m in REGISTRY.values():
        cost = m.cost(m.params({}))
        per = f" per {cost['per']}" if "per" in cost else ""
        print(f"{m.name:22} {m.family:12} {str(m.signed):6} {str(m.needs_layers):6} "
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
                                   substrate=args.substrate, metrics=args.metric, params=_parse_params(args.param),
                                   settings=_parse_params(args.setting, "--setting"), seed=args.seed,
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
    parser.add_argument("--method", action="append", required=True, help="method name (repeat for several)")
    parser.add_argument("--target", help="class index or name (default: the predicted class)")


def _run_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


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
    ex.add_argument("--versus", help="second class: explain target minus versus")
    ex.add_argument("--roi", help="mask on the input grid (segmentation models), 'predicted', or 'component:N' "
                                  "(the N-th largest connected component of the predicted class)")
    ex.add_argument("--reference", action="append", default=[], metavar="FILE",
                    help="a reference volume for deepshap (e.g. healthy templates or a counterfactual), repeatable")
    ex.add_argument("--layer", help="module name for CAM methods (default: last spatial feature map)")
    ex.add_argument("--param", action="append", help="METHOD.NAME=VALUE, e.g. smoothgrad.samples=50")
    ex.add_argument("--orientation", help="reorient to these axis codes before the model, e.g. RAS")
    ex.add_argument("--spacing", type=float, nargs=3, help="resample to this spacing (mm)")
    ex.add_argument("--size", type=int, nargs=3, help="crop/pad to this size (voxels)")
    ex.add_argument("--intensity", help="range:AMIN,AMAX,BMIN,BMAX | percentiles:LOW,HIGH | zscore")
    ex.add_argument("--window", type=int, nargs=3, metavar=("X", "Y", "Z"),
                    help="run the model on sliding windows of this size over the whole scan, as MONAI's "
                         "SlidingWindowInferer (default: the bundle's or the model's own inferer, if any)")
    ex.add_argument("--overlap", type=float, help="sliding windows' overlap, 0 to <1 (0.25)")
    ex.add_argument("--blend", choices=["constant", "gaussian"], help="how overlapping windows are blended")
    ex.add_argument("--window-batch", type=int, help="windows per forward pass (sw_batch_size)")
    ex.add_argument("--no-window", action="store_true", help="ignore the model's own sliding-window inferer")
    ex.add_argument("--atlas", choices=["harvard-oxford"], help="score anatomical regions of this atlas")
    ex.add_argument("--registration", choices=["none", "affine", "deformable"], default="affine",
                    help="how the atlas gets into the volume: none (already MNI), affine (default), deformable")
    ex.add_argument("--atlas-threshold", type=float, default=25.0, help="atlas probability threshold, %% (25)")
    ex.add_argument("--regions", help="label volume (NIfTI/NRRD) on the input's space: regions to score")
    ex.add_argument("--region-names", help="names of the --regions labels: CSV (id,name) or Slicer colour table")
    ex.add_argument("--supervoxels", type=int, help="use this many 3D SLIC supervoxels as regions")
    ex.add_argument("--baseline", help="what perturbations put in: zeros, mean, blur, or a reference volume file")
    _run_arguments(ex)
    ex.add_argument("--progress-lines", action="store_true",
                    help="report progress as 'xaiexplain-progress {\"fraction\": F, \"message\": M}' lines on stdout")
    ex.add_argument("--no-previews", action="store_true", help="do not write the PNG previews")
    ex.add_argument("--check", nargs="*", metavar="CHECK",
                    help="a trust card for every map: randomisation, deletion, insertion, completeness, saturation, "
                         "shortcut, warnings (all without names); its cost in passes is said before it runs")
    ex.add_argument("--check-setting", action="append", help="CHECK.NAME=VALUE, e.g. deletion.steps=10")
    ex.add_argument("--report", action="store_true", help="also write report.html and report.pdf")
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
    _run_arguments(ev)
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
    import monai  # noqa: F401
    import SimpleITK  # noqa: F401
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
