"""XAIExplain engine: attribution maps for 3D medical-imaging models, on the input volume's own grid.

Pure Python on PyTorch, MONAI and SimpleITK; never imports Slicer or Qt.

    from xaiexplain import explain, load_model, read_volume
    results = explain("model_bundle/", "t1.nii.gz", ["gradcam", "integrated-gradients"])

The names below are imported on first use, so ``import xaiexplain`` (and the command's
``--help``) does not load torch.
"""
from importlib import import_module

from .errors import XAIError

__version__ = "0.1.0"

_EXPORTS = {
    "attribute": "core.attribute", "explain": "core.explain", "load_inputs": "core.volume",
    "prepare_case": "core.case", "PreparedCase": "core.case",
    "METHODS": "methods", "get_method": "methods", "METRICS": "metrics", "get_metric": "metrics",
    "LoadedModel": "core.models", "load_model": "core.models",
    "PreprocessSpec": "core.preprocess", "Preprocessor": "core.preprocess",
    "Attribution": "core.result", "read_results": "io.outputs", "write_results": "io.outputs",
    "ClassTarget": "core.targets", "ContrastTarget": "core.targets", "SegmentationTarget": "core.targets",
    "Volume": "core.volume", "read_volume": "core.volume", "write_volume": "core.volume",
}
_RENAMED = {"METHODS": "REGISTRY", "METRICS": "REGISTRY"}

__all__ = ["XAIError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xaiexplain' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
