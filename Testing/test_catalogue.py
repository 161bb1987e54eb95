"""The catalogue of malformed inputs, one case per line: each is refused before any computation, in at most
three lines with no traceback, with nothing written in or beside --out and every input unchanged.

Every case runs through the command (``main()`` in this process, the C-level stderr captured too), through
the Python API where it has an equivalent (the same text, as an XAIError), and through the Slicer logic where
a scene can express it (the same text, and the scene as it was).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import SimpleITK as sitk
import nibabel as nib
import numpy as np
import pytest
import torch
from test_volume_io import write_dicom_series  # Testing/ is on the path

from xaiexplain import XAIError, explain
from xaiexplain.cli.main import main
from xaiexplain.core.volume import read_volume, write_volume
from xaiexplain.protocol import demo_bundle

MODEL = str(demo_bundle())
SIZE = 64  # the demo model's grid


# -- the material: a good case, and makers of bad files from it ---------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, positive_case):
    """A folder of inputs: the good case (NRRD and NIfTI), a program of the demo model, and the bad files."""
    root = tmp_path_factory.mktemp("catalogue")
    inputs = root / "in"
    inputs.mkdir()
    write_volume(positive_case.volume, inputs / "case.nrrd", compress=False)
    write_volume(positive_case.volume, inputs / "case.nii.gz")
    write_volume(positive_case.volume, inputs / "case.nii", compress=False)
    for name, make in MAKERS.items():
        make(inputs, positive_case.volume)
    held = root / "held"  # the results of an earlier run
    held.mkdir()
    (held / "summary.json").write_text(json.dumps({"results": [{"method": "gradcam"}]}))
    (held / "gradcam.nrrd").write_bytes(b"old")
    (root / "evaluated").mkdir()
    (root / "evaluated" / "evaluation.json").write_text("{}")
    return root


def _nifti(inputs: Path, name: str, data: np.ndarray, zooms=(3.0, 3.0, 3.0)) -> None:
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    image.header.set_zooms(zooms[:data.ndim] if data.ndim < 4 else (*zooms, 1.0))
    nib.save(image, str(inputs / name))


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])


def _nrrd_header(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    head, _, body = data.partition(b"\n\n")
    return head.decode(), body


def _make_nrrd_variants(inputs: Path, volume) -> None:
    head, body = _nrrd_header(inputs / "case.nrrd")
    (inputs / "truncated.nrrd").write_bytes(head.encode() + b"\n\n" + body[:len(body) // 2])
    lines = head.splitlines()
    directions = next(i for i, line in enumerate(lines) if line.startswith("space directions"))
    zero = list(lines)
    zero[directions] = "space directions: (0,0,0) (0,3,0) (0,0,3)"
    (inputs / "zero_spacing.nrrd").write_bytes("\n".join(zero).encode() + b"\n\n" + body)
    flat = list(lines)
    flat[directions] = "space directions: (3,0,0) (3,0,0) (0,0,3)"  # two axes along one direction
    (inputs / "flat_directions.nrrd").write_bytes("\n".join(flat).encode() + b"\n\n" + body)
    sitk.WriteImage(volume.to_sitk(), str(inputs / "case.mha"))
    _truncate(inputs / "case.mha", inputs / "truncated.mha")
    (inputs / "garbled.nrrd").write_bytes(b"NRRD0004\nthis is: not a header\n\x00\x01\x02" + body[:100])
    array = volume.array[0].copy()
    array[10, 20, 30] = np.nan
    write_volume(volume.with_array(array[None]), inputs / "nan.nrrd")
    gz = inputs / "gz.nrrd"
    write_volume(volume, gz, compress=True)
    _truncate(gz, inputs / "truncated_gz.nrrd", 0.6)


def _make_nifti_variants(inputs: Path, volume) -> None:
    _truncate(inputs / "case.nii.gz", inputs / "truncated.nii.gz")
    _truncate(inputs / "case.nii", inputs / "truncated.nii", 0.7)
    data = volume.array[0].astype(np.float32).transpose(2, 1, 0)
    for name, value in (("nan.nii", np.nan), ("inf.nii.gz", np.inf), ("neginf.nii", -np.inf)):
        bad = data.copy()
        bad[5, 6, 7] = value
        _nifti(inputs, name, bad)
    _nifti(inputs, "zero_pixdim.nii", data)
    header = bytearray((inputs / "zero_pixdim.nii").read_bytes())
    header[84:88] = np.float32(0.0).tobytes()  # pixdim[2], as a broken converter writes it
    (inputs / "zero_pixdim.nii").write_bytes(bytes(header))
    header[80:84] = np.float32(1e6).tobytes()  # pixdim[1]: a kilometre per voxel (units gone wrong)
    header[84:88] = np.float32(3.0).tobytes()
    (inputs / "huge_pixdim.nii").write_bytes(bytes(header))
    _nifti(inputs, "slice.nii.gz", data[:, :, 30])
    _nifti(inputs, "four_d.nii.gz", np.stack([data] * 3, -1))
    _nifti(inputs, "constant.nii.gz", np.full_like(data, 7.0))
    (inputs / "empty.nii.gz").write_bytes(b"")
    (inputs / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    (inputs / "text.nii").write_text("not an image\n")


def _make_dicom_variants(inputs: Path, volume) -> None:
    image = volume.to_sitk()
    image = sitk.Cast(image, sitk.sitkInt16)
    write_dicom_series(image[:, :, :16], inputs / "dicom_missing_slice")
    (inputs / "dicom_missing_slice" / "IM0008.dcm").unlink()  # a gap in the middle of the series
    write_dicom_series(image[:, :, :16], inputs / "dicom_short")
    _truncate(inputs / "dicom_short" / "IM0005.dcm", inputs / "dicom_short" / "IM0005.dcm", 0.97)
    write_dicom_series(image[:, :, :16], inputs / "dicom_truncated")
    _truncate(inputs / "dicom_truncated" / "IM0005.dcm", inputs / "dicom_truncated" / "IM0005.dcm", 0.5)
    (inputs / "no_dicom").mkdir()
    (inputs / "no_dicom" / "notes.txt").write_text("no images here\n")


def _make_models(inputs: Path, volume) -> None:
    (inputs / "random.pt2").write_bytes(np.random.default_rng(1).bytes(3000))
    (inputs / "random.pt").write_bytes(np.random.default_rng(2).bytes(3000))
    conv = torch.nn.Conv3d(1, 1, 3)
    program = torch.export.export(conv, (torch.rand(1, 1, 8, 8, 8),))
    torch.export.save(program, str(inputs / "good.pt2"))
    _truncate(inputs / "good.pt2", inputs / "truncated.pt2")
    (inputs / "empty_bundle").mkdir()
    (inputs / "sidecar.pt2").write_bytes((inputs / "good.pt2").read_bytes())
    (inputs / "sidecar.json").write_text("{not json")
    (inputs / "labels.csv").write_text("id,name\n1,left\n")


def _make_region_variants(inputs: Path, volume) -> None:
    labels = np.zeros(volume.shape, np.int16)
    labels[20:40, 20:40, 20:40] = 1
    write_volume(volume.with_array(labels[None].astype(np.float32)), inputs / "labels.nrrd")
    far = sitk.Image(16, 16, 16, sitk.sitkInt16)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    far += 1
    sitk.WriteImage(far, str(inputs / "far_labels.nrrd"))
    noise = np.random.default_rng(3).normal(size=volume.shape).astype(np.float32)
    write_volume(volume.with_array(noise[None]), inputs / "noise.nrrd")
    write_volume(volume.with_array(np.zeros((1, *volume.shape), np.float32)), inputs / "empty_mask.nrrd")


MAKERS = {"nrrd": _make_nrrd_variants, "nifti": _make_nifti_variants, "dicom": _make_dicom_variants,
          "models": _make_models, "regions": _make_region_variants}


# -- the catalogue ----------------------------------------------------------------------------------------------
# (id, arguments after 'explain' with {in} for the input folder, what the one-line error says). Every case but
# the first group has --model and --out added: --model the demo bundle unless given, --out a fresh folder.
def explain_case(args: str, message: str, model: str | None = MODEL, method: str | None = "gradient",
                 case: str = "case.nrrd", volatile: bool = False):
    """``volatile``: the message quotes a measurement that changes from run to run (the free memory)."""
    return {"args": args, "message": message, "model": model, "method": method, "case": case, "volatile": volatile}


def _same_text(name: str, got: str, expected: str) -> bool:
    if CASES[name].get("volatile"):
        got, expected = (re.sub(r"\d+(\.\d+)?", "#", t) for t in (got, expected))
    return got == expected


CASES = {
    # files that are not what they say
    "input missing": explain_case("", "does not exist", case="absent.nii.gz"),
    "input truncated .nii.gz": explain_case("", "is truncated or corrupt", case="truncated.nii.gz"),
    "input truncated .nii": explain_case("", "is truncated or corrupt", case="truncated.nii"),
    "input NaN .nii": explain_case("", "holds 1 NaN or infinite voxels", case="nan.nii"),
    "input +Inf .nii.gz": explain_case("", "holds 1 NaN or infinite voxels", case="inf.nii.gz"),
    "input -Inf .nii": explain_case("", "holds 1 NaN or infinite voxels", case="neginf.nii"),
    "input zero pixdim": explain_case("", r"voxel size \[3.0, 0.0, 3.0\]", case="zero_pixdim.nii"),
    "input empty file": explain_case("", "is truncated or corrupt", case="empty.nii.gz"),
    "input random bytes": explain_case("", "is truncated or corrupt", case="random.nii.gz"),
    "input text as .nii": explain_case("", "is truncated or corrupt", case="text.nii"),
    "input 2-D NIfTI": explain_case("", "is a 2-D image", case="slice.nii.gz"),
    "input 4-D NIfTI": explain_case("", "4-D series of 3 volumes", case="four_d.nii.gz"),
    "input truncated .nrrd": explain_case("", r"cannot read volume .*50% of expected", case="truncated.nrrd"),
    "input truncated gzip .nrrd": explain_case("", "cannot read volume", case="truncated_gz.nrrd"),
    "input zero spacing .nrrd": explain_case("", r"header of .* gives a voxel size that is not positive \(\[0, 3, 3\]",
                                             case="zero_spacing.nrrd"),
    "input kilometre voxels": explain_case("", r"header of .* gives the voxel size \[1000000.0, 3.0, 3.0\] mm",
                                           case="huge_pixdim.nii"),
    "input axes along one direction": explain_case("", "axis directions that do not span 3-D space",
                                                   case="flat_directions.nrrd"),
    "input truncated .mha": explain_case("", "cannot read volume", case="truncated.mha"),
    "input garbled .nrrd": explain_case("", "cannot read volume", case="garbled.nrrd"),
    "input NaN .nrrd": explain_case("", "holds 1 NaN or infinite voxels", case="nan.nrrd"),
    "input folder without DICOM": explain_case("", "holds no DICOM series", case="no_dicom"),
    "input DICOM slice missing": explain_case("", r"not evenly spaced: slices 8 and 9 \(of 15\) are 6 mm apart",
                                              case="dicom_missing_slice"),
    "input DICOM slice truncated": explain_case("", "DICOM file .* is truncated or corrupt", case="dicom_truncated"),
    "input DICOM slice cut short": explain_case("", "DICOM file .* is truncated", case="dicom_short"),
    "two inputs for a 1-channel model": explain_case("--input {in}/case.nii.gz", "channel"),
    "second input a 2-D image": explain_case("--input {in}/slice.nii.gz", "2-D image"),
    "input constant": explain_case("", "is constant", case="constant.nii.gz"),
    # models
    "model missing": explain_case("", "does not exist", model="{in}/absent.pt"),
    "model random .pt2": explain_case("", r"cannot read torch.export program", model="{in}/random.pt2"),
    "model truncated .pt2": explain_case("", r"cannot read torch.export program", model="{in}/truncated.pt2"),
    "model random TorchScript": explain_case("", "is not a TorchScript, .pt2 or bundle model", model="{in}/random.pt"),
    "model empty bundle": explain_case("", "bundle", model="{in}/empty_bundle"),
    "model sidecar not JSON": explain_case("", "JSON", model="{in}/sidecar.pt2"),
    "model a volume": explain_case("", "is not a TorchScript, .pt2 or bundle model", model="{in}/case.nrrd"),
    # methods and their parameters
    "method unknown": explain_case("", "unknown method", method="saliency-magic"),
    "uncertainty of a classifier": explain_case("", "maps a segmentation network's voxelwise output",
                                                method="entropy"),
    "channel Shapley of one channel": explain_case("", "needs 2 or more input channels", method="channel-shapley"),
    "samples=abc": explain_case("--param smoothgrad.samples=abc", "smoothgrad.samples='abc' is not a whole number",
                                method="smoothgrad"),
    "samples=-5": explain_case("--param smoothgrad.samples=-5", "smoothgrad.samples=-5 is out of range",
                               method="smoothgrad"),
    "samples=0": explain_case("--param smoothgrad.samples=0", "smoothgrad.samples=0 is out of range",
                              method="smoothgrad"),
    "samples=2.5": explain_case("--param smoothgrad.samples=2.5", "smoothgrad.samples=2.5 is not a whole number",
                                method="smoothgrad"),
    "noise_level=-1": explain_case("--param smoothgrad.noise_level=-1", "noise_level=-1.* out of range",
                                   method="smoothgrad"),
    "steps=0": explain_case("--param integrated-gradients.steps=0", "steps=0 is out of range",
                            method="integrated-gradients"),
    "batches beyond the free memory": explain_case(
        "--param smoothgrad.samples=20000 --param smoothgrad.batch_size=20000",
        r"smoothgrad in batches of 20000 needs about .* GB .* are free. Give smoothgrad.batch_size=\d+ or less",
        method="smoothgrad", volatile=True),
    "occlusion.window=0": explain_case("--param occlusion.window=0", "occlusion.window=0 is out of range",
                                       method="occlusion"),
    "occlusion.stride=-1": explain_case("--param occlusion.stride=-1", "stride=-1 is out of range",
                                        method="occlusion"),
    "rise.keep=1": explain_case("--param rise.keep=1", "keep=1.* out of range", method="rise"),
    "lrp.composite unknown": explain_case("--param lrp.composite=eps", "is not a choice", method="lrp"),
    "parameter unknown": explain_case("--param gradient.bogus=1", "has no parameter bogus. It takes none"),
    "parameter unknown, the method has some": explain_case("--param smoothgrad.bogus=1", "Its parameters are: samples",
                                                           method="smoothgrad"),
    "parameter for a method not chosen": explain_case("--param smoothgrad.samples=4",
                                                      "smoothgrad, which is not among the chosen methods"),
    "parameter for an unknown method": explain_case("--param magic.level=4", "unknown method"),
    "param without =": explain_case("--param smoothgrad.samples", "cannot read --param"),
    "param without method": explain_case("--param samples=4", "cannot read --param"),
    # preprocessing
    "intensity range:a,b": explain_case("--intensity range:a,b", "cannot read --intensity"),
    "intensity range with 2 numbers": explain_case("--intensity range:0,1", "cannot read --intensity"),
    "intensity unknown": explain_case("--intensity gamma", "cannot read --intensity"),
    "spacing 0 0 0": explain_case("--spacing 0 0 0", "spacing .* is not three numbers of millimetres above 0"),
    "spacing negative": explain_case("--spacing -1 1 1", "spacing .* is not three numbers of millimetres"),
    "spacing absurd": explain_case("--spacing 1e6 1 1", "spacing .* up to 100"),
    "spacing not a number": explain_case("--spacing a 1 1", "invalid float value"),
    "size 0": explain_case("--size 0 64 64", "spatial_size .* is not three whole numbers of voxels"),
    "size negative": explain_case("--size -64 64 64", "spatial_size .* is not three whole numbers"),
    "size absurd": explain_case("--size 100000 64 64", "spatial_size .* from 1 to 4096"),
    "orientation bogus": explain_case("--orientation XYZ", "orientation 'XYZ' is not three axis codes"),
    "orientation repeated axis": explain_case("--orientation RRS", "orientation 'RRS' is not three axis codes"),
    # sliding windows
    "window size 0": explain_case("--window 16 0 16", "roi_size .* is not three whole numbers of voxels from 1"),
    "window overlap 1": explain_case("--window 16 16 16 --overlap 1", "overlap=1.0 is not a number from 0"),
    "window batch 0": explain_case("--window 16 16 16 --window-batch 0", "sw_batch_size=0 is not a whole number"),
    "window overlap without a size": explain_case("--overlap 0.5", "needs roi_size"),
    "window and no window": explain_case("--window 16 16 16 --no-window", "contradict each other"),
    "window with a crop size": explain_case("--window 32 32 32", "crops/pads the scan to"),
    "window blend unknown": explain_case("--window 16 16 16 --blend mean", "invalid choice"),
    # what to explain
    "target out of range": explain_case("--target 7", "class 7 is out of range"),
    "target negative": explain_case("--target -1", "out of range"),
    "target unknown name": explain_case("--target tumour", "unknown class 'tumour'"),
    "versus the target itself": explain_case("--target 1 --versus 1", "two different classes"),
    "roi on a classifier": explain_case("--roi {in}/labels.nrrd", "needs a segmentation model"),
    "roi component not a number": explain_case("--roi component:big", "component is not a whole number"),
    "roi component of a classifier": explain_case("--roi component:1", "needs a segmentation model"),
    "layer unknown": explain_case("--layer nope", "'nope'", method="gradcam"),
    "baseline unknown": explain_case("--baseline sunshine", "unknown baseline", method="integrated-gradients"),
    "baseline file missing": explain_case("--baseline {in}/absent.nrrd", "does not exist",
                                          method="integrated-gradients"),
    "baseline for no method that takes one": explain_case("--baseline zeros", "no chosen method uses a baseline"),
    "reference missing": explain_case("--reference {in}/absent.nrrd", "does not exist", method="deepshap"),
    "reference with NaN": explain_case("--reference {in}/nan.nrrd", "reference volume '<path>' holds 1 NaN",
                                       method="deepshap"),
    # regions
    "regions missing": explain_case("--regions {in}/absent.nrrd", "does not exist"),
    "regions far from the volume": explain_case("--regions {in}/far_labels.nrrd --region-names {in}/labels.csv",
                                                "does not lie on the input volume"),
    "regions empty": explain_case("--regions {in}/empty_mask.nrrd", "holds no label other than 0"),
    "regions without names": explain_case("--regions {in}/labels.nrrd", "have no names"),
    "regions not labels": explain_case("--regions {in}/case.nrrd --region-names {in}/labels.csv",
                                       "holds non-integer values"),
    "region names without regions": explain_case("--region-names {in}/labels.csv", "--region-names needs --regions"),
    "two region sources": explain_case("--regions {in}/labels.nrrd --supervoxels 8", "only one region source"),
    "supervoxels 0": explain_case("--supervoxels 0", "0 supervoxels cannot be regions"),
    "supervoxels -5": explain_case("--supervoxels -5", "-5 supervoxels cannot be regions"),
    "supervoxels abc": explain_case("--supervoxels abc", "invalid int value"),
    "atlas on noise": explain_case("--atlas harvard-oxford", "does not look like a head", case="noise.nrrd"),
    "atlas threshold 150": explain_case("--atlas harvard-oxford --atlas-threshold 150", "threshold 150.0 % is not"),
    "atlas unknown": explain_case("--atlas aal", "invalid choice"),
    "registration unknown": explain_case("--atlas harvard-oxford --registration magic", "invalid choice"),
    # where it runs and where the results go
    "device unknown": explain_case("--device tpu", "unknown device 'tpu'"),
    "device not one it runs on": explain_case("--device meta", "is not one XAIExplain runs on"),
    "device cuda without a GPU": explain_case("--device cuda:3", "a GPU was requested"),
    "out is a file": explain_case("--out {in}/case.nii", "is a file"),
    "out below a file": explain_case("--out {in}/case.nii/results", "not a writable folder"),
    "out holds results": explain_case("--out {held}", "already holds results"),
    "seed negative": explain_case("--seed -1", "seed -1 is not a whole number from 0"),
    "seed too large": explain_case("--seed 99999999999", "seed 99999999999 is not"),
    "no method": explain_case("", "the following arguments are required: --method", method=None),
    "no model": explain_case("", "the following arguments are required: --model", model=None),
}


def evaluate_case(args: str, message: str, method: str = "gradient"):
    return {"command": "evaluate", "args": args, "message": message, "model": MODEL, "method": method,
            "case": "case.nrrd"}


CASES.update({
    "evaluate: metric unknown": evaluate_case("--metric sharpness", "unknown metric"),
    "evaluate: setting malformed": evaluate_case("--setting deletion.steps", "cannot read --setting 'deletion.steps'"),
    "evaluate: setting unknown": evaluate_case("--metric deletion --setting deletion.bogus=1", "bogus"),
    "evaluate: setting out of range": evaluate_case("--metric deletion --setting deletion.steps=0",
                                                    "deletion.steps=0 is out of range"),
    "evaluate: setting of the wrong type": evaluate_case("--metric continuity --setting continuity.radius=big",
                                                         "continuity.radius='big' is not a number"),
    "evaluate: mask missing": evaluate_case("--mask {in}/absent.nrrd", "does not exist"),
    "evaluate: mask empty": evaluate_case("--metric coherence --mask {in}/empty_mask.nrrd", "empty|no voxel"),
    "evaluate: substrate unknown": evaluate_case("--substrate fog", "unknown substrate 'fog'"),
    "evaluate: results already there": evaluate_case("--out {evaluated}", "already holds results"),
})


def _checksums(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _argv(case: dict, inputs: Path, out: Path) -> list[str]:
    args = case["args"].format(**{"in": inputs, "held": inputs.parent / "held",
                                  "evaluated": inputs.parent / "evaluated"}).split()
    argv = [case.get("command", "explain"), "--input", str(inputs / case["case"])]
    if case["model"] is not None:
        argv += ["--model", case["model"].format(**{"in": inputs})]
    if case["method"] is not None:
        argv += ["--method", case["method"]]
    argv += args
    if "--out" not in args:
        argv += ["--out", str(out)]
    return argv + ["--quiet"]


@pytest.mark.parametrize("name", list(CASES))
def test_the_command_refuses_it_in_one_line_and_writes_nothing(world, name, capfd):
    case, inputs = CASES[name], world / "in"
    place = world / "runs" / name.replace(" ", "_").replace("/", "_")
    place.mkdir(parents=True)
    before = _checksums(inputs, Path(MODEL), world / "held", world / "evaluated")
    rc = main(_argv(case, inputs, place / "out"))
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    print(name, rc, lines)
    assert rc == 2, captured
    assert 1 <= len(lines) <= 3 and "Traceback" not in captured.err + captured.out, captured.err
    COMMAND_TEXT[name] = rc, lines[-1].removeprefix("error: ")
    text = re.sub(re.escape(str(world)) + r"/[^' ]*", "<path>", lines[-1])  # no match on a file's name
    assert re.search(case["message"], text), text
    assert list(place.iterdir()) == []  # nothing in --out, nothing beside it (no staging folder)
    assert _checksums(inputs, Path(MODEL), world / "held", world / "evaluated") == before


COMMAND_TEXT: dict[str, tuple[int, str]] = {}  # (exit code, error line) of each case the command ran


def _run_command(world: Path, name: str, capfd) -> tuple[int, str]:
    """The command's exit code and error text for a case (the one it gave in this session, if it ran)."""
    if name in COMMAND_TEXT:
        return COMMAND_TEXT[name]
    place = world / "runs" / (name.replace(" ", "_").replace("/", "_").replace(":", "") + "-again")
    place.mkdir(parents=True, exist_ok=True)
    rc = main(_argv(CASES[name], world / "in", place / "out"))
    return rc, capfd.readouterr().err.strip().splitlines()[-1].removeprefix("error: ")


def _api_request(name: str, world: Path) -> dict | None:
    """The explain() call the command makes for this case; None if the case is the command line's own (its
    syntax, its --out) and has no Python equivalent."""
    from xaiexplain.cli.main import build_parser
    from xaiexplain.cli.options import explain_settings, region_spec
    from xaiexplain.io.folder_run import case_regions

    case = CASES[name]
    if case.get("command", "explain") != "explain" or "--out" in case["args"]:
        return None
    try:
        args = build_parser().parse_args(_argv(case, world / "in", world / "unused")[:-1])
        settings, spec = explain_settings(args), region_spec(args)
    except XAIError:  # the command line's syntax
        return None
    try:
        regions = case_regions(read_volume(args.input[0]), spec)
    except XAIError as err:  # read or made before explain(): the same functions, called by a user
        return {"raises": err}
    return dict(model=args.model, inputs=args.input, roi=args.roi, references=args.reference or None,
                regions=regions, **{**settings, "preprocessing": settings["preprocessing"] or None,
                                    "checks": None, "check_settings": None})


API_CASES = [name for name in CASES if CASES[name].get("command", "explain") == "explain"]


@pytest.mark.parametrize("name", API_CASES)
def test_the_python_api_raises_the_same_one_line_error(world, name, capfd):
    request = _api_request(name, world)
    if request is None:
        pytest.skip("the command line's own syntax or output folder: no Python equivalent")
    rc, text = _run_command(world, name, capfd)
    before = _checksums(world / "in", Path(MODEL))
    if "raises" in request:
        error = request["raises"]
    else:
        with pytest.raises(XAIError) as caught:
            explain(**request)
        error = caught.value
    assert rc == 2 and _same_text(name, str(error), text)
    assert _checksums(world / "in", Path(MODEL)) == before


# the cases a Slicer scene can express: a good volume node, and a defect in the model, methods, parameters,
# target, layer, baseline, seed or device (a file's defects are Slicer's reader's to meet, before the module)
SLICER_KEYS = {"model", "method", "param", "target", "versus", "layer", "baseline", "seed", "device", "window",
               "overlap", "window-batch", "blend"}
SLICER_CASES = [name for name in API_CASES if CASES[name]["case"] == "case.nrrd" and CASES[name]["method"]
                and CASES[name]["model"] and all(word.startswith("--") is False or word[2:] in SLICER_KEYS
                                                 for word in CASES[name]["args"].split())
                and "{in}/absent" not in CASES[name]["args"]]


def _scene_state(scene) -> list:
    nodes = scene.GetNodes()
    return [(nodes.GetItemAsObject(i).GetID(), nodes.GetItemAsObject(i).GetMTime())
            for i in range(nodes.GetNumberOfItems())]


@pytest.mark.parametrize("name", SLICER_CASES)
def test_the_slicer_logic_refuses_it_and_leaves_the_scene_as_it_was(world, name, capfd, harness, positive_case):
    from XAIExplainLib import volumenodes
    from XAIExplainLib.logic import ExplainLogicBase

    request = _api_request(name, world)
    if request is None or "raises" in request:
        pytest.skip("the command line's own syntax: the panel and the console pass values, not text")
    rc, text = _run_command(world, name, capfd)
    harness.clear()
    try:
        logic = ExplainLogicBase(harness.scene, vrLogic=harness.vrLogic, python="unused")
        node = volumenodes.addVolumeNode(logic.scene, positive_case.volume.array[0], "T1", volume=positive_case.volume)
        array = volumenodes.arrayFromNode(node).copy()
        state = _scene_state(logic.scene)
        with pytest.raises(Exception) as caught:
            logic.process(node, request["model"], request["methods"], target=request["target"],
                          versus=request["versus"], layer=request["layer"], params=request["params"],
                          seed=request["seed"], device=request["device"], inferer=request["inferer"],
                          useWorker=False, show=False)
        assert rc == 2 and _same_text(name, str(caught.value), text)
        assert _scene_state(logic.scene) == state and not logic.isRunning() and logic.resultNodes() == []
        assert np.array_equal(volumenodes.arrayFromNode(node), array)
    finally:
        harness.clear()

