"""The SynthLesion demo classifier: MONAI convolution and residual blocks with BatchNorm.

64^3 input -> features at 16^3 (PReLU residual units, then a 1x1 convolution
with ReLU: the Grad-CAM layer, 12 mm cells at 3 mm voxels) -> global max
pooling -> linear. Weights trained by
``xaiexplain.train`` ship as MONAI bundles under ``Resources/Models``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

CLASS_NAMES = ["healthy", "lesion"]


class SynthLesionNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: tuple = (16, 32, 32, 32)):
        super().__init__()
        c0, c1, c2, c3 = channels
        block = dict(spatial_dims=3, norm="batch", act="prelu")
        self.features = nn.Sequential(
            Convolution(in_channels=in_channels, out_channels=c0, strides=2, **block),
            ResidualUnit(in_channels=c0, out_channels=c1, strides=2, **block),
            ResidualUnit(in_channels=c1, out_channels=c2, strides=1, **block),
            ResidualUnit(in_channels=c2, out_channels=c3, strides=1, **block),
            Convolution(in_channels=c3, out_channels=c3, kernel_size=1, spatial_dims=3, norm="batch", act="relu"),
        )
        # Global max pooling: a lesion of ~100 voxels in 262,144 is averaged away by global average
        # pooling (training stalls), while the maximum keeps it. The head is still "global pooling + linear".
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def models_dir() -> Path:
    """Where the shipped demo bundles live (repo checkout or Slicer module install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "Resources" / "Models", here.parent.parent / "Resources" / "Models",
                      here.parent / "Resources" / "Models"):
        if candidate.is_dir():
            return candidate
    from .errors import XAIError
    raise XAIError("the demo models are not installed next to the engine", "reinstall XAIExplain from its repository")


def demo_bundle(name: str = "synthlesion_classifier") -> Path:
    """Path of a shipped demo bundle: 'synthlesion_classifier' or 'synthlesion_shortcut'."""
    return models_dir() / name
