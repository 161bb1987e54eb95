"""Browsing what a layer detects, without Qt: the layers a model has on an input, and one channel of one layer
shown as an overlay (the engine's ``feature-map``), with the layer's channels ranked by what they add to the
target. A mixin of ``ExplainLogicBase``; the panel's layer and channel picker (``XAIExplainGui.featuremaps``) calls it.
"""
from __future__ import annotations

from . import display
from .volumenodes import addVolumeNode, volumeFromNode

RANKINGS = ("gradient-x-activation", "lrp")


class FeatureLogic:
    def featureLayers(self, inputVolumes, model: str, device: str = "auto") -> list[dict]:
        """Every layer with a spatial output on this input, in the order the network computes them: {name,
        channels, grid} (one forward pass, in-process)."""
        from xaiexplain import prepare_case
        from xaiexplain.methods.features import feature_layers

        volumes = [volumeFromNode(n) for n in self._nodes(inputVolumes)]
        return feature_layers(prepare_case(self.loadModel(model, device), volumes, device=device))

    def showFeatureChannel(self, inputVolumes, model: str, layer: str, channel: int | None = None, *,
                           target=None, versus=None, roi=None, roiSegment: str | None = None,
                           rankBy: str = "gradient-x-activation", device: str = "auto"):
        """Channel ``channel`` of ``layer`` (None: the one adding most to the target) as a result node shown as
        an overlay, in-process (one forward and backward pass; two more with ``rankBy="lrp"``). The target is
        :meth:`process`'s: a class, a contrast with ``versus``, or a segmentation network's class in ``roi``
        (``roiSegment``). The node's record holds the layer's ranking (see :meth:`featureRanking`)."""
        if rankBy not in RANKINGS:
            raise ValueError(f"rankBy must be one of {', '.join(RANKINGS)}, not {rankBy!r}")
        params = {"feature-map": {"channel": channel, "rank_by": rankBy}}
        (node,) = self.process(inputVolumes, model, ["feature-map"], target=target, versus=versus, roi=roi,
                               roiSegment=roiSegment, layer=layer, params=params, device=device, useWorker=False,
                               waitForCompletion=True)
        return node

    def loadPrototypePatches(self, model: str, prototype: int, device: str = "auto") -> list:
        """A prototype network's prototype ``prototype`` as what it looks like: its nearest training patches as
        volume nodes (nearest first; the model space's voxel size and axes, centred on the origin)."""
        from xaiexplain.methods.prototypes import nearest_patch_volumes

        return [addVolumeNode(self.scene, patch.array[0], patch.channel_names[0], volume=patch)
                for patch in nearest_patch_volumes(self.loadModel(model, device), int(prototype))]

    @staticmethod
    def describeFeatureLayer(layer: dict) -> str:
        """A layer as the picker lists it: name, channels and grid."""
        return f"{layer['name']} ({layer['channels']} channels, {'x'.join(str(n) for n in layer['grid'])})"

    @staticmethod
    def featureRanking(resultNode) -> list[dict]:
        """A feature-map result's ranking of its layer's channels: [{channel, contribution, share}], first the
        one adding most."""
        return list(display.record(resultNode).get("info", {}).get("ranking", []))

    @staticmethod
    def describeFeatureRanking(resultNode, shown: int = 5) -> str:
        """The panel's line on a feature-map result: its layer, channel and rank, then the top channels."""
        info = display.record(resultNode).get("info", {})
        ranking = info.get("ranking", [])
        if not ranking:
            return ""
        top = ", ".join(f"{r['channel']} ({r['share']:+.0%})" for r in ranking[:shown])
        return (f"{info['layer']}: channel {info['channel']} of {info['layer_channels']} (rank {info['rank']} by "
                f"{info['ranked_by']}). Top channels (share of the target): {top}")


def describePrototypes(record: dict) -> str:
    """A prototype network's explanation in words (the result's record), '' for other results: the top
    prototypes with what they add, and the prediction with the disabled ones switched off."""
    info = record.get("info", {})
    if "prototypes" not in info:
        return ""
    top = "; ".join(f"{e['prototype']} ({e['class']}{'' if e['enabled'] else ', disabled'}): adds {e['adds']:+.2f}"
                    for e in info["prototypes"][:3])
    text = f"\nPrototypes adding most: {top}"
    if "prediction_with_disabled" in info:
        corrected = info["prediction_with_disabled"]
        text += (f"\nWith prototypes {', '.join(map(str, info['disabled']))} disabled: "
                 f"{corrected['predicted_name']} (p={max(corrected['probabilities']):.3f})")
    return text
