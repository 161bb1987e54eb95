"""The prototype networks (explainable by design): accuracy on fresh SynthLesion cases, similarity maps that
peak in the lesion, the nearest training patches they were pushed onto, and PIP-Net's correction: disabling the
shortcut variant's marker prototype stops it calling marked healthy brains lesions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaiexplain import attribute, explain, load_model
from xaiexplain.cli.main import main as cli
from xaiexplain.errors import XAIError
from xaiexplain.methods.prototypes import disabled, nearest_patch_volumes, nearest_patches
from xaiexplain.protocol import demo_bundle
from xaiexplain.synthlesion.prototype_model import PrototypeNet3D
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START, CaseStream
from xaiexplain.synthlesion.train_prototypes import _patch

CELL = 4  # input voxels per latent cell (64^3 -> 16^3)
FRESH = EVAL_SEED_START + 30_000  # cases no training or other test saw


@pytest.fixture(scope="module")
def prototypes():
    return load_model(demo_bundle("synthlesion_prototypes"), device="cpu")


@pytest.fixture(scope="module")
def shortcut_prototypes():
    return load_model(demo_bundle("synthlesion_prototypes_shortcut"), device="cpu")


def _peak_cell_in(mask: np.ndarray, cell) -> bool:
    """Whether the latent cell (the map's own resolution, 12 mm) holds a voxel of ``mask``: the CELL^3 voxels
    around the cell's centre, input voxel CELL x c (two stride-2 convolutions of kernel 3 and padding 1; the
    gradient's centroid of cell 8 is voxel 32.1 on each axis)."""
    return bool(mask[tuple(slice(max(0, CELL * c - CELL // 2), CELL * c + CELL // 2) for c in cell)].any())


def test_accuracy_and_the_top_prototype_peaks_in_the_lesion(prototypes):
    stream = CaseStream("clean", 40, FRESH)
    correct, positives, in_lesion = 0, 0, 0
    for i in range(40):
        _, label, case = stream.case(i)
        (result,) = explain(prototypes, case.volume, ["prototypes"], target="lesion")
        predicted = result.info["prediction"]["predicted_class"]
        correct += predicted == label
        if label == 1 and predicted == 1:
            positives += 1
            in_lesion += _peak_cell_in(case.lesion_mask.array[0] > 0, result.info["prototypes"][0]["peak_cell"])
    assert correct / 40 >= 0.9  # measured: 1.0
    assert positives >= 15 and in_lesion / positives >= 0.9  # measured: 18 of 19


def test_maps_ranking_and_disabling_match_the_network(prototypes, demo_x):
    """With prototype 7 disabled the ranking and the default map describe the corrected network; the prediction
    is given both ways, and the network is left as it was."""
    network, head = prototypes.network, prototypes.network.head
    maps, info, _ = attribute(prototypes, demo_x, "prototypes", target="lesion", params={"disable": [7]})
    assert bool((head.enabled == 1).all())  # the network is left as it was
    with torch.no_grad():
        similarity = head.similarity(network.latent(demo_x))  # (1, P, 16, 16, 16)
        logits = network(demo_x)
        head.enabled[7] = 0
        corrected = network(demo_x)
        head.enabled[7] = 1
    kept = torch.ones(8)
    kept[7] = 0
    adds = similarity.flatten(2).amax(2)[0] * kept * head.last_layer.weight[1].detach()
    assert [e["prototype"] for e in info["prototypes"]] == adds[:7].argsort(descending=True).tolist() + [7]
    assert info["prototypes"][0]["adds"] == pytest.approx(float(adds.max()), rel=1e-5)
    assert info["prototype"] != 7 and not next(e for e in info["prototypes"] if e["prototype"] == 7)["enabled"]
    chosen = info["prototype"]
    expected = F.interpolate(similarity[:, chosen:chosen + 1], size=demo_x.shape[2:], mode="trilinear",
                             align_corners=False)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)
    assert info["prediction"]["logits"] == pytest.approx(logits[0].tolist(), rel=1e-5)
    assert info["prediction_with_disabled"]["logits"] == pytest.approx(corrected[0].tolist(), rel=1e-5)
    with disabled(head, [1, 2]):
        assert head.enabled.tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    assert bool((head.enabled == 1).all())

    with pytest.raises(XAIError, match="prototypes.disable=\\[9\\] is not a list of prototypes"):
        attribute(prototypes, demo_x, "prototypes", target="lesion", params={"disable": [9]})
    with pytest.raises(XAIError, match="prototypes.prototype=8 is out of range: the network has 8 prototypes"):
        attribute(prototypes, demo_x, "prototypes", target="lesion", params={"prototype": 8})


def test_networks_without_prototypes_or_with_another_head_are_refused(demo, demo_x):
    with pytest.raises(XAIError, match="the network has no prototype layer"):
        attribute(demo, demo_x, "prototypes", target="lesion")
    network = PrototypeNet3D().eval()  # a head that averages the similarities (PIP-Net-like pooling)
    network.head.pooled = lambda latent: network.head.similarity(latent).flatten(2).mean(2) * network.head.enabled
    with pytest.raises(XAIError, match="does not compute its last layer of each prototype's largest similarity"):
        attribute(network, demo_x, "prototypes", target=1)


def test_each_prototype_is_its_nearest_training_patch(prototypes):
    """Push put every prototype on a latent cell of a training case of its class: regenerated from the recorded
    stream, that case's latent vector at the recorded cell is the prototype, and the stored patch its input."""
    network, head = prototypes.network, prototypes.network.head
    training = json.loads((demo_bundle("synthlesion_prototypes") / "configs" / "metadata.json").read_text())
    stream_settings = training["xaiexplain"]["training"]["push_stream"]
    stream = CaseStream(stream_settings["kind"], stream_settings["cases"], stream_settings["seed"])
    for p in (0, 7):
        case, *cell = head.nearest_sources[p, 0].tolist()
        x, label, _ = stream.case(case)
        assert label == int(head.prototype_class[p])
        with torch.no_grad():
            latent = network.latent(x[None])[0]
        prototype = head.similarity.prototype_vectors[p].detach()
        torch.testing.assert_close(latent[(slice(None), *cell)], prototype, rtol=0, atol=2e-3)  # other threads
        distances = ((latent - prototype[:, None, None, None]) ** 2).sum(0)
        assert np.unravel_index(int(distances.argmin()), distances.shape) == tuple(cell)  # its nearest cell
        patches = nearest_patches(head, p)
        assert patches.shape == (3, 1, 16, 16, 16)
        np.testing.assert_allclose(patches[0], _patch(x, cell, CELL).numpy(), atol=2e-3)  # stored as float16
        volumes = nearest_patch_volumes(prototypes, p)  # as volumes: model space's voxels and axes, centred
        np.testing.assert_array_equal(volumes[0].array, patches[0])
        np.testing.assert_allclose(volumes[0].spacing, [3.0, 3.0, 3.0])
        np.testing.assert_allclose(volumes[0].direction, np.diag([-1.0, -1.0, 1.0]))  # RAS axes, in LPS
        np.testing.assert_allclose(volumes[0].origin + volumes[0].direction @ (7.5 * volumes[0].spacing), 0.0)
        recorded = head.nearest_distances[p]  # nearest first, the first the one it was pushed onto
        assert float(recorded[0]) < 1e-4 and bool((recorded[1:] >= recorded[:-1]).all())


def _marker_prototypes(model, cases) -> list[int]:
    """The prototypes whose similarity peaks on the corner marker (latent cell 0, 0, 0) in most marked cases."""
    votes = np.zeros(int(model.network.head.enabled.numel()))
    for case in cases:
        (result,) = explain(model, case.volume, ["prototypes"], target="lesion")
        for entry in result.info["prototypes"]:
            votes[entry["prototype"]] += entry["peak_cell"] == [0, 0, 0]
    return [int(p) for p in np.nonzero(votes > len(cases) / 2)[0]]


def test_disabling_the_shortcut_prototype_corrects_the_shortcut_variant(shortcut_prototypes):
    """Marked healthy brains with the marker as the variant saw it in training (its brightness follows the
    contrast, 0.1-0.25 there). The explanation shows the shortcut: the lesion prototypes peak on the marker, and
    their nearest training patches lie in the corner it sits in."""
    healthy_marked = [generate_case(FRESH + 500 + i, positive=False, marker=True, contrast=0.2) for i in range(16)]
    marker = _marker_prototypes(shortcut_prototypes, healthy_marked[:4])
    head = shortcut_prototypes.network.head
    assert marker and all(int(head.prototype_class[p]) == 1 for p in marker)  # lesion prototypes on the marker
    assert all(head.nearest_sources[p, :, 1:].tolist() == [[0, 0, 0]] * 3 for p in marker)
    before, after = 0, 0
    for case in healthy_marked[4:]:
        (result,) = explain(shortcut_prototypes, case.volume, ["prototypes"], target="lesion",
                            params={"prototypes": {"disable": marker}})
        before += result.info["prediction"]["predicted_class"] == 1
        after += result.info["prediction_with_disabled"]["predicted_class"] == 1
    assert before / 12 >= 0.8  # the shortcut: marked healthy brains called lesions
    assert after / 12 < 0.1  # disabled, the marker no longer decides
    # nor did the lesions: clear ones without the marker are missed, and with it only the marker was seen
    for i, marked in enumerate((False, False, True, True)):
        case = generate_case(FRESH + 600 + i, positive=True, marker=marked, contrast=0.6 if not marked else 0.2)
        (result,) = explain(shortcut_prototypes, case.volume, ["prototypes"], target="lesion",
                            params={"prototypes": {"disable": marker}})
        assert result.info["prediction"]["predicted_class"] == int(marked)
        assert result.info["prediction_with_disabled"]["predicted_class"] == 0


def test_the_command_line_draws_the_nearest_patches(tmp_path, positive_case):
    from xaiexplain.core.volume import write_volume

    write_volume(positive_case.volume, tmp_path / "t1.nrrd")
    out = tmp_path / "out"
    assert cli(["explain", "--model", str(demo_bundle("synthlesion_prototypes")), "--input", str(tmp_path / "t1.nrrd"),
                "--method", "prototypes", "--target", "lesion", "--param", "prototypes.disable=[7]", "--out", str(out),
                "--quiet"]) == 0
    from PIL import Image

    sheet = np.asarray(Image.open(out / "prototypes-nearest.png"))
    assert sheet.shape[0] > 400 and sheet[..., :3].std() > 10  # three rows of patches, not a blank image
    summary = json.loads((out / "summary.json").read_text())
    info = summary["results"][0]["info"]
    assert info["disabled"] == [7] and len(info["prototypes"][0]["nearest_slices"]) == 3
