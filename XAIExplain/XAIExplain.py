"""XAIExplain: explain 3D medical-imaging deep-learning models inside 3D Slicer.

This file only declares the module. The computation lives in the pure-Python ``xaiexplain`` engine
(shipped beside this file), which never imports Slicer and can also be run from the command line.
"""
import slicer  # noqa: F401  (Slicer provides ScriptedLoadableModule below)
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class XAIExplain(ScriptedLoadableModule):
    """Module metadata. The icon is Resources/Icons/XAIExplain.png, which ScriptedLoadableModule finds by name."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XAIExplain"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["XAIExplain developers"]
        self.parent.helpText = """
Explainable AI for 3D medical-imaging models: XAIExplain computes attribution maps that show which voxels
of the input volume drove a model's output (a class score, a contrast between two classes, or a segmentation
region), and returns them as volumes on the input volume's own grid, ready to overlay.
<p>Methods, by family:</p>
<ul>
<li><b>Gradients</b>: vanilla gradient (saliency), gradient &times; input, SmoothGrad, Integrated Gradients.</li>
<li><b>CAM family</b>: CAM, Grad-CAM, Grad-CAM++, Guided Grad-CAM.</li>
<li><b>Backprop</b> (modified backward rules): guided backpropagation, DeconvNet.</li>
</ul>
<p>The computation is done by the <code>xaiexplain</code> engine, a pure-Python package on PyTorch, MONAI and
SimpleITK that does not depend on Slicer; the same engine runs from the command line as <code>xaiexplain</code>.
PyTorch is provided by the PyTorch extension.</p>
"""
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = """
XAIExplain is built on 3D Slicer, PyTorch (through the Slicer PyTorch extension), MONAI and SimpleITK.
The methods implemented follow their original publications: Simonyan et al. 2014 (saliency), Shrikumar et al.
2016 (gradient &times; input), Smilkov et al. 2017 (SmoothGrad), Sundararajan et al. 2017 (Integrated
Gradients), Zhou et al. 2016 (CAM), Selvaraju et al. 2017 (Grad-CAM, Guided Grad-CAM), Chattopadhay et al. 2018
(Grad-CAM++), Springenberg et al. 2015 (guided backpropagation) and Zeiler &amp; Fergus 2014 (DeconvNet).
"""
