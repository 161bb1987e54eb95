"""Ad-hoc explanations and transformers: attention gates, rollout and heads on planted attention, LRP and DeepLIFT
through attention, deep feature maps ranked by gradient x activation and LRP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("einops")  # MONAI's transformers need it
from monai.networks.nets import UNETR, AttentionUnet, SwinUNETR, UNet, ViT  # noqa: E402

from xaiexplain import attribute, explain  # noqa: E402
from xaiexplain.core.volume import Volume  # noqa: E402
from xaiexplain.errors import XAIError  # noqa: E402

SIZE, PATCH = 32, 8
PLANTED = (0, 1, 3)  # the patch every token attends to: off the diagonal, so a transposed map misses it


def _volume(seed: int = 0) -> Volume:
    array = np.random.default_rng(seed).normal(size=(1, SIZE, SIZE, SIZE)).astype(np.float32)
    return Volume(array, np.array([1.0, 1.5, 2.0]), np.array([-10.0, 4.0, 7.0]))


def _everywhere() -> Volume:
    """A region target's mask over the whole volume (attention does not depend on the target anyway)."""
    volume = _volume()
    return volume.with_array(np.ones_like(volume.array, dtype=np.uint8), ["roi"])


def _plant(vit, hidden: int, patch=PLANTED, grid=SIZE // PATCH) -> None:
    """Weights under which every token attends to ``patch``: the position embedding marks it, the queries read
    a direction every token has and the keys the marker; values, projections and MLPs are zero, so every block
    sees the same tokens (what each attends to is known exactly)."""
    for p in vit.parameters():
        torch.nn.init.zeros_(p)
    for m in vit.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
    common, marker, u = torch.zeros(hidden), torch.zeros(hidden), torch.zeros(hidden)
    common[0], common[1], marker[2], marker[3], u[0] = 1, -1, 1, -1, 1
    token = (patch[0] * grid + patch[1]) * grid + patch[2]
    with torch.no_grad():
        vit.patch_embedding.position_embeddings[:] = common
        vit.patch_embedding.position_embeddings[0, token] += marker
        if hasattr(vit, "cls_token"):
            vit.cls_token[:] = common
        for block in vit.blocks:
            weight = block.attn.qkv.weight  # rows: queries, keys, values
            weight[:hidden] = torch.outer(u, common) / common.dot(common)
            weight[hidden:2 * hidden] = 10 * torch.outer(u, marker) / marker.dot(marker)


@pytest.mark.parametrize("kind", ["vit", "unetr"])
def test_rollout_and_heads_find_the_planted_attention(kind):
    if kind == "vit":  # a class token; 8^3 patches
        network = ViT(in_channels=1, img_size=SIZE, patch_size=PATCH, hidden_size=16, mlp_dim=16, num_layers=3,
                      num_heads=2, classification=True, num_classes=2).eval()
        patch, planted, blocks = PATCH, PLANTED, [f"blocks.{i}.attn" for i in range(3)]
        _plant(network, 16, planted, SIZE // patch)
    else:  # no class token (every token's attention, averaged); UNETR's 16^3 patches
        network = UNETR(in_channels=1, out_channels=2, img_size=SIZE, feature_size=4, hidden_size=16, mlp_dim=16,
                        num_heads=2).eval()
        patch, planted, blocks = 16, (0, 1, 1), [f"vit.blocks.{i}.attn" for i in range(12)]
        _plant(network.vit, 16, planted, SIZE // patch)
    results = explain(network, _volume(), ["attention-rollout", "attention-head"], device="cpu",
                      **({"roi": _everywhere(), "target": 1} if kind == "unetr" else {}))
    for result in results:
        assert result.array.shape == (SIZE, SIZE, SIZE)
        assert np.allclose(result.map.spacing, [1.0, 1.5, 2.0])  # on the input grid
        assert result.info["class_token"] == (kind == "vit")
        peak = result.peak_index()
        assert all(p * patch <= i < (p + 1) * patch for i, p in zip(peak, planted)), (result.method, peak)
    assert results[0].info["blocks"] == blocks


def test_rollout_is_the_product_of_the_blocks_attention():
    torch.manual_seed(1)
    network = ViT(in_channels=1, img_size=SIZE, patch_size=PATCH, hidden_size=16, mlp_dim=16, num_layers=2,
                  num_heads=2, classification=True, num_classes=2).eval()
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    mats = []
    hooks = [b.attn.register_forward_hook(lambda m, i, o: mats.append(m.att_mat.clone())) for b in network.blocks]
    for b in network.blocks:
        b.attn.save_attn = True
    network(x)
    for hook, b in zip(hooks, network.blocks):
        hook.remove()
        b.attn.save_attn = False
    eye = torch.eye(mats[0].shape[-1])
    steps = [(0.5 * a.mean(1) + 0.5 * eye) / (0.5 * a.mean(1) + 0.5 * eye).sum(-1, keepdim=True) for a in mats]
    expected = (steps[1] @ steps[0])[:, 0, 1:].reshape(1, 1, 4, 4, 4)
    maps, info, _ = attribute(network, x, "attention-rollout", target=0)
    np.testing.assert_allclose(maps, F.interpolate(expected, size=(SIZE,) * 3, mode="trilinear"), rtol=1e-5)
    assert not network.blocks[0].attn.save_attn and network.blocks[0].attn.att_mat.numel() == 0  # restored


def test_attention_gates_are_the_gate_values_on_the_input_grid():
    torch.manual_seed(0)
    network = AttentionUnet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
                            strides=(2, 2)).eval()
    volume = _volume(3)
    seen = {}
    gates = {name: m for name, m in network.named_modules() if type(m).__name__ == "AttentionBlock"}
    hooks = [m.psi[-1].register_forward_hook(lambda _m, _i, out, name=name: seen.setdefault(name, out.detach()))
             for name, m in gates.items()]
    results = explain(network, volume, ["attention-gates"], roi=_everywhere(), target=1, device="cpu",
                      params={"attention-gates": {"gate": 0}})
    coarse = explain(network, volume, ["attention-gates"], roi=_everywhere(), target=1, device="cpu")
    for hook in hooks:
        hook.remove()
    assert results[0].info["gate"] == "model.1.submodule.1.attention"  # the coarser gate, 16^3
    assert coarse[0].info["gate"] == "model.1.attention"  # default: the finest, 32^3
    for result in (results[0], coarse[0]):
        gate = seen[result.info["gate"]]
        expected = F.interpolate(gate, size=(SIZE,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(result.array, expected, rtol=1e-5, atol=1e-6)
        assert 0.0 <= result.array.min() and result.array.max() <= 1.0
    with pytest.raises(XAIError, match="gate=5 is out of range: the network has 2 gates"):
        explain(network, volume, ["attention-gates"], roi=_everywhere(), target=1, device="cpu",
                params={"attention-gates": {"gate": 5}})


def test_networks_without_such_attention_are_refused():
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    unet = UNet(3, 1, 2, (4, 8), (2,)).eval()
    with pytest.raises(XAIError, match="no attention gates"):
        attribute(unet, x, "attention-gates", target=None)
    with pytest.raises(XAIError, match="no self-attention blocks"):
        attribute(unet, x, "attention-rollout", target=None)
    swin = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    with pytest.raises(XAIError, match="shifted-window attention"):
        attribute(swin, torch.randn(1, 1, 64, 64, 64), "attention-rollout", target=None)
    vit = ViT(in_channels=1, img_size=SIZE, patch_size=PATCH, hidden_size=16, mlp_dim=16, num_layers=2,
              num_heads=2, classification=True, num_classes=2).eval()
    with pytest.raises(XAIError, match="head=3 is out of range: the block has 2 heads"):
        attribute(vit, x, "attention-head", target=0, params={"head": 3})
    with pytest.raises(XAIError, match="block=2 is out of range"):
        attribute(vit, x, "attention-head", target=0, params={"block": 2})
    gated = AttentionUnet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)).eval()
    with pytest.raises(XAIError, match="attention-gates reads one pass over the whole input, and this model runs on sliding windows"):
        explain(gated, _volume(), ["attention-gates"], roi=_everywhere(), target=1, device="cpu",
                inferer={"roi_size": [16, 16, 16]})


def test_feature_maps_rank_channels_by_gradient_times_activation(demo, positive_case):
    from xaiexplain import prepare_case
    from xaiexplain.core.models import evaluation_mode

    case = prepare_case(demo, positive_case.volume)
    maps, info, _ = attribute(demo, case.x, "feature-map", target="lesion", layer="features.2")
    acts = {}
    handle = dict(demo.network.named_modules())["features.2"].register_forward_hook(
        lambda _m, _i, out: acts.setdefault("a", out))
    with torch.enable_grad(), evaluation_mode(demo):
        x = case.x.detach().requires_grad_(True)
        score = demo.network(x)[0, 1]
        (grad,) = torch.autograd.grad(score, acts["a"])
    handle.remove()
    contribution = (grad * acts["a"]).double().flatten(2).sum(2)[0]
    assert info["channel"] == int(contribution.argmax()) and info["rank"] == 1
    assert [c["channel"] for c in info["ranking"]] == contribution.argsort(descending=True)[:10].tolist()
    assert info["ranking"][0]["contribution"] == pytest.approx(float(contribution.max()), rel=1e-5)
    expected = F.interpolate(acts["a"][:, info["channel"]:info["channel"] + 1].detach(), size=case.x.shape[2:],
                             mode="trilinear", align_corners=False)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    third, info3, _ = attribute(demo, case.x, "feature-map", target="lesion", layer="features.2",
                                params={"channel": info["ranking"][2]["channel"]})
    assert info3["rank"] == 3
    with pytest.raises(XAIError, match="channel=999 is out of range"):
        attribute(demo, case.x, "feature-map", target="lesion", layer="features.2", params={"channel": 999})


class _TwoChannelHead(torch.nn.Module):
    """x -> 1x1 conv to two channels -> ReLU (the layer 'act') -> 1x1 conv with weights (1, -1) -> ReLU ->
    mean -> linear (weight 2): a head whose LRP relevance per channel is known in closed form."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv3d(1, 2, 1)
        self.act = torch.nn.ReLU()
        self.mix = torch.nn.Conv3d(2, 1, 1, bias=False)
        self.out = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(1, 2, bias=False))
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([1.0, -0.5]).view(2, 1, 1, 1, 1))
            self.first.bias.copy_(torch.tensor([0.2, 0.6]))
            self.mix.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1))
            self.out[3].weight.copy_(torch.tensor([[0.0], [2.0]]))

    def forward(self, x):
        return self.out(self.mix(self.act(self.first(x))))


def test_feature_maps_rank_channels_by_lrp_relevance():
    """Under z+ (epsilon-plus-flat: convolutions above the input) the 1x1 mix passes all of a voxel's relevance
    2 relu(a0 - a1) / N to channel 0, whose weight is positive, and none to channel 1; gradient x activation
    instead gives channel 1 the negative -2 a1 [a0 > a1] / N."""
    network = _TwoChannelHead().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    a = torch.relu(network.first(x))[0].detach().double()
    n, on = a[0].numel(), a[0] > a[1]
    lrp_expected = [float(2 * torch.relu(a[0] - a[1]).sum() / n), 0.0]
    gxa_expected = [float(2 * a[0][on].sum() / n), float(-2 * a[1][on].sum() / n)]
    _, info, _ = attribute(network, x, "feature-map", target=1, layer="act", params={"rank_by": "lrp"})
    by_channel = {r["channel"]: r["contribution"] for r in info["ranking"]}
    assert [by_channel[0], by_channel[1]] == pytest.approx(lrp_expected, rel=1e-4, abs=1e-9)  # the stabilisers
    assert info["ranked_by"] == "lrp" and info["channel"] == 0
    _, info, _ = attribute(network, x, "feature-map", target=1, layer="act")
    by_channel = {r["channel"]: r["contribution"] for r in info["ranking"]}
    assert [by_channel[0], by_channel[1]] == pytest.approx(gxa_expected, abs=1e-6)


class Attention(nn.Module):
    """Attention written by hand: softmax(q k^T) times the tokens."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, t):
        return torch.softmax(self.q(t) @ self.k(t).transpose(1, 2), -1) @ t


class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.attention = Attention()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.attention(tokens).mean(1))


def _tokens_input():
    return torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))


def test_lrp_holds_attention_weights_constant_and_books_every_loss():
    """LRP passes a hand-written attention (softmax of q k^T, times the tokens): the weights are held constant,
    so relevance reaches the input through the tokens alone, and all it loses is booked (biases, epsilon)."""
    maps, info, _ = attribute(WithAttention().eval(), _tokens_input(), "lrp", target=1, params={"composite": "epsilon"})
    assert info["rules_applied"]["product-attention-held"] == 1 and info["rules_applied"]["product"] == 1
    assert info["conservation_error"] < 1e-5


def test_deeplift_through_a_hand_written_attention_sums_to_the_score_difference():
    _, info, _ = attribute(WithAttention().eval(), _tokens_input(), "deeplift", target=1,
                           params={"baseline": "zeros"})
    assert info["completeness_error"] < 1e-5


class _GateTimesConstant(nn.Module):
    """A sigmoid's output times a constant matrix (a prototype layer's cross term): a linear map of it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.vectors = nn.Parameter(torch.rand(3, 4, generator=torch.Generator().manual_seed(0)))
        self.fc = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        crossed = torch.einsum("ndxyz,pd->npxyz", torch.sigmoid(self.conv(x)), self.vectors)
        return self.fc(crossed.mean((2, 3, 4)))


def test_lrp_passes_a_gate_times_a_constant_and_refuses_the_prototype_distance():
    """Held-constant attention weights are for products of two maps: a gate times a constant is the gate's
    linear map and takes all the relevance (bias-free: all of the score). The prototype network's distance
    then stops LRP at its product of two feature maps, named."""
    maps, info, _ = attribute(_GateTimesConstant().eval(), _tokens_input(), "lrp", target=1,
                              params={"composite": "epsilon"})
    assert info["completeness_error"] < 1e-4 and info["rules_applied"]["product"] == 1
    from xaiexplain.synthlesion.prototype_model import PrototypeNet3D

    with pytest.raises(XAIError, match="LRP has no rule for a product of two feature maps in layer 'head.similarity'"):
        attribute(PrototypeNet3D().eval(), torch.rand(1, 1, 64, 64, 64), "lrp", target=1)


def _bias_free(network):
    """Every bias and additive constant zero (position embeddings, relative position tables): relevance then
    has nowhere to go but the input."""
    for name, p in network.named_parameters():
        if name.endswith("bias") or "position_embeddings" in name or "relative_position_bias_table" in name:
            torch.nn.init.zeros_(p)
    return network.eval()


@pytest.mark.parametrize("kind", ["unetr", "swinunetr"])
def test_lrp_through_attention_conserves_relevance_on_bias_free_transformers(kind):
    from xaiexplain.core.targets import SegmentationTarget

    torch.manual_seed(0)
    if kind == "unetr":
        network = UNETR(in_channels=1, out_channels=2, img_size=SIZE, feature_size=8, hidden_size=48, mlp_dim=96,
                        num_heads=4, norm_name="batch")
        size = SIZE
    else:  # shifted windows: rolled, partitioned, masked
        network, size = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, norm_name="batch"), 64
    _bias_free(network)
    x = torch.randn(1, 1, size, size, size)
    roi = torch.zeros(size, size, size, dtype=torch.bool)
    roi[size // 4:size * 5 // 8, size // 3:size * 3 // 4, size // 8:size // 2] = True
    maps, info, _ = attribute(network, x, "lrp", target=SegmentationTarget(1, roi),
                              params={"composite": "epsilon"})
    assert info["completeness_error"] < 0.01  # the class in the region, within 1%
    assert info["rules_applied"]["product-attention-held"] > 0 and info["rules_applied"]["product"] > 0
    assert float(maps.sum()) == pytest.approx(info["score"][0], rel=0.01)


def _white_box_vit():
    """One block whose class token attends to the planted patch and reads its mean intensity as the value:
    the class score is that patch's evidence."""
    hidden = 16
    network = ViT(in_channels=1, img_size=SIZE, patch_size=PATCH, hidden_size=hidden, mlp_dim=16, num_layers=1,
                  num_heads=1, classification=True, num_classes=2, post_activation=None).eval()
    _plant(network, hidden)
    with torch.no_grad():
        network.patch_embedding.patch_embeddings.weight[4] = 1.0 / PATCH ** 3  # channel 4: the patch's mean
        block = network.blocks[0]
        block.attn.qkv.weight[2 * hidden + 4, 4] = 1.0  # the value: that channel
        block.attn.out_proj.weight[5, 4] = 1.0  # written into channel 5 of the class token
        network.classification_head.weight[1, 5], network.classification_head.weight[0, 5] = 1.0, -1.0
    return network


def _white_box_input():
    """A noisy volume with the planted patch brighter, and that patch's slices."""
    x = torch.randn(1, 1, SIZE, SIZE, SIZE) + 0.5
    planted = tuple(slice(p * PATCH, (p + 1) * PATCH) for p in PLANTED)
    x[(0, 0, *planted)] += 2.0
    return x, planted


def test_lrp_on_a_white_box_attention_model_finds_the_evidence():
    """The white-box ViT's class score is the planted patch's evidence, and LRP puts it there."""
    network, (x, planted) = _white_box_vit(), _white_box_input()
    maps, info, _ = attribute(network, x, "lrp", target=1, params={"composite": "epsilon"})
    relevance = maps[0, 0].abs()
    assert float(relevance[planted].sum() / relevance.sum()) > 0.97
    assert info["completeness_error"] < 0.01


@pytest.mark.parametrize("kind", ["unetr", pytest.param("swinunetr", marks=pytest.mark.slow)])
def test_deeplift_through_attention_sums_to_the_score_difference(kind):
    """Matrix products of two feature maps get the bilinear rule, softmax and GELU the rescale rule, LayerNorm
    the input's statistics: the map sums to the score difference against the reference pass (with every bias
    in place), whose LayerNorms take the input's statistics; under its own the reference's score differs by
    0.1% (UNETR) of the difference, recorded."""
    from xaiexplain.core.targets import SegmentationTarget

    torch.manual_seed(0)
    if kind == "unetr":
        network, size = UNETR(in_channels=1, out_channels=2, img_size=SIZE, feature_size=8, hidden_size=48,
                              mlp_dim=96, num_heads=4, norm_name="batch").eval(), SIZE
    else:
        network, size = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, norm_name="batch").eval(), 64
    x = torch.randn(1, 1, size, size, size)
    roi = torch.zeros(size, size, size, dtype=torch.bool)
    roi[size // 4:size * 5 // 8, size // 3:size * 3 // 4, size // 8:size // 2] = True
    maps, info, _ = attribute(network, x, "deeplift", target=SegmentationTarget(1, roi),
                              params={"baseline": "zeros"})
    assert info["completeness_error"] < 1e-4
    assert float(maps.sum()) == pytest.approx(info["score_difference"][0], rel=1e-4)
    assert 0 < info["completeness_error_own_statistics"] < (0.01 if kind == "unetr" else 0.2)


def test_deeplift_on_a_white_box_attention_model_finds_the_evidence():
    """The one-block ViT whose class token reads the planted patch's mean through attention: DeepLIFT from a
    zero reference puts the score difference on that patch."""
    network, (x, planted) = _white_box_vit(), _white_box_input()
    maps, info, _ = attribute(network, x, "deeplift", target=1, params={"baseline": "zeros"})
    evidence = maps[0, 0].abs()
    assert float(evidence[planted].sum() / evidence.sum()) > 0.9
    assert info["completeness_error"] < 1e-4


def test_swinunetr_block_maps_put_window_tokens_back_where_the_network_does():
    """Queries and keys read a token's brightness: in every window the tokens attend to the one bright token
    (a 2^3 cube after the 2x2x2 patch embedding). Its map peaks there in the plain block and in the shifted
    one (whose windows are rolled by 3 tokens: unrolled wrongly, the peak would move 6 voxels)."""
    from xaiexplain.core.targets import SegmentationTarget

    network = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    encoder = network.swinViT
    for p in encoder.parameters():
        torch.nn.init.zeros_(p)
    for m in encoder.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
    with torch.no_grad():
        encoder.patch_embed.proj.weight[0] = 1.0 / 8  # channel 0: the patch's mean intensity
        for block in encoder.layers1[0].blocks:
            block.attn.qkv.weight[:24, 0] = 3.0  # queries and keys read it
    x = torch.zeros(1, 1, 64, 64, 64)
    x[0, 0, 10:12, 40:42, 22:24] = 5.0
    target = SegmentationTarget(1, torch.ones(64, 64, 64, dtype=torch.bool))
    for block, shift in ((0, [0, 0, 0]), (1, [3, 3, 3])):
        maps, info, _ = attribute(network, x, "attention-head", target=target, params={"block": block})
        assert info["shift"] == shift and info["window"] == [7, 7, 7] and info["block_grid"] == [32, 32, 32]
        peak = np.unravel_index(int(maps[0, 0].argmax()), maps.shape[2:])
        assert 10 <= peak[0] < 12 and 40 <= peak[1] < 42 and 22 <= peak[2] < 24, (block, peak)
    with pytest.raises(XAIError, match="rollout across the whole image. Use attention-head"):
        attribute(network, x, "attention-rollout", target=target)
