"""BatchNorm folding (methods/machinery/folding.py): the folded copy computes what the network computes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiexplain.methods.machinery.folding import batch_norm_affine, fold_into, folded_copy


def randomised(norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


class Branching(nn.Module):
    """A convolution read twice (cannot be folded) next to a foldable pair and a transposed pair."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv3d(2, 4, 3, padding=1)
        self.norm_shared = randomised(nn.BatchNorm3d(4))
        self.body = nn.Sequential(nn.Conv3d(4, 6, 3, padding=1, bias=False), randomised(nn.BatchNorm3d(6)), nn.ReLU())
        self.up = nn.ConvTranspose3d(6, 4, 2, stride=2, groups=2)
        self.norm_up = randomised(nn.BatchNorm3d(4))

    def forward(self, x):
        a = self.shared(x)
        h = self.body(self.norm_shared(a) + a)
        return self.norm_up(self.up(h))


def count(module, kind) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_folded_copy_equals_the_network_and_folds_only_what_it_may():
    torch.manual_seed(0)
    network = Branching().eval()
    x = torch.randn(2, 2, 6, 6, 6)
    copy = folded_copy(network)
    assert count(copy, nn.modules.batchnorm._BatchNorm) == 1  # only the BatchNorm of the shared convolution stays
    torch.testing.assert_close(copy(x), network(x), rtol=1e-5, atol=1e-5)
    assert count(network, nn.modules.batchnorm._BatchNorm) == 3  # the network itself is untouched


def test_training_mode_batch_norms_are_not_folded():
    network = Branching().train()
    assert count(folded_copy(network), nn.modules.batchnorm._BatchNorm) == 3


@pytest.mark.parametrize("transposed,groups", [(False, 1), (True, 1), (True, 3)])
def test_fold_into_matches_the_layer_then_the_affine_map(transposed, groups):
    torch.manual_seed(1)
    layer = (nn.ConvTranspose3d(6, 9, 3, groups=groups) if transposed else nn.Conv3d(6, 9, 3)).double()
    norm = randomised(nn.BatchNorm3d(9)).double().eval()
    scale, shift = batch_norm_affine(norm)
    weight, bias = fold_into(layer.weight, layer.bias, scale, shift, transposed=transposed, groups=groups)
    x = torch.randn(1, 6, 5, 5, 5, dtype=torch.float64)
    run = torch.nn.functional.conv_transpose3d if transposed else torch.nn.functional.conv3d
    folded = run(x, weight, bias, groups=groups) if transposed else run(x, weight, bias)
    torch.testing.assert_close(folded, norm(layer(x)))
