"""Attention as an explanation, read from networks that have it (ad-hoc: the model's own weighting, not a
post-hoc attribution): the gates of MONAI ``AttentionUnet``, and the self-attention of ViT-style encoders
(MONAI ``ViT``, ``UNETR``: their ``SABlock`` modules).

- ``attention-gates``: one gate's attention coefficients (the sigmoid of its ``psi``), in [0, 1], on the
  input grid. The gates weight the skip connections: where a gate is near 0 the decoder does not see that
  level's features.
- ``attention-rollout`` (Abnar & Zuidema 2020): the attention of every block, heads fused, with the residual
  path added (0.5 A + 0.5 I, rows renormalised), multiplied from the first block to the last; a patch's value
  is how much the class token (or, without one, every token on average) draws from it through all blocks.
- ``attention-head``: one block's attention (one head, or the heads' mean) that the class token (or every
  token on average) pays to each patch; on a SwinUNETR, one shifted-window block's (each token's attention
  from the queries of its window, put back where the network puts the token).

Patches are put on their place in the input by the patch embedding's own grid (a conv's output grid, or the
perceptron's patch sizes), then interpolated like every layer map. Attention does not depend on the target
class: the same map explains every class, which ``info`` says. A network without such attention is refused.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import XAIError
from .base import Method, register
from .machinery.layer_grid import upsample

SAME_FOR_EVERY_CLASS = "attention does not depend on the target: the same map for every class"


def _keep(store: dict, key: str):
    """A forward hook that keeps the first output it sees under ``key`` (and changes nothing: returns None)."""
    def hook(_module, _inputs, output):
        if key not in store:
            store[key] = output.detach() if isinstance(output, torch.Tensor) else tuple(output)
    return hook


def _hooked_pass(ctx, handles) -> None:
    """One forward pass of the whole input with the hooks ``handles`` on, removed afterwards whatever happens."""
    try:
        with torch.inference_mode():
            ctx.forward(ctx.x)
    finally:
        for handle in handles:
            handle.remove()


def _gates(ctx) -> list[tuple[str, torch.nn.Module]]:
    gates = [(name, m) for name, m in ctx.model.named_layers().items()
             if type(m).__name__ == "AttentionBlock" and hasattr(m, "psi")]
    if not gates:
        raise XAIError("the network has no attention gates (MONAI AttentionUnet's AttentionBlock)",
                       "use attention-rollout for ViT / UNETR, or a post-hoc method (gradcam, gradient)")
    return gates


class AttentionGates(Method):
    name, title = "attention-gates", "Attention gates: a gate's coefficients (AttentionUnet)"
    family, signed, needs_gradients, needs_layers, through_windows = "attention", False, False, True, False
    kind = "ad-hoc"
    defaults = {"gate": -1}
    bounds = {"gate": (None, None)}
    reference = "Oktay et al. 2018 (Attention U-Net)"

    def cost(self, params):
        return {"forward": 1, "backward": 0}

    def run(self, ctx, gate):
        gates = _gates(ctx)
        if not -len(gates) <= gate < len(gates):
            raise XAIError(f"attention-gates.gate={gate} is out of range: the network has {len(gates)} gates",
                           f"give a gate from {-len(gates)} to {len(gates) - 1} (-1: the finest)")
        values: dict[str, torch.Tensor] = {}
        _hooked_pass(ctx, [m.psi.register_forward_hook(_keep(values, name)) for name, m in gates])
        order = list(values)  # completion order: the coarsest gate first, the finest (nearest the output) last
        chosen = order[gate]
        coefficients = values[chosen].float()
        if coefficients.shape[1] != 1:  # a gate per channel: their mean
            coefficients = coefficients.mean(1, keepdim=True)
        info = {"gate": chosen, "gates": [{"name": n, "shape": list(values[n].shape[2:]),
                                           "mean": float(values[n].mean())} for n in order],
                "note": SAME_FOR_EVERY_CLASS}
        return upsample(coefficients, ctx.x), info


def _swin_blocks(ctx) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in ctx.model.named_layers().items() if type(m).__name__ == "SwinTransformerBlock"
            and hasattr(getattr(m, "attn", None), "softmax")]


def _self_attention_blocks(ctx) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in ctx.model.named_layers().items()
            if type(m).__name__ == "SABlock" and hasattr(m, "save_attn")]


def _attention_blocks(ctx) -> list[tuple[str, torch.nn.Module]]:
    """The network's self-attention blocks, or a refusal that says what else it has."""
    blocks = _self_attention_blocks(ctx)
    if not blocks:
        others = "use attention-gates for AttentionUnet, or a post-hoc method (gradcam, gradient, lrp)"
        if _swin_blocks(ctx):
            raise XAIError("the network's attention is shifted-window attention (SwinUNETR), whose windows have no "
                           "rollout across the whole image", "use attention-head for one block of a SwinUNETR, or "
                           + others.replace("use ", "", 1))
        raise XAIError("the network has no self-attention blocks (MONAI SABlock: ViT, UNETR)", others)
    return blocks


def _check_head(head, heads: int) -> None:
    if head is not None and head >= heads:
        raise XAIError(f"attention-head.head={head} is out of range: the block has {heads} heads",
                       f"give a head from 0 to {heads - 1}, or none for their mean")


@contextmanager
def _saved_attention(blocks):
    """Each block keeps its attention matrix for one pass (MONAI's save_attn; flash attention, which keeps
    none, off meanwhile: the same result)."""
    before = [(m.save_attn, getattr(m, "use_flash_attention", False)) for _, m in blocks]
    try:
        for _, m in blocks:
            m.save_attn = True
            if getattr(m, "use_flash_attention", False):
                m.use_flash_attention = False
        yield
    finally:
        for (_, m), (save, flash) in zip(blocks, before):
            m.save_attn = save
            if hasattr(m, "use_flash_attention"):
                m.use_flash_attention = flash


def _patch_grid(ctx) -> tuple[int, ...]:
    """The patch embedding's grid of patches (X, Y, Z), in the order its tokens are numbered."""
    embeddings = [m for m in ctx.model.named_layers().values() if type(m).__name__ == "PatchEmbeddingBlock"]
    if len(embeddings) != 1:
        raise XAIError(f"the network has {len(embeddings)} patch embeddings (MONAI PatchEmbeddingBlock), "
                       "so its tokens cannot be placed on the image", "explain a MONAI ViT or UNETR")
    projection = embeddings[0].patch_embeddings
    size = tuple(ctx.x.shape[2:])
    if isinstance(projection, torch.nn.modules.conv._ConvNd):
        patch = tuple(projection.stride)
    else:  # perceptron: the rearrangement names its patch sizes p1, p2, p3
        lengths = getattr(projection[0], "axes_lengths", None)
        lengths = dict(lengths) if lengths else {}
        patch = tuple(lengths.get(f"p{d + 1}", 0) for d in range(len(size)))
        if not all(patch):
            raise XAIError("the patch embedding's patch size cannot be read", "explain a MONAI ViT or UNETR")
    return tuple((n - p) // p + 1 for n, p in zip(size, patch))


def _attention(ctx) -> tuple[list[str], list[torch.Tensor], tuple[int, ...], bool]:
    """Every block's attention (N, H, T, T) from one pass; the patch grid; whether token 0 is a class token."""
    blocks = _attention_blocks(ctx)
    grid = _patch_grid(ctx)
    with _saved_attention(blocks), torch.inference_mode():
        ctx.forward(ctx.x)
        mats = [m.att_mat.detach().float() for _, m in blocks]
    for _, m in blocks:
        m.att_mat = torch.Tensor()  # not kept in the network past this pass
    if any(a.ndim != 4 or a.shape[-1] != a.shape[-2] for a in mats):
        raise XAIError("a block did not keep its attention matrix", "explain a MONAI ViT or UNETR")
    patches = int(torch.tensor(grid).prod())
    tokens = mats[0].shape[-1]
    if tokens not in (patches, patches + 1):
        raise XAIError(f"the attention has {tokens} tokens but the image has {patches} patches",
                       "give the network the input size it was built for (--size)")
    return [name for name, _ in blocks], mats, grid, tokens == patches + 1


def _on_input(ctx, weights: torch.Tensor, grid, has_class_token: bool) -> torch.Tensor:
    """Per-token weights (N, T) as a map on the model input grid (the class token left out)."""
    per_patch = weights[:, 1:] if has_class_token else weights
    maps = per_patch.reshape(per_patch.shape[0], 1, *grid)  # tokens numbered in C order over the patch grid
    return upsample(maps, ctx.x)


def _from(mat: torch.Tensor, has_class_token: bool) -> torch.Tensor:
    """What the class token (or every token on average) draws from each token."""
    return mat[:, 0] if has_class_token else mat.mean(1)


class AttentionRollout(Method):
    name, title = "attention-rollout", "Attention rollout through every block (ViT, UNETR)"
    family, signed, needs_gradients, needs_layers, through_windows = "attention", False, False, True, False
    kind = "ad-hoc"
    defaults = {"head_fusion": "mean"}
    bounds = {"head_fusion": ("mean", "max", "min")}
    reference = "Abnar & Zuidema 2020 (Quantifying attention flow in transformers)"

    def cost(self, params):
        return {"forward": 1, "backward": 0}

    def run(self, ctx, head_fusion):
        names, mats, grid, cls = _attention(ctx)
        fused = [a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)
                 for a in mats]
        identity = torch.eye(fused[0].shape[-1], device=fused[0].device)
        rollout = None
        for a in fused:
            a = 0.5 * a + 0.5 * identity  # the residual path carries each token on
            a = a / a.sum(-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        info = {"blocks": names, "patch_grid": list(grid), "class_token": cls, "note": SAME_FOR_EVERY_CLASS}
        return _on_input(ctx, _from(rollout, cls), grid, cls), info


class AttentionHead(Method):
    name, title = "attention-head", "One block's attention: a head or the heads' mean (ViT, UNETR, SwinUNETR)"
    family, signed, needs_gradients, needs_layers, through_windows = "attention", False, False, True, False
    kind = "ad-hoc"
    defaults = {"block": -1, "head": None}
    bounds = {"block": (None, None), "head": (0, None)}
    reference = "Dosovitskiy et al. 2021 (ViT); Chefer et al. 2021 on attention as explanation"

    def cost(self, params):
        return {"forward": 1, "backward": 0}

    def run(self, ctx, block, head):
        swin = _swin_blocks(ctx)
        if swin and not _self_attention_blocks(ctx):
            return _swin_block_map(ctx, swin, block, head)
        count = len(_attention_blocks(ctx))
        if not -count <= block < count:
            raise XAIError(f"attention-head.block={block} is out of range: the network has {count} attention "
                           "blocks", f"give a block from {-count} to {count - 1}")
        names, mats, grid, cls = _attention(ctx)
        mat = mats[block]
        _check_head(head, mat.shape[1])
        chosen = mat.mean(1) if head is None else mat[:, head]
        info = {"block": names[block], "heads": int(mat.shape[1]), "head": head, "patch_grid": list(grid),
                "class_token": cls, "note": SAME_FOR_EVERY_CLASS}
        return _on_input(ctx, _from(chosen, cls), grid, cls), info



def _swin_block_map(ctx, blocks, block: int, head):
    """One shifted-window block's attention: what each token receives from the queries of its window (their
    mean), put back on the block's grid as the network puts its tokens back (MONAI's own window reverse and
    roll), cropped of padding, then interpolated onto the input like every layer map."""
    from monai.networks.nets.swin_unetr import get_window_size, window_reverse

    if not -len(blocks) <= block < len(blocks):
        raise XAIError(f"attention-head.block={block} is out of range: the network has {len(blocks)} "
                       "shifted-window blocks", f"give a block from {-len(blocks)} to {len(blocks) - 1}")
    name, module = blocks[block]
    seen = {}
    _hooked_pass(ctx, [module.register_forward_pre_hook(lambda _m, args: _keep(seen, "shape")(_m, (), args[0].shape)),
                       module.attn.softmax.register_forward_hook(_keep(seen, "attn"))])
    if len(seen.get("shape", ())) != 5:
        raise XAIError(f"block '{name}' did not run on a 3D token grid", "explain a 3D SwinUNETR")
    b, d, h, w, _ = seen["shape"]
    size, shift = get_window_size((d, h, w), module.window_size, module.shift_size)
    attn = seen["attn"].float()  # (windows, heads, T, T)
    _check_head(head, attn.shape[1])
    chosen = attn.mean(1) if head is None else attn[:, head]
    received = chosen.mean(1)  # (windows, T): each key token, over its window's queries
    padded = [n + (s - n % s) % s for n, s in zip((d, h, w), size)]
    grid = window_reverse(received.reshape(-1, *size, 1), size, [b, *padded])  # (b, D, H, W, 1)
    if any(shift):
        grid = torch.roll(grid, shifts=tuple(shift), dims=(1, 2, 3))
    grid = grid[:, :d, :h, :w, 0][:, None]
    info = {"block": name, "heads": int(attn.shape[1]), "head": head, "window": list(size), "shift": list(shift),
            "block_grid": [d, h, w], "class_token": False, "note": SAME_FOR_EVERY_CLASS}
    return upsample(grid, ctx.x), info


for _method in (AttentionGates, AttentionRollout, AttentionHead):
    register(_method)
