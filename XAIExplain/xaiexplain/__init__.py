"""XAIExplain engine: attribution maps for 3D medical-imaging models, on the input volume's own grid.

Pure Python on PyTorch, MONAI and SimpleITK; never imports Slicer or Qt.

    from xaiexplain import explain, load_model, read_volume
    results = explain("model_bundle/", "t1.nii.gz", ["gradcam", "integrated-gradients"])
"""
from .errors import XAIError
from .explain import attribute, explain, load_inputs
from .methods import REGISTRY as METHODS
from .methods import get_method
from .models import LoadedModel, load_model
from .preprocess import PreprocessSpec, Preprocessor
from .result import Attribution
from .targets import ClassTarget, ContrastTarget, SegmentationTarget
from .volume import Volume, read_volume, write_volume

__version__ = "0.1.0"
__all__ = ["XAIError", "attribute", "explain", "load_inputs", "METHODS", "get_method", "LoadedModel", "load_model",
           "PreprocessSpec", "Preprocessor", "Attribution", "ClassTarget", "ContrastTarget", "SegmentationTarget",
           "Volume", "read_volume", "write_volume", "__version__"]
