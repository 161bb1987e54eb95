"""The trust card and the shortcut check without ground truth, on the demo models and SynthLesion; the card
through the command line, into summary.json, the report (HTML and PDF) and back."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from xaiexplain import explain
from xaiexplain.errors import XAIError
from xaiexplain.metrics import top_mass_share
from xaiexplain.synthlesion.benchmark import MARKED_SEED_START, SEED_START
from xaiexplain.synthlesion.synth import generate_case, marker_mask
from xaiexplain.trust import card_settings, shortcut_check, suspect_areas

QUICK = {"deletion": {"steps": 8, "random_maps": 2}, "insertion": {"steps": 8, "random_maps": 2}}
MARKER = marker_mask().array[0] > 0


@pytest.fixture(scope="module")
def marked_cases():
    return [generate_case(MARKED_SEED_START + i, positive=True, marker=True) for i in range(2)]


def test_the_suspect_areas_find_the_marker_and_leave_a_bright_lesion_alone(marked_cases):
    case = marked_cases[0]
    areas = suspect_areas(case.volume)
    lesion = case.lesion_mask.array[0] > 0
    assert areas["bright_objects"][MARKER].all() and not (areas["bright_objects"] & lesion).any()
    assert areas["outside_body"][MARKER].all() and not (areas["outside_body"] & lesion).any()
    assert areas["border"][0].all() and areas["border"][-1].all() and not areas["border"][32, 32, 32]
    bright = generate_case(SEED_START + 1, positive=True, contrast=0.6)  # a lesion at the brain's edge, 1.6x WM
    assert not suspect_areas(bright.volume)["bright_objects"].any()


@pytest.mark.parametrize("method", ["integrated-gradients", "lrp", "gradient"])
def test_the_shortcut_check_flags_the_shortcut_model_and_clears_the_clean_one(demo, shortcut, marked_cases, method):
    for case in marked_cases:
        (flagged,) = explain(shortcut, case.volume, [method], target="lesion")
        (cleared,) = explain(demo, case.volume, [method], target="lesion")
        bad, good = shortcut_check(case.volume, flagged.array), shortcut_check(case.volume, cleared.array)
        assert bad["verdict"] == "fail" and bad["share"] >= 0.9, bad["share"]
        assert good["verdict"] == "pass" and good["share"] < 0.1 and good["region"] is None, good["share"]
        if method != "gradient":  # gradient spreads into the air around the marker; the others sit on it
            assert top_mass_share(flagged.array, MARKER, 0.1) >= 0.9
        assert (bad["region"][MARKER] == 3).mean() >= 0.9  # the marker, highlighted whole as a bright object


def test_grad_cams_peak_on_the_marker_is_caught_though_its_mass_is_spread(shortcut, demo, marked_cases):
    case = marked_cases[0]
    (flagged,) = explain(shortcut, case.volume, ["gradcam"], target="lesion")
    (cleared,) = explain(demo, case.volume, ["gradcam"], target="lesion")
    assert shortcut_check(case.volume, flagged.array)["verdict"] == "fail"
    assert shortcut_check(case.volume, cleared.array)["verdict"] == "pass"


@pytest.fixture(scope="module")
def clean_cards(demo):
    case = generate_case(SEED_START, positive=True)
    methods = ["gradcam", "gradient", "integrated-gradients", "lrp", "guided-backprop"]
    results = explain(demo, case.volume, methods, target="lesion", checks=True, check_settings=QUICK,
                      params={"integrated-gradients": {"steps": 16}})
    return {r.method: r.trust for r in results}


def _check(card, name):
    return next(c for c in card["checks"] if c["check"] == name)


def test_the_card_passes_randomisation_and_shows_guided_backprop_as_far_less_sensitive(clean_cards):
    for method in ("gradcam", "gradient", "integrated-gradients", "lrp"):
        check = _check(clean_cards[method], "randomisation")
        assert check["verdict"] == "pass", (method, check["text"])
        assert check["randomised_spearman"] <= check["unrelated_spearman"] + check["margin"]
    sensitivity = {m: _check(c, "randomisation")["cascade_sensitivity"] for m, c in clean_cards.items()}
    assert sensitivity["guided-backprop"] < 0.5 * sensitivity["gradient"]
    assert sensitivity["guided-backprop"] < 0.15 * sensitivity["gradcam"]


def test_the_cards_other_checks_and_their_stated_costs(clean_cards):
    for method, card in clean_cards.items():
        assert _check(card, "insertion")["verdict"] == "pass"
        # blurring voxels in the gradient's (or IG's) order barely lowers p(lesion) here: said, not hidden
        assert _check(card, "deletion")["verdict"] == ("pass" if method in ("gradcam", "lrp", "guided-backprop")
                                                       else _check(card, "deletion")["verdict"])
        assert _check(card, "shortcut")["verdict"] == "pass" and _check(card, "warnings")["verdict"] == "pass"
        for check in card["checks"]:
            assert check["passes"] == check["stated_passes"], (method, check["check"])
        assert _check(card, "deletion")["stated_passes"]["forward"] == 9 * 3  # (steps + 1) x (1 + random maps)
    assert _check(clean_cards["gradcam"], "completeness")["verdict"] == "n/a"
    for method in ("integrated-gradients", "lrp"):
        assert _check(clean_cards[method], "completeness")["verdict"] == "pass"
    assert _check(clean_cards["lrp"], "saturation")["verdict"] in ("pass", "inconclusive")
    assert clean_cards["lrp"]["verdict"] != "fail"


def test_a_map_in_the_wrong_order_fails_deletion_and_insertion(demo):
    from xaiexplain.core.attribute import attribute
    from xaiexplain.core.case import prepare_case
    from xaiexplain.trust import trust_card

    case = prepare_case(demo, generate_case(SEED_START, positive=True).volume)
    from xaiexplain.core.targets import ClassTarget
    from xaiexplain.methods import get_method

    maps, _, _ = attribute(demo, case.x, "lrp", target=1)
    (result,) = explain(None, case, ["lrp"], target=1)
    method = get_method("lrp")
    target = ClassTarget(1).resolve(case.output(), demo.class_names)
    chosen = card_settings(["deletion", "insertion"], QUICK)
    good = trust_card(case, method, method.params({}), target, maps, result, chosen=chosen)
    bad = trust_card(case, method, method.params({}), target, -maps.abs(), result, chosen=chosen)
    assert [c["verdict"] for c in good["checks"]] == ["pass", "pass"]
    assert [c["verdict"] for c in bad["checks"]] == ["fail", "fail"] and bad["verdict"] == "fail"


def test_bad_check_requests_are_refused_before_any_work(demo, positive_case):
    with pytest.raises(XAIError, match="unknown check"):
        card_settings(["sanity"])
    with pytest.raises(XAIError, match="has no setting"):
        card_settings(None, {"deletion": {"stpes": 3}})
    with pytest.raises(XAIError, match="out of range"):
        card_settings(None, {"deletion": {"steps": 0}})
    with pytest.raises(XAIError, match="without checks"):
        explain(demo, positive_case.volume, ["gradient"], check_settings={"deletion": {"steps": 3}})


def test_check_and_report_through_the_command_line_and_back(tmp_path, marked_cases):
    from xaiexplain.cli.main import main
    from xaiexplain.core.volume import Volume, write_volume
    from xaiexplain.io.outputs import read_results
    from xaiexplain.protocol import demo_bundle

    case = marked_cases[0]
    write_volume(case.volume, tmp_path / "marked.nrrd")
    write_volume(case.lesion_mask, tmp_path / "lesion.nrrd")
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle("synthlesion_shortcut")),
                 "--input", str(tmp_path / "marked.nrrd"),
                 "--method", "lrp", "--method", "gradcam", "--target", "lesion", "--check", "shortcut", "deletion",
                 "--check-setting", "deletion.steps=4", "--report", "--outline", str(tmp_path / "lesion.nrrd"),
                 "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    card = summary["results"][0]["trust"]
    assert [c["check"] for c in card["checks"]] == ["deletion", "shortcut"] and card["verdict"] == "fail"
    assert (out / "lrp_shortcut.nrrd").is_file()
    back = read_results(out)
    assert back[0].trust == card and back[0].shortcut_region is not None
    assert (back[0].shortcut_region.array[0][MARKER] > 0).all()
    html = (out / "report.html").read_text(encoding="utf-8")
    for section in ('id="input"', 'id="maps"', 'id="map-lrp"', 'id="map-gradcam"', "Trust card",
                    "Deletion against random maps"):
        assert section in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4  # two previews, two curve plots
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.pdf").stat().st_size > 10_000
    write_volume(Volume(case.volume.array[:, :20].copy()), tmp_path / "other.nrrd")
    assert main(["report", "--results", str(out), "--input", str(tmp_path / "other.nrrd"),
                 "--out", str(tmp_path / "mismatch")]) == 2  # not the image the maps are of: refused
    assert not (tmp_path / "mismatch").exists()
    assert main(["report", "--results", str(out), "--input", str(tmp_path / "marked.nrrd"), "--outline",
                 str(tmp_path / "lesion.nrrd"), "--out", str(tmp_path / "outlined")]) == 0
    assert (tmp_path / "outlined" / "report.html").read_text(encoding="utf-8").count("<img") == 4
    assert main(["explain", "--model", "x", "--input", str(tmp_path / "marked.nrrd"), "--method", "lrp",
                 "--check-setting", "deletion.steps=4", "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils (pdftoppm) is not installed")
def test_the_pdf_reports_pages_show_the_images(tmp_path, shortcut, marked_cases):
    from xaiexplain.io.report import write_report

    case = marked_cases[0]
    results = explain(shortcut, case.volume, ["lrp"], target="lesion", checks=["deletion"],
                      check_settings={"deletion": {"steps": 4, "random_maps": 1}})
    _, pdf = write_report(tmp_path, case.volume, results)
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(pdf), str(tmp_path / "page")], check=True, timeout=60)
    from PIL import Image

    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 2  # the facts, then the map's page
    pixels = np.asarray(Image.open(pages[1]).convert("RGB")).astype(int)
    dark = (pixels.sum(2) < 150).mean()  # the preview's dark background and slices
    red = ((pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)).mean()  # map and curve
    assert dark > 0.05 and red > 0.0005, (dark, red)
