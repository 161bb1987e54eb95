"""The SynthLesion demo classifier: MONAI convolution and residual blocks with BatchNorm.

64^3 input -> features at 16^3 (PReLU residual units, then a 1x1 convolution
with ReLU: the Grad-CAM layer, 12 mm cells at 3 mm voxels) -> global max
pooling -> linear. Weights trained by
``xaiexplain.synthlesion.train`` ship as MONAI bundles under ``Resources/Models``.
"""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

CLASS_NAMES = ["healthy", "lesion"]


class SynthLesionNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: tuple = (16, 32, 32, 32),
                 units: int = 3):
        """``units`` residual units (the first one strided): each further unit widens the receptive field
        of the 16^3 features by 16 voxels (15 with one unit, 47 with three)."""
        super().__init__()
        block = dict(spatial_dims=3, norm="batch", act="prelu")
        layers = [Convolution(in_channels=in_channels, out_channels=channels[0], strides=2, **block)]
        for i in range(units):
            layers.append(ResidualUnit(in_channels=channels[i], out_channels=channels[i + 1],
                                       strides=2 if i == 0 else 1, **block))
        last = channels[units]
        layers.append(Convolution(in_channels=last, out_channels=last, kernel_size=1, spatial_dims=3, norm="batch",
                                  act="relu"))
        self.features = nn.Sequential(*layers)
        # Global max pooling: a lesion of ~100 voxels in 262,144 is averaged away by global average
        # pooling (training stalls), while the maximum keeps it. The head is still "global pooling + linear".
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))

