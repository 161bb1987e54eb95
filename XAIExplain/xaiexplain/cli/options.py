"""What explain and cohort both take: the explain options on the command line, and the explain() settings
they become (read before any computation, so that a malformed option is refused first)."""
from __future__ import annotations

import json

from ..errors import XAIError

OVERWRITE_HELP = "replace the results a previous run left in --out (without it, such a folder is refused)"


def parse_params(items: list[str], flag: str = "--param") -> dict:
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


def preprocessing_overrides(args) -> dict:
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
            out["intensity"] = {"kind": "range", "a_min": values[0], "a_max": values[1], "b_min": values[2],
                                "b_max": values[3]}
        elif kind == "percentiles" and len(values) == 2:
            out["intensity"] = {"kind": "percentiles", "lower": values[0], "upper": values[1], "b_min": 0.0,
                                "b_max": 1.0}
        elif kind == "zscore" and not values:
            out["intensity"] = {"kind": "zscore"}
        if "intensity" not in out:
            raise XAIError(f"cannot read --intensity '{args.intensity}'",
                           "use range:AMIN,AMAX,BMIN,BMAX or percentiles:LOW,HIGH or zscore")
    return out


def inferer_overrides(args) -> dict | None:
    """--window / --overlap / --blend / --window-batch (each overrides the model's own), --no-window (none)."""
    given = {key: value for key, value in (("roi_size", args.window), ("overlap", args.overlap),
                                           ("mode", args.blend), ("sw_batch_size", args.window_batch))
             if value is not None}
    if args.no_window:
        if given:
            raise XAIError("--no-window and the window settings contradict each other", "give one or the other")
        return {}
    return given or None


def region_spec(args) -> dict:
    """The region source named by --atlas / --regions / --supervoxels, as :func:`~..io.folder_run.case_regions`
    takes it ({}: none given)."""
    given = [flag for flag, value in (("--atlas", args.atlas), ("--regions", args.regions),
                                      ("--supervoxels", args.supervoxels)) if value is not None]
    if len(given) > 1:
        raise XAIError(f"{' and '.join(given)} both name regions", "give only one region source")
    if args.region_names and not args.regions:
        raise XAIError("--region-names needs --regions", "give the label volume with --regions LABELS")
    if args.atlas:
        return {"atlas": args.atlas, "registration": args.registration, "threshold": args.atlas_threshold}
    if args.regions:
        return {"labels": args.regions, "names": args.region_names}
    if args.supervoxels is not None:
        return {"supervoxels": args.supervoxels}
    return {}


def with_baseline(params: dict, methods: list[str], baseline: str | None) -> dict:
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


def checks(args):
    """--check alone: every check; --check NAME ...: those; none: no trust card."""
    if args.check is None:
        if args.check_setting:
            raise XAIError("--check-setting needs --check", "add --check (all checks) or --check NAME ...")
        return None
    return args.check or True


def explain_settings(args) -> dict:
    """:func:`~..core.explain.explain`'s keywords from the command line (the case's own inputs, ROI and
    references aside)."""
    return dict(methods=args.method, target=args.target, versus=args.versus, layer=args.layer,
                params=with_baseline(parse_params(args.param), args.method, args.baseline), seed=args.seed,
                device=args.device, preprocessing=preprocessing_overrides(args), inferer=inferer_overrides(args),
                checks=checks(args), check_settings=parse_params(args.check_setting, "--check-setting"))


def add_target_options(parser) -> None:
    """What to explain: the methods and the target."""
    parser.add_argument("--method", action="append", required=True, help="method name (repeat for several)")
    parser.add_argument("--target", help="class index or name (default: the predicted class)")


def add_explain_options(parser) -> None:
    """How an explain run explains and what it writes (besides the model, the inputs and the output folder)."""
    parser.add_argument("--versus", help="second class: explain target minus versus")
    parser.add_argument("--roi", help="mask on the input grid (segmentation models), 'predicted', or 'component:N' "
                                      "(the N-th largest connected component of the predicted class)")
    parser.add_argument("--reference", action="append", default=[], metavar="FILE",
                        help="a reference volume for deepshap (e.g. healthy templates or a counterfactual), repeatable")
    parser.add_argument("--layer", help="module name for CAM methods (default: last spatial feature map)")
    parser.add_argument("--param", action="append", help="METHOD.NAME=VALUE, e.g. smoothgrad.samples=50")
    parser.add_argument("--orientation", help="reorient to these axis codes before the model, e.g. RAS")
    parser.add_argument("--spacing", type=float, nargs=3, help="resample to this spacing (mm)")
    parser.add_argument("--size", type=int, nargs=3, help="crop/pad to this size (voxels)")
    parser.add_argument("--intensity", help="range:AMIN,AMAX,BMIN,BMAX | percentiles:LOW,HIGH | zscore")
    parser.add_argument("--window", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="run the model on sliding windows of this size over the whole scan, as MONAI's "
                             "SlidingWindowInferer (default: the bundle's or the model's own inferer, if any)")
    parser.add_argument("--overlap", type=float, help="sliding windows' overlap, 0 to <1 (0.25)")
    parser.add_argument("--blend", choices=["constant", "gaussian"], help="how overlapping windows are blended")
    parser.add_argument("--window-batch", type=int, help="windows per forward pass (sw_batch_size)")
    parser.add_argument("--no-window", action="store_true", help="ignore the model's own sliding-window inferer")
    parser.add_argument("--atlas", choices=["harvard-oxford"], help="score anatomical regions of this atlas")
    parser.add_argument("--registration", choices=["none", "affine", "deformable"], default="affine",
                        help="how the atlas gets into the volume: none (already MNI), affine (default), deformable")
    parser.add_argument("--atlas-threshold", type=float, default=25.0, help="atlas probability threshold, %% (25)")
    parser.add_argument("--regions", help="label volume (NIfTI/NRRD) on the input's space: regions to score")
    parser.add_argument("--region-names", help="names of the --regions labels: CSV (id,name) or Slicer colour table")
    parser.add_argument("--supervoxels", type=int, help="use this many 3D SLIC supervoxels as regions")
    parser.add_argument("--baseline", help="what perturbations put in: zeros, mean, blur, or a reference volume file")
    parser.add_argument("--no-previews", action="store_true", help="do not write the PNG previews")
    parser.add_argument("--check", nargs="*", metavar="CHECK",
                        help="a trust card for every map: randomisation, deletion, insertion, completeness, "
                             "saturation, "
                             "shortcut, warnings (all without names); its cost in passes is said before it runs")
    parser.add_argument("--check-setting", action="append", help="CHECK.NAME=VALUE, e.g. deletion.steps=10")
    parser.add_argument("--report", action="store_true", help="also write report.html and report.pdf")


def add_run_options(parser) -> None:
    """Where the results go and how the run shows itself."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
