"""The layer and channel picker's logic with Slicer's MRML (slicer-core): the layers a model has on an input, a
chosen channel as an overlay on the input's grid, the layer's channels ranked, and a prototype network's
explanation as a result node."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

slicer = pytest.importorskip("slicer")

from XAIExplainLib import display, volumenodes  # noqa: E402


@pytest.fixture()
def t1(logic, positive_case):
    return volumenodes.addVolumeNode(logic.scene, positive_case.volume.array[0], "T1", volume=positive_case.volume)


def test_layers_and_a_chosen_channel_shown_as_an_overlay(harness, logic, t1, demo, positive_case):
    logic._models[(logic.demoModelPath(), "cpu")] = demo
    layers = logic.featureLayers(t1, logic.demoModelPath(), device="cpu")
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["features.2"] == {"name": "features.2", "channels": 32, "grid": [16, 16, 16]}
    assert by_name["features.0.conv"]["grid"] == [32, 32, 32] and "pool" not in by_name  # 1^3 is not a map
    names = [layer["name"] for layer in layers]
    assert names.index("features.0.conv") < names.index("features.2") < names.index("features")  # as computed

    node = logic.showFeatureChannel(t1, logic.demoModelPath(), "features.2", 5, target="lesion", device="cpu")
    assert volumenodes.sameGrid(node, t1, tolerance=1e-9)
    composite = harness.sliceLogic.GetSliceCompositeNode()
    assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetBackgroundVolumeID() == t1.GetID()
    record = display.record(node)
    assert record["method"] == "feature-map"
    assert record["info"]["channel"] == 5 and record["info"]["layer"] == "features.2"
    # the overlay is channel 5 of features.2, brought onto the input grid (the case is in model space)
    from xaiexplain import prepare_case

    case = prepare_case(demo, positive_case.volume, device="cpu")
    seen = {}

    def keep(_module, _inputs, output):
        seen["a"] = output.detach()  # returns None: the output stays the module's

    handle = demo.network.features[2].register_forward_hook(keep)
    with torch.no_grad():
        demo.network(case.x)
    handle.remove()
    expected = F.interpolate(seen["a"][:, 5:6], size=case.x.shape[2:], mode="trilinear", align_corners=False)
    expected = np.asarray(case.to_input_grid(expected[0]))[0]
    np.testing.assert_allclose(volumenodes.arrayFromNode(node)[0], expected, rtol=1e-4, atol=1e-5)

    ranking = logic.featureRanking(node)
    assert len(ranking) == 10 and ranking[0]["contribution"] >= ranking[-1]["contribution"]
    assert logic.describeFeatureLayer(by_name["features.2"]) == "features.2 (32 channels, 16x16x16)"
    rank = record["info"]["rank"]
    assert logic.describeFeatureRanking(node).startswith(
        f"features.2: channel 5 of 32 (rank {rank} by gradient-x-activation). Top channels (share of the target): "
        f"{ranking[0]['channel']} ({ranking[0]['share']:+.0%})")
    best = logic.showFeatureChannel(t1, logic.demoModelPath(), "features.2", None, target="lesion", rankBy="lrp",
                                    device="cpu")
    assert display.record(best)["info"]["channel"] == logic.featureRanking(best)[0]["channel"]
    contrast = logic.showFeatureChannel(t1, logic.demoModelPath(), "features.2", None, target="lesion",
                                        versus="healthy", device="cpu")  # the panel's target, contrast and all
    assert display.record(contrast)["target"]["kind"] == "contrast"
    with pytest.raises(ValueError, match="rankBy must be one of"):
        logic.showFeatureChannel(t1, logic.demoModelPath(), "features.2", rankBy="size")


def test_a_prototype_explanation_from_the_panel_logic(logic, t1):
    """The panel offers prototypes.disable as text; the result node records the prediction both ways."""
    model = logic.demoModelPath("synthlesion_prototypes")
    fields = {spec["name"]: logic.parameterField(spec) for _, spec, _ in logic.panelParameters(["prototypes"], {})}
    assert fields["disable"]["kind"] == "text"
    (node,) = logic.process(t1, model, ["prototypes"], target="lesion", params={"prototypes": {"disable": "5,7"}},
                            device="cpu", useWorker=False)
    info = display.record(node)["info"]
    assert info["prediction"]["predicted_name"] == "lesion" and info["disabled"] == [5, 7]
    assert info["prediction_with_disabled"]["predicted_name"] == "healthy"  # its two lesion prototypes that fire
    text = logic.describeResult(node)  # the panel's record line
    assert "Prototypes adding most: " in text and "With prototypes 5, 7 disabled: healthy" in text
    assert volumenodes.sameGrid(node, t1, tolerance=1e-9)
    patches = logic.loadPrototypePatches(model, 7, device="cpu")  # what prototype 7 looks like, as volumes
    from xaiexplain.methods.prototypes import nearest_patches

    stored = nearest_patches(logic.loadModel(model, "cpu").network.head, 7)
    assert [n.GetName() for n in patches] == [f"prototype 7 nearest {r}" for r in (1, 2, 3)]
    np.testing.assert_allclose(volumenodes.arrayFromNode(patches[0])[0], stored[0, 0])
    assert patches[0].GetSpacing() == (3.0, 3.0, 3.0)
