"""Shared machinery of the perturbation methods: score names, boxes and region masks.

Every perturbed input is built on the model's device from the one resident
volume ``ctx.x``, its baseline and a mask, a batch at a time; ``scoring.py``
scores the batches (inference copy, batch sizing, incremental scoring of boxes).
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import XAIError
from ..base import Context

SCORES = ("probability", "logit")


def check_score(score: str) -> str:
    if score not in SCORES:
        raise XAIError(f"unknown score '{score}'", f"use one of: {', '.join(SCORES)}")
    return score


def box(begin, size) -> tuple[slice, ...]:
    """Slices of the box with first voxel ``begin`` and extent ``size``, one per spatial axis."""
    return tuple(slice(s, s + n) for s, n in zip(begin, size))


def paste(x: torch.Tensor, values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Copies of ``x`` (1, C, *grid), copy b with the box at ``starts[b]`` replaced by ``values[b]``."""
    batch = x.expand(values.shape[0], *x.shape[1:]).clone()
    for b, begin in enumerate(starts.tolist()):
        batch[(b, slice(None), *box(begin, values.shape[2:]))] = values[b]
    return batch


def region_index(ctx: Context) -> tuple[torch.Tensor, list[int]]:
    """Compact labels (X, Y, Z) on the device (0 = background, 1..K) and the label id of each index 1..K."""
    if ctx.regions is None:
        raise XAIError("this method needs regions",
                       "give --atlas harvard-oxford, --regions LABELS --region-names NAMES, or --supervoxels N")
    labels = torch.as_tensor(ctx.regions, device=ctx.x.device).long()
    if tuple(labels.shape) != tuple(ctx.x.shape[2:]):
        raise XAIError(f"the regions ({tuple(labels.shape)}) do not lie on the model's input grid "
                       f"({tuple(ctx.x.shape[2:])})", "map the labels into model space first")
    ids, compact = torch.unique(labels, return_inverse=True)
    ids = [int(i) for i in ids.cpu()]
    if ids and ids[0] == 0:
        return compact, ids[1:]
    return compact + 1, ids  # no background voxel: shift so that index 0 stays "background"


def compose(x: torch.Tensor, base: torch.Tensor, compact: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Batch of inputs keeping region ``k`` of ``x`` where ``keep[b, k-1]`` (background always kept), else baseline."""
    table = torch.cat([torch.ones(keep.shape[0], 1, dtype=torch.bool, device=keep.device), keep.bool()], 1)
    mask = table[:, compact][:, None]  # (B, 1, X, Y, Z)
    return torch.where(mask, x, base)


def region_scores_map(compact: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """(1, 1, X, Y, Z) map painting region index k (1..K) with ``values[k-1]`` (background 0)."""
    table = torch.cat([torch.zeros(1, dtype=torch.float32), torch.as_tensor(values, dtype=torch.float32)])
    return table.to(compact.device)[compact][None, None]
