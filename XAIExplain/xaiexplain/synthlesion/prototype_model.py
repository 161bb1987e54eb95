"""A prototype network in 3D (explainable by design, after ProtoPNet, Chen et al. 2019, and PIP-Net's
correction of prototypes, Nauta et al. 2023), built from MONAI parts.

64^3 input -> the SynthLesion classifier's convolution and residual units (features at 16^3) -> two 1x1
convolutions with a sigmoid (the latent space) -> for every prototype, its similarity to each latent cell,
log((d + 1) / (d + 1e-4)) of the squared distance d -> the largest similarity over the cells -> a linear layer
without bias from the prototypes' similarities to the classes.

A prediction is then "this cell looks like these prototypes": each prototype is a latent vector projected onto
its nearest training patch ("push"), whose input patches ship inside the weights (buffers ``nearest_*``), so
an explanation can show what a prototype looks like without the training data. ``enabled`` switches
prototypes off (a disabled prototype's similarity counts as 0), which is how a user removes a shortcut
prototype and sees the prediction change.
"""
from __future__ import annotations

import torch
from torch import nn

from .demo_model import CLASS_NAMES, SynthLesionNet

PATCH = 16  # voxels per side of a prototype's stored training patches (48 mm at the demo's 3 mm)
NEAREST = 3  # training patches stored per prototype, each from another case
EPSILON = 1e-4


class PrototypeSimilarity(nn.Module):
    """Latent map (N, D, X, Y, Z) -> each prototype's similarity to each cell (N, P, X, Y, Z)."""

    def __init__(self, prototypes: int, dim: int):
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.rand(prototypes, dim))

    def distances(self, latent: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance of every cell to every prototype: |z|^2 - 2 z.p + |p|^2, clamped at 0."""
        p = self.prototype_vectors
        cross = torch.einsum("ndxyz,pd->npxyz", latent, p)
        return ((latent * latent).sum(1, keepdim=True) - 2 * cross + (p * p).sum(1)[None, :, None, None, None]
                ).clamp_min(0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        d = self.distances(latent)
        return torch.log((d + 1) / (d + EPSILON))


class PrototypeHead(nn.Module):
    """Similarity maps -> max over space -> (enabled) similarities -> class logits.

    ``prototype_class[p]``: the class prototype p was made for; ``last_layer.weight[c, p]``: its weight for
    class c; ``enabled[p]``: 1, or 0 once disabled."""

    def __init__(self, prototypes_per_class: int, dim: int, num_classes: int, in_channels: int = 1):
        super().__init__()
        count = prototypes_per_class * num_classes
        self.similarity = PrototypeSimilarity(count, dim)
        self.last_layer = nn.Linear(count, num_classes, bias=False)
        self.register_buffer("prototype_class", torch.arange(num_classes).repeat_interleave(prototypes_per_class))
        self.register_buffer("enabled", torch.ones(count))
        # what each prototype was pushed onto: input patches, their case indices (in the training stream) and latent
        # cells, distances
        self.register_buffer("nearest_patches", torch.zeros(count, NEAREST, in_channels, PATCH, PATCH, PATCH,
                                                            dtype=torch.float16))
        self.register_buffer("nearest_sources", torch.full((count, NEAREST, 4), -1, dtype=torch.int64))
        self.register_buffer("nearest_distances", torch.full((count, NEAREST), float("nan")))
        one_hot = torch.nn.functional.one_hot(self.prototype_class, num_classes).T.float()
        with torch.no_grad():  # ProtoPNet's start: +1 to the own class, -0.5 to the others
            self.last_layer.weight.copy_(one_hot - 0.5 * (1 - one_hot))

    def pooled(self, latent: torch.Tensor) -> torch.Tensor:
        """Each prototype's largest similarity over the cells, 0 where disabled (N, P)."""
        return self.similarity(latent).flatten(2).amax(2) * self.enabled

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.pooled(latent))


class PrototypeNet3D(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = len(CLASS_NAMES), prototypes_per_class: int = 4,
                 dim: int = 32, units: int = 3):
        super().__init__()
        backbone = SynthLesionNet(in_channels, num_classes, units=units)
        self.features = backbone.features  # its state-dict keys match the SynthLesion classifiers' (a warm start)
        width = backbone.fc.in_features
        self.add_on = nn.Sequential(nn.Conv3d(width, width, 1), nn.ReLU(), nn.Conv3d(width, dim, 1), nn.Sigmoid())
        with torch.no_grad():  # the classifier's features reach 10-20: at the default scale the sigmoid
            self.add_on[0].weight.mul_(0.1)  # saturates and training stays at chance (measured)
        self.head = PrototypeHead(prototypes_per_class, dim, num_classes, in_channels)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_on(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))
