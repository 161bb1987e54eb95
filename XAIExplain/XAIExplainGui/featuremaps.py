"""The panel's "Feature maps" section: list the model's layers on the input, pick a layer and one of its
channels (or the top one), rank the channels by gradient x activation or LRP, show the channel as an overlay.
Everything it computes is the logic's (``XAIExplainLib.featuremaps.FeatureLogic``)."""
import ctk
import qt
import slicer
from XAIExplainLib.featuremaps import RANKINGS

TOP = -1  # the channel spin box's "top": the channel adding most to the target


class FeatureMapsSection:
    def __init__(self, widget):
        """``widget``: the module's ``XAIExplainWidget`` (its logic, parameter node, inputs and model path)."""
        self.widget = widget
        self.layers: list[dict] = []
        self.listedFor = None  # (input volume IDs, model path) the layers were listed for
        self.section = ctk.ctkCollapsibleButton()
        self.section.text = "Feature maps"
        self.section.collapsed = True
        form = qt.QFormLayout(self.section)
        self.listButton = qt.QPushButton("List the model's layers")
        self.listButton.toolTip = "One forward pass on the input volume: every layer with a spatial output"
        self.layerComboBox = qt.QComboBox()
        self.channelSpinBox = qt.QSpinBox()
        self.channelSpinBox.specialValueText = "top"
        self.channelSpinBox.toolTip = "The channel to show; top: the one adding most to the target"
        self.rankComboBox = qt.QComboBox()
        self.rankComboBox.addItems(list(RANKINGS))
        self.showButton = qt.QPushButton("Show channel")
        self.rankingLabel = qt.QLabel()
        self.rankingLabel.wordWrap = True
        for label, item in (("", self.listButton), ("Layer:", self.layerComboBox), ("Channel:", self.channelSpinBox),
                            ("Rank channels by:", self.rankComboBox), ("", self.showButton), ("", self.rankingLabel)):
            form.addRow(label, item)
        self.listButton.connect("clicked(bool)", self.onListLayers)
        self.layerComboBox.connect("currentIndexChanged(int)", self.onLayerChanged)
        self.showButton.connect("clicked(bool)", self.onShowChannel)
        self.onLayerChanged(-1)

    def onListLayers(self) -> None:
        w = self.widget
        with slicer.util.tryWithErrorDisplay("Could not list the model's layers.", waitCursor=True):
            self.layers = w.logic.featureLayers(w.inputVolumes(), w.modelPath(), w._parameterNode.device)
            self.listedFor = self._current()
            self.layerComboBox.clear()
            self.layerComboBox.addItems([w.logic.describeFeatureLayer(layer) for layer in self.layers])
            self.layerComboBox.currentIndex = len(self.layers) - 1  # the deepest: what the decision reads

    def _current(self):
        w = self.widget
        return tuple(node.GetID() for node in w.inputVolumes()), w.modelPath()

    def onLayerChanged(self, index: int) -> None:
        channels = self.layers[index]["channels"] if 0 <= index < len(self.layers) else 0
        self.channelSpinBox.setRange(TOP, channels - 1)
        self.showButton.enabled = channels > 0

    def onShowChannel(self) -> None:
        w, layer = self.widget, self.layers[self.layerComboBox.currentIndex]
        p, channel = w._parameterNode, self.channelSpinBox.value
        with slicer.util.tryWithErrorDisplay("Could not show the feature map.", waitCursor=True):
            if self._current() != self.listedFor:
                raise ValueError("the input volume or the model changed since the layers were listed: list them again")
            node = w.logic.showFeatureChannel(w.inputVolumes(), w.modelPath(), layer["name"],
                                              None if channel == TOP else int(channel), target=p.target or None,
                                              versus=p.versus or None, roi=p.roiNode,
                                              roiSegment=p.roiSegment or None, rankBy=self.rankComboBox.currentText,
                                              device=p.device)
            self.rankingLabel.text = w.logic.describeFeatureRanking(node)
            p.resultVolume = node
