"""Exact Shapley values over input channels: efficiency, the channel that carries the evidence first, and the
values against a network whose channel contributions are known in closed form."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiexplain import XAIError, attribute


class Additive(nn.Module):
    """score = sum_c w_c * mean(x_c) + w_01 * mean(x_0) * mean(x_1): Shapley values known exactly."""

    def __init__(self, weights, interaction=0.0):
        super().__init__()
        self.weights, self.interaction = torch.tensor(weights), interaction

    def forward(self, x):
        means = x.mean((2, 3, 4))
        score = (means * self.weights).sum(1)
        if self.interaction:
            score = score + self.interaction * means[:, 0] * means[:, 1]
        return torch.stack([-score, score], 1)


def _input(channels=4, seed=0):
    return torch.rand(1, channels, 12, 12, 12, generator=torch.Generator().manual_seed(seed)) + 0.5


def test_the_channel_that_carries_the_evidence_ranks_first_and_the_values_add_up():
    x = _input()
    maps, info, ctx = attribute(Additive([0.0, 3.0, 0.0, 0.5], interaction=1.0), x, "channel-shapley", target=1,
                                params={"baseline": "zeros"})
    phi = info["channel_shapley"][0]
    means = x.mean((2, 3, 4))[0].double()
    # closed form: each channel its own term, the interaction split evenly between channels 0 and 1
    expected = [0.5 * means[0] * means[1], 3.0 * means[1] + 0.5 * means[0] * means[1], 0.0, 0.5 * means[3]]
    assert phi == pytest.approx([float(e) for e in expected], rel=1e-5, abs=1e-6)
    assert max(range(4), key=lambda c: phi[c]) == 1
    # 16 coalitions and the scorer's probe pass, as declared
    assert info["completeness_error"] < 1e-6 and info["coalitions"] == 16 and ctx.passes["forward"] == 17
    assert maps.shape == x.shape and torch.allclose(maps.sum((2, 3, 4))[0].float(), torch.tensor(phi).float(),
                                                    rtol=1e-4)


def test_one_channel_is_refused():
    with pytest.raises(XAIError, match="needs 2 to 8 input channels") as err:
        attribute(Additive([1.0]), _input(1), "channel-shapley", target=1)
    assert "\n" not in str(err.value)


def test_through_explain_a_network_blind_to_a_channel_gives_it_nothing(positive_case):
    from xaiexplain import explain
    from xaiexplain.synthlesion.demo_model import SynthLesionNet
    from xaiexplain.synthlesion.train import DEMO_PREPROCESSING

    net = SynthLesionNet(in_channels=2).eval()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
    with torch.no_grad():
        first.weight[:, 0] = 0
    flair = positive_case.volume.with_array(positive_case.volume.array * 0.5 + 1)
    (result,) = explain(net, [positive_case.volume, flair], ["channel-shapley"], target=1,
                        preprocessing=DEMO_PREPROCESSING, device="cpu")
    phi = result.info["channel_shapley"][0]
    assert phi[0] == pytest.approx(0.0, abs=1e-9) and abs(phi[1]) > 1e-6
    assert [s["abs_share"] for s in result.info["channel_shares"]] == pytest.approx([0.0, 1.0])
    assert result.info["completeness_error"] < 1e-6
